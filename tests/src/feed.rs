//! A synthetic listener: streams generated request records to a replayer over gRPC, exactly as
//! a listener does, either as fast as the link allows or paced to a rate. For benchmarks of the
//! replayer alone. [`feed_as`] names the listener, so the records of several feeds can be told
//! apart at a recording target.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use tapwire_shared::RequestRecord;
use tapwire_shared::proto::{self, replay_client::ReplayClient};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::servers::SEQUENCE_HEADER;

const BATCH: u64 = 256;

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The path record `id` of feed `listener` (see [`feed_as`]) asks for.
pub fn named_path(listener: &str, id: u64) -> String {
    format!("/bench/{listener}/{id}")
}

/// Record `id` as feed `listener` sends it: its [`named_path`], its id in the
/// [`SEQUENCE_HEADER`] so a recording target keeps it.
pub fn named_record(listener: &str, id: u64, captured_at_ns: u64) -> proto::RequestRecord {
    let path = named_path(listener, id);
    wire_record(
        id,
        captured_at_ns,
        format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: tapwire-feed\r\n{SEQUENCE_HEADER}: {id}\r\n\r\n"
        ),
    )
}

/// A record of the anonymous feed (`listener` None) or of a named one.
fn record(id: u64, captured_at_ns: u64, listener: Option<&str>) -> proto::RequestRecord {
    match listener {
        None => wire_record(
            id,
            captured_at_ns,
            format!("GET /bench/{id} HTTP/1.1\r\nHost: bench\r\nUser-Agent: tapwire-feed\r\n\r\n"),
        ),
        Some(listener) => named_record(listener, id, captured_at_ns),
    }
}

fn wire_record(id: u64, captured_at_ns: u64, request: String) -> proto::RequestRecord {
    RequestRecord {
        id,
        captured_at_ns,
        client: SocketAddr::from(([10, 0, 0, 1], 40_000 + (id % 1000) as u16)),
        server: SocketAddr::from(([10, 0, 0, 2], 80)),
        request: Bytes::from(request),
    }
    .into()
}

/// Streams `total` records to the replayer at `grpc`, at `rate` records/s or as fast as it can.
/// Returns once every batch is acknowledged.
pub async fn feed(grpc: SocketAddr, total: u64, rate: Option<f64>) -> anyhow::Result<Duration> {
    stream_records(grpc, None, total, rate).await
}

/// Like [`feed`], as listener `listener`, sending [`named_record`]s: a recording target keeps
/// them and tells feeds apart by path.
pub async fn feed_as(
    grpc: SocketAddr,
    listener: &str,
    total: u64,
    rate: Option<f64>,
) -> anyhow::Result<Duration> {
    stream_records(grpc, Some(listener.to_owned()), total, rate).await
}

async fn stream_records(
    grpc: SocketAddr,
    listener: Option<String>,
    total: u64,
    rate: Option<f64>,
) -> anyhow::Result<Duration> {
    let mut client = ReplayClient::connect(format!("http://{grpc}"))
        .await
        .context("cannot connect to the replayer")?;
    let (batches, outgoing) = mpsc::channel(32);
    let mut acks = client
        .stream(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let started = Instant::now();
    let started_unix_ns = unix_ns();
    // Each feed is a listener process of its own as far as de-duplication goes: no two feeds
    // share an instance, even started in the same nanosecond.
    static FEEDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let instance = u64::from(std::process::id()) << 32
        | FEEDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let batch_count = total.div_ceil(BATCH);
    let listener_id = listener.clone().unwrap_or_else(|| "feed".to_owned());
    let sender = tokio::spawn(async move {
        let mut next_id = 0;
        for sequence in 1..=batch_count {
            let size = BATCH.min(total - next_id);
            if let Some(rate) = rate {
                // Send each batch when the rate says its last record is due.
                let due = started + Duration::from_secs_f64((next_id + size) as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            // Paced records carry the capture times a listener would have seen: evenly spread.
            let records = (next_id..next_id + size)
                .map(|id| {
                    let captured_at_ns = match rate {
                        Some(rate) => started_unix_ns + (id as f64 * 1e9 / rate) as u64,
                        None => unix_ns(),
                    };
                    record(id, captured_at_ns, listener.as_deref())
                })
                .collect();
            next_id += size;
            let batch = proto::RecordBatch {
                sequence,
                listener_id: listener_id.clone(),
                listener_instance: instance,
                records,
                responses: Vec::new(),
            };
            if batches.send(batch).await.is_err() {
                break;
            }
        }
    });
    let mut acknowledged = 0;
    while acknowledged < batch_count {
        match acks.next().await {
            Some(Ok(ack)) => acknowledged = ack.sequence,
            Some(Err(status)) => anyhow::bail!("replayer ended the stream: {status}"),
            None => anyhow::bail!("replayer closed the stream after {acknowledged} batches"),
        }
    }
    sender.await?;
    Ok(started.elapsed())
}
