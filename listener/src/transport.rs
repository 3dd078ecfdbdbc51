//! From capture to the replayers. The capture thread fills a bounded [`RecordQueue`] without
//! ever blocking: when the byte or record budget is full it drops the newest record or evicts
//! the oldest still queued (the `--buffer-policy`), and counts it. [`stream_to_replayers`]
//! routes each record by its client connection (a hash of the 4-tuple, so one connection's
//! requests stay on one replayer) to one [`link`](crate::link) per replayer, and while no
//! replayer is up, spills to the disk [`spool`](crate::spool) when one is configured.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tapwire_shared::{RequestRecord, ResponseRecord};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
pub use tonic::metadata::{Ascii, MetadataValue};

use crate::link::{self, LinkHandle, LinkSet, LinkSettings, PendingBatch, Routed};
use crate::metrics::{DropReason, ListenerMetrics};
use crate::replayers::ReplayerSet;
use crate::spool::Spool;

/// Client connections are grouped into this many shards; a replayer owns whole shards.
pub const SHARDS: u32 = 256;

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

/// The shard of a client connection; a request and its response land in the same one.
pub fn shard_of(client: SocketAddr, server: SocketAddr) -> u32 {
    // SipHash with fixed keys: the same connection maps to the same shard in every process.
    let mut hasher = std::hash::DefaultHasher::new();
    (client, server).hash(&mut hasher);
    (hasher.finish() % u64::from(SHARDS)) as u32
}

/// What to do when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
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
    redaction: tapwire_shared::redact::Redaction,
}

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
            redaction: tapwire_shared::redact::Redaction::default(),
        },
        QueueReceiver { shared },
    )
}

impl RecordQueue {
    /// Apply this redaction to every request and response before it is queued.
    pub fn redacting(mut self, redaction: tapwire_shared::redact::Redaction) -> Self {
        self.redaction = redaction;
        self
    }

    pub fn with_policy(mut self, policy: BufferPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn push_request(&self, mut record: RequestRecord) {
        let Some(redacted) = self.redact(&record.request) else {
            self.metrics.dropped(DropReason::Unredactable).inc();
            return;
        };
        record.request = redacted;
        let shard = shard_of(record.client, record.server);
        if !self.push(Captured::Request(record), shard) {
            self.metrics.dropped(DropReason::QueueFull).inc();
        }
    }

    /// `client` and `server` are the connection's, so the response follows its request.
    pub fn push_response(
        &self,
        mut record: ResponseRecord,
        client: SocketAddr,
        server: SocketAddr,
    ) {
        let Some(redacted) = self.redact(&record.response) else {
            self.metrics
                .response_dropped(DropReason::Unredactable)
                .inc();
            return;
        };
        record.response = redacted;
        if !self.push(Captured::Response(record), shard_of(client, server)) {
            self.metrics.response_dropped(DropReason::QueueFull).inc();
        }
    }

    /// The message with secrets redacted; `None` if it cannot be parsed (it is then not sent at
    /// all rather than sent unredacted).
    fn redact(&self, message: &bytes::Bytes) -> Option<bytes::Bytes> {
        self.redaction.apply(message).ok()
    }

    /// Never blocks: capture must keep pace with production, so a full queue refuses (or
    /// evicts, by policy).
    fn push(&self, item: Captured, shard: u32) -> bool {
        let size = u32::try_from(item.len()).unwrap_or(u32::MAX);
        let mut state = self.shared.lock();
        loop {
            let fits = state.records.len() < self.shared.max_records;
            if fits && let Ok(bytes) = Arc::clone(&self.shared.bytes).try_acquire_many_owned(size) {
                state.queued_bytes += item.len();
                state.records.push_back(QueuedRecord { item, shard, bytes });
                drop(state);
                self.shared.arrived.notify_one();
                return true;
            }
            // Evicting frees the oldest records' bytes, but not what is in flight: evict only
            // when that can make room.
            let room = self.shared.bytes.available_permits() + state.queued_bytes;
            if self.policy == BufferPolicy::DropNewest || (size as usize) > room {
                return false;
            }
            let Some(oldest) = state.pop() else {
                return false;
            };
            match oldest.item {
                Captured::Request(_) => self.metrics.dropped(DropReason::Evicted).inc(),
                Captured::Response(_) => self.metrics.response_dropped(DropReason::Evicted).inc(),
            };
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

    fn is_empty(&self) -> bool {
        self.shared.lock().records.is_empty()
    }

    /// The byte budget, for batches restored from the spool.
    fn bytes(&self) -> Arc<Semaphore> {
        Arc::clone(&self.shared.bytes)
    }

    /// The most a restored batch may reserve: half the budget, so one batch larger than the
    /// whole budget cannot wait for it forever.
    fn restore_reservation(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.shared.max_bytes / 2)).unwrap_or(u32::MAX)
    }
}

/// How the links batch, pace and protect records.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub replayers: ReplayerSet,
    pub settings: LinkSettings,
}

/// Records routed in one go once the router is awake.
const ROUTE_BURST: usize = 256;

/// How often the router looks again at which replayers are up, flushes a partly filled spill
/// batch and resumes reading the spool, when no record arrives to make it look.
const ROUTER_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Routes every queued record to the replayer owning its shard until the queue is closed and
/// every link is done (fully acknowledged, or told to stop). While no replayer is up and a
/// spool is configured, records go to disk and come back once one is up; after a stop, what
/// the links still hold goes there too. Returns the spool for the final accounting.
pub async fn stream_to_replayers(
    config: LinkConfig,
    mut records: QueueReceiver,
    mut spool: Option<Spool>,
    metrics: ListenerMetrics,
    stop: watch::Receiver<bool>,
) -> Option<Spool> {
    let settings = Arc::new(config.settings);
    let resolved = match config.replayers.resolve(&[]) {
        Ok(resolved) => resolved,
        Err(error) => {
            tracing::error!(%error, "cannot set up the replayer endpoints");
            return spool;
        }
    };
    let links = LinkSet::start(
        resolved.concat(),
        Arc::clone(&settings),
        metrics.clone(),
        stop.clone(),
    );
    let resolver = config.replayers.has_names().then(|| {
        tokio::spawn(follow_replayer_names(
            config.replayers.clone(),
            Arc::clone(&links),
            resolved,
        ))
    });
    let budget = records.bytes();
    let mut spill: Option<PendingBatch> = None;
    let mut tick = tokio::time::interval(ROUTER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = *stop.borrow();
        let handles = links.current();
        let any_up = handles.iter().any(|handle| handle.is_up());
        let spooling = spool.is_some() && (stopping || !any_up);
        let restore_len = spool
            .as_ref()
            .filter(|_| !spooling)
            .and_then(Spool::next_len);
        let reservation = records.restore_reservation(restore_len.unwrap_or(0));
        tokio::select! {
            biased;
            queued = records.recv() => {
                let Some(queued) = queued else { break };
                match spool.as_mut() {
                    Some(spool) if spooling => {
                        let batch = spill.get_or_insert_with(|| PendingBatch::new(&settings));
                        if batch.add(queued, &settings) && let Some(full) = spill.take() {
                            spool.write(full.into_batch());
                        }
                    }
                    // Stopping without a spool: what is left is counted as dropped{shutdown}.
                    _ if stopping => drop(queued),
                    _ => {
                        // Whatever else is waiting goes along: one message per link.
                        let mut burst = Vec::with_capacity(ROUTE_BURST);
                        burst.push(queued);
                        while burst.len() < ROUTE_BURST {
                            let Some(next) = records.try_recv() else { break };
                            burst.push(next);
                        }
                        route(&links, Routed::Records(burst)).await;
                    }
                }
            }
            permit = Arc::clone(&budget).acquire_many_owned(
                reservation), if restore_len.is_some() =>
            {
                let restored = spool.as_mut().and_then(Spool::pop_oldest);
                if let (Ok(permit), Some(batch)) = (permit, restored) {
                    route(&links, Routed::Batch(PendingBatch::restored(batch, Some(permit)))).await;
                }
            }
            _ = tick.tick() => {}
        }
        // A partly filled spill batch leaves as soon as nothing more is waiting for it.
        if let Some(batch) = spill.take() {
            let nothing_waiting = records.is_empty();
            match spool.as_mut() {
                Some(spool) if spooling && nothing_waiting => spool.write(batch.into_batch()),
                Some(_) if spooling => spill = Some(batch),
                _ => route(&links, Routed::Batch(batch)).await,
            }
        }
    }
    if let (Some(spool), Some(batch)) = (spool.as_mut(), spill.take()) {
        spool.write(batch.into_batch());
    }
    if let Some(resolver) = resolver {
        resolver.abort();
    }
    // Closing every link's input lets each finish its acknowledgements and report the rest.
    let left = links.finish().await;
    if let Some(spool) = spool.as_mut() {
        for batch in left {
            spool.write(batch);
        }
    }
    spool
}

/// The live replayer owning `shard`; with none up, the shard's usual owner, which keeps what
/// it gets until its replayer returns.
fn owner_of(handles: &[Arc<LinkHandle>], shard: u32) -> Option<&Arc<LinkHandle>> {
    link::owner(handles, shard, None).or_else(|| link::home(handles, shard))
}

/// Hands records, or a batch, to the links owning their shards, in capture order per link. A
/// link that no longer takes any (retired meanwhile, or stopped) gives them back and they go
/// to the current set instead; at shutdown, with no link taking anything, they stay counted as
/// buffered and end as dropped{shutdown}.
async fn route(links: &LinkSet, routed: Routed) {
    let mut waiting = vec![routed];
    for _ in 0..ROUTE_ATTEMPTS {
        let handles = links.current();
        let mut refused = Vec::new();
        for routed in waiting {
            for (link, part) in split_by_owner(&handles, routed) {
                if let Err(back) = link.send(part).await {
                    refused.push(back);
                }
            }
        }
        if refused.is_empty() {
            return;
        }
        waiting = refused;
    }
}

/// Records grouped by the link owning their shard (a batch goes whole, by its first record).
fn split_by_owner(handles: &[Arc<LinkHandle>], routed: Routed) -> Vec<(&Arc<LinkHandle>, Routed)> {
    let records = match routed {
        Routed::Batch(batch) => {
            return owner_of(handles, batch.shard())
                .map(|link| (link, Routed::Batch(batch)))
                .into_iter()
                .collect();
        }
        Routed::Records(records) => records,
    };
    if let [only] = handles {
        return vec![(only, Routed::Records(records))];
    }
    let mut by_link: Vec<(&Arc<LinkHandle>, Vec<QueuedRecord>)> = Vec::new();
    for record in records {
        let Some(owner) = owner_of(handles, record.shard) else {
            continue;
        };
        match by_link
            .iter_mut()
            .find(|(link, _)| Arc::ptr_eq(link, owner))
        {
            Some((_, records)) => records.push(record),
            None => by_link.push((owner, vec![record])),
        }
    }
    by_link
        .into_iter()
        .map(|(link, records)| (link, Routed::Records(records)))
        .collect()
}

/// Times a refused hand-over is routed again before it is left to the shutdown accounting.
const ROUTE_ATTEMPTS: usize = 3;

/// How often replayer names are resolved again.
const RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves the replayer names again and again, and starts or retires links as addresses
/// appear or disappear (a headless Service's pods being rescheduled).
async fn follow_replayer_names(
    replayers: ReplayerSet,
    links: Arc<LinkSet>,
    mut resolved: Vec<Vec<tonic::transport::Endpoint>>,
) {
    loop {
        tokio::time::sleep(RESOLVE_INTERVAL).await;
        let (set, previous) = (replayers.clone(), resolved.clone());
        // The system resolver blocks.
        match tokio::task::spawn_blocking(move || set.resolve(&previous)).await {
            Ok(Ok(fresh)) => {
                links.update(fresh.concat());
                resolved = fresh;
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot set up a resolved replayer"),
            Err(_) => {}
        }
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

    #[test]
    fn a_request_and_its_response_share_a_shard() {
        let (client, server) = (
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        assert_eq!(shard_of(client, server), shard_of(client, server));
        let spread: std::collections::HashSet<u32> = (0..1000)
            .map(|port| shard_of(SocketAddr::from(([10, 0, 0, 1], 30_000 + port)), server))
            .collect();
        assert!(
            spread.len() > SHARDS as usize / 2,
            "{} shards used",
            spread.len()
        );
    }
}
