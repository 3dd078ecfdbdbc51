//! `bench/files.sh`: the file half of tapwire, measured.
//!
//! 1. Replay: a `.gor` file of N GETs replayed with `--timing asap` into the target (nginx,
//!    started by the script), next to `oha` sending the same number of GETs straight to it with
//!    the same connection count, alternating so that drift in the machine hits both.
//! 2. Recording: production on loopback under a fixed rate, the listener writing every request
//!    to a `.gor` file (no replayer): captured vs written, and the listener's peak RSS.

use std::time::Duration;

use anyhow::ensure;
use clap::Parser;
use tapwire_testkit::oha;
use tapwire_testkit::pipeline::{SummaryLine, require_root};
use tapwire_testkit::process::{Process, log_seconds};
use tapwire_testkit::servers::RecordingServer;
use tapwire_testkit::traffic::{self, FixedRate, write_gor_file};

#[derive(Parser)]
#[command(name = "tapwire-files-bench", max_term_width = 100)]
struct Args {
    /// The target, e.g. http://127.0.0.1:18090 (bench/files.sh starts nginx there).
    #[arg(long)]
    target: String,
    /// Requests in the replayed file.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Connections to the target, for both the replayer and oha.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Replay rounds (each: oha, then the replayer).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Recording rate, requests per second.
    #[arg(long, default_value_t = 20_000)]
    record_rate: u64,
    /// Seconds of recording.
    #[arg(long, default_value_t = 10)]
    record_seconds: u64,
}

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Replays the file; requests per second from the replayer's own log: from when it starts
/// reading to when every target has answered (process start and exit left out, as oha's
/// figure leaves out its own).
async fn replay(file: &std::path::Path, args: &Args) -> anyhow::Result<(f64, SummaryLine)> {
    let mut replayer = Process::spawn(
        "tapwire-replayer",
        &[
            "--input-file".into(),
            file.display().to_string(),
            "--timing".into(),
            "asap".into(),
            "--target".into(),
            args.target.clone(),
            "--concurrency".into(),
            args.connections.to_string(),
        ],
    )?;
    let status = replayer.wait_exit(RUN_TIMEOUT).await?;
    ensure!(status.success(), "replayer failed:\n{}", replayer.log());
    let quick = Duration::from_secs(5);
    let began = log_seconds(
        &replayer
            .wait_for_line("replaying recorded files", quick)
            .await?,
    )?;
    let ended = log_seconds(&replayer.wait_for_line("replayer stopped", quick).await?)?;
    let elapsed = (ended - began).rem_euclid(86_400.0);
    let totals = SummaryLine::parse(
        &replayer
            .wait_for_line("target totals", Duration::from_secs(5))
            .await?,
    )?;
    Ok((args.requests as f64 / elapsed, totals))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = args.target.trim_end_matches('/').to_owned();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("requests.gor");
    write_gor_file(&file, args.requests, Duration::from_micros(25), |n| {
        format!("GET /bench/file/{n} HTTP/1.1\r\nHost: production\r\nUser-Agent: bench\r\n\r\n")
    })?;

    println!(
        "file replay: {} GETs from a .gor file, --timing asap, {} connections to {target}",
        args.requests, args.connections
    );
    println!(
        "  {:>5} {:>16} {:>18} {:>8}",
        "round", "oha requests/s", "tapwire requests/s", "ratio"
    );
    for round in 1..=args.rounds {
        let direct = oha::requests_per_second(&target, args.requests, args.connections)?;
        let (replayed, totals) = replay(&file, &args).await?;
        ensure!(
            totals.get("responses") == args.requests,
            "not every request was answered: {totals:?}"
        );
        println!(
            "  {:>5} {:>16.0} {:>18.0} {:>7.0}%",
            round,
            direct,
            replayed,
            100.0 * replayed / direct
        );
    }

    println!(
        "\nrecording: {} requests/s for {} s into a .gor file (no replayer)",
        args.record_rate, args.record_seconds
    );
    require_root()?;
    let production = RecordingServer::start(false).await?;
    let output = dir.path().join("recorded.gor");
    let mut listener = Process::spawn(
        "tapwire-listener",
        &[
            "--interface".into(),
            "lo".into(),
            "--port".into(),
            production.addr().port().to_string(),
            "--output-file".into(),
            output.display().to_string(),
        ],
    )?;
    listener
        .wait_for_line("capture started", Duration::from_secs(30))
        .await?;
    let load = traffic::fixed_rate(
        production.addr(),
        FixedRate {
            rate: Some(args.record_rate as f64),
            total: args.record_rate * args.record_seconds,
            connections: 32,
            body_bytes: 0,
        },
    )
    .await;
    let usage = listener.resource_usage()?;
    let status = listener.terminate(Duration::from_secs(30)).await?;
    ensure!(status.success(), "listener failed:\n{}", listener.log());
    let summary = SummaryLine::parse(
        &listener
            .wait_for_line("listener stopped", Duration::from_secs(5))
            .await?,
    )?;
    let served = production.served();
    println!(
        "  {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}",
        "achieved", "served", "captured", "written", "lost", "peak RSS"
    );
    println!(
        "  {:>9.0} {:>9} {:>9} {:>9} {:>8} {:>6.1} MiB",
        load.ok as f64 / load.elapsed.as_secs_f64(),
        served,
        summary.get("captured"),
        summary.get("written_file"),
        served - summary.get("written_file"),
        usage.peak_rss_bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
