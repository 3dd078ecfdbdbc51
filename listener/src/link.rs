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
use tapwire_runtime::Shutdown;
use tapwire_runtime::health::{Condition, Hold};
use tapwire_shared::proto::{self, replay_client::ReplayClient};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

use crate::batch::PendingBatch;
use crate::link_failure::{FailureLine, FailureLog, LinkError};
use crate::metrics::{DropReason, ListenerMetrics};
use crate::queue::QueuedRecord;
use crate::shard::{replayer_key, weight};

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

impl LinkSettings {
    /// An empty batch of this listener process.
    pub fn new_batch(&self) -> PendingBatch {
        PendingBatch::new(&self.listener_id, self.instance)
    }

    pub fn is_full(&self, batch: &PendingBatch) -> bool {
        batch.len() >= self.max_batch_records || batch.bytes_len() >= self.max_batch_bytes
    }

    /// Whether records may still join `batch`: built by this process (a batch restored from
    /// the spool keeps an earlier process's instance), never sent, not full.
    fn is_open(&self, batch: &PendingBatch) -> bool {
        batch.instance() == self.instance && !batch.was_sent() && !self.is_full(batch)
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
    /// The replayer's key in rendezvous hashing.
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

/// The links in use, shared by the router and by the links themselves (to hand over); replaced
/// when the set of replayers changes.
pub struct LinkSet {
    current: std::sync::RwLock<Arc<[Arc<LinkHandle>]>>,
    /// Every link ever started, retired ones included, for the final collection.
    all: std::sync::Mutex<Vec<Arc<LinkHandle>>>,
    settings: Arc<LinkSettings>,
    metrics: ListenerMetrics,
    /// Held by every link while its stream is open (readiness: a replayer link is up).
    output_ready: Condition,
    stop: Shutdown,
}

impl LinkSet {
    /// Starts one link per endpoint.
    pub fn start(
        endpoints: Vec<Endpoint>,
        settings: Arc<LinkSettings>,
        metrics: ListenerMetrics,
        output_ready: Condition,
        stop: Shutdown,
    ) -> Arc<LinkSet> {
        let set = Arc::new(LinkSet {
            current: std::sync::RwLock::new(Vec::new().into()),
            all: std::sync::Mutex::new(Vec::new()),
            settings,
            metrics,
            output_ready,
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
        let key = replayer_key(&replayer);
        let link = Link {
            key,
            replayer: replayer.clone(),
            endpoint: endpoint.clone(),
            settings: Arc::clone(&self.settings),
            input,
            input_closed: false,
            stash: None,
            up: Arc::clone(&up),
            output_ready: self.output_ready.clone(),
            holds_up: None,
            metrics: self.metrics.clone(),
            stop: self.stop.clone(),
            done,
            pending: VecDeque::new(),
            acknowledged_any: false,
            failures: FailureLog::default(),
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
    output_ready: Condition,
    /// This link's part in `output_ready`, while its stream is open.
    holds_up: Option<Hold>,
    metrics: ListenerMetrics,
    stop: Shutdown,
    done: oneshot::Sender<Vec<proto::RecordBatch>>,
    /// Oldest first: sent and unacknowledged, then handed over or kept while down.
    pending: VecDeque<PendingBatch>,
    acknowledged_any: bool,
    failures: FailureLog,
}

/// Reconnection delays: exponential from [`BACKOFF_FIRST`] to [`BACKOFF_MAX`], jittered so
/// that a fleet of listeners does not reconnect in step; back to the first once a stream made
/// progress.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    fn delay(&mut self, stream_made_progress: bool) -> Duration {
        if stream_made_progress {
            self.next = BACKOFF_FIRST;
        }
        let delay = self.next.mul_f64(rand::rng().random_range(0.5..1.5));
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

/// How a period without a stream ended.
enum Outage {
    /// Time to try connecting again.
    Retry,
    /// Nothing left to send and no more coming, or told to stop.
    Over,
}

/// The sending side of one open stream.
struct OpenStream {
    /// `None` once our side is closed (no more input): the replayer then finishes its acks.
    batches: Option<mpsc::Sender<proto::RecordBatch>>,
    next_sequence: u64,
}

impl OpenStream {
    /// Numbers `batch` for this stream and sends a copy (message bytes are shared, not
    /// copied). The batch itself stays with the caller, in its pending list, all the while.
    async fn send(
        &mut self,
        batch: &mut PendingBatch,
        metrics: &ListenerMetrics,
    ) -> Result<(), LinkError> {
        self.next_sequence += 1;
        batch.number(self.next_sequence, metrics);
        let wire = batch.wire().clone();
        match &self.batches {
            Some(sender) => sender.send(wire).await.map_err(|_| LinkError::Closed),
            None => Err(LinkError::Closed),
        }
    }
}

impl Link {
    fn set_up(&mut self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        if up {
            self.holds_up
                .get_or_insert_with(|| self.output_ready.hold());
        } else {
            self.holds_up = None;
        }
        self.metrics.replayer_up(&self.replayer).set(i64::from(up));
    }

    /// Streams until the input is closed and everything is acknowledged (or handed over), or
    /// until told to stop; reconnects after every failure.
    async fn run(mut self, links: Arc<LinkSet>) {
        let stop = self.stop.clone();
        let mut backoff = Backoff::new();
        loop {
            self.acknowledged_any = false;
            let result = tokio::select! {
                result = self.run_stream() => result,
                () = stop.requested() => break,
            };
            let Err(error) = result else {
                break;
            };
            let retry_in = self.after_failure(&error, &mut backoff);
            self.log_failure(&error, retry_in);
            match self.while_down(Instant::now() + retry_in, &links).await {
                Outage::Retry => {}
                Outage::Over => break,
            }
        }
        self.finish();
    }

    /// Marks the link down and settles the failed stream's batches; returns when to retry.
    fn after_failure(&mut self, error: &LinkError, backoff: &mut Backoff) -> Duration {
        self.set_up(false);
        if error.refused_the_batch() && !self.acknowledged_any {
            self.give_up_on_a_stuck_batch();
        }
        for batch in &mut self.pending {
            batch.forget_stream();
        }
        backoff.delay(self.acknowledged_any)
    }

    /// Logs a failure: the first of an outage and each new cause at once, a repeated one at
    /// most every [`FAILURE_LOG_INTERVAL`](crate::link_failure::FAILURE_LOG_INTERVAL).
    fn log_failure(&mut self, error: &LinkError, retry_in: Duration) {
        let replayer = &self.replayer;
        let unacknowledged_batches = self.pending.len();
        match self.failures.failed(&error.to_string(), Instant::now()) {
            Some(FailureLine::Down) => tracing::warn!(%replayer, %error, ?retry_in,
                unacknowledged_batches, "replayer link down"),
            Some(FailureLine::StillDown { unlogged_failures }) => tracing::warn!(%replayer,
                %error, failed_attempts = unlogged_failures + 1, unacknowledged_batches,
                "replayer link still down"),
            None => {}
        }
    }

    /// Until `retry_at`: hands what is held to live links, and keeps taking what the router
    /// still sends until it notices.
    async fn while_down(&mut self, retry_at: Instant, links: &LinkSet) -> Outage {
        loop {
            self.hand_over(&links.current());
            if self.input_closed && self.pending.is_empty() && self.stash.is_none() {
                return Outage::Over;
            }
            let now = Instant::now();
            if now >= retry_at {
                return Outage::Retry;
            }
            tokio::select! {
                () = tokio::time::sleep_until(retry_at.min(now + HANDOVER_TICK)) => {}
                routed = self.input.recv(), if !self.input_closed => match routed {
                    Some(routed) => self.keep(routed),
                    None => self.input_closed = true,
                },
                () = self.stop.requested() => return Outage::Over,
            }
        }
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
        for record in records {
            match self.pending.back_mut() {
                Some(last) if self.settings.is_open(last) => last.add(record),
                _ => {
                    let mut batch = self.settings.new_batch();
                    batch.add(record);
                    self.pending.push_back(batch);
                }
            }
        }
    }

    /// Offers the held batches, oldest first, to the live links now owning their shards.
    fn hand_over(&mut self, handles: &[Arc<LinkHandle>]) {
        while let Some(batch) = self.pending.pop_front() {
            let Some(owner) = owner(handles, batch.shard(), Some(self.key)) else {
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
            .filter(|batch| batch.sequence() != 0)
        else {
            return;
        };
        if oldest.count_failed_stream() < MAX_FAILED_STREAMS {
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

    /// One stream: what the last one left unacknowledged goes first, then whatever the router
    /// sends, within the window of unacknowledged batches. Ends `Ok` once the input is closed
    /// and everything is acknowledged.
    async fn run_stream(&mut self) -> Result<(), LinkError> {
        let (mut stream, mut acks) = self.open_stream().await?;
        self.set_up(true);
        tracing::info!(replayer = %self.replayer, resending = self.pending.len(), "connected to replayer");
        for waiting in &mut self.pending {
            stream.send(waiting, &self.metrics).await?;
        }
        loop {
            if self.input_closed && self.stash.is_none() {
                stream.batches = None;
            }
            if stream.batches.is_none() && self.pending.is_empty() {
                return Ok(());
            }
            let window_open = self.pending.len() < self.settings.max_unacked_batches;
            tokio::select! {
                routed = self.next_routed(), if window_open && stream.batches.is_some() => {
                    let Some(routed) = routed else {
                        self.input_closed = true;
                        continue;
                    };
                    let batch = match routed {
                        Routed::Batch(batch) => batch,
                        Routed::Records(records) => self.fill_batch(records),
                    };
                    // Pending before it is sent: a stop while sending must find it there.
                    self.pending.push_back(batch);
                    let sending = self.pending.back_mut().expect("pushed above");
                    stream.send(sending, &self.metrics).await?;
                }
                ack = acks.message() => match ack? {
                    Some(ack) => self.acknowledge(ack.sequence),
                    None => return Err(LinkError::Closed),
                },
            }
        }
    }

    /// Connects and opens the bidirectional stream, presenting the token.
    async fn open_stream(
        &self,
    ) -> Result<(OpenStream, tonic::Streaming<proto::BatchAck>), LinkError> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|error| LinkError::connect(&self.replayer, &error))?;
        let (batches, outgoing) = mpsc::channel(self.settings.max_unacked_batches);
        let authorization = self.settings.authorization.clone();
        let add_token = move |mut request: tonic::Request<()>| {
            if let Some(value) = &authorization {
                request
                    .metadata_mut()
                    .insert(tapwire_shared::link::AUTHORIZATION, value.clone());
            }
            Ok(request)
        };
        let mut client = ReplayClient::with_interceptor(channel, add_token);
        if self.settings.compress {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let acks = client
            .stream(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let stream = OpenStream {
            batches: Some(batches),
            next_sequence: 0,
        };
        Ok((stream, acks))
    }

    /// A batch of `records` and whatever records are waiting right behind them; what does not
    /// fit waits for the next batch.
    fn fill_batch(&mut self, records: Vec<QueuedRecord>) -> PendingBatch {
        let mut batch = self.settings.new_batch();
        let mut records = records.into_iter();
        loop {
            while let Some(record) = records.next() {
                batch.add(record);
                if self.settings.is_full(&batch) {
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
            let sent_as = acknowledged.sequence();
            if sent_as == 0 || sent_as > sequence {
                break;
            }
            self.metrics.records_sent.inc_by(acknowledged.requests());
            self.metrics.responses_sent.inc_by(acknowledged.responses());
            self.pending.pop_front();
            self.acknowledged_any = true;
            // Only a stream that carried something ends an outage: one refused right after
            // opening is the same failure again.
            self.failures.connected();
        }
    }
}
