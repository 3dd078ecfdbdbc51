//! One staging target: its filters, sampler and rate, its bounded queue, and the workers that
//! send its requests under a timeout, its failures logged without flooding
//! ([`crate::target_failures`]). Sources wait for room in the queue ([`TargetQueue`]
//! implements [`Backpressure`]) until it has been full for longer than `--shed-after`; the
//! target then sheds what does not fit (`shed_slow_target`) until its queue has emptied. Each
//! worker owns one upstream connection (so the target sees at most `concurrency`
//! connections); with `--preserve-connections` each captured client connection gets a session
//! of its own instead, replayed in order. A target owns all of this, so a dead or slow target
//! fills only its own queue and never delays the others. Requests are written as captured
//! ([`crate::request`]) on an [`Upstream`] connection (TCP, or TLS for `https://`: see
//! [`crate::connect`]), which is reused until the request or the response says otherwise
//! (HTTP/1.0, `Connection: close`, a body delimited by the close) and then reopened for the
//! next request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::DefaultDirectRateLimiter;
use http::Method;
use tapwire_shared::gor::{GorHeader, GorMessage, PayloadType};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::compare::stage::CompareStage;
use crate::config::{Role, WhenLimited};
use crate::connect::TargetAddress;
use crate::filter::Filters;
use crate::metrics::{ReplayerMetrics, TargetMetrics};
use crate::observe::Observers;
use crate::outcome::{FilterRule, TargetDropReason};
use crate::plan::TargetPlan;
use crate::rate::CaptureRate;
use crate::request::{HostRule, ReplayRequest};
use crate::rewrite::Rewrites;
use crate::sample::Sampler;
use crate::sink::{Backpressure, ReplaySink, RoomWait};
use crate::stream::MaybeTls;
use crate::target_failures::TargetFailures;
use crate::upstream::{ExchangeError, TargetResponse, Upstream};

/// Requests queued per preserved session.
const SESSION_QUEUE: usize = 256;
/// A preserved session with no requests for this long closes, freeing its slot.
const SESSION_IDLE: Duration = Duration::from_secs(1);

type Queue = mpsc::Receiver<Arc<ReplayRequest>>;
type Pacing = Option<Arc<DefaultDirectRateLimiter>>;

/// The handle the fan-out offers requests to.
pub struct Target {
    queue: Arc<TargetQueue>,
    filters: Filters,
    sampler: Option<Sampler>,
    /// Decides which requests fit the rate when over-rate requests are dropped.
    admission: Option<CaptureRate>,
    metrics: TargetMetrics,
    /// Told of the requests this target does not send, when its responses are compared.
    compare: Option<(Role, Arc<CompareStage>)>,
}

impl Target {
    /// Starts the target's workers; the returned task ends once the target's queue is closed
    /// and every request in flight has finished.
    pub fn start(
        plan: TargetPlan,
        metrics: &ReplayerMetrics,
        preserve_connections: bool,
        observers: Observers,
        compare: Option<Arc<CompareStage>>,
    ) -> (Target, JoinHandle<()>) {
        let metrics = metrics.target(&plan.name);
        if plan.address.tls.as_ref().is_some_and(|tls| tls.insecure) {
            tracing::warn!(target = %plan.name, "--target-insecure: the target's certificate is \
                not checked; anyone on the path could read or change what is sent");
        }
        let (queue, requests) = mpsc::channel(plan.queue);
        let queue = Arc::new(TargetQueue::new(queue, plan.shed_after, &plan.name));
        let compare = plan.role.zip(compare);
        let sender = Arc::new(RequestSender::new(
            &plan,
            metrics.clone(),
            observers,
            compare.clone(),
        ));
        let (admission, pacing) = match plan.rate {
            None => (None, None),
            // Admitted requests are still paced, so catching up never bursts past the rate.
            Some(rate) => (
                (plan.when_limited == WhenLimited::Drop).then_some(rate.admission),
                Some(Arc::new(rate.pacing)),
            ),
        };
        let workers = if preserve_connections {
            tokio::spawn(deliver_by_session(
                sender,
                requests,
                plan.concurrency,
                pacing,
            ))
        } else {
            tokio::spawn(deliver_by_workers(
                sender,
                requests,
                plan.concurrency,
                pacing,
            ))
        };
        let target = Target {
            queue,
            filters: plan.filters,
            sampler: plan.sampler,
            admission,
            metrics,
            compare,
        };
        (target, workers)
    }

    /// What sources wait on for room in this target's queue (for as long as the target is
    /// fed).
    pub fn backpressure(&self) -> std::sync::Weak<dyn Backpressure> {
        let queue: Arc<dyn Backpressure> = Arc::clone(&self.queue) as Arc<dyn Backpressure>;
        Arc::downgrade(&queue)
    }

    /// The comparison need not wait for this target's answer to `request`.
    fn not_sent(&self, request: &ReplayRequest) {
        if let Some((role, stage)) = &self.compare {
            stage.target_skipped(*role, request);
        }
    }
}

/// A target's bounded queue, and whether the target is shedding.
pub struct TargetQueue {
    sender: mpsc::Sender<Arc<ReplayRequest>>,
    /// How long the queue may stay full, making sources wait, before the target sheds.
    shed_after: Duration,
    /// Since when sources have found the queue full every time they looked, in nanoseconds
    /// after `created` plus one; 0 while it is not full.
    full_since: AtomicU64,
    created: Instant,
    /// Full for longer than `shed_after`: sources no longer wait for it, and what does not
    /// fit is dropped (`shed_slow_target`) until the queue has emptied.
    shedding: AtomicBool,
    name: String,
}

impl TargetQueue {
    fn new(sender: mpsc::Sender<Arc<ReplayRequest>>, shed_after: Duration, name: &str) -> Self {
        TargetQueue {
            sender,
            shed_after,
            full_since: AtomicU64::new(0),
            created: Instant::now(),
            shedding: AtomicBool::new(false),
            name: name.to_owned(),
        }
    }

    /// Room now: the queue's full time starts again, and a shedding target whose queue has
    /// emptied has caught up.
    fn found_room(&self) {
        if self.full_since.load(Ordering::Relaxed) != 0 {
            self.full_since.store(0, Ordering::Relaxed);
        }
        if self.shedding.load(Ordering::Relaxed)
            && self.sender.capacity() == self.sender.max_capacity()
        {
            self.shedding.store(false, Ordering::Relaxed);
            tracing::info!(target = %self.name, "target caught up: no longer shedding");
        }
    }

    /// When sources started finding the queue full (now, if this is the first time).
    fn full_since(&self) -> Instant {
        let mut since = self.full_since.load(Ordering::Relaxed);
        if since == 0 {
            since = self.created.elapsed().as_nanos() as u64 + 1;
            self.full_since.store(since, Ordering::Relaxed);
        }
        self.created + Duration::from_nanos(since - 1)
    }

    async fn wait_until_room_or_shed(&self, deadline: Instant) {
        match tokio::time::timeout_at(deadline.into(), self.sender.reserve()).await {
            // The slot stays free: only the stream holding the dispatch turn can take it.
            Ok(_) => {}
            Err(_) => {
                self.shedding.store(true, Ordering::Relaxed);
                tracing::warn!(target = %self.name, shed_after = ?self.shed_after,
                    "target queue full for longer than --shed-after: shedding until it catches up");
            }
        }
    }
}

impl Backpressure for TargetQueue {
    fn has_room_beyond(&self, spare: usize) -> bool {
        let room = self.sender.capacity() > spare;
        if room {
            self.found_room();
        }
        room
    }

    fn wait_for_room(&self) -> Option<RoomWait<'_>> {
        if self.sender.capacity() > 0 {
            self.found_room();
            return None;
        }
        if self.shedding.load(Ordering::Relaxed) {
            return None;
        }
        let deadline = self.full_since() + self.shed_after;
        Some(Box::pin(self.wait_until_room_or_shed(deadline)))
    }
}

impl ReplaySink for Target {
    /// Never waits (sources waited for room before): filtered, sampled-out, over-rate and
    /// over-capacity requests are counted.
    fn offer(&self, request: &Arc<ReplayRequest>) {
        if let Err(rule) = self.filters.check(request) {
            self.metrics.filtered(rule).inc();
            return self.not_sent(request);
        }
        if self.sampler.as_ref().is_some_and(|s| !s.keeps(request)) {
            self.metrics.filtered(FilterRule::Sample).inc();
            return self.not_sent(request);
        }
        if let Some(admission) = &self.admission
            && !admission.admits(request.captured_at_ns)
        {
            self.metrics.dropped(TargetDropReason::RateLimited).inc();
            return self.not_sent(request);
        }
        if self.queue.sender.try_send(Arc::clone(request)).is_err() {
            let reason = if self.queue.shedding.load(Ordering::Relaxed) {
                TargetDropReason::ShedSlowTarget
            } else {
                TargetDropReason::TargetQueueFull
            };
            self.metrics.dropped(reason).inc();
            self.not_sent(request);
        }
    }
}

/// `concurrency` workers, each with its own upstream connection, share the target's queue.
async fn deliver_by_workers(
    sender: Arc<RequestSender>,
    requests: Queue,
    concurrency: usize,
    pacing: Pacing,
) {
    let requests = Arc::new(Mutex::new(requests));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let sender = Arc::clone(&sender);
            let requests = Arc::clone(&requests);
            let pacing = pacing.clone();
            tokio::spawn(async move {
                let mut connection = None;
                loop {
                    let next = requests.lock().await.recv().await;
                    let Some(request) = next else { break };
                    if let Some(pacing) = &pacing {
                        pacing.until_ready().await;
                    }
                    sender.exchange(&mut connection, &request).await;
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

/// Each captured client connection's requests go, in order, to a session of its own.
async fn deliver_by_session(
    sender: Arc<RequestSender>,
    mut requests: Queue,
    concurrency: usize,
    pacing: Pacing,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut sessions: HashMap<u64, mpsc::Sender<Arc<ReplayRequest>>> = HashMap::new();
    while let Some(request) = requests.recv().await {
        if let Some(pacing) = &pacing {
            pacing.until_ready().await;
        }
        route_to_session(&sender, &slots, &mut sessions, request).await;
    }
    drop(sessions);
    // Every slot back means every session has finished.
    let _ = slots.acquire_many(concurrency as u32).await;
}

/// Hands a request to its connection's session, starting one (in a free slot) if needed.
async fn route_to_session(
    sender: &Arc<RequestSender>,
    slots: &Arc<Semaphore>,
    sessions: &mut HashMap<u64, mpsc::Sender<Arc<ReplayRequest>>>,
    request: Arc<ReplayRequest>,
) {
    let key = request.session;
    let request = match sessions.get(&key) {
        Some(session) => match session.send(request).await {
            Ok(()) => return,
            // The session closed (idle); start a new one.
            Err(mpsc::error::SendError(request)) => request,
        },
        None => request,
    };
    sessions.retain(|_, session| !session.is_closed());
    let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
        return;
    };
    let (session, queued) = mpsc::channel(SESSION_QUEUE);
    tokio::spawn(run_session(Arc::clone(sender), queued, slot));
    if session.send(request).await.is_ok() {
        sessions.insert(key, session);
    }
}

/// One captured client connection replayed in order over one upstream connection.
async fn run_session(sender: Arc<RequestSender>, mut requests: Queue, _slot: OwnedSemaphorePermit) {
    let mut connection = None;
    while let Ok(Some(request)) = tokio::time::timeout(SESSION_IDLE, requests.recv()).await {
        sender.exchange(&mut connection, &request).await;
    }
}

/// Builds and sends requests to one target, and counts what happened.
struct RequestSender {
    /// `http(s)://host:port`: the target's name in metrics, logs and to the observers.
    name: String,
    /// Where to connect (its `host:port` is the Host the target is sent), and TLS.
    address: TargetAddress,
    keep_host: bool,
    rewrites: Rewrites,
    timeout: Duration,
    metrics: TargetMetrics,
    failures: TargetFailures,
    observers: Observers,
    /// Where its responses go to be compared, as what, when they are.
    compare: Option<(Role, Arc<CompareStage>)>,
}

/// A worker's connection to the target, if it has one.
type Connection = Option<Upstream<MaybeTls>>;

impl RequestSender {
    fn new(
        plan: &TargetPlan,
        metrics: TargetMetrics,
        observers: Observers,
        compare: Option<(Role, Arc<CompareStage>)>,
    ) -> Self {
        RequestSender {
            name: plan.name.clone(),
            address: plan.address.clone(),
            failures: TargetFailures::new(&plan.name),
            keep_host: plan.keep_host,
            rewrites: plan.rewrites.clone(),
            timeout: plan.timeout,
            metrics,
            observers,
            compare,
        }
    }

    /// Sends one request over `connection` (connecting first if there is none) and counts the
    /// outcome. A failed exchange, or one after which either side closes, drops the connection;
    /// the next request reconnects.
    async fn exchange(&self, connection: &mut Connection, replay: &ReplayRequest) {
        let observed = self.observers.wants_replayed_responses() || self.compare.is_some();
        let sent_at_ns = observed.then(wall_clock_ns);
        if let Some((_, stage)) = &self.compare {
            stage.target_started(replay);
        }
        let exchange = async {
            let response = match self.send(connection, replay, observed).await {
                // The target closed a connection that had been idle as our request arrived: the
                // request was not served, and one that is safe to repeat is sent again.
                Err(ExchangeError::Closed {
                    answered_nothing: true,
                    ..
                }) if connection.as_ref().is_some_and(Upstream::is_reused)
                    && replay.method.is_idempotent() =>
                {
                    *connection = None;
                    self.send(connection, replay, observed).await
                }
                other => other,
            };
            if !response
                .as_ref()
                .is_ok_and(|r| r.persists && replay.persists)
            {
                *connection = None;
            }
            response
        };
        let answered = self.account(exchange).await;
        if let Some((role, stage)) = &self.compare {
            let answer = answered
                .as_ref()
                .map(|(latency, response)| (response.raw.clone(), *latency));
            stage.target_answered(*role, replay, answer);
        }
        let Some((latency, response)) = answered else {
            *connection = None;
            return;
        };
        if let Some(raw) = response.raw {
            self.observers.replayed_response(
                &self.name,
                &GorMessage {
                    header: GorHeader {
                        payload_type: PayloadType::ReplayedResponse,
                        id: replay.message_id(),
                        timestamp_ns: sent_at_ns.unwrap_or_default(),
                        latency_ns: Some(latency.as_nanos() as u64),
                    },
                    payload: raw,
                },
            );
        }
    }

    /// Writes the request on the connection (opened if needed) and reads the response.
    async fn send(
        &self,
        connection: &mut Connection,
        replay: &ReplayRequest,
        keep: bool,
    ) -> Result<TargetResponse, ExchangeError> {
        if let Some(upstream) = connection
            && upstream.went_away().await
        {
            *connection = None;
        }
        let upstream = match connection {
            Some(upstream) => upstream,
            None => connection.insert(self.connect().await?),
        };
        self.write_head(replay, upstream.request_head());
        upstream
            .exchange(&replay.body, replay.method == Method::HEAD, keep)
            .await
    }

    async fn connect(&self) -> Result<Upstream<MaybeTls>, ExchangeError> {
        Ok(Upstream::new(self.address.connect().await?))
    }

    /// Runs one exchange under the timeout and counts its outcome; when a response came, its
    /// latency and the response.
    async fn account(
        &self,
        exchange: impl Future<Output = Result<TargetResponse, ExchangeError>>,
    ) -> Option<(Duration, TargetResponse)> {
        self.metrics.sent.inc();
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(response)) => {
                let latency = started.elapsed();
                self.metrics.latency.observe(latency.as_secs_f64());
                self.metrics.response(response.status).inc();
                self.failures.answered();
                Some((latency, response))
            }
            Ok(Err(error)) => {
                let reason = drop_reason(&error);
                self.metrics.dropped(reason).inc();
                self.failures.failed(reason, error);
                None
            }
            Err(_) => {
                self.metrics.dropped(TargetDropReason::Timeout).inc();
                let timeout = humantime::format_duration(self.timeout);
                self.failures.failed(
                    TargetDropReason::Timeout,
                    format_args!("timed out after {timeout}"),
                );
                None
            }
        }
    }

    /// The request head for this target: the captured one with the target's rewrites applied
    /// and its Host rule: a Host the target's rewrites decide (else the global ones) is set,
    /// else with `--keep-host` the captured Host is kept, else captured Host lines name the
    /// target.
    fn write_head(&self, replay: &ReplayRequest, out: &mut Vec<u8>) {
        if self.rewrites.is_empty() {
            let host = self.host_rule(None, replay);
            replay.write_head(out, &replay.path_and_query, &replay.fields, host);
        } else {
            let mut path_and_query = replay.path_and_query.clone();
            let mut fields = replay.fields.clone();
            self.rewrites.apply(&mut path_and_query, &mut fields);
            let own_host = self.rewrites.host_to_send(&fields);
            let host = self.host_rule(own_host.as_ref(), replay);
            replay.write_head(out, &path_and_query, &fields, host);
        }
    }

    fn host_rule<'a>(
        &'a self,
        own_host: Option<&'a bytes::Bytes>,
        replay: &'a ReplayRequest,
    ) -> HostRule<'a> {
        match own_host.or(replay.host_override.as_ref()) {
            Some(host) => HostRule::Set(host),
            None if self.keep_host => HostRule::Keep,
            None => HostRule::Replace(self.address.authority.as_bytes()),
        }
    }
}

/// The reason a failed exchange is counted under.
fn drop_reason(error: &ExchangeError) -> TargetDropReason {
    match error {
        ExchangeError::Connect(connect) if connect.is_tls() => TargetDropReason::Tls,
        ExchangeError::Connect(_) => TargetDropReason::ConnectError,
        ExchangeError::InvalidResponse(_) | ExchangeError::InvalidStatus(_) => {
            TargetDropReason::HttpError
        }
        // TLS that broke after the handshake (a bad record, a fatal alert).
        ExchangeError::Closed {
            cause: Some(cause), ..
        } if crate::target_tls::describe(cause).is_some() => TargetDropReason::Tls,
        ExchangeError::Closed { .. } => TargetDropReason::ConnectionClosed,
    }
}

/// Now, in nanoseconds since the Unix epoch: when a replayed request was sent.
fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}
