//! The buffer between capture and the replayer links: a queue bounded both in records and in
//! message bytes. The capture thread fills it without ever waiting: when a budget is full the
//! newest record is refused or the oldest still queued evicted (the `--buffer-policy`), and
//! counted. The byte budget stays claimed while a record is batched, in flight and not yet
//! acknowledged, so what waits in gRPC buffers counts as much as what waits here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tapwire_shared::RequestRecord;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::{DropReason, ListenerMetrics};
use crate::shard::shard_of;
use crate::sink::{Captured, RecordSink};

/// What to do when the buffer is full.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BufferPolicy {
    /// Refuse the new record (counted as `queue_full`).
    #[default]
    DropNewest,
    /// Make room by evicting the oldest records not yet sent (counted as `evicted`).
    DropOldest,
}

/// A queued record and its claim on the byte budget, held until the replayer acknowledges it:
/// bytes waiting in gRPC buffers count as much as bytes waiting in the queue.
pub struct QueuedRecord {
    pub(crate) item: Captured,
    pub(crate) shard: u32,
    pub(crate) bytes: OwnedSemaphorePermit,
}

impl QueuedRecord {
    pub fn into_item(self) -> Captured {
        self.item
    }

    pub(crate) fn item_len(&self) -> usize {
        self.item.len()
    }

    /// The shard of its client connection.
    pub fn shard(&self) -> u32 {
        self.shard
    }
}

struct QueueState {
    records: VecDeque<QueuedRecord>,
    /// Message bytes of `records`: what evicting all of them would free.
    queued_bytes: usize,
    senders_gone: bool,
}

impl QueueState {
    fn pop(&mut self) -> Option<QueuedRecord> {
        let record = self.records.pop_front()?;
        self.queued_bytes -= record.item_len();
        Some(record)
    }
}

struct SharedQueue {
    state: Mutex<QueueState>,
    arrived: Notify,
    max_records: usize,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

impl SharedQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves plain data behind; keep going with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The sending half, owned by the capture thread.
pub struct RecordQueue {
    shared: Arc<SharedQueue>,
    policy: BufferPolicy,
    metrics: ListenerMetrics,
    /// Records queued since the receiver was last woken.
    unannounced: AtomicUsize,
    /// Wake the receiver when this many wait unannounced, whether or not the capture thread
    /// flushed: a long burst must not fill the queue before the receiver starts draining it.
    announce_after: usize,
}

/// At most this many records wait for a flush before the receiver is woken anyway.
const MAX_UNANNOUNCED_RECORDS: usize = 1024;

/// The receiving half: records in capture order.
pub struct QueueReceiver {
    shared: Arc<SharedQueue>,
}

/// A queue between capture and the links, bounded both in records and in bytes. The byte
/// budget also covers batches sent and not yet acknowledged.
pub fn record_queue(
    max_records: usize,
    max_bytes: usize,
    metrics: ListenerMetrics,
) -> (RecordQueue, QueueReceiver) {
    let shared = Arc::new(SharedQueue {
        state: Mutex::new(QueueState {
            records: VecDeque::new(),
            queued_bytes: 0,
            senders_gone: false,
        }),
        arrived: Notify::new(),
        max_records,
        bytes: Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS))),
        max_bytes: max_bytes.min(Semaphore::MAX_PERMITS),
    });
    (
        RecordQueue {
            shared: Arc::clone(&shared),
            policy: BufferPolicy::DropNewest,
            metrics,
            unannounced: AtomicUsize::new(0),
            announce_after: (max_records / 4).clamp(1, MAX_UNANNOUNCED_RECORDS),
        },
        QueueReceiver { shared },
    )
}

impl RecordQueue {
    pub fn with_policy(mut self, policy: BufferPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Queues a request as it is (its shard taken from its addresses) and wakes the receiver,
    /// or counts it as dropped. Nothing is redacted here: the [record stage](crate::record)
    /// redacts before it hands records over. For tests and benchmarks that feed the queue
    /// directly.
    pub fn push_request(&self, record: RequestRecord) {
        let shard = shard_of(record.client, record.server);
        self.take(Captured::Request(record), shard);
        self.flush();
    }

    /// Never blocks: capture must keep pace with production, so a full queue refuses (or
    /// evicts, by policy).
    fn push(&self, item: Captured, shard: u32) -> Result<(), Captured> {
        let size = u32::try_from(item.len()).unwrap_or(u32::MAX);
        let mut state = self.shared.lock();
        loop {
            let fits = state.records.len() < self.shared.max_records;
            if fits && let Ok(bytes) = Arc::clone(&self.shared.bytes).try_acquire_many_owned(size) {
                state.queued_bytes += item.len();
                state.records.push_back(QueuedRecord { item, shard, bytes });
                drop(state);
                if self.unannounced.fetch_add(1, Ordering::Relaxed) + 1 >= self.announce_after {
                    self.flush();
                }
                return Ok(());
            }
            // Evicting frees the oldest records' bytes, but not what is in flight: evict only
            // when that can make room.
            let room = self.shared.bytes.available_permits() + state.queued_bytes;
            if self.policy == BufferPolicy::DropNewest || (size as usize) > room {
                return Err(item);
            }
            let Some(oldest) = state.pop() else {
                return Err(item);
            };
            self.count_dropped(&oldest.item, DropReason::Evicted);
        }
    }

    fn count_dropped(&self, item: &Captured, reason: DropReason) {
        match item {
            Captured::Request(_) => self.metrics.dropped(reason).inc(),
            Captured::Response(_) => self.metrics.response_dropped(reason).inc(),
        };
    }
}

impl RecordSink for RecordQueue {
    fn take(&self, record: Captured, shard: u32) {
        if let Err(refused) = self.push(record, shard) {
            self.count_dropped(&refused, DropReason::QueueFull);
        }
    }

    fn flush(&self) {
        if self.unannounced.swap(0, Ordering::Relaxed) > 0 {
            self.shared.arrived.notify_one();
        }
    }
}

impl Drop for RecordQueue {
    fn drop(&mut self) {
        self.shared.lock().senders_gone = true;
        self.shared.arrived.notify_one();
    }
}

impl QueueReceiver {
    /// The oldest record; `None` once the capture side is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<QueuedRecord> {
        loop {
            let arrived = self.shared.arrived.notified();
            {
                let mut state = self.shared.lock();
                if let Some(record) = state.pop() {
                    return Some(record);
                }
                if state.senders_gone {
                    return None;
                }
            }
            arrived.await;
        }
    }

    pub fn try_recv(&mut self) -> Option<QueuedRecord> {
        self.shared.lock().pop()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.lock().records.is_empty()
    }

    /// The byte budget, for batches restored from the spool.
    pub fn bytes(&self) -> Arc<Semaphore> {
        Arc::clone(&self.shared.bytes)
    }

    /// The most a restored batch may reserve: half the budget, so one batch larger than the
    /// whole budget cannot wait for it forever.
    pub fn restore_reservation(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.shared.max_bytes / 2)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn request(id: u64) -> RequestRecord {
        RequestRecord {
            id,
            captured_at_ns: id,
            client: "10.0.0.1:4000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
            request: bytes::Bytes::from(format!("GET /{id:04} HTTP/1.1\r\n\r\n")),
        }
    }

    fn ids(receiver: &mut QueueReceiver) -> Vec<u64> {
        std::iter::from_fn(|| receiver.try_recv())
            .map(|queued| match queued.into_item() {
                Captured::Request(record) => record.id,
                Captured::Response(_) => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_full_buffer_drops_the_newest_or_evicts_the_oldest_by_policy() {
        let size = request(0).request.len();
        for (policy, kept, reason) in [
            (BufferPolicy::DropNewest, 0..5, DropReason::QueueFull),
            (BufferPolicy::DropOldest, 5..10, DropReason::Evicted),
        ] {
            let metrics = ListenerMetrics::register(&mut Registry::default());
            let (queue, mut receiver) = record_queue(100, size * 5, metrics.clone());
            let queue = queue.with_policy(policy);
            for id in 0..10 {
                queue.push_request(request(id));
            }
            assert_eq!(ids(&mut receiver), kept.collect::<Vec<_>>(), "{policy:?}");
            assert_eq!(metrics.dropped(reason).get(), 5, "{policy:?}");
        }
    }

    /// Whether the receiver has been woken since this was last asked (consumes the wakeup).
    fn woken(receiver: &QueueReceiver) -> bool {
        use std::future::Future;
        use std::task::{Context, Waker};
        let notified = std::pin::pin!(receiver.shared.arrived.notified());
        notified
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn the_receiver_is_woken_on_flush_or_once_a_quarter_of_the_queue_waits() {
        let metrics = ListenerMetrics::register(&mut Registry::default());
        let (queue, receiver) = record_queue(8, 1 << 20, metrics);
        let take = |id| queue.take(Captured::Request(request(id)), 0);
        take(0);
        assert!(!woken(&receiver), "one record waits for the flush");
        take(1);
        assert!(
            woken(&receiver),
            "two of eight records wake the receiver anyway"
        );
        take(2);
        assert!(!woken(&receiver));
        queue.flush();
        assert!(woken(&receiver), "a flush announces what waits");
        queue.flush();
        assert!(!woken(&receiver), "nothing new, no wakeup");
    }

    #[test]
    fn drop_oldest_evicts_nothing_for_a_record_that_could_never_fit() {
        let size = request(0).request.len();
        let metrics = ListenerMetrics::register(&mut Registry::default());
        let (queue, mut receiver) = record_queue(100, size * 5, metrics.clone());
        let queue = queue.with_policy(BufferPolicy::DropOldest);
        for id in 0..3 {
            queue.push_request(request(id));
        }
        let mut huge = request(99);
        huge.request = bytes::Bytes::from(vec![b'x'; size * 6]);
        queue.push_request(huge);
        assert_eq!(ids(&mut receiver), vec![0, 1, 2], "nothing evicted for it");
        assert_eq!(metrics.dropped(DropReason::Evicted).get(), 0);
        assert_eq!(metrics.dropped(DropReason::QueueFull).get(), 1);
    }
}
