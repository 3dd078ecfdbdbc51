//! tapwire-replayer: receives captured requests and replays each one to every staging target.
//! Data moves through the modules in this order:
//!
//! - [`source`]: where records come from: listeners' gRPC streams ([`source::grpc`], behind
//!   [`source::connections`]' limits, [`source::tls`] and a token) and recorded `.gor` files
//!   ([`source::file`]).
//! - [`intake`]: what every source hands its records to: resent copies dropped ([`dedup`]),
//!   shown to the [`observe`]rs ([`recorder`], [`middleware`]), each stream paced on its own
//!   ([`pace`]) and held while a target's queue is full ([`sink::Room`]).
//! - [`middleware`]: when configured, GoReplay's middleware protocol decides what goes on.
//! - [`fanout`]: each record parsed once into a [`request::ReplayRequest`]; global [`filter`]s,
//!   admission [`rate`] and [`rewrite`]s; offered to every [`sink`].
//! - [`target`]: a sink per staging target: its own filters, [`sample`]r and rate, bounded
//!   queue, workers each with an [`upstream`] HTTP/1 connection (opened by [`connect`], over
//!   TLS for `https://` targets: [`target_tls`]) that writes the captured request byte for
//!   byte, preserved sessions; failures logged by [`target_failures`]. [`print`] is the sink
//!   that shows requests instead. Links and targets alike are a [`stream`], with TLS or not.
//!
//! [`compare`] compares how targets with roles answered (the candidate against the baseline
//! or production, the two baselines' differences as noise), off the send path, into a diff
//! log and an HTML report (`tapwire-replayer report`, and `/report` on the metrics port).
//! [`config`] holds the flags and file keys, [`plan`] their compiled form, [`outcome`] every
//! reason a request is not replayed, [`metrics`] the counters that account for every request
//! (with [`latency`], each target's response times), [`stats`] the accounting logged every
//! `--stats-interval`, [`progress`] the bar a file replay shows on a terminal,
//! [`reachability`] which targets can be reached (checked at start-up, and for readiness).

pub mod compare;
pub mod config;
pub mod connect;
pub mod dedup;
pub mod fanout;
pub mod filter;
pub mod intake;
pub mod latency;
pub mod metrics;
pub mod middleware;
pub mod observe;
pub mod outcome;
pub mod pace;
pub mod plan;
pub mod print;
pub mod progress;
pub mod rate;
pub mod reachability;
pub mod recorder;
pub mod request;
pub mod rewrite;
pub mod sample;
pub mod sink;
pub mod source;
pub mod stats;
pub mod stream;
pub mod target;
pub mod target_failures;
pub mod target_tls;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tapwire_runtime::Shutdown;
use tapwire_runtime::gor_output::OutputDone;
use tapwire_runtime::health::{Condition, Health};

pub use config::ReplayerConfig;
use fanout::FanOut;
use metrics::ReplayerMetrics;
use middleware::Middleware;
use observe::{Observers, ReplayObserver};
pub use plan::EnginePlan;
use request::Dispatch;
use sink::ReplaySink;
use source::Source;
use source::file::FileSource;
use source::grpc::GrpcSource;
use target::Target;

/// How long the outputs (`--record`, `--output-stdout`) may take to write what is queued.
const OUTPUT_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// Every request read was answered, or dropped and counted: nothing was left unsent at
    /// the drain timeout, and no recorded file was cut short.
    pub complete: bool,
    /// The run ended by itself (its files done, or `--exit-after`), requests were received,
    /// and no target answered any of them: everything was dropped.
    pub nothing_answered: bool,
}

/// Replays until `shutdown` is requested, or, when only files are replayed, until they are
/// done (or `--exit-after`); then ends listeners' streams, lets targets finish what is queued
/// (up to the drain timeout), and logs the final accounting.
pub async fn run(plan: EnginePlan, shutdown: Shutdown) -> anyhow::Result<RunOutcome> {
    if plan.dry_run {
        return dry_run(&plan).await;
    }
    let mut registry = Registry::default();
    let metrics = ReplayerMetrics::register(&mut registry);
    let signalled = shutdown.clone();
    let ends_by_itself = plan.files.is_some() || plan.exit_after.is_some();
    // Ready (`/readyz`) while serving the gRPC port (if any) and one target (if any) is
    // reachable.
    let health = Health::new();
    let serving = plan
        .grpc_listen
        .map(|_| health.condition("not serving the gRPC port"));
    let target_reachable =
        (!plan.targets.is_empty()).then(|| health.condition("no target is reachable"));
    let compare_metrics = compare::comparer::CompareMetrics::register(&mut registry);
    let comparison = plan
        .compare
        .map(|compare| {
            compare::stage::CompareStage::start(compare, compare_metrics, plan.stats_interval)
        })
        .transpose()?;
    let stage = comparison.as_ref().map(|(stage, _)| Arc::clone(stage));
    if let Some(addr) = plan.metrics_listen {
        let pages = stage
            .iter()
            .map(|stage| {
                let stage = Arc::clone(stage);
                tapwire_runtime::metrics_endpoint::Page {
                    path: "/report",
                    render: Arc::new(move || compare::report::render(&stage.recent_summary())),
                }
            })
            .collect();
        tapwire_runtime::serve_metrics(addr, Arc::new(registry), health, pages).await?;
    }
    let grpc = match plan.grpc_listen {
        Some(addr) => Some(
            GrpcSource::bind(
                addr,
                plan.grpc_pacing,
                plan.grpc_limits,
                plan.token,
                plan.tls,
                metrics.clone(),
            )
            .await?,
        ),
        None => None,
    };
    // Stops the sources: on the signal, after --exit-after, or when only files are replayed
    // and they are done.
    let stop = shutdown.or_after(plan.exit_after);

    let mut outputs: Vec<OutputDone> = Vec::new();
    let mut observers: Vec<Arc<dyn ReplayObserver>> = Vec::new();
    if let Some(template) = plan.record {
        let (recorder, done) =
            recorder::Recorder::start(template, &metrics).context("cannot start recording")?;
        observers.push(recorder);
        outputs.push(done);
    }
    let middleware = plan
        .middleware
        .map(|settings| Middleware::start(settings, metrics.clone()))
        .transpose()?;
    if let Some(middleware) = &middleware {
        observers.push(Arc::clone(middleware) as Arc<dyn ReplayObserver>);
    }
    let observers = Observers::new(observers);

    let target_names: Vec<String> = plan.targets.iter().map(|t| t.name.clone()).collect();
    // Every target is tried once before traffic flows, so an unreachable one is named now.
    let reachable_at_start = reachability::check_at_start(&plan.targets).await;
    // Then probed only when someone can read readiness: a probe is a connection to staging.
    if let (Some(reachable), Some(_)) = (&target_reachable, plan.metrics_listen) {
        for (target, at_start) in plan.targets.iter().zip(reachable_at_start) {
            tokio::spawn(reachability::probe_target(
                target.name.clone(),
                target.address.clone(),
                reachable.clone(),
                stop.clone(),
                at_start,
            ));
        }
    }
    let mut sinks: Vec<Box<dyn ReplaySink>> = Vec::new();
    let mut backpressure = Vec::new();
    let mut target_workers = Vec::new();
    for target in plan.targets {
        let (target, worker) = Target::start(
            target,
            &metrics,
            plan.preserve_connections,
            observers.clone(),
            stage.clone(),
        );
        backpressure.push(target.backpressure());
        sinks.push(Box::new(target));
        target_workers.push(worker);
    }
    if let Some(prettify) = plan.print {
        let (printer, done) =
            print::PrintSink::start(prettify, &metrics).context("cannot start --output-stdout")?;
        sinks.push(Box::new(printer));
        outputs.push(done);
    }
    let global = plan.global;
    let fanout: Arc<dyn Dispatch> = Arc::new(FanOut::new(
        global.filters,
        global.rewrites,
        global.admission,
        sinks,
        stage.clone(),
        metrics.clone(),
    ));
    let downstream: Arc<dyn Dispatch> = match &middleware {
        Some(middleware) => {
            middleware.connect(Arc::clone(&fanout));
            Arc::clone(middleware) as Arc<dyn Dispatch>
        }
        None => Arc::clone(&fanout),
    };
    let intake = intake::Intake::new(
        Arc::downgrade(&downstream),
        global.pacing,
        sink::Room::new(backpressure),
        observers,
        stage,
        metrics.clone(),
    );

    let grpc_task = grpc.map(|grpc| {
        tracing::info!(addr = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = grpc.uses_tls(), targets = target_names.len(), "grpc server listening");
        let (intake, stop) = (intake.clone(), stop.clone());
        let serving = serving.as_ref().map(Condition::hold);
        tokio::spawn(async move {
            let served = Source::Grpc(grpc).run(intake, stop).await;
            drop(serving);
            served
        })
    });
    let accounting = stats::Accounting::new(&metrics, &target_names);
    let accounting = plan
        .stats_interval
        .map(|interval| stats::every(interval, accounting));
    let mut cut_short = false;
    if let Some(files) = plan.files {
        let settings = files.clone();
        let source = FileSource::new(files, metrics.clone());
        let (report, done) = (source.report(), source.done());
        let progress = progress::on_terminal()
            .then(|| start_progress(&settings, done, &metrics, &target_names));
        tracing::info!(files = settings.files.len(), "replaying recorded files");
        Source::File(source)
            .run(intake.clone(), stop.clone())
            .await?;
        if let Some(progress) = progress {
            progress.abort();
        }
        cut_short = report.cut_short.load(std::sync::atomic::Ordering::Relaxed);
        if grpc_task.is_none() {
            stop.request();
        }
    }
    drop(intake);
    if let Some(grpc_task) = grpc_task {
        grpc_task.await.context("the gRPC server panicked")??;
    }

    // The sources have ended: what the middleware still holds is waited for, then everything
    // downstream lets go of the sinks, which drain.
    if let Some(middleware) = middleware {
        middleware.finish().await;
    }
    drop(downstream);
    drop(fanout);
    let drain_timeout = plan.drain_timeout;
    tracing::info!(timeout = ?drain_timeout, "stopped accepting; draining target queues");
    let drained = tokio::time::timeout(drain_timeout, async {
        for worker in target_workers {
            let _ = worker.await;
        }
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!("drain timeout passed; requests still queued are not sent");
    }
    let _ = tokio::task::spawn_blocking(move || {
        for output in outputs {
            output.wait(OUTPUT_CLOSE_WAIT);
        }
    })
    .await;
    if let Some((_, done)) = comparison {
        let _ = tokio::task::spawn_blocking(move || done.finish()).await;
    }
    if let Some(accounting) = accounting {
        accounting.abort();
    }
    tracing::info!(summary = %metrics.summary(), "replayer stopped");
    // Only requests a target tried to send (or dropped before sending) count: a run whose
    // requests were all filtered or sampled out did what it was asked.
    let (mut answered, mut offered) = (0, 0);
    for name in &target_names {
        let target = metrics.target(name);
        answered += target.answered();
        offered += target.sent.get() + target.dropped_total();
        tracing::info!(target = %name, summary = %target.summary(), "target totals");
    }
    Ok(RunOutcome {
        complete: drained && !cut_short,
        nothing_answered: ends_by_itself
            && !signalled.is_requested()
            && !target_names.is_empty()
            && offered > 0
            && answered == 0,
    })
}

/// The progress bar of a file replay on a terminal, counted against the requests the files
/// hold (counted in the background: counting means reading the files once more).
fn start_progress(
    files: &source::file::FileSettings,
    done: Arc<std::sync::atomic::AtomicU64>,
    metrics: &ReplayerMetrics,
    targets: &[String],
) -> tokio::task::JoinHandle<()> {
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if !files.repeat {
        let (total, paths) = (Arc::clone(&total), files.files.clone());
        tokio::task::spawn_blocking(move || {
            let count = source::file::count_requests(&paths);
            total.store(count, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let metrics = metrics.clone();
    let targets: Vec<_> = targets.iter().map(|name| metrics.target(name)).collect();
    progress::show(total, done, move || {
        metrics.rejected_total()
            + targets
                .iter()
                .map(metrics::TargetMetrics::dropped_total)
                .sum::<u64>()
    })
}

/// `--input-file-dry-run`: what the files hold and how long replaying them would take.
async fn dry_run(plan: &EnginePlan) -> anyhow::Result<RunOutcome> {
    let files = plan
        .files
        .clone()
        .context("--input-file-dry-run needs --input-file")?;
    let pacing = files.pacing;
    let paths = files.files.clone();
    let (report, cut_short) =
        tokio::task::spawn_blocking(move || source::file::dry_run(&paths, pacing)).await?;
    let span = match (report.first_ns, report.last_ns) {
        (Some(first), Some(last)) => Duration::from_nanos(last - first),
        _ => Duration::ZERO,
    };
    println!("files: {}", report.files);
    println!(
        "requests: {}  production responses: {}  replayed responses (skipped): {}  malformed: {}",
        report.requests, report.responses, report.replayed_responses, report.malformed
    );
    println!(
        "time span: {}  out of timestamp order: {}",
        humantime::format_duration(round_to_millis(span)),
        report.out_of_order
    );
    match report.expected {
        Some(expected) => println!(
            "expected replay time: {} (timing original, speed {}{})",
            humantime::format_duration(round_to_millis(expected)),
            pacing.speed,
            pacing
                .max_wait
                .map(|wait| format!(", pauses capped at {}", humantime::format_duration(wait)))
                .unwrap_or_default()
        ),
        None => println!("expected replay time: as fast as the targets answer (timing asap)"),
    }
    Ok(RunOutcome {
        complete: !cut_short,
        nothing_answered: false,
    })
}

fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}
