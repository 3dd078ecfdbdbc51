//! A batch: records grouped into one gRPC message, from the moment it is filled until a
//! replayer acknowledges it (or it is spooled, or given up). It keeps its records' claim on the
//! buffer's byte budget all that time, and remembers what the link needs to resend it honestly:
//! its number on the current stream, whether it went out before (a resend may replay its
//! records twice), and how many streams failed on it.

use tapwire_shared::proto;
use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::ListenerMetrics;
use crate::queue::QueuedRecord;
use crate::shard::shard_of;
use crate::sink::Captured;

pub struct PendingBatch {
    batch: proto::RecordBatch,
    bytes_len: usize,
    /// The shard of its first record: where it goes when handed over.
    shard: u32,
    /// Streams that failed, acknowledging nothing, after this batch went out on them as the
    /// oldest unacknowledged one.
    failed_streams: u32,
    /// Sent on some stream before: sending it again may replay its records twice.
    sent_before: bool,
    permit: Option<OwnedSemaphorePermit>,
}

impl PendingBatch {
    /// An empty batch from this listener process.
    pub fn new(listener_id: &str, instance: u64) -> Self {
        PendingBatch::restored(
            proto::RecordBatch {
                listener_id: listener_id.to_owned(),
                listener_instance: instance,
                ..Default::default()
            },
            None,
        )
    }

    /// A batch read back from the spool, holding `permit` for its bytes.
    pub fn restored(mut batch: proto::RecordBatch, permit: Option<OwnedSemaphorePermit>) -> Self {
        let shard = batch
            .records
            .first()
            .and_then(|record| {
                let client = record.client.as_ref()?.socket_addr()?;
                Some(shard_of(client, record.server.as_ref()?.socket_addr()?))
            })
            .unwrap_or(0);
        let bytes_len = batch.records.iter().map(|r| r.request.len()).sum::<usize>()
            + batch
                .responses
                .iter()
                .map(|r| r.response.len())
                .sum::<usize>();
        // Its number on a stream is given when it is sent on one.
        batch.sequence = 0;
        PendingBatch {
            batch,
            bytes_len,
            shard,
            failed_streams: 0,
            sent_before: false,
            permit,
        }
    }

    /// Adds a record and its claim on the byte budget.
    pub fn add(&mut self, queued: QueuedRecord) {
        if self.is_empty() {
            self.shard = queued.shard;
        }
        self.bytes_len += queued.item_len();
        match &mut self.permit {
            Some(permit) => permit.merge(queued.bytes),
            None => self.permit = Some(queued.bytes),
        }
        match queued.item {
            Captured::Request(record) => self.batch.records.push(record.into()),
            Captured::Response(record) => self.batch.responses.push(record.into()),
        }
    }

    /// Requests and responses in it.
    pub fn len(&self) -> usize {
        self.batch.records.len() + self.batch.responses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Message bytes in it.
    pub fn bytes_len(&self) -> usize {
        self.bytes_len
    }

    /// The listener process that built it (one restored from the spool keeps an earlier one's).
    pub fn instance(&self) -> u64 {
        self.batch.listener_instance
    }

    pub fn was_sent(&self) -> bool {
        self.sent_before
    }

    /// Numbers the batch for the stream it is about to be sent on; counts a resend.
    pub fn number(&mut self, sequence: u64, metrics: &ListenerMetrics) {
        if self.sent_before {
            metrics.records_resent.inc_by(self.requests());
        }
        self.sent_before = true;
        self.batch.sequence = sequence;
    }

    /// Its number on the current stream; 0 when it has not gone out on it.
    pub fn sequence(&self) -> u64 {
        self.batch.sequence
    }

    /// The stream it was numbered for has ended.
    pub fn forget_stream(&mut self) {
        self.batch.sequence = 0;
    }

    /// Counts a stream that failed on it without acknowledging anything; returns how many have.
    pub fn count_failed_stream(&mut self) -> u32 {
        self.failed_streams += 1;
        self.failed_streams
    }

    /// The message to send. Message bytes are shared, not copied: a clone costs pointers.
    pub fn wire(&self) -> &proto::RecordBatch {
        &self.batch
    }

    /// The wire batch, releasing its share of the byte budget (it is leaving memory).
    pub fn into_batch(self) -> proto::RecordBatch {
        self.batch
    }

    pub fn requests(&self) -> u64 {
        self.batch.records.len() as u64
    }

    pub fn responses(&self) -> u64 {
        self.batch.responses.len() as u64
    }

    /// The shard of its first record: where it goes when it moves.
    pub fn shard(&self) -> u32 {
        self.shard
    }
}
