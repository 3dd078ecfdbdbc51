//! The gRPC side: accepts record streams from any number of listeners, paces each stream
//! (original timing, queued global rate), hands its records to the fan-out, and acknowledges
//! each batch. Pacing a stream holds that listener back (its acknowledgements wait), never the
//! others. On shutdown every open stream is ended with `UNAVAILABLE`, so listeners know to
//! reconnect elsewhere rather than wait.

use std::net::SocketAddr;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tapwire_shared::proto::{BatchAck, RecordBatch, replay_server::Replay};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Timing;
use crate::dedup::Deduplicator;
use crate::fanout::FanOut;

/// Acks queued per stream before the stream stops reading batches.
const ACK_QUEUE: usize = 64;

/// Refuses streams without the configured bearer token. The comparison takes the same time
/// whatever the token presented, so it leaks nothing about the real one.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<[u8]>>,
    refused: prometheus_client::metrics::counter::Counter,
}

impl TokenCheck {
    pub fn new(
        token: Option<String>,
        refused: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        TokenCheck {
            expected: token.map(|token| format!("Bearer {token}").into_bytes().into()),
            refused,
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if bool::from(presented.ct_eq(expected)) {
            Ok(request)
        } else {
            self.refused.inc();
            tracing::warn!(peer = ?request.remote_addr(), "refused a listener stream: missing or wrong token");
            Err(Status::unauthenticated("missing or wrong token"))
        }
    }
}

/// When records of a stream are handed on.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub timing: Timing,
    pub speed: f64,
}

pub struct ReplayService {
    fanout: Arc<FanOut>,
    /// Shared by all streams: a listener's resend arrives on its next stream.
    dedup: Arc<Deduplicator>,
    pacing: Pacing,
    shutdown: watch::Receiver<bool>,
}

impl ReplayService {
    pub fn new(fanout: Arc<FanOut>, pacing: Pacing, shutdown: watch::Receiver<bool>) -> Self {
        ReplayService {
            fanout,
            dedup: Arc::default(),
            pacing,
            shutdown,
        }
    }
}

/// Keeps a stream's captured inter-arrival times: the first record goes at once, each later
/// one when its capture offset (divided by the speed) has passed.
struct OriginalTiming {
    speed: f64,
    start: Option<(u64, Instant)>,
}

impl OriginalTiming {
    async fn wait_for(&mut self, captured_at_ns: u64) {
        let (first_captured, started) = *self.start.get_or_insert((captured_at_ns, Instant::now()));
        let offset_ns = captured_at_ns.saturating_sub(first_captured) as f64 / self.speed;
        tokio::time::sleep_until(started + Duration::from_nanos(offset_ns as u64)).await;
    }
}

#[tonic::async_trait]
impl Replay for ReplayService {
    type StreamStream = ReceiverStream<Result<BatchAck, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<RecordBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let batches = request.into_inner();
        let (acks, outgoing) = mpsc::channel(ACK_QUEUE);
        tokio::spawn(serve_stream(
            peer,
            batches,
            acks,
            Arc::clone(&self.fanout),
            Arc::clone(&self.dedup),
            self.pacing,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }
}

async fn serve_stream(
    peer: Option<SocketAddr>,
    mut batches: Streaming<RecordBatch>,
    acks: mpsc::Sender<Result<BatchAck, Status>>,
    fanout: Arc<FanOut>,
    dedup: Arc<Deduplicator>,
    pacing: Pacing,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener_id = String::new();
    let mut original = (pacing.timing == Timing::Original).then_some(OriginalTiming {
        speed: pacing.speed,
        start: None,
    });
    loop {
        let batch = tokio::select! {
            batch = batches.message() => batch,
            () = stopping(&mut shutdown) => {
                let _ = acks.send(Err(Status::unavailable("replayer shutting down"))).await;
                break;
            }
        };
        let batch = match batch {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(status) => {
                tracing::warn!(?peer, listener = %listener_id, %status, "listener stream failed");
                break;
            }
        };
        if listener_id.is_empty() {
            listener_id = batch.listener_id.clone();
            tracing::info!(?peer, listener = %listener_id, "listener connected");
        }
        let accepted = batch.records.len() as u32;
        let (records, copies) = dedup.fresh(&listener_id, batch.listener_instance, batch.records);
        fanout.duplicates(copies);
        for record in records {
            if let Some(timing) = original.as_mut() {
                timing.wait_for(record.captured_at_ns).await;
            }
            fanout.until_global_rate_allows().await;
            fanout.dispatch(record, &listener_id);
        }
        // Comparing staging's answers with these is the replayer's next job; count them now.
        fanout.production_responses(batch.responses.len() as u64);
        let ack = BatchAck {
            sequence: batch.sequence,
            accepted,
        };
        if acks.send(Ok(ack)).await.is_err() {
            break;
        }
    }
    tracing::info!(?peer, listener = %listener_id, "listener stream ended");
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
