//! tapwire-listener: runs on a production host, captures the HTTP/1.x requests arriving at a
//! service, and streams them to one or more replayers. Data moves through the modules in this
//! order:
//!
//! - [`capture`]: libpcap handle (or a pcap file), BPF filter, the capture loop on its own thread.
//! - [`packet`]: link layer, IP and TCP decoding of each frame into a [`packet::Segment`].
//! - [`reassembly`]: per-connection sequence ordering, retransmissions, flow lifetimes.
//! - [`http`]: cutting each ordered byte stream into complete requests (and responses).
//! - [`record`]: a cut message becomes a record: counted, redacted, given its [`shard`], handed
//!   to every output ([`sink`] is the outputs' contract).
//! - [`queue`]: the bounded buffer in front of the replayers, filled without ever waiting.
//! - [`router`]: each record to the link of the replayer owning its shard ([`replayers`] says
//!   which replayers there are), or to the disk [`spool`] while none is up.
//! - [`link`]: one batched ([`batch`]), acknowledged gRPC stream per replayer; [`link_failure`]
//!   says why one failed.
//! - [`gor_sink`]: beside (or instead of) the replayers, a `.gor` file, stdout, or nowhere.
//!
//! [`config`] holds the flags and file keys, [`plan`] their validated form, [`metrics`] the
//! counters that account for every request.

pub mod batch;
pub mod capture;
pub mod config;
pub mod gor_sink;
pub mod http;
pub mod link;
pub mod link_failure;
pub mod metrics;
pub mod packet;
pub mod plan;
pub mod queue;
pub mod reassembly;
pub mod record;
pub mod replayers;
pub mod router;
pub mod shard;
pub mod sink;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tapwire_runtime::Shutdown;
use tapwire_runtime::health::{Condition, Health, Hold};
use tapwire_runtime::periodic::per_second;

pub use config::ListenerConfig;
use metrics::{DropReason, ListenerMetrics};
pub use plan::ListenerPlan;
use spool::Spool;

/// How long the links may take to hand back what they hold once told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// The run ended by itself (the `--input-pcap` file done, or `--exit-after`), requests were
    /// seen, and none reached an output or the spool: everything was dropped.
    pub nothing_delivered: bool,
}

/// Runs the listener until `shutdown` is requested, `--exit-after` passes, or capture ends or
/// fails; then drains what it can within the drain timeout and logs the final accounting.
pub async fn run(plan: ListenerPlan, shutdown: Shutdown) -> anyhow::Result<RunOutcome> {
    let ends_by_itself = plan.input_pcap.is_some() || plan.exit_after.is_some();
    let stop = shutdown.or_after(plan.exit_after);
    let listener = Listener::start(plan).await?;
    let metrics = listener.metrics.clone();
    listener.run(stop).await?;
    Ok(RunOutcome {
        nothing_delivered: ends_by_itself
            && !shutdown.is_requested()
            && metrics.requests_seen() > 0
            && metrics.records_delivered() == 0
            && metrics.records_spooled.get() == 0,
    })
}

/// A running listener: the capture thread feeding the outputs (the queue that the router and
/// links drain, and the file-like outputs).
struct Listener {
    metrics: ListenerMetrics,
    capture: CaptureThread,
    /// With replayers: the router, which returns the spool at the end.
    router: Option<tokio::task::JoinHandle<Option<Spool>>>,
    /// The file-like outputs' writers, to wait for at the end.
    writers: Vec<tapwire_runtime::gor_output::OutputDone>,
    /// Told to stop once the drain timeout has passed.
    links_stop: Shutdown,
    accounting: tokio::task::JoinHandle<()>,
    drain_timeout: Duration,
    spooling: bool,
    /// Readiness while a file output is open (it stays open until the end).
    _file_output_open: Option<Hold>,
}

/// The capture loop on its own thread, and how it ended.
struct CaptureThread {
    stop: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
    ended: tokio::sync::oneshot::Receiver<Result<(), capture::CaptureError>>,
}

impl Listener {
    /// Opens the metrics endpoint, the spool and the capture (then drops privileges), and
    /// starts the capture thread and the router.
    ///
    /// Ready (`/readyz`) while the capture is open and a replayer link is up or a file output
    /// (`--output-file`, `--output-stdout`) is open.
    async fn start(plan: ListenerPlan) -> anyhow::Result<Listener> {
        let mut registry = Registry::default();
        let mut metrics = ListenerMetrics::register(&mut registry);
        if plan.link.is_none() {
            metrics = metrics.without_link();
        }
        let health = Health::new();
        let capture_open = health.condition("capture is not open");
        let output_ready = health.condition("no replayer link is up and no file output is open");
        if let Some(addr) = plan.metrics_listen {
            tapwire_runtime::serve_metrics(addr, Arc::new(registry), health.clone(), Vec::new())
                .await?;
        }
        let spool = plan
            .spool
            .as_ref()
            .map(|spool| Spool::open(&spool.dir, spool.bytes, plan.buffer.policy, metrics.clone()))
            .transpose()?;
        let source = match &plan.input_pcap {
            Some(path) => capture::PacketSource::open_file(path, &plan.capture.filter)?,
            None => capture::PacketSource::open_live(&plan.capture)?,
        };
        if let Some(user) = &plan.user {
            drop_privileges(user)?;
        }
        let mut sinks: Vec<Box<dyn sink::RecordSink>> = Vec::new();
        let mut writers = Vec::new();
        let links_stop = Shutdown::new();
        let router = match plan.link {
            Some(link) => {
                let (queue, queued) =
                    queue::record_queue(plan.buffer.records, plan.buffer.bytes, metrics.clone());
                sinks.push(Box::new(queue.with_policy(plan.buffer.policy)));
                Some(tokio::spawn(router::stream_to_replayers(
                    link,
                    queued,
                    spool,
                    metrics.clone(),
                    output_ready.clone(),
                    links_stop.clone(),
                )))
            }
            None => None,
        };
        for (settings, kind) in [
            (plan.file, metrics::WriterOutput::File),
            (plan.stdout, metrics::WriterOutput::Stdout),
        ] {
            let Some(settings) = settings else { continue };
            let (sink, done) = gor_sink::GorSink::start(settings, kind, plan.instance, &metrics)
                .context("cannot start the output writer")?;
            sinks.push(Box::new(sink));
            writers.push(done);
        }
        if plan.null {
            sinks.push(Box::new(gor_sink::NullSink::new(&metrics)));
        }
        let file_output_open = (!writers.is_empty()).then(|| output_ready.hold());
        let records = record::RecordStage::new(metrics.clone(), plan.redaction, sinks)
            .with_real_ip_header(plan.real_ip_header);
        let mut reassembler = reassembly::Reassembler::new(plan.reassembly);
        if plan.capture.track_responses {
            reassembler = reassembler.tracking_responses();
        }
        let capture = CaptureThread::start(source, reassembler, records, &health, &capture_open)?;
        Ok(Listener {
            accounting: tokio::spawn(report_accounting(metrics.clone(), plan.stats_interval)),
            metrics,
            capture,
            router,
            writers,
            links_stop,
            drain_timeout: plan.drain_timeout,
            spooling: plan.spool.is_some(),
            _file_output_open: file_output_open,
        })
    }

    async fn run(mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        let captured = self.capture.run_until(shutdown).await;
        // The capture thread has let go of the outputs: the writers finish what is queued.
        let writers = std::mem::take(&mut self.writers);
        let timeout = self.drain_timeout;
        let written = tokio::task::spawn_blocking(move || {
            for writer in writers {
                writer.wait(timeout);
            }
        });
        let spool = self.drain().await;
        let _ = written.await;
        self.account_at_exit(spool.as_ref());
        captured
    }

    /// Lets the links send what is queued, up to the drain timeout; then tells them to stop and
    /// collects the spool (which took what they still held).
    async fn drain(&mut self) -> Option<Spool> {
        let router = self.router.as_mut()?;
        tracing::info!(timeout = ?self.drain_timeout, "capture stopped; draining to the replayers");
        if let Ok(finished) = tokio::time::timeout(self.drain_timeout, &mut *router).await {
            return finished.ok().flatten();
        }
        tracing::warn!(
            spooling = self.spooling,
            "drain timeout passed; what is still unacknowledged is spooled, or dropped"
        );
        self.links_stop.request();
        match tokio::time::timeout(STOP_GRACE, &mut *router).await {
            Ok(finished) => finished.ok().flatten(),
            Err(_) => {
                router.abort();
                None
            }
        }
    }

    /// Whatever is neither sent, spooled nor already counted was in memory at exit: dropped
    /// for `shutdown`. Logs the final accounting.
    fn account_at_exit(&self, spool: Option<&Spool>) {
        self.accounting.abort();
        let metrics = &self.metrics;
        let (spooled, spooled_responses) =
            spool.map_or((0, 0), |spool| (spool.requests(), spool.responses()));
        metrics
            .dropped(DropReason::Shutdown)
            .inc_by(metrics.buffered().saturating_sub(spooled));
        metrics.records_buffered.set(spooled as i64);
        metrics.response_dropped(DropReason::Shutdown).inc_by(
            metrics
                .responses_buffered()
                .saturating_sub(spooled_responses),
        );
        tracing::info!(summary = %metrics.summary(), "listener stopped");
    }
}

impl CaptureThread {
    fn start(
        source: capture::PacketSource,
        reassembler: reassembly::Reassembler,
        records: record::RecordStage,
        health: &Health,
        capture_open: &Condition,
    ) -> anyhow::Result<CaptureThread> {
        let stop = Shutdown::new();
        let (done, ended) = tokio::sync::oneshot::channel();
        let thread = {
            let stop = stop.clone();
            let (heartbeat, open) = (health.heartbeat("capture"), capture_open.hold());
            std::thread::Builder::new()
                .name("capture".into())
                .spawn(move || {
                    let ended = source.run(reassembler, records, &stop, &heartbeat);
                    drop(open);
                    let _ = done.send(ended);
                })
                .context("cannot start the capture thread")?
        };
        Ok(CaptureThread {
            stop,
            thread: Some(thread),
            ended,
        })
    }

    /// Captures until `shutdown` (a file source also ends by itself), then stops the thread
    /// and returns how capture ended.
    async fn run_until(&mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        let ended = tokio::select! {
            () = shutdown.requested() => None,
            result = &mut self.ended => Some(result),
        };
        self.stop.request();
        let outcome = match ended {
            Some(result) => result,
            None => (&mut self.ended).await,
        };
        // The thread has finished (it sent its result); joining cannot block for long.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => anyhow::bail!("the capture thread ended without reporting"),
        }
    }
}

/// Keeps the buffered-records gauge current (every second) and logs the accounting every
/// `--stats-interval` (unless off), so that `captured + restored = sent + buffered + dropped`
/// can be checked at any time, not only at exit. The line's `rate_per_s` is the requests
/// captured per second over the interval.
async fn report_accounting(metrics: ListenerMetrics, stats_interval: Option<Duration>) {
    let mut gauge_tick = tokio::time::interval(Duration::from_secs(1));
    let mut stats_tick = stats_interval.map(tapwire_runtime::periodic::every);
    let (mut captured, mut since) = (0, std::time::Instant::now());
    loop {
        let stats_due = async {
            match &mut stats_tick {
                Some(tick) => tick.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = gauge_tick.tick() => {
                metrics.records_buffered.set(metrics.buffered() as i64);
            }
            _ = stats_due => {
                metrics.records_buffered.set(metrics.buffered() as i64);
                let now = metrics.requests_captured.get();
                let rate = per_second(now.saturating_sub(captured), since.elapsed());
                (captured, since) = (now, std::time::Instant::now());
                tracing::info!(rate_per_s = rate, summary = %metrics.summary(), "accounting");
            }
        }
    }
}

/// Becomes `account` for good: supplementary groups cleared, then its group, then its uid (in
/// that order: after setuid there would be no right left to change groups).
fn drop_privileges(account: &nix::unistd::User) -> anyhow::Result<()> {
    use nix::unistd::{setgid, setgroups, setuid};
    let user = &account.name;
    setgroups(&[]).context("cannot clear supplementary groups")?;
    setgid(account.gid).with_context(|| format!("cannot switch to group {}", account.gid))?;
    setuid(account.uid).with_context(|| format!("cannot switch to user {user:?}"))?;
    tracing::info!(
        user,
        uid = account.uid.as_raw(),
        "dropped privileges after opening the capture"
    );
    Ok(())
}
