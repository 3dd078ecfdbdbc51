//! The whole tapwire pipeline on loopback: a "production" server, a listener capturing its port,
//! a replayer, and staging targets, all started and wired together, plus a [`Report`] that
//! accounts for every request from production to each target.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::process::{Process, ResourceUsage, addr_in};
use crate::scrape::{Snapshot, scrape};
use crate::servers::RecordingServer;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What to start.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub targets: usize,
    /// Record every request at production and targets (for content checks; costs memory).
    pub record: bool,
    pub listener_args: Vec<String>,
    pub replayer_args: Vec<String>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            targets: 2,
            record: true,
            listener_args: Vec::new(),
            replayer_args: Vec::new(),
        }
    }
}

/// A running pipeline. Dropping it kills the processes.
pub struct Pipeline {
    pub production: RecordingServer,
    pub targets: Vec<RecordingServer>,
    pub replayer: Process,
    pub listener: Process,
    pub replayer_grpc: SocketAddr,
    pub replayer_metrics: SocketAddr,
    pub listener_metrics: SocketAddr,
}

/// Fails loudly when live capture is impossible, instead of letting a test pass vacuously.
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::Uid::effective().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "live capture needs root (or CAP_NET_RAW): run as root, e.g. `sudo make test` or `sudo make demo`"
        )
    }
}

impl Pipeline {
    /// Starts everything and returns once the listener is capturing and linked to the replayer.
    pub async fn start(options: PipelineOptions) -> anyhow::Result<Pipeline> {
        require_root()?;
        let production = RecordingServer::start(options.record).await?;
        let mut targets = Vec::new();
        for _ in 0..options.targets {
            targets.push(RecordingServer::start(options.record).await?);
        }

        let mut replayer_args = vec![
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        for target in &targets {
            replayer_args.extend(["--target".into(), target.url()]);
        }
        replayer_args.extend(options.replayer_args.iter().cloned());
        let replayer = Process::spawn("tapwire-replayer", &replayer_args)?;
        let replayer_metrics = ready_addr(&replayer, "metrics endpoint listening").await?;
        let replayer_grpc = ready_addr(&replayer, "grpc server listening").await?;

        let mut listener_args = vec![
            "--interface".into(),
            "lo".into(),
            "--port".into(),
            production.addr().port().to_string(),
            "--replayer".into(),
            format!("http://{replayer_grpc}"),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--listener-id".into(),
            "testkit".into(),
        ];
        listener_args.extend(options.listener_args.iter().cloned());
        let listener = Process::spawn("tapwire-listener", &listener_args)?;
        let listener_metrics = ready_addr(&listener, "metrics endpoint listening").await?;
        listener
            .wait_for_line("capture started", READY_TIMEOUT)
            .await?;
        listener
            .wait_for_line("connected to replayer", READY_TIMEOUT)
            .await?;
        Ok(Pipeline {
            production,
            targets,
            replayer,
            listener,
            replayer_grpc,
            replayer_metrics,
            listener_metrics,
        })
    }

    /// Waits until every target has served `count` requests, or `timeout` passes.
    /// Returns whether all of them got there.
    pub async fn wait_for_targets(&self, count: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for target in &self.targets {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if target.wait_for_served(count, remaining).await < count {
                return false;
            }
        }
        true
    }

    pub fn listener_usage(&self) -> anyhow::Result<ResourceUsage> {
        self.listener.resource_usage()
    }

    /// Stops the listener (SIGTERM: it drains everything to the replayer and logs its final
    /// accounting), takes the replayer's counts, stops the replayer, and reports.
    pub async fn finish(mut self, sent_to_production: u64) -> anyhow::Result<Report> {
        let grace = Duration::from_secs(15);
        let status = self.listener.terminate(grace).await?;
        anyhow::ensure!(
            status.success(),
            "listener exited with {status}:\n{}",
            self.listener.log()
        );
        let summary = self
            .listener
            .wait_for_line("listener stopped", grace)
            .await?;
        let listener = ListenerSummary::parse(&summary)?;
        let replayer = scrape(self.replayer_metrics).await?;
        let report = Report::new(&self, sent_to_production, &listener, &replayer);
        let status = self.replayer.terminate(grace).await?;
        anyhow::ensure!(
            status.success(),
            "replayer exited with {status}:\n{}",
            self.replayer.log()
        );
        Ok(report)
    }
}

/// The listener's final accounting, from the `listener stopped summary=...` line it logs at exit.
#[derive(Debug, Clone, Default)]
pub struct ListenerSummary {
    counts: BTreeMap<String, u64>,
}

impl ListenerSummary {
    pub fn parse(line: &str) -> anyhow::Result<ListenerSummary> {
        let fields = line
            .split_once("summary=")
            .with_context(|| format!("no summary in {line:?}"))?
            .1;
        let counts = fields
            .split_whitespace()
            .filter_map(|field| {
                let (key, value) = field.split_once('=')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect();
        Ok(ListenerSummary { counts })
    }

    pub fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// Drop counts by reason (`dropped_<reason>=N` fields).
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        self.counts
            .iter()
            .filter_map(|(key, &count)| Some((key.strip_prefix("dropped_")?.to_owned(), count)))
            .collect()
    }
}

async fn ready_addr(process: &Process, message: &str) -> anyhow::Result<SocketAddr> {
    let line = process.wait_for_line(message, READY_TIMEOUT).await?;
    addr_in(&line).with_context(|| format!("no addr= in {line:?}"))
}

/// One target's side of the accounting.
#[derive(Debug, Clone)]
pub struct TargetReport {
    pub url: String,
    pub sent: u64,
    pub responses: u64,
    pub responses_by_status: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    /// Requests the target server itself counted.
    pub served: u64,
}

/// Every count from production to each target.
#[derive(Debug, Clone)]
pub struct Report {
    pub sent_to_production: u64,
    pub served_by_production: u64,
    pub captured: u64,
    pub streamed: u64,
    pub listener_dropped: BTreeMap<String, u64>,
    pub kernel_dropped_packets: u64,
    pub received_by_replayer: u64,
    pub rejected_by_replayer: BTreeMap<String, u64>,
    pub targets: Vec<TargetReport>,
}

impl Report {
    fn new(
        pipeline: &Pipeline,
        sent_to_production: u64,
        listener: &ListenerSummary,
        replayer: &Snapshot,
    ) -> Report {
        let targets = pipeline
            .targets
            .iter()
            .map(|server| {
                let url = server.url();
                let filter = [("target", url.as_str())];
                TargetReport {
                    sent: replayer.sum("tapwire_replayer_requests_sent_total", &filter),
                    responses: replayer.sum("tapwire_replayer_responses_total", &filter),
                    responses_by_status: replayer.by_label(
                        "tapwire_replayer_responses_total",
                        "status",
                        &filter,
                    ),
                    dropped: replayer.by_label(
                        "tapwire_replayer_requests_dropped_total",
                        "reason",
                        &filter,
                    ),
                    served: server.served(),
                    url,
                }
            })
            .collect();
        Report {
            sent_to_production,
            served_by_production: pipeline.production.served(),
            captured: listener.get("captured"),
            streamed: listener.get("sent"),
            listener_dropped: listener.dropped(),
            kernel_dropped_packets: listener.get("pcap_kernel_drops"),
            received_by_replayer: replayer.sum("tapwire_replayer_records_received_total", &[]),
            rejected_by_replayer: replayer.by_label(
                "tapwire_replayer_records_rejected_total",
                "reason",
                &[],
            ),
            targets,
        }
    }

    /// True when every request served by production reached every target, with nothing dropped.
    pub fn is_complete(&self) -> bool {
        let expected = self.sent_to_production;
        self.served_by_production == expected
            && self.captured == expected
            && self.streamed == expected
            && self.received_by_replayer == expected
            && self.listener_dropped.is_empty()
            && self.rejected_by_replayer.is_empty()
            && self
                .targets
                .iter()
                .all(|t| t.responses == expected && t.served == expected && t.dropped.is_empty())
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, stage: &str, count: u64, note: String| {
            let _ = writeln!(out, "  {stage:<34} {count:>9}  {note}");
        };
        let reasons = |map: &BTreeMap<String, u64>| {
            if map.is_empty() {
                "none dropped".to_owned()
            } else {
                let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("dropped: {}", parts.join(" "))
            }
        };
        let _ = writeln!(out, "  {:<34} {:>9}", "stage", "requests");
        row(
            &mut out,
            "sent to production",
            self.sent_to_production,
            String::new(),
        );
        row(
            &mut out,
            "served by production",
            self.served_by_production,
            String::new(),
        );
        row(
            &mut out,
            "captured by listener",
            self.captured,
            format!("kernel packet drops: {}", self.kernel_dropped_packets),
        );
        row(
            &mut out,
            "acknowledged by replayer",
            self.streamed,
            reasons(&self.listener_dropped),
        );
        row(
            &mut out,
            "received by replayer",
            self.received_by_replayer,
            if self.rejected_by_replayer.is_empty() {
                "none rejected".to_owned()
            } else {
                format!("rejected: {:?}", self.rejected_by_replayer)
            },
        );
        for target in &self.targets {
            let statuses: Vec<String> = target
                .responses_by_status
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            row(
                &mut out,
                &format!("replayed to {}", target.url),
                target.responses,
                format!("{}; {}", statuses.join(" "), reasons(&target.dropped)),
            );
            row(
                &mut out,
                "  served by that target",
                target.served,
                String::new(),
            );
        }
        out
    }
}
