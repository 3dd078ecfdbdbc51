//! The link to the replayer. The capture thread fills a bounded [`RecordQueue`] without ever
//! blocking (a full queue drops and counts). [`stream_to_replayer`] drains it into batches on one
//! long-lived gRPC stream, counts records as sent when the replayer acknowledges them, keeps
//! unacknowledged batches (within the same byte budget) and sends them again after reconnecting
//! with jittered exponential backoff when the replayer goes away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tapwire_shared::proto::{self, replay_client::ReplayClient};
use tapwire_shared::{RequestRecord, ResponseRecord};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
pub use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

use crate::metrics::{DropReason, ListenerMetrics};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the capture thread hands to the link.
#[derive(Debug)]
pub enum Captured {
    Request(RequestRecord),
    Response(ResponseRecord),
}

impl Captured {
    fn len(&self) -> usize {
        match self {
            Captured::Request(record) => record.request.len(),
            Captured::Response(record) => record.response.len(),
        }
    }
}

/// A queued record and its claim on the byte budget, held until the replayer acknowledges it:
/// bytes waiting in gRPC buffers count as much as bytes waiting in the queue.
pub struct QueuedRecord {
    item: Captured,
    bytes: OwnedSemaphorePermit,
}

impl QueuedRecord {
    pub fn into_item(self) -> Captured {
        self.item
    }
}

/// The sending half, owned by the capture thread.
pub struct RecordQueue {
    sender: mpsc::Sender<QueuedRecord>,
    bytes: Arc<Semaphore>,
    metrics: ListenerMetrics,
    /// Headers (lowercase) whose values are replaced before anything leaves this host.
    redact_headers: Vec<String>,
}

/// A queue between capture and the link, bounded both in records and in request bytes.
pub fn record_queue(
    max_records: usize,
    max_bytes: usize,
    metrics: ListenerMetrics,
) -> (RecordQueue, mpsc::Receiver<QueuedRecord>) {
    let (sender, receiver) = mpsc::channel(max_records);
    let bytes = Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS)));
    (
        RecordQueue {
            sender,
            bytes,
            metrics,
            redact_headers: Vec::new(),
        },
        receiver,
    )
}

impl RecordQueue {
    /// Replace the values of these headers with `REDACTED` in every request and response.
    pub fn redacting(mut self, headers: &[String]) -> Self {
        self.redact_headers = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        self
    }

    pub fn push_request(&self, mut record: RequestRecord) {
        let Some(redacted) = self.redact(&record.request) else {
            self.metrics.dropped(DropReason::MalformedHttp).inc();
            return;
        };
        record.request = redacted;
        if !self.push(Captured::Request(record)) {
            self.metrics.dropped(DropReason::QueueFull).inc();
        }
    }

    pub fn push_response(&self, mut record: ResponseRecord) {
        let Some(redacted) = self.redact(&record.response) else {
            self.metrics
                .response_dropped(DropReason::MalformedHttp)
                .inc();
            return;
        };
        record.response = redacted;
        if !self.push(Captured::Response(record)) {
            self.metrics.response_dropped(DropReason::QueueFull).inc();
        }
    }

    /// The message with secrets redacted; `None` if it cannot be parsed (it is then not sent at
    /// all rather than sent unredacted).
    fn redact(&self, message: &bytes::Bytes) -> Option<bytes::Bytes> {
        if self.redact_headers.is_empty() {
            return Some(message.clone());
        }
        tapwire_shared::http1::redact_headers(message, &self.redact_headers).ok()
    }

    /// Never blocks: capture must keep pace with production, so a full queue refuses.
    fn push(&self, item: Captured) -> bool {
        let size = u32::try_from(item.len()).unwrap_or(u32::MAX);
        let Ok(bytes) = Arc::clone(&self.bytes).try_acquire_many_owned(size) else {
            return false;
        };
        self.sender.try_send(QueuedRecord { item, bytes }).is_ok()
    }
}

/// How the link batches and paces records.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub replayer: Endpoint,
    /// `Bearer <token>` presented to the replayer, marked sensitive so it never shows in logs.
    pub authorization: Option<MetadataValue<Ascii>>,
    pub listener_id: String,
    pub max_batch_records: usize,
    /// A batch closes once its requests reach this many bytes (a single larger request still
    /// travels alone).
    pub max_batch_bytes: usize,
    /// Batches sent but not yet acknowledged; past this the link stops draining the queue.
    pub max_unacked_batches: usize,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("replayer closed the stream")]
    Closed,
}

/// A stream that fails this many times in a row while a batch is the oldest unacknowledged one,
/// without acknowledging anything, makes the link give that batch up: a batch the replayer
/// cannot take must not wedge the link.
const MAX_FAILED_STREAMS: u32 = 3;

/// A batch sent and not yet acknowledged, kept to be sent again after a reconnect.
struct UnackedBatch {
    /// Its sequence on the current stream.
    sequence: u64,
    batch: proto::RecordBatch,
    /// Established streams that failed while this batch was the oldest unacknowledged one.
    failed_streams: u32,
    /// The batch's share of the byte budget, released on acknowledgement.
    _bytes: OwnedSemaphorePermit,
}

/// Batches sent and not yet acknowledged; they outlive the stream they were sent on.
#[derive(Default)]
struct Unacked {
    /// Oldest first.
    batches: VecDeque<UnackedBatch>,
    /// The current stream acknowledged something.
    acknowledged_any: bool,
}

/// Streams every queued record to the replayer until the queue is closed and fully acknowledged.
/// Unacknowledged batches are sent again after a reconnect (at-least-once); the replayer drops
/// the copies it already has, by record id within this listener instance.
pub async fn stream_to_replayer(
    config: LinkConfig,
    mut records: mpsc::Receiver<QueuedRecord>,
    metrics: ListenerMetrics,
) {
    // Record ids restart with the process; the instance tells the replayer they are new.
    let instance: u64 = rand::random();
    let mut unacked = Unacked::default();
    let mut backoff = BACKOFF_FIRST;
    loop {
        unacked.acknowledged_any = false;
        let result = run_stream(&config, instance, &mut records, &metrics, &mut unacked).await;
        let Err(error) = result else {
            return;
        };
        if !matches!(error, LinkError::Connect(_)) && !unacked.acknowledged_any {
            give_up_on_a_stuck_batch(&mut unacked, &metrics);
        }
        if records.is_closed() && records.is_empty() && unacked.batches.is_empty() {
            return;
        }
        if unacked.acknowledged_any {
            backoff = BACKOFF_FIRST;
        }
        let delay = jittered(backoff);
        let waiting = unacked.batches.len();
        tracing::warn!(replayer = %config.replayer.uri(), %error, retry_in = ?delay, unacknowledged_batches = waiting, "replayer link down");
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn give_up_on_a_stuck_batch(unacked: &mut Unacked, metrics: &ListenerMetrics) {
    let Some(oldest) = unacked.batches.front_mut() else {
        return;
    };
    oldest.failed_streams += 1;
    if oldest.failed_streams < MAX_FAILED_STREAMS {
        return;
    }
    let Some(stuck) = unacked.batches.pop_front() else {
        return;
    };
    tracing::warn!(
        records = stuck.batch.records.len(),
        "giving up on a batch no replayer would acknowledge"
    );
    metrics
        .dropped(DropReason::Unacknowledged)
        .inc_by(stuck.batch.records.len() as u64);
    metrics
        .response_dropped(DropReason::Unacknowledged)
        .inc_by(stuck.batch.responses.len() as u64);
}

async fn run_stream(
    config: &LinkConfig,
    instance: u64,
    records: &mut mpsc::Receiver<QueuedRecord>,
    metrics: &ListenerMetrics,
    unacked: &mut Unacked,
) -> Result<(), LinkError> {
    let channel = config.replayer.connect().await?;
    let (batches, outgoing) = mpsc::channel(config.max_unacked_batches);
    let authorization = config.authorization.clone();
    let add_token = move |mut request: tonic::Request<()>| {
        if let Some(value) = &authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    };
    let mut acks = ReplayClient::with_interceptor(channel, add_token)
        .stream(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    tracing::info!(replayer = %config.replayer.uri(), resending = unacked.batches.len(), "connected to replayer");
    let mut next_sequence: u64 = 0;
    // What the last stream left unacknowledged goes first, renumbered for this stream.
    for waiting in &mut unacked.batches {
        next_sequence += 1;
        waiting.sequence = next_sequence;
        waiting.batch.sequence = next_sequence;
        if batches.send(waiting.batch.clone()).await.is_err() {
            return Err(LinkError::Closed);
        }
    }
    let mut batches = Some(batches);
    loop {
        if batches.is_none() && unacked.batches.is_empty() {
            return Ok(());
        }
        let window_open = unacked.batches.len() < config.max_unacked_batches;
        tokio::select! {
            received = next_batch(records, config.max_batch_records, config.max_batch_bytes),
                if window_open && batches.is_some() =>
            {
                let (Some(sender), Some(records)) = (batches.as_ref(), received) else {
                    // Queue closed: close our side so the replayer finishes its acks.
                    batches = None;
                    continue;
                };
                next_sequence += 1;
                let mut records = records.into_iter();
                let Some(first) = records.next() else {
                    continue;
                };
                let mut permit = first.bytes;
                let mut batch = proto::RecordBatch {
                    sequence: next_sequence,
                    listener_id: config.listener_id.clone(),
                    listener_instance: instance,
                    ..Default::default()
                };
                for (item, bytes) in std::iter::once((first.item, None))
                    .chain(records.map(|queued| (queued.item, Some(queued.bytes))))
                {
                    if let Some(bytes) = bytes {
                        permit.merge(bytes);
                    }
                    match item {
                        Captured::Request(record) => batch.records.push(record.into()),
                        Captured::Response(record) => batch.responses.push(record.into()),
                    }
                }
                // Request bytes are shared, not copied: the kept batch costs pointers.
                unacked.batches.push_back(UnackedBatch {
                    sequence: next_sequence,
                    batch: batch.clone(),
                    failed_streams: 0,
                    _bytes: permit,
                });
                if sender.send(batch).await.is_err() {
                    return Err(LinkError::Closed);
                }
            }
            ack = acks.message() => match ack? {
                Some(ack) => {
                    while let Some(acknowledged) = unacked.batches.front() {
                        if acknowledged.sequence > ack.sequence {
                            break;
                        }
                        metrics.records_sent.inc_by(acknowledged.batch.records.len() as u64);
                        metrics.responses_sent.inc_by(acknowledged.batch.responses.len() as u64);
                        unacked.batches.pop_front();
                        unacked.acknowledged_any = true;
                    }
                }
                None => return Err(LinkError::Closed),
            },
        }
    }
}

/// Waits for one record, then takes whatever else is queued up to the batch limits.
/// `None` once the queue is closed and empty.
async fn next_batch(
    records: &mut mpsc::Receiver<QueuedRecord>,
    max_records: usize,
    max_bytes: usize,
) -> Option<Vec<QueuedRecord>> {
    let first = records.recv().await?;
    let mut bytes = first.item.len();
    let mut batch = vec![first];
    while batch.len() < max_records && bytes < max_bytes {
        let Ok(queued) = records.try_recv() else {
            break;
        };
        bytes += queued.item.len();
        batch.push(queued);
    }
    Some(batch)
}

fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}
