//! The replayer's counters. Per target, every request offered is accounted for:
//! `offered = responses(by status class) + dropped(by reason) + queued or in flight`.
//! Each family is registered once, in a fixed order, so `/metrics` lists them the same way on
//! every run; the `summary` lines are the accounting the logs show.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use tapwire_runtime::gor_output::{Outcome, Tally};

use crate::latency::LatencyBuckets;
use crate::outcome::{FilterRule, LinkRefusal, RejectReason, TargetDropReason};

macro_rules! label_value_from_as_str {
    ($($kind:ty),*) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}
label_value_from_as_str!(TargetDropReason, RejectReason, FilterRule, LinkRefusal);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetStatusLabel {
    target: String,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetReasonLabel {
    target: String,
    reason: TargetDropReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabel {
    reason: RejectReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabel {
    reason: LinkRefusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabel {
    target: String,
    rule: FilterRule,
}

/// The `target` label of filters that apply before the fan-out.
pub const ALL_TARGETS: &str = "*";

/// Status classes, indexed by the status code's first digit minus one.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every replayer metric family; per-target handles come from [`ReplayerMetrics::target`].
#[derive(Debug, Clone)]
pub struct ReplayerMetrics {
    pub records_received: Counter,
    /// Records a listener resent after a reconnect that were already replayed; not counted as
    /// received.
    pub records_duplicate: Counter,
    /// Listener streams refused for a missing or wrong token.
    pub streams_unauthenticated: Counter,
    /// Listener connections refused by TLS: plaintext, no certificate, or an untrusted one.
    pub tls_handshakes_failed: Counter,
    /// Listener connections and streams refused before any record was taken, by reason.
    link_refused: [Counter; LinkRefusal::ALL.len()],
    /// Failed `accept`s on the gRPC port (out of file descriptors...), each followed by a pause.
    pub accept_errors: Counter,
    /// Production responses from listeners that track them (kept for comparison).
    pub production_responses_received: Counter,
    rejected: [Counter; RejectReason::ALL.len()],
    sent: Family<TargetLabel, Counter>,
    responses: Family<TargetStatusLabel, Counter>,
    dropped: Family<TargetReasonLabel, Counter>,
    latency: Family<TargetLabel, Histogram>,
    /// Each target's fine-grained latency buckets, for the accounting line's p50/p99.
    latency_buckets: Arc<Mutex<BTreeMap<String, Arc<LatencyBuckets>>>>,
    filtered_family: Family<RuleLabel, Counter>,
    /// Filters applied before the fan-out (`target="*"`).
    filtered: [Counter; FilterRule::ALL.len()],
    pub middleware: MiddlewareMetrics,
    /// Messages written by `--record` (requests, production's and targets' responses).
    pub recorded: Counter,
    /// Messages `--record` or `--output-stdout` could not write: queue full, or the file failed.
    pub outputs_lost: Counter,
    /// Requests printed by `--output-stdout`.
    pub printed: Counter,
}

/// What the middleware did besides passing requests on.
#[derive(Debug, Clone, Default)]
pub struct MiddlewareMetrics {
    /// Lines on its stdout that are not a hex-encoded message.
    pub invalid_lines: Counter,
    /// Requests it wrote back after their timeout (already counted as filtered).
    pub late: Counter,
    /// Requests it wrote that it was never given (they are replayed too).
    pub injected: Counter,
    /// Responses (types 2 and 3) that did not fit its queue.
    pub responses_dropped: Counter,
    /// Times it was started again after dying or hanging.
    pub restarts: Counter,
}

/// One target's metric handles, resolved once so replaying never looks labels up.
#[derive(Debug, Clone)]
pub struct TargetMetrics {
    pub sent: Counter,
    responses: [Counter; STATUS_CLASSES.len()],
    dropped: [Counter; TargetDropReason::ALL.len()],
    filtered: [Counter; FilterRule::ALL.len()],
    pub latency: Latency,
}

/// A target's response times: the Prometheus histogram, and the buckets the accounting line
/// takes its p50/p99 from (see [`crate::latency`]).
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram,
    pub buckets: Arc<LatencyBuckets>,
}

impl Latency {
    pub fn observe(&self, seconds: f64) {
        self.histogram.observe(seconds);
        self.buckets.record(seconds);
    }
}

impl ReplayerMetrics {
    /// Registers every metric under `tapwire_replayer_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("tapwire_replayer");
        let rejected_family = Family::<RejectLabel, Counter>::default();
        let filtered_family = Family::<RuleLabel, Counter>::default();
        let refused_family = Family::<RefusalLabel, Counter>::default();
        let filtered = FilterRule::ALL.map(|rule| {
            filtered_family.get_or_create_owned(&RuleLabel {
                target: ALL_TARGETS.to_owned(),
                rule,
            })
        });
        let metrics = ReplayerMetrics {
            records_received: Counter::default(),
            records_duplicate: Counter::default(),
            streams_unauthenticated: Counter::default(),
            tls_handshakes_failed: Counter::default(),
            link_refused: LinkRefusal::ALL
                .map(|reason| refused_family.get_or_create_owned(&RefusalLabel { reason })),
            accept_errors: Counter::default(),
            production_responses_received: Counter::default(),
            rejected: RejectReason::ALL
                .map(|reason| rejected_family.get_or_create_owned(&RejectLabel { reason })),
            sent: Family::default(),
            responses: Family::default(),
            dropped: Family::default(),
            // 100 µs to ~26 s.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 19))
            }),
            latency_buckets: Arc::default(),
            filtered_family: filtered_family.clone(),
            filtered,
            middleware: MiddlewareMetrics::default(),
            recorded: Counter::default(),
            outputs_lost: Counter::default(),
            printed: Counter::default(),
        };
        for (name, help, counter) in [
            (
                "middleware_invalid_lines",
                "Lines the middleware wrote that are not a hex-encoded message",
                &metrics.middleware.invalid_lines,
            ),
            (
                "middleware_late",
                "Requests the middleware wrote back after their timeout (counted as filtered)",
                &metrics.middleware.late,
            ),
            (
                "middleware_injected",
                "Requests the middleware wrote that it was never given (replayed too)",
                &metrics.middleware.injected,
            ),
            (
                "middleware_responses_dropped",
                "Responses (production's and targets') that did not fit the middleware's queue",
                &metrics.middleware.responses_dropped,
            ),
            (
                "middleware_restarts",
                "Times the middleware was started again after dying or hanging",
                &metrics.middleware.restarts,
            ),
            (
                "recorded",
                "Messages written by --record (requests, production's and targets' responses)",
                &metrics.recorded,
            ),
            (
                "outputs_lost",
                "Messages --record or --output-stdout could not write (queue full, or the file failed)",
                &metrics.outputs_lost,
            ),
            (
                "requests_printed",
                "Requests printed by --output-stdout",
                &metrics.printed,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "requests_filtered",
            "Requests not replayed because a filter rule or sampling refused them (target \"*\": before the fan-out)",
            filtered_family,
        );
        registry.register(
            "records_received",
            "Records received from listeners",
            metrics.records_received.clone(),
        );
        registry.register(
            "streams_unauthenticated",
            "Listener streams refused for a missing or wrong token",
            metrics.streams_unauthenticated.clone(),
        );
        registry.register(
            "tls_handshakes_failed",
            "Listener connections refused by TLS: plaintext, no certificate or an untrusted one",
            metrics.tls_handshakes_failed.clone(),
        );
        registry.register(
            "link_refused",
            "Listener connections and streams refused before any record was taken, by reason",
            refused_family,
        );
        registry.register(
            "accept_errors",
            "Failed accepts on the gRPC port (out of file descriptors...), each followed by a pause",
            metrics.accept_errors.clone(),
        );
        registry.register(
            "records_duplicate",
            "Resent records already replayed (a listener resends what was not acknowledged)",
            metrics.records_duplicate.clone(),
        );
        registry.register(
            "production_responses_received",
            "Production responses received from listeners run with --track-responses",
            metrics.production_responses_received.clone(),
        );
        registry.register(
            "records_rejected",
            "Received records that could not be replayed at all, by reason",
            rejected_family,
        );
        registry.register(
            "requests_sent",
            "Requests sent to each target",
            metrics.sent.clone(),
        );
        registry.register(
            "responses",
            "Responses from each target, by status class",
            metrics.responses.clone(),
        );
        registry.register(
            "requests_dropped",
            "Requests that got no response from a target, by reason",
            metrics.dropped.clone(),
        );
        registry.register(
            "response_seconds",
            "Time from sending a request to a target to its complete response",
            metrics.latency.clone(),
        );
        metrics
    }

    /// Counts each message an output (`--record`, `--output-stdout`) writes in `written`, and
    /// each it cannot in `outputs_lost`.
    pub fn output_tally(&self, written: fn(&ReplayerMetrics) -> &Counter) -> Tally {
        let metrics = self.clone();
        std::sync::Arc::new(move |_, outcome| match outcome {
            Outcome::Written => {
                written(&metrics).inc();
            }
            Outcome::Full | Outcome::Error => {
                metrics.outputs_lost.inc();
            }
        })
    }

    /// Received records that could not be replayed at all, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(Counter::get).sum()
    }

    pub fn link_refused(&self, reason: LinkRefusal) -> &Counter {
        &self.link_refused[reason as usize]
    }

    pub fn rejected(&self, reason: RejectReason) -> &Counter {
        &self.rejected[reason as usize]
    }

    /// Counter of requests refused by a global `rule`.
    pub fn filtered(&self, rule: FilterRule) -> &Counter {
        &self.filtered[rule as usize]
    }

    pub fn target(&self, target: &str) -> TargetMetrics {
        let label = TargetLabel {
            target: target.to_owned(),
        };
        TargetMetrics {
            sent: self.sent.get_or_create_owned(&label),
            responses: STATUS_CLASSES.map(|status| {
                self.responses.get_or_create_owned(&TargetStatusLabel {
                    target: target.to_owned(),
                    status,
                })
            }),
            dropped: TargetDropReason::ALL.map(|reason| {
                self.dropped.get_or_create_owned(&TargetReasonLabel {
                    target: target.to_owned(),
                    reason,
                })
            }),
            filtered: FilterRule::ALL.map(|rule| {
                self.filtered_family.get_or_create_owned(&RuleLabel {
                    target: target.to_owned(),
                    rule,
                })
            }),
            latency: Latency {
                histogram: self.latency.get_or_create_owned(&label),
                buckets: Arc::clone(
                    self.latency_buckets
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(target.to_owned())
                        .or_default(),
                ),
            },
        }
    }

    /// One line for logs: received and rejected records.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "received={} duplicates={} production_responses={}",
            self.records_received.get(),
            self.records_duplicate.get(),
            self.production_responses_received.get()
        );
        for reason in RejectReason::ALL {
            let count = self.rejected(reason).get();
            if count > 0 {
                let _ = write!(line, " rejected_{}={count}", reason.as_str());
            }
        }
        write_filtered(&mut line, &self.filtered);
        let middleware = &self.middleware;
        for (name, counter) in [
            ("middleware_injected", &middleware.injected),
            ("middleware_late", &middleware.late),
            ("middleware_invalid_lines", &middleware.invalid_lines),
            ("middleware_restarts", &middleware.restarts),
            ("recorded", &self.recorded),
            ("outputs_lost", &self.outputs_lost),
            ("printed", &self.printed),
        ] {
            if counter.get() > 0 {
                let _ = write!(line, " {name}={}", counter.get());
            }
        }
        line
    }
}

impl TargetMetrics {
    pub fn response(&self, status: http::StatusCode) -> &Counter {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        &self.responses[class]
    }

    pub fn dropped(&self, reason: TargetDropReason) -> &Counter {
        &self.dropped[reason as usize]
    }

    /// Requests this target got no response to, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum()
    }

    /// Counter of this target's requests refused by `rule`.
    pub fn filtered(&self, rule: FilterRule) -> &Counter {
        &self.filtered[rule as usize]
    }

    /// Requests that got a response, whatever its status.
    pub fn answered(&self) -> u64 {
        self.responses.iter().map(Counter::get).sum()
    }

    /// Requests offered to this target and decided on: sent, filtered, or dropped before
    /// sending (over its rate, its queue full). Those still queued count once sent.
    pub fn received(&self) -> u64 {
        let filtered: u64 = self.filtered.iter().map(Counter::get).sum();
        let unsent: u64 = TargetDropReason::ALL
            .into_iter()
            .filter(|reason| reason.is_before_sending())
            .map(|reason| self.dropped(reason).get())
            .sum();
        self.sent.get() + filtered + unsent
    }

    /// One line for logs: this target's accounting.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "received={} sent={} responses={}",
            self.received(),
            self.sent.get(),
            self.answered()
        );
        for (class, counter) in STATUS_CLASSES.iter().zip(&self.responses) {
            if counter.get() > 0 {
                let _ = write!(line, " status_{class}={}", counter.get());
            }
        }
        let _ = write!(line, " dropped={}", self.dropped_total());
        for reason in TargetDropReason::ALL {
            let count = self.dropped(reason).get();
            if count > 0 {
                let _ = write!(line, " dropped_{}={count}", reason.as_str());
            }
        }
        write_filtered(&mut line, &self.filtered);
        line
    }
}

fn write_filtered(line: &mut String, filtered: &[Counter; FilterRule::ALL.len()]) {
    for (rule, counter) in FilterRule::ALL.iter().zip(filtered) {
        if counter.get() > 0 {
            let _ = write!(line, " filtered_{}={}", rule.as_str(), counter.get());
        }
    }
}
