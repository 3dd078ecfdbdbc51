//! tapwire-replayer: receives captured requests and replays each one to every staging target.
//! Data moves through the modules in this order:
//!
//! - [`source`]: where records come from: listeners' gRPC streams ([`source::grpc`], guarded by
//!   [`source::tls`] and a token).
//! - [`intake`]: what every source hands its records to: resent copies dropped ([`dedup`]),
//!   each stream paced on its own ([`pace`]).
//! - [`fanout`]: each record parsed once into a [`request::ReplayRequest`]; global [`filter`]s,
//!   admission [`rate`] and [`rewrite`]s; offered to every [`sink`].
//! - [`target`]: a sink per staging target: its own filters, [`sample`]r and rate, bounded
//!   queue, concurrency-limited hyper client, preserved sessions.
//!
//! [`config`] holds the flags and file keys, [`plan`] their compiled form, [`outcome`] every
//! reason a request is not replayed, [`metrics`] the counters that account for every request.

pub mod config;
pub mod dedup;
pub mod fanout;
pub mod filter;
pub mod intake;
pub mod metrics;
pub mod outcome;
pub mod pace;
pub mod plan;
pub mod rate;
pub mod request;
pub mod rewrite;
pub mod sample;
pub mod sink;
pub mod source;
pub mod target;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tapwire_runtime::Shutdown;

pub use config::ReplayerConfig;
use fanout::FanOut;
use metrics::ReplayerMetrics;
pub use plan::EnginePlan;
use sink::ReplaySink;
use source::Source;
use source::grpc::GrpcSource;
use target::Target;

/// Serves listeners until `shutdown` is requested, then ends their streams, lets targets finish
/// what is queued (up to the drain timeout), and logs the final accounting.
pub async fn run(plan: EnginePlan, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = ReplayerMetrics::register(&mut registry);
    if let Some(addr) = plan.metrics_listen {
        tapwire_runtime::serve_metrics(addr, Arc::new(registry)).await?;
    }
    let target_names: Vec<String> = plan.targets.iter().map(|t| t.name.clone()).collect();
    let grpc = GrpcSource::bind(plan.grpc_listen, plan.token, plan.tls, metrics.clone()).await?;
    let (targets, target_workers): (Vec<_>, Vec<_>) = plan
        .targets
        .into_iter()
        .map(|target| Target::start(target, &metrics, plan.preserve_connections))
        .unzip();
    let sinks = targets
        .into_iter()
        .map(|target| Box::new(target) as Box<dyn ReplaySink>)
        .collect();
    let global = plan.global;
    let fanout = Arc::new(FanOut::new(
        global.filters,
        global.rewrites,
        global.admission,
        sinks,
        metrics.clone(),
    ));
    let intake = intake::Intake::new(
        &fanout,
        plan.timing,
        plan.speed,
        global.pacing,
        metrics.clone(),
    );
    tracing::info!(addr = %grpc.local_addr()?, tls = grpc.uses_tls(), targets = target_names.len(),
        "grpc server listening");
    Source::Grpc(grpc).run(intake, shutdown).await?;

    tracing::info!(timeout = ?plan.drain_timeout, "stopped accepting; draining target queues");
    // Streams have ended, so this is the last handle: dropping it closes every sink's queue.
    drop(fanout);
    let drained = tokio::time::timeout(plan.drain_timeout, async {
        for worker in target_workers {
            let _ = worker.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout passed; requests still queued are not sent");
    }
    tracing::info!(summary = %metrics.summary(), "replayer stopped");
    for name in target_names {
        tracing::info!(target = %name, summary = %metrics.target(&name).summary(), "target totals");
    }
    Ok(())
}
