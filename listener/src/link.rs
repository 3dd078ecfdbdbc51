//! One link per replayer: a long-lived, batched, acknowledged gRPC stream. Records count as sent
//! when the replayer acknowledges them; unacknowledged batches are kept (within the byte budget)
//! and sent again after a reconnect with jittered exponential backoff. While its replayer is
//! down a link hands what it holds to a live one, so the connections it owned move at once. A
//! replayer drops the copies it has already seen; a record it replayed but had not acknowledged
//! when it died is replayed again by the next one (counted as resent).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use tapwire_shared::proto::{self, replay_client::ReplayClient};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

use crate::metrics::{DropReason, ListenerMetrics};
use crate::transport::{Captured, QueuedRecord, shard_of};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a link that is down offers what it holds to live links.
const HANDOVER_TICK: Duration = Duration::from_millis(50);
/// Records or batches waiting for a link between the router and its stream.
const INPUT_CAPACITY: usize = 1024;
/// A stream that fails this many times in a row while a batch is the oldest unacknowledged one,
/// without acknowledging anything, makes the link give that batch up: a batch no replayer can
/// take must not wedge the link.
const MAX_FAILED_STREAMS: u32 = 3;

/// What every link shares.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// `Bearer <token>` presented to the replayer, marked sensitive so it never shows in logs.
    pub authorization: Option<MetadataValue<Ascii>>,
    pub listener_id: String,
    /// Record ids restart with the process; the instance tells replayers they are new.
    pub instance: u64,
    pub max_batch_records: usize,
    /// A batch closes once its messages reach this many bytes (a single larger one still
    /// travels alone).
    pub max_batch_bytes: usize,
    /// Batches sent but not yet acknowledged; past this a link stops taking new records.
    pub max_unacked_batches: usize,
    /// Gzip batches on the wire.
    pub compress: bool,
}

/// A batch being filled, waiting, or sent and not yet acknowledged. It holds its records' share
/// of the byte budget until it is acknowledged (or given up).
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
    pub fn new(settings: &LinkSettings) -> Self {
        PendingBatch::restored(
            proto::RecordBatch {
                listener_id: settings.listener_id.clone(),
                listener_instance: settings.instance,
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
        // Its sequence on the current stream lives in the wire batch; 0 until sent on one.
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

    /// Adds a record; `true` once the batch is full.
    pub fn add(&mut self, queued: QueuedRecord, settings: &LinkSettings) -> bool {
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
        self.is_full(settings)
    }

    fn is_full(&self, settings: &LinkSettings) -> bool {
        self.batch.records.len() + self.batch.responses.len() >= settings.max_batch_records
            || self.bytes_len >= settings.max_batch_bytes
    }

    fn is_empty(&self) -> bool {
        self.batch.records.is_empty() && self.batch.responses.is_empty()
    }

    /// Whether records may still be added: built by this process (a batch restored from the
    /// spool keeps an earlier process's instance), never sent, not full.
    fn is_open(&self, settings: &LinkSettings) -> bool {
        self.batch.listener_instance == settings.instance
            && !self.sent_before
            && !self.is_full(settings)
    }

    /// Numbers the batch for the stream it is about to be sent on; counts a resend.
    fn number(&mut self, sequence: u64, metrics: &ListenerMetrics) {
        if self.sent_before {
            metrics.records_resent.inc_by(self.requests());
        }
        self.sent_before = true;
        self.batch.sequence = sequence;
    }

    /// The wire batch, releasing its share of the byte budget (it is leaving memory).
    pub fn into_batch(self) -> proto::RecordBatch {
        self.batch
    }

    pub fn requests(&self) -> u64 {
        self.batch.records.len() as u64
    }

    /// The shard of its first record: where it goes when it moves.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn responses(&self) -> u64 {
        self.batch.responses.len() as u64
    }
}

/// What the router hands a link.
pub enum Routed {
    /// Records in capture order, all owned by this link (one channel message for many).
    Records(Vec<QueuedRecord>),
    /// A whole batch: handed over by a link that went down, or restored from the spool.
    Batch(PendingBatch),
}

/// The router's (and the other links') side of one link.
pub struct LinkHandle {
    replayer: String,
    /// The replayer's weight key in rendezvous hashing: a hash of its address, so shards stay
    /// put when other replayers come or go.
    key: u64,
    up: Arc<AtomicBool>,
    input: std::sync::Mutex<Option<mpsc::Sender<Routed>>>,
    done: tokio::sync::Mutex<Option<oneshot::Receiver<Vec<proto::RecordBatch>>>>,
}

impl LinkHandle {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn sender(&self) -> Option<mpsc::Sender<Routed>> {
        self.input
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits for room in the link's input; gives the item back if the link no longer takes any
    /// (retired, or stopped).
    pub async fn send(&self, routed: Routed) -> Result<(), Routed> {
        let Some(sender) = self.sender() else {
            return Err(routed);
        };
        sender.send(routed).await.map_err(|refused| refused.0)
    }

    /// Offers a batch without waiting; gives it back if the link has no room (or stopped).
    fn offer(&self, batch: PendingBatch) -> Option<PendingBatch> {
        let Some(sender) = self.sender() else {
            return Some(batch);
        };
        match sender.try_send(Routed::Batch(batch)) {
            Ok(()) => None,
            Err(
                mpsc::error::TrySendError::Full(Routed::Batch(batch))
                | mpsc::error::TrySendError::Closed(Routed::Batch(batch)),
            ) => Some(batch),
            Err(_) => unreachable!("a batch was offered"),
        }
    }

    /// No more records: the link finishes its acknowledgements and stops.
    pub fn close_input(&self) {
        self.input
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Waits for the link to stop; returns what it still held unacknowledged.
    pub async fn finished(&self) -> Vec<proto::RecordBatch> {
        let Some(done) = self.done.lock().await.take() else {
            return Vec::new();
        };
        done.await.unwrap_or_default()
    }
}

/// The live link owning `shard`: highest random weight among links that are up (`except` one),
/// so when a link goes down only its own shards move, and they come back when it returns.
pub fn owner(
    handles: &[Arc<LinkHandle>],
    shard: u32,
    except: Option<u64>,
) -> Option<&Arc<LinkHandle>> {
    handles
        .iter()
        .filter(|handle| Some(handle.key) != except && handle.is_up())
        .max_by_key(|handle| weight(shard, handle.key))
}

/// The link owning `shard` when every link is up: where records wait while none is.
pub fn home(handles: &[Arc<LinkHandle>], shard: u32) -> Option<&Arc<LinkHandle>> {
    handles
        .iter()
        .max_by_key(|handle| weight(shard, handle.key))
}

fn weight(shard: u32, link: u64) -> u64 {
    // splitmix64 of (shard, link): cheap, well mixed, the same in every process.
    let mut x = (link ^ u64::from(shard).rotate_left(32)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn key_of(replayer: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    replayer.hash(&mut hasher);
    hasher.finish()
}

/// The links in use, shared by the router and by the links themselves (to hand over); replaced
/// when the set of replayers changes.
pub struct LinkSet {
    current: std::sync::RwLock<Arc<[Arc<LinkHandle>]>>,
    /// Every link ever started, retired ones included, for the final collection.
    all: std::sync::Mutex<Vec<Arc<LinkHandle>>>,
    settings: Arc<LinkSettings>,
    metrics: ListenerMetrics,
    stop: watch::Receiver<bool>,
}

impl LinkSet {
    /// Starts one link per endpoint.
    pub fn start(
        endpoints: Vec<Endpoint>,
        settings: Arc<LinkSettings>,
        metrics: ListenerMetrics,
        stop: watch::Receiver<bool>,
    ) -> Arc<LinkSet> {
        let set = Arc::new(LinkSet {
            current: std::sync::RwLock::new(Vec::new().into()),
            all: std::sync::Mutex::new(Vec::new()),
            settings,
            metrics,
            stop,
        });
        set.update(endpoints);
        set
    }

    pub fn current(&self) -> Arc<[Arc<LinkHandle>]> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Starts links for new endpoints and retires the links of endpoints no longer listed:
    /// a retired link finishes what it has in flight, or hands it over, then stops.
    pub fn update(self: &Arc<Self>, endpoints: Vec<Endpoint>) {
        let current = self.current();
        let mut next: Vec<Arc<LinkHandle>> = Vec::new();
        for endpoint in endpoints {
            let replayer = endpoint.uri().to_string();
            if next.iter().any(|handle| handle.replayer == replayer) {
                continue;
            }
            if let Some(kept) = current.iter().find(|handle| handle.replayer == replayer) {
                next.push(Arc::clone(kept));
                continue;
            }
            if !current.is_empty() {
                tracing::info!(%replayer, "replayer added");
            }
            let handle = self.spawn_link(endpoint, replayer);
            self.all
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Arc::clone(&handle));
            next.push(handle);
        }
        let next: Arc<[Arc<LinkHandle>]> = next.into();
        // Published before the retired links stop taking records, so the router re-routes to
        // the new set what a retired link gives back.
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&next);
        for gone in current
            .iter()
            .filter(|old| !next.iter().any(|new| new.replayer == old.replayer))
        {
            tracing::info!(replayer = %gone.replayer, "replayer removed; its connections move");
            gone.up.store(false, Ordering::Relaxed);
            gone.close_input();
        }
    }

    fn spawn_link(self: &Arc<Self>, endpoint: Endpoint, replayer: String) -> Arc<LinkHandle> {
        let (input_sender, input) = mpsc::channel(INPUT_CAPACITY);
        let (done, done_receiver) = oneshot::channel();
        // Up until proven otherwise, so records flow the moment the stream opens.
        let up = Arc::new(AtomicBool::new(true));
        self.metrics.replayer_up(&replayer).set(0);
        let key = key_of(&replayer);
        let link = Link {
            key,
            replayer: replayer.clone(),
            endpoint: endpoint.clone(),
            settings: Arc::clone(&self.settings),
            input,
            input_closed: false,
            stash: None,
            up: Arc::clone(&up),
            metrics: self.metrics.clone(),
            stop: self.stop.clone(),
            done,
            pending: VecDeque::new(),
            acknowledged_any: false,
        };
        tokio::spawn(link.run(Arc::clone(self)));
        Arc::new(LinkHandle {
            replayer,
            key,
            up,
            input: std::sync::Mutex::new(Some(input_sender)),
            done: tokio::sync::Mutex::new(Some(done_receiver)),
        })
    }

    /// Closes every link's input and waits for each to finish its acknowledgements, or its
    /// hand-over, or to be told to stop; returns what they still held.
    pub async fn finish(&self) -> Vec<proto::RecordBatch> {
        let all = self
            .all
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Links that are down first: they hand what they hold to live ones, whose inputs must
        // still be open to take it.
        let (down, up): (Vec<_>, Vec<_>) = all.into_iter().partition(|handle| !handle.is_up());
        let mut left = Vec::new();
        for phase in [down, up] {
            for handle in &phase {
                handle.close_input();
            }
            for handle in &phase {
                left.extend(handle.finished().await);
            }
        }
        left
    }
}

/// A link not yet running.
struct Link {
    key: u64,
    replayer: String,
    endpoint: Endpoint,
    settings: Arc<LinkSettings>,
    input: mpsc::Receiver<Routed>,
    input_closed: bool,
    /// A record or batch taken from the input but not yet batched.
    stash: Option<Routed>,
    up: Arc<AtomicBool>,
    metrics: ListenerMetrics,
    stop: watch::Receiver<bool>,
    done: oneshot::Sender<Vec<proto::RecordBatch>>,
    /// Oldest first: sent and unacknowledged, then handed over or kept while down.
    pending: VecDeque<PendingBatch>,
    acknowledged_any: bool,
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

impl Link {
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.replayer_up(&self.replayer).set(i64::from(up));
    }

    async fn run(mut self, links: Arc<LinkSet>) {
        let mut stop = self.stop.clone();
        let mut backoff = BACKOFF_FIRST;
        loop {
            self.acknowledged_any = false;
            let result = tokio::select! {
                result = self.run_stream() => result,
                () = stopping(&mut stop) => break,
            };
            let Err(error) = result else {
                break;
            };
            self.set_up(false);
            // A replayer going away (connect error, UNAVAILABLE) says nothing about the batch.
            let batch_refused = match &error {
                LinkError::Connect(_) => false,
                LinkError::Stream(status) => status.code() != tonic::Code::Unavailable,
                LinkError::Closed => true,
            };
            if batch_refused && !self.acknowledged_any {
                self.give_up_on_a_stuck_batch();
            }
            for batch in &mut self.pending {
                batch.batch.sequence = 0;
            }
            if self.acknowledged_any {
                backoff = BACKOFF_FIRST;
            }
            let delay = jittered(backoff);
            tracing::warn!(replayer = %self.replayer, %error, retry_in = ?delay,
                unacknowledged_batches = self.pending.len(), "replayer link down");
            let retry_at = Instant::now() + delay;
            // While down: hand what is held to live links, and keep taking what the router
            // still sends until it notices.
            loop {
                self.hand_over(&links.current());
                if self.input_closed && self.pending.is_empty() && self.stash.is_none() {
                    self.finish();
                    return;
                }
                let now = Instant::now();
                if now >= retry_at {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(retry_at.min(now + HANDOVER_TICK)) => {}
                    routed = self.input.recv(), if !self.input_closed => match routed {
                        Some(routed) => self.keep(routed),
                        None => self.input_closed = true,
                    },
                    () = stopping(&mut stop) => {
                        self.finish();
                        return;
                    }
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.finish();
    }

    /// Reports what was never acknowledged (to be spooled or counted by the caller).
    fn finish(mut self) {
        self.set_up(false);
        if let Some(stashed) = self.stash.take() {
            self.keep(stashed);
        }
        // What the router already handed over is reported too, not dropped with the channel.
        self.input.close();
        while let Ok(routed) = self.input.try_recv() {
            self.keep(routed);
        }
        let left: Vec<_> = self
            .pending
            .drain(..)
            .map(PendingBatch::into_batch)
            .collect();
        let _ = self.done.send(left);
    }

    /// Takes records or a batch while down.
    fn keep(&mut self, routed: Routed) {
        let records = match routed {
            Routed::Batch(batch) => return self.pending.push_back(batch),
            Routed::Records(records) => records,
        };
        let settings = Arc::clone(&self.settings);
        for record in records {
            match self.pending.back_mut() {
                Some(last) if last.is_open(&settings) => {
                    last.add(record, &settings);
                }
                _ => {
                    let mut batch = PendingBatch::new(&settings);
                    batch.add(record, &settings);
                    self.pending.push_back(batch);
                }
            }
        }
    }

    /// Offers the held batches, oldest first, to the live links now owning their shards.
    fn hand_over(&mut self, handles: &[Arc<LinkHandle>]) {
        while let Some(batch) = self.pending.pop_front() {
            let Some(owner) = owner(handles, batch.shard, Some(self.key)) else {
                self.pending.push_front(batch);
                return;
            };
            let (requests, responses) = (batch.requests(), batch.responses());
            if let Some(refused) = owner.offer(batch) {
                self.pending.push_front(refused);
                return;
            }
            self.metrics.records_rerouted.inc_by(requests + responses);
        }
    }

    fn give_up_on_a_stuck_batch(&mut self) {
        // Only a batch that went out on the failed stream (a refused stream open sent nothing).
        let Some(oldest) = self
            .pending
            .front_mut()
            .filter(|batch| batch.batch.sequence != 0)
        else {
            return;
        };
        oldest.failed_streams += 1;
        if oldest.failed_streams < MAX_FAILED_STREAMS {
            return;
        }
        let Some(stuck) = self.pending.pop_front() else {
            return;
        };
        tracing::warn!(
            records = stuck.requests(),
            "giving up on a batch no replayer would acknowledge"
        );
        self.metrics
            .dropped(DropReason::Unacknowledged)
            .inc_by(stuck.requests());
        self.metrics
            .response_dropped(DropReason::Unacknowledged)
            .inc_by(stuck.responses());
    }

    /// The next record or batch from the router; `None` once the input is closed.
    async fn next_routed(&mut self) -> Option<Routed> {
        if let Some(stashed) = self.stash.take() {
            return Some(stashed);
        }
        self.input.recv().await
    }

    async fn run_stream(&mut self) -> Result<(), LinkError> {
        let channel = self.endpoint.connect().await?;
        let (batches, outgoing) = mpsc::channel(self.settings.max_unacked_batches);
        let authorization = self.settings.authorization.clone();
        let add_token = move |mut request: tonic::Request<()>| {
            if let Some(value) = &authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            Ok(request)
        };
        let mut client = ReplayClient::with_interceptor(channel, add_token);
        if self.settings.compress {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let mut acks = client
            .stream(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        self.set_up(true);
        tracing::info!(replayer = %self.replayer, resending = self.pending.len(), "connected to replayer");
        let mut next_sequence: u64 = 0;
        // What the last stream left unacknowledged (or what was handed over) goes first,
        // numbered for this stream.
        for waiting in &mut self.pending {
            next_sequence += 1;
            waiting.number(next_sequence, &self.metrics);
            if batches.send(waiting.batch.clone()).await.is_err() {
                return Err(LinkError::Closed);
            }
        }
        let mut batches = Some(batches);
        loop {
            if self.input_closed && batches.is_some() && self.stash.is_none() {
                // Close our side so the replayer finishes its acks.
                batches = None;
            }
            if batches.is_none() && self.pending.is_empty() {
                return Ok(());
            }
            let window_open = self.pending.len() < self.settings.max_unacked_batches;
            tokio::select! {
                routed = self.next_routed(), if window_open && batches.is_some() => {
                    let Some(routed) = routed else {
                        self.input_closed = true;
                        continue;
                    };
                    let mut batch = match routed {
                        Routed::Batch(batch) => batch,
                        Routed::Records(records) => self.fill_batch(records),
                    };
                    next_sequence += 1;
                    batch.number(next_sequence, &self.metrics);
                    // Message bytes are shared, not copied: the kept batch costs pointers.
                    let wire = batch.batch.clone();
                    self.pending.push_back(batch);
                    if let Some(sender) = &batches
                        && sender.send(wire).await.is_err()
                    {
                        return Err(LinkError::Closed);
                    }
                }
                ack = acks.message() => match ack? {
                    Some(ack) => self.acknowledge(ack.sequence),
                    None => return Err(LinkError::Closed),
                },
            }
        }
    }

    /// A batch of `records` and whatever records are waiting right behind them; what does not
    /// fit waits for the next batch.
    fn fill_batch(&mut self, records: Vec<QueuedRecord>) -> PendingBatch {
        let settings = Arc::clone(&self.settings);
        let mut batch = PendingBatch::new(&settings);
        let mut records = records.into_iter();
        loop {
            while let Some(record) = records.next() {
                if batch.add(record, &settings) {
                    let rest: Vec<_> = records.collect();
                    if !rest.is_empty() {
                        self.stash = Some(Routed::Records(rest));
                    }
                    return batch;
                }
            }
            match self.input.try_recv() {
                Ok(Routed::Records(more)) => records = more.into_iter(),
                Ok(handed_over @ Routed::Batch(_)) => {
                    self.stash = Some(handed_over);
                    return batch;
                }
                Err(_) => return batch,
            }
        }
    }

    fn acknowledge(&mut self, sequence: u64) {
        while let Some(acknowledged) = self.pending.front() {
            let sent_as = acknowledged.batch.sequence;
            if sent_as == 0 || sent_as > sequence {
                break;
            }
            self.metrics.records_sent.inc_by(acknowledged.requests());
            self.metrics.responses_sent.inc_by(acknowledged.responses());
            self.pending.pop_front();
            self.acknowledged_any = true;
        }
    }
}

async fn stopping(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: nobody can ask to stop any more.
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}
