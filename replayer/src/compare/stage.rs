//! The live comparison, off the send path. The fan-out registers each request it replays;
//! target workers (and the intake, for production's responses) hand each response to the
//! [`CompareStage`] and go on: it is added to its
//! request's [`PendingSet`] under a short lock, and a complete set is queued for the comparing
//! thread. Nothing waits: a full queue counts the request as not compared (`queue_full`).
//! The thread compares ([`Comparer`]), expires sets that will not complete, writes the diff
//! log's summary every interval, and the final one when the replay ends ([`CompareDone`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tapwire_runtime::lock;
use tapwire_shared::http1::parse_response_head;

use super::comparer::{CompareMetrics, Comparer, Rules, count_not_compared};
use super::diff_log::DiffLog;
use super::pending::{Answer, Exchange, Expired, Gathered, PendingSet, RequestLine, Response};
use super::summary::Summary;
use super::tally::{Roles, Tally};
use crate::config::Role;
use crate::request::ReplayRequest;

/// How often the comparing thread looks for sets that will not complete.
const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Response bytes of the sets waiting for the comparing thread at most.
const QUEUE_BYTES: usize = 256 << 20;
/// A wait in a target's queue past which the request's set waits again from its start.
const QUEUED_LONG: Duration = Duration::from_secs(1);
/// Differing endpoints a progress line names at most.
const LOGGED_ENDPOINTS: usize = 10;
/// The summary's `source` for a live replay.
pub const LIVE_SOURCE: &str = "live replay";
/// How old a summary the live report may show: building one holds the tally, which the target
/// workers need, so a client asking for the page in a loop must not build one each time.
const REPORT_SUMMARY_AGE: Duration = Duration::from_secs(1);

/// What the comparison needs, compiled.
pub struct ComparePlan {
    pub rules: Rules,
    pub roles: Roles,
    pub thresholds: super::noise::Thresholds,
    pub diff_log: Option<(std::path::PathBuf, u64)>,
    /// Complete sets waiting for the comparing thread at most.
    pub queue: usize,
    /// How long a set may wait for its last response.
    pub expiry: Duration,
    /// Production's responses may come before their request is replayed (a middleware holds
    /// requests): they wait for it instead of being taken as late.
    pub production_first: bool,
}

impl ComparePlan {
    /// The roles whose responses every set needs.
    pub fn expected_roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Candidate, self.roles.reference];
        if let Some((a, b)) = self.roles.noise_pair {
            roles.extend([a, b]);
        }
        roles.sort_unstable();
        roles.dedup();
        roles
    }
}

enum Work {
    Compare(Box<Exchange>),
    Finish,
}

/// Where responses go to be compared.
pub struct CompareStage {
    pending: Mutex<PendingSet>,
    queue: SyncSender<Work>,
    /// Response bytes of the queued sets.
    queued_bytes: AtomicUsize,
    /// Sets settled under the lock and not yet counted or queued.
    handoffs: AtomicUsize,
    tally: Arc<Mutex<Tally>>,
    metrics: CompareMetrics,
    production_compared: bool,
    /// The live report's latest summary, and when it was built.
    report_summary: Mutex<Option<(Instant, Arc<Summary>)>>,
}

/// Ends the comparison: see [`CompareDone::finish`]; dropped unfinished (a run that failed),
/// it finishes then, so the diff log still gets its last summary.
pub struct CompareDone {
    stage: Arc<CompareStage>,
    thread: Option<JoinHandle<()>>,
}

impl CompareStage {
    /// Starts the comparing thread; `summary_every` is how often the diff log gets a summary.
    pub fn start(
        plan: ComparePlan,
        metrics: CompareMetrics,
        summary_every: Option<Duration>,
    ) -> anyhow::Result<(Arc<CompareStage>, CompareDone)> {
        let log = match &plan.diff_log {
            Some((path, size)) => Some(DiffLog::create(path, *size).map_err(|error| {
                anyhow::anyhow!("cannot create the diff log {}: {error}", path.display())
            })?),
            None => None,
        };
        let expected = plan.expected_roles();
        let early: &[Role] = if plan.production_first {
            &[Role::Production]
        } else {
            &[]
        };
        let tally = Arc::new(Mutex::new(Tally::new(plan.roles, plan.thresholds)));
        let comparer = Comparer::new(plan.rules, Arc::clone(&tally), log, metrics.clone());
        let (queue, work) = mpsc::sync_channel(plan.queue.max(1));
        let stage = Arc::new(CompareStage {
            pending: Mutex::new(PendingSet::new(&expected, early, plan.expiry)),
            queue,
            queued_bytes: AtomicUsize::new(0),
            handoffs: AtomicUsize::new(0),
            tally,
            metrics,
            production_compared: expected.contains(&Role::Production),
            report_summary: Mutex::new(None),
        });
        let thread = std::thread::Builder::new().name("compare".into()).spawn({
            let stage = Arc::clone(&stage);
            move || stage.run(comparer, work, summary_every)
        })?;
        let done = CompareDone {
            stage: Arc::clone(&stage),
            thread: Some(thread),
        };
        Ok((stage, done))
    }

    /// A target's answer to `replay` (`None`: the exchange failed; `raw` `None`: too large).
    pub fn target_answered(
        &self,
        role: Role,
        replay: &ReplayRequest,
        answer: Option<(Option<Bytes>, Duration)>,
    ) {
        let answer = match answer {
            Some((raw, latency)) => Answer::Response(Response {
                raw,
                latency: Some(latency),
            }),
            None => Answer::Failed,
        };
        self.add(role, replay.message_id(), answer);
    }

    /// `replay` goes to the targets: from now on it is counted once, compared or not.
    pub fn requested(&self, replay: &ReplayRequest) {
        let line = RequestLine {
            method: replay.method.as_str().to_owned(),
            path_and_query: replay.path_and_query.as_str().to_owned(),
        };
        let id = replay.message_id();
        self.gather(|pending| pending.request(id, line, Instant::now()));
    }

    /// A compared target takes `replay` off its queue long after it was replayed (over
    /// [`QUEUED_LONG`]): its set's expiry starts again, so that a backlogged target's answers
    /// are still compared.
    pub fn target_started(&self, replay: &ReplayRequest) {
        if replay.replayed_at.elapsed() > QUEUED_LONG {
            lock(&self.pending).started(&replay.message_id(), Instant::now());
        }
    }

    /// A target did not send `replay` (filtered, sampled out, over its rate, shed): its set
    /// is settled at once instead of waiting to expire.
    pub fn target_skipped(&self, role: Role, replay: &ReplayRequest) {
        self.add(role, replay.message_id(), Answer::NotSent);
    }

    /// Production's response to the request `id`: compared when it is the candidate's
    /// reference, else only counted (its status mix and latency are shown beside the targets').
    pub fn production_answered(&self, id: String, raw: Bytes, latency: Duration) {
        if !self.production_compared {
            if let Ok(Some(head)) = parse_response_head(&raw, false) {
                lock(&self.tally).response(Role::Production, head.status, Some(latency));
            }
            return;
        }
        let response = Response {
            raw: Some(raw),
            latency: Some(latency),
        };
        self.add(Role::Production, id, Answer::Response(response));
    }

    /// What the comparison found so far.
    pub fn summary(&self) -> Summary {
        lock(&self.tally).summary(LIVE_SOURCE)
    }

    /// What the comparison found, as of at most [`REPORT_SUMMARY_AGE`] ago: for the live page.
    pub fn recent_summary(&self) -> Arc<Summary> {
        let mut latest = lock(&self.report_summary);
        match &*latest {
            Some((built, summary)) if built.elapsed() < REPORT_SUMMARY_AGE => Arc::clone(summary),
            _ => {
                let summary = Arc::new(self.summary());
                *latest = Some((Instant::now(), Arc::clone(&summary)));
                summary
            }
        }
    }

    fn add(&self, role: Role, id: String, answer: Answer) {
        self.gather(|pending| pending.add(role, id, answer, Instant::now()));
    }

    /// Applies `change` to the pending sets, then counts or queues what it settled, outside
    /// the lock (queueing may wake the comparing thread). A settled set is a hand-off until
    /// then: closing waits for those, so each is counted or queued before `Finish`.
    fn gather(&self, change: impl FnOnce(&mut PendingSet) -> Gathered) {
        let (gathered, _handoff) = {
            let mut pending = lock(&self.pending);
            let gathered = change(&mut pending);
            let handoff =
                (!matches!(gathered, Gathered::Waiting)).then(|| Handoff::new(&self.handoffs));
            (gathered, handoff)
        };
        match gathered {
            Gathered::Waiting => {}
            Gathered::NotCompared(reason) => self.not_compared(reason.as_str()),
            Gathered::Complete(exchange) => self.queue_for_comparing(exchange),
        }
    }

    /// Queues a complete set for the comparing thread, unless the queue is full (in sets or in
    /// bytes).
    fn queue_for_comparing(&self, exchange: Box<Exchange>) {
        let bytes = exchange.held_bytes();
        if self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return self.not_compared("queue_full");
        }
        let refused = match self.queue.try_send(Work::Compare(exchange)) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue_full",
            // The thread has finished: the replay is over.
            Err(TrySendError::Disconnected(_)) => "shutting_down",
        };
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.not_compared(refused);
    }

    /// The comparing thread is done with a queued set.
    fn compared(&self, comparer: &mut Comparer, exchange: &Exchange) {
        comparer.compare(exchange);
        self.queued_bytes
            .fetch_sub(exchange.held_bytes(), Ordering::Relaxed);
    }

    fn not_compared(&self, reason: &str) {
        count_not_compared(&self.metrics, &self.tally, reason);
    }

    fn expire(&self) {
        let expired = lock(&self.pending).expire(Instant::now());
        self.count_expired(expired);
    }

    fn count_expired(&self, expired: Vec<Expired>) {
        for expired in expired {
            if let Expired::Counted(reason) = expired {
                self.not_compared(reason.as_str());
            }
        }
    }

    /// The replay is over: counts every set still waiting, takes nothing more, and waits for
    /// the sets settled before to be counted or queued.
    fn close(&self) {
        let closed = lock(&self.pending).close();
        self.count_expired(closed);
        while self.handoffs.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
    }

    /// The comparing thread.
    fn run(
        &self,
        mut comparer: Comparer,
        work: mpsc::Receiver<Work>,
        summary_every: Option<Duration>,
    ) {
        let mut next_expiry = Instant::now() + EXPIRY_CHECK;
        let mut next_summary = summary_every.map(|every| Instant::now() + every);
        loop {
            let wake = next_summary.map_or(next_expiry, |at| at.min(next_expiry));
            match work.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Work::Compare(exchange)) => self.compared(&mut comparer, &exchange),
                Ok(Work::Finish) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_expiry {
                self.expire();
                next_expiry = now + EXPIRY_CHECK;
            }
            if let (Some(at), Some(every)) = (next_summary, summary_every)
                && now >= at
            {
                let summary = self.summary();
                comparer.log_summary(&summary);
                log_progress(&summary, "comparison so far");
                next_summary = Some(now + every);
            }
        }
        // What is still queued was complete: compare it (the sets that never completed were
        // counted when the stage closed, before `Finish` was sent).
        while let Ok(Work::Compare(exchange)) = work.try_recv() {
            self.compared(&mut comparer, &exchange);
        }
        comparer.log_summary(&self.summary());
    }
}

/// A settled set on its way to be counted or queued (see [`CompareStage::gather`]): ended
/// when dropped, even if counting panics, so that closing never waits for it.
struct Handoff<'a>(&'a AtomicUsize);

impl<'a> Handoff<'a> {
    fn new(handoffs: &'a AtomicUsize) -> Self {
        handoffs.fetch_add(1, Ordering::AcqRel);
        Handoff(handoffs)
    }
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CompareDone {
    /// Once the targets are done: compares what is queued, counts what never completed, writes
    /// the final summary to the diff log, and logs what was found.
    pub fn finish(mut self) {
        self.finish_now();
    }

    fn finish_now(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stage.close();
        // Blocking is fine here: replay is over, and the thread is draining.
        let _ = self.stage.queue.send(Work::Finish);
        if thread.join().is_err() {
            tracing::error!("the comparing thread panicked");
        }
        log_progress(&self.stage.summary(), "comparison");
    }
}

impl Drop for CompareDone {
    fn drop(&mut self) {
        self.finish_now();
    }
}

/// One line: how many requests were compared and not, and the endpoints that differ.
fn log_progress(summary: &Summary, message: &str) {
    // Ranked most differing first: the first few say the most.
    let differing: Vec<String> = summary
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.difference_rate > 0.0)
        .map(|endpoint| format!("{} {:.2}%", endpoint.name, endpoint.difference_rate * 100.0))
        .collect();
    let mut listed = differing
        .iter()
        .take(LOGGED_ENDPOINTS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if differing.len() > LOGGED_ENDPOINTS {
        listed.push_str(&format!(" and {} more", differing.len() - LOGGED_ENDPOINTS));
    }
    let not_compared: u64 = summary.not_compared.values().sum();
    tracing::info!(
        compared = summary.compared,
        not_compared,
        differing_endpoints = differing.len(),
        "{message}: {}",
        if differing.is_empty() {
            "no differences beyond the noise"
        } else {
            &listed
        }
    );
}
