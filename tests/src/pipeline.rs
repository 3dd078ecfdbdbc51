//! The whole tapwire pipeline on loopback: a "production" server, a listener capturing its port,
//! a replayer, and staging targets, all started and wired together, plus a [`Report`] that
//! accounts for every request from production to each target.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;

use crate::process::{Process, ResourceUsage, addr_in};
use crate::servers::RecordingServer;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What to start.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Interface the listener captures on.
    pub interface: String,
    /// Address production listens on; must be reachable through `interface`.
    pub production_ip: IpAddr,
    pub targets: usize,
    /// Record every request at production and targets (for content checks; costs memory).
    pub record: bool,
    pub listener_args: Vec<String>,
    pub replayer_args: Vec<String>,
    /// Wait for the listener to connect to the replayer before returning (off for tests of a
    /// link that must fail).
    pub wait_for_link: bool,
    /// Where the replayer's gRPC server listens; a fixed port lets a restarted replayer take
    /// over.
    pub replayer_grpc_listen: String,
    /// Scheme and host the listener dials the replayer's port with (https://localhost for TLS).
    pub replayer_url_base: String,
    /// A replayer TOML configuration used instead of flags; `{target0}`, `{target1}`... stand
    /// for the targets' URLs. The listen addresses are added.
    pub replayer_config: Option<String>,
    /// The replayer's limit on open files (RLIMIT_NOFILE), if it must have one.
    pub replayer_open_files: Option<u64>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            interface: "lo".into(),
            production_ip: IpAddr::from([127, 0, 0, 1]),
            targets: 2,
            record: true,
            listener_args: Vec::new(),
            replayer_args: Vec::new(),
            replayer_config: None,
            replayer_grpc_listen: "127.0.0.1:0".into(),
            replayer_url_base: "http://127.0.0.1".into(),
            wait_for_link: true,
            replayer_open_files: None,
        }
    }
}

/// A running pipeline. Dropping it kills the processes.
pub struct Pipeline {
    replayer_args: Vec<String>,
    replayer_open_files: Option<u64>,
    listener_args: Vec<String>,
    /// Holds the replayer's config file for as long as a restart may read it.
    _config_dir: tempfile::TempDir,
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
        let production = RecordingServer::start_on(options.production_ip, options.record).await?;
        let mut targets = Vec::new();
        for _ in 0..options.targets {
            targets.push(RecordingServer::start(options.record).await?);
        }

        let config_dir = tempfile::tempdir()?;
        let replayer_args = match &options.replayer_config {
            Some(template) => {
                let mut config =
                    "grpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n".to_owned();
                let mut body = template.clone();
                for (i, target) in targets.iter().enumerate() {
                    body = body.replace(&format!("{{target{i}}}"), &target.url());
                }
                config.push_str(&body);
                let path = config_dir.path().join("replayer.toml");
                std::fs::write(&path, config)?;
                let mut args = vec!["--config".into(), path.display().to_string()];
                args.extend(options.replayer_args.iter().cloned());
                args
            }
            None => {
                let mut args = vec![
                    "--grpc-listen".into(),
                    options.replayer_grpc_listen.clone(),
                    "--metrics-listen".into(),
                    "127.0.0.1:0".into(),
                ];
                for target in &targets {
                    args.extend(["--target".into(), target.url()]);
                }
                args.extend(options.replayer_args.iter().cloned());
                args
            }
        };
        let replayer = spawn_replayer(&replayer_args, options.replayer_open_files)?;
        let replayer_metrics = ready_addr(&replayer, "metrics endpoint listening").await?;
        let replayer_grpc = ready_addr(&replayer, "grpc server listening").await?;

        let mut listener_args = vec![
            "--interface".into(),
            options.interface.clone(),
            "--port".into(),
            production.addr().port().to_string(),
            "--replayer".into(),
            format!("{}:{}", options.replayer_url_base, replayer_grpc.port()),
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
        if options.wait_for_link {
            listener
                .wait_for_line("connected to replayer", READY_TIMEOUT)
                .await?;
        }
        Ok(Pipeline {
            replayer_args,
            replayer_open_files: options.replayer_open_files,
            listener_args,
            _config_dir: config_dir,
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

    /// SIGKILLs the replayer (no drain, no last acknowledgements) and starts it again with the
    /// same arguments; with a fixed gRPC port the listener reconnects to the new one.
    pub async fn kill_replayer(&mut self) -> anyhow::Result<()> {
        self.replayer.kill().await
    }

    pub async fn restart_replayer(&mut self) -> anyhow::Result<()> {
        self.replayer = spawn_replayer(&self.replayer_args, self.replayer_open_files)?;
        self.replayer_metrics = ready_addr(&self.replayer, "metrics endpoint listening").await?;
        self.replayer_grpc = ready_addr(&self.replayer, "grpc server listening").await?;
        Ok(())
    }

    /// Starts the listener again with the same arguments (after it was stopped), and waits
    /// for it to capture.
    pub async fn restart_listener(&mut self) -> anyhow::Result<()> {
        self.listener = Process::spawn("tapwire-listener", &self.listener_args)?;
        self.listener_metrics = ready_addr(&self.listener, "metrics endpoint listening").await?;
        self.listener
            .wait_for_line("capture started", READY_TIMEOUT)
            .await?;
        Ok(())
    }

    /// SIGTERM to the listener; its final accounting line.
    pub async fn stop_listener(&mut self) -> anyhow::Result<SummaryLine> {
        stop_and_summarise(
            &mut self.listener,
            "listener stopped",
            Duration::from_secs(15),
        )
        .await
    }

    pub fn listener_usage(&self) -> anyhow::Result<ResourceUsage> {
        self.listener.resource_usage()
    }

    /// Stops the listener (SIGTERM: it drains everything to the replayer), then the replayer
    /// (it drains its target queues), and reports from the final accounting both log at exit:
    /// nothing is still in flight, so the counts are exact.
    pub async fn finish(mut self, sent_to_production: u64) -> anyhow::Result<Report> {
        let grace = Duration::from_secs(15);
        let listener = stop_and_summarise(&mut self.listener, "listener stopped", grace).await?;
        let replayer = stop_and_summarise(&mut self.replayer, "replayer stopped", grace).await?;
        let mut targets = Vec::new();
        for server in &self.targets {
            let url = server.url();
            let line = self
                .replayer
                .wait_for_line(&format!("target totals target={url} "), grace)
                .await?;
            targets.push(TargetReport::new(
                url,
                &SummaryLine::parse(&line)?,
                server.served(),
            ));
        }
        Ok(Report {
            sent_to_production,
            served_by_production: self.production.served(),
            captured: listener.get("captured"),
            streamed: listener.get("sent"),
            listener_dropped: listener.with_prefix("dropped_"),
            kernel_dropped_packets: listener.get("pcap_kernel_drops"),
            packets_captured: listener.get("packets"),
            received_by_replayer: replayer.get("received"),
            rejected_by_replayer: replayer.with_prefix("rejected_"),
            targets,
        })
    }
}

impl Pipeline {
    /// Stops both processes (each drains) and returns the replayer's final totals for each of
    /// `target_urls`, in order; for targets that are not among [`Pipeline::targets`].
    pub async fn stop_with_target_totals(
        mut self,
        target_urls: &[String],
    ) -> anyhow::Result<Vec<SummaryLine>> {
        let grace = Duration::from_secs(15);
        stop_and_summarise(&mut self.listener, "listener stopped", grace).await?;
        stop_and_summarise(&mut self.replayer, "replayer stopped", grace).await?;
        let mut totals = Vec::new();
        for url in target_urls {
            let line = self
                .replayer
                .wait_for_line(&format!("target totals target={url} "), grace)
                .await?;
            totals.push(SummaryLine::parse(&line)?);
        }
        Ok(totals)
    }
}

/// A replayer started on its own, outside a [`Pipeline`]: replaying to `target`, its gRPC and
/// metrics endpoints on loopback ports of its choosing.
pub struct Replayer {
    pub process: Process,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

impl Replayer {
    pub async fn start(target: &str, extra_args: &[String]) -> anyhow::Result<Replayer> {
        let mut args: Vec<String> = [
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--target",
            target,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra_args.iter().cloned());
        let process = Process::spawn("tapwire-replayer", &args)?;
        let metrics = ready_addr(&process, "metrics endpoint listening").await?;
        let grpc = ready_addr(&process, "grpc server listening").await?;
        Ok(Replayer {
            process,
            grpc,
            metrics,
        })
    }

    /// SIGTERM: it drains, must exit cleanly; its final accounting.
    pub async fn stop(&mut self) -> anyhow::Result<SummaryLine> {
        stop_and_summarise(
            &mut self.process,
            "replayer stopped",
            Duration::from_secs(30),
        )
        .await
    }
}

fn spawn_replayer(args: &[String], open_files: Option<u64>) -> anyhow::Result<Process> {
    match open_files {
        Some(limit) => Process::spawn_with_open_files("tapwire-replayer", args, limit),
        None => Process::spawn("tapwire-replayer", args),
    }
}

/// SIGTERM, a clean exit, and the summary line the process logged on its way out.
async fn stop_and_summarise(
    process: &mut Process,
    final_line: &str,
    grace: Duration,
) -> anyhow::Result<SummaryLine> {
    let status = process.terminate(grace).await?;
    anyhow::ensure!(status.success(), "exited with {status}:\n{}", process.log());
    SummaryLine::parse(&process.wait_for_line(final_line, grace).await?)
}

/// The `summary=key=N key=N ...` accounting that tapwire's binaries log when they stop.
#[derive(Debug, Clone, Default)]
pub struct SummaryLine {
    counts: BTreeMap<String, u64>,
}

impl SummaryLine {
    pub fn parse(line: &str) -> anyhow::Result<SummaryLine> {
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
        Ok(SummaryLine { counts })
    }

    pub fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// The `<prefix><name>=N` fields, by name: e.g. drops by reason with `dropped_`.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, u64> {
        self.counts
            .iter()
            .filter_map(|(key, &count)| Some((key.strip_prefix(prefix)?.to_owned(), count)))
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

impl TargetReport {
    /// From the replayer's `target totals` line and the target server's own count.
    pub fn new(url: String, totals: &SummaryLine, served: u64) -> TargetReport {
        TargetReport {
            url,
            sent: totals.get("sent"),
            responses: totals.get("responses"),
            responses_by_status: totals.with_prefix("status_"),
            dropped: totals.with_prefix("dropped_"),
            served,
        }
    }
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
    /// TCP packets the listener read (client to server).
    pub packets_captured: u64,
    pub received_by_replayer: u64,
    pub rejected_by_replayer: BTreeMap<String, u64>,
    pub targets: Vec<TargetReport>,
}

impl Report {
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
