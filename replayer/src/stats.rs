//! The accounting logged every `--stats-interval` while the replayer runs: one `accounting`
//! line for the whole replayer and one `target accounting` line per target. Each carries the
//! totals (`summary=`, the same counts as the final `replayer stopped` and `target totals`
//! lines; the whole replayer's also the responses and drops of all targets together) and what
//! happened over the interval: the rate of requests received, and per target the p50/p99
//! latency of its responses (from [`crate::latency`]).

use std::time::{Duration, Instant};

use tapwire_runtime::periodic::per_second;
use tokio::task::JoinHandle;

use crate::latency::Snapshot;
use crate::metrics::{ReplayerMetrics, TargetMetrics};

/// What the previous line saw, so that the next one reports its own interval.
pub struct Accounting {
    metrics: ReplayerMetrics,
    received: u64,
    targets: Vec<TargetAccounting>,
    since: Instant,
}

struct TargetAccounting {
    name: String,
    metrics: TargetMetrics,
    received: u64,
    latency: Snapshot,
}

impl Accounting {
    pub fn new(metrics: &ReplayerMetrics, targets: &[String]) -> Accounting {
        Accounting {
            metrics: metrics.clone(),
            received: 0,
            targets: targets
                .iter()
                .map(|name| TargetAccounting {
                    name: name.clone(),
                    metrics: metrics.target(name),
                    received: 0,
                    latency: Snapshot::default(),
                })
                .collect(),
            since: Instant::now(),
        }
    }

    /// Logs the lines for the interval since the previous call (or since the start).
    pub fn log_interval(&mut self) {
        let elapsed = self.since.elapsed();
        self.since = Instant::now();
        let received = self.metrics.records_received.get();
        let answered: u64 = self.targets.iter().map(|t| t.metrics.answered()).sum();
        let dropped: u64 = self.targets.iter().map(|t| t.metrics.dropped_total()).sum();
        tracing::info!(
            rate_per_s = per_second(received.saturating_sub(self.received), elapsed),
            answered,
            dropped,
            summary = %self.metrics.summary(),
            "accounting"
        );
        self.received = received;
        for target in &mut self.targets {
            let received = target.metrics.received();
            let rate = per_second(received.saturating_sub(target.received), elapsed);
            target.received = received;
            let latency = target.metrics.latency.buckets.snapshot();
            match latency.quantiles_since(&target.latency) {
                Some(quantiles) => tracing::info!(
                    target = %target.name,
                    rate_per_s = rate,
                    p50_ms = milliseconds(quantiles.p50),
                    p99_ms = milliseconds(quantiles.p99),
                    summary = %target.metrics.summary(),
                    "target accounting"
                ),
                None => tracing::info!(
                    target = %target.name,
                    rate_per_s = rate,
                    summary = %target.metrics.summary(),
                    "target accounting"
                ),
            }
            target.latency = latency;
        }
    }
}

/// Logs `accounting` every `interval` until aborted.
pub fn every(interval: Duration, mut accounting: Accounting) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tapwire_runtime::periodic::every(interval);
        loop {
            tick.tick().await;
            accounting.log_interval();
        }
    })
}

/// Rounded to a microsecond.
fn milliseconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}
