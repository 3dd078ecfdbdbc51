//! tapwire-listener: runs on a production host, captures the HTTP/1.x requests arriving at a
//! service, and streams them to one or more replayers. Data moves through the modules in this
//! order:
//!
//! - [`capture`]: libpcap handle, BPF filter, and the capture loop on its own thread.
//! - [`packet`]: link layer, IP and TCP decoding of each frame into a [`packet::Segment`].
//! - [`reassembly`]: per-connection sequence ordering, retransmissions, flow lifetimes.
//! - [`http`]: cutting each ordered byte stream into complete requests.
//! - [`transport`]: the bounded buffer, and the routing of each connection to a replayer.
//! - [`link`]: one batched, acknowledged gRPC stream per replayer ([`replayers`] says which);
//!   [`spool`] keeps batches on disk while no replayer is up.
//!
//! [`config`] holds the flags, [`metrics`] the counters that account for every request.

pub mod capture;
pub mod config;
pub mod http;
pub mod link;
pub mod metrics;
pub mod packet;
pub mod reassembly;
pub mod replayers;
pub mod spool;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use prometheus_client::registry::Registry;

pub use config::ListenerConfig;
use metrics::{DropReason, ListenerMetrics};

/// How long the links may take to hand back what they hold once told to stop.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the listener until `shutdown` resolves (or capture fails), then drains what it can
/// within the drain timeout and logs the final accounting.
pub async fn run(config: ListenerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Read before capturing, so a bad token file stops the listener at once.
    let link_config = config.link()?;
    let mut registry = Registry::default();
    let metrics = ListenerMetrics::register(&mut registry);
    if let Some(addr) = config.metrics_listen {
        tapwire_telemetry::serve_metrics(addr, Arc::new(registry)).await?;
    }
    let spool = match &config.spool_dir {
        Some(dir) => Some(spool::Spool::open(
            dir,
            config.spool_bytes,
            config.buffer_policy,
            metrics.clone(),
        )?),
        None => None,
    };

    let source = match &config.input_pcap {
        Some(path) => {
            capture::PacketSource::open_file(path, &config.ports, config.track_responses)?
        }
        None => capture::PacketSource::open_live(&config.capture())?,
    };
    if let Some(user) = &config.user {
        drop_privileges(user)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (queue, records) = transport::record_queue(
        config.buffer_records as usize,
        config.buffer_bytes,
        metrics.clone(),
    );
    let queue = queue
        .redacting(config.redaction())
        .with_policy(config.buffer_policy);
    let (capture_done, mut capture_result) = tokio::sync::oneshot::channel();
    let capture_thread = {
        let mut reassembler = reassembly::Reassembler::new(config.reassembly());
        if config.track_responses {
            reassembler = reassembler.tracking_responses();
        }
        let (metrics, stop) = (metrics.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let result = source.run(reassembler, queue, metrics, stop);
                let _ = capture_done.send(result);
            })
            .context("cannot start the capture thread")?
    };
    let accounting = tokio::spawn(report_accounting(metrics.clone()));
    let (stop_links, links_stopping) = tokio::sync::watch::channel(false);
    let mut link = tokio::spawn(transport::stream_to_replayers(
        link_config,
        records,
        spool,
        metrics.clone(),
        links_stopping,
    ));

    // A file source ends by itself; a live one runs until shutdown (or fails).
    let capture_ended = tokio::select! {
        () = shutdown => None,
        result = &mut capture_result => Some(result),
    };
    stop.store(true, Ordering::Relaxed);
    let capture_outcome = match capture_ended {
        Some(result) => result,
        None => capture_result.await,
    };
    // The thread has finished (it sent its result); joining cannot block for long.
    let _ = capture_thread.join();

    tracing::info!(timeout = ?config.drain_timeout, "capture stopped; draining to the replayers");
    let spool = match tokio::time::timeout(config.drain_timeout, &mut link).await {
        Ok(finished) => finished.ok().flatten(),
        Err(_) => {
            tracing::warn!(
                spooling = config.spool_dir.is_some(),
                "drain timeout passed; what is still unacknowledged is spooled, or dropped"
            );
            let _ = stop_links.send(true);
            match tokio::time::timeout(STOP_GRACE, &mut link).await {
                Ok(finished) => finished.ok().flatten(),
                Err(_) => {
                    link.abort();
                    None
                }
            }
        }
    };
    accounting.abort();
    // Whatever is neither sent, spooled nor already counted was in memory at exit.
    let (spooled, spooled_responses) = spool
        .as_ref()
        .map_or((0, 0), |spool| (spool.requests(), spool.responses()));
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

    match capture_outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => anyhow::bail!("the capture thread ended without reporting"),
    }
}

/// Keeps the buffered-records gauge current and logs the accounting every 10 seconds, so that
/// `captured + restored = sent + buffered + dropped` can be checked at any time, not only at
/// exit.
async fn report_accounting(metrics: ListenerMetrics) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    for second in 0u64.. {
        tick.tick().await;
        metrics.records_buffered.set(metrics.buffered() as i64);
        if second % 10 == 9 {
            tracing::info!(summary = %metrics.summary(), "accounting");
        }
    }
}

/// Becomes `user` for good: supplementary groups cleared, then its group, then its uid (in that
/// order: after setuid there would be no right left to change groups).
fn drop_privileges(user: &str) -> anyhow::Result<()> {
    use nix::unistd::{User, setgid, setgroups, setuid};
    let account = User::from_name(user)
        .with_context(|| format!("cannot look up user {user:?}"))?
        .with_context(|| format!("no user {user:?}"))?;
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
