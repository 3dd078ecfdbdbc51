//! `bench/compare-targets.sh`: what comparing responses costs the replayer.
//!
//! Three builds run in this process ([`BuildServer`]s: a baseline, a second baseline and the
//! candidate). A `.gor` file of GETs over many distinct endpoints (`/api/e{k}x/items`, which
//! endpoint naming does not collapse, plus a share of `/orders/{n}` and `/catalog/{n}`, where the
//! candidate differs) is replayed by the real `tapwire-replayer` to all three, alternating in
//! the same run:
//! - `plain`: `--target B --target B2 --target C`, no comparison;
//! - `compare`: `--baseline B --baseline2 B2 --candidate C --diff-log DIR/diff.jsonl`;
//!
//! each as fast as possible (`--timing asap`) and at a fixed rate (`--global-rate R
//! --when-limited queue`). For each run: requests per second delivered to each target (from
//! the replayer's own log: from reading the file to stopping, drain included), the replayer's
//! CPU seconds and peak RSS (from `wait4`, exact for the whole process life), and compare/plain
//! ratios. `--memory-run DURATION` instead replays with comparison for that long, looping the
//! file, and prints the replayer's RSS per minute (sampled every second).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use tapwire_testkit::builds::{Build, BuildServer};
use tapwire_testkit::process::log_seconds;
use tapwire_testkit::traffic::write_gor_file;

#[derive(Parser)]
#[command(name = "tapwire-compare-bench", max_term_width = 100)]
struct Args {
    /// Directory of the tapwire-replayer to measure.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Requests in the replayed file.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Distinct `/api/e{k}x/items` endpoints in the file.
    #[arg(long, default_value_t = 1_000)]
    endpoints: u64,
    /// Rates to run, per second; `max` replays as fast as possible.
    #[arg(long, value_delimiter = ',', default_value = "max,5000")]
    rates: Vec<String>,
    /// Rounds, each running plain then compare at every rate.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Requests in flight to each target.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Instead of the rounds: replay with comparison for this long (`10m`, `90s`), looping the
    /// file, and print the replayer's RSS per minute.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    memory_run: Option<Duration>,
    /// Distinct endpoints in the memory run's file.
    #[arg(long, default_value_t = 10_000)]
    memory_endpoints: u64,
    /// The memory run's rate, per second.
    #[arg(long, default_value_t = 5_000)]
    memory_rate: u32,
    /// The memory run without comparison (`--target` x3), for reference.
    #[arg(long)]
    memory_plain: bool,
}

/// `90s`, `10m` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.strip_suffix('m') {
        Some(minutes) => (minutes, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    number
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * unit))
        .map_err(|_| format!("{text:?} is not a duration such as 90s or 10m"))
}

/// The flags a replayer needs for the compare runs (issue 14).
const COMPARISON_FLAGS: [&str; 4] = ["--candidate", "--baseline", "--baseline2", "--diff-log"];

/// Issue 14: comparison costs at most 20% of replay throughput.
const THROUGHPUT_BAR: f64 = 0.8;

const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Which run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Compare,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Compare => "compare",
        }
    }
}

/// The three builds replayed to.
struct Targets {
    baseline: BuildServer,
    baseline2: BuildServer,
    candidate: BuildServer,
}

impl Targets {
    fn all(&self) -> [&BuildServer; 3] {
        [&self.baseline, &self.baseline2, &self.candidate]
    }

    fn served(&self) -> [u64; 3] {
        self.all().map(BuildServer::served)
    }

    fn flags(&self, mode: Mode) -> Vec<String> {
        let roles = match mode {
            Mode::Plain => ["--target", "--target", "--target"],
            Mode::Compare => ["--baseline", "--baseline2", "--candidate"],
        };
        roles
            .into_iter()
            .zip(self.all())
            .flat_map(|(flag, server)| [flag.to_owned(), server.url()])
            .collect()
    }
}

/// Request `n` of a file over `endpoints` distinct API endpoints: one in ten is an
/// `/orders/{n}` and one in ten a `/catalog/{n}` (where the candidate differs); the others
/// visit the API endpoints in turn.
fn path(n: u64, endpoints: u64) -> String {
    match n % 10 {
        0 => format!("/orders/{n}"),
        1 => format!("/catalog/{n}"),
        slot => {
            let api_request = n / 10 * 8 + (slot - 2);
            format!("/api/e{}x/items", api_request % endpoints.max(1))
        }
    }
}

/// A `.gor` file of `requests` GETs, 200 µs apart (5,000 per second) as captured.
fn write_requests(file: &Path, requests: u64, endpoints: u64) -> anyhow::Result<()> {
    write_gor_file(file, requests, Duration::from_micros(200), |n| {
        format!(
            "GET {} HTTP/1.1\r\nHost: production\r\nAccept-Encoding: gzip\r\n\r\n",
            path(n, endpoints)
        )
    })
}

/// A replayer run to its exit, measured.
struct Run {
    success: bool,
    log: Vec<String>,
    cpu_seconds: f64,
    peak_rss_bytes: u64,
    wall: Duration,
}

impl Run {
    /// Seconds from reading the files to stopping, by the replayer's own log (process start-up
    /// left out); the wall time if the lines are missing.
    fn replay_seconds(&self) -> f64 {
        let at = |needle: &str| {
            self.log
                .iter()
                .find(|line| line.contains(needle))
                .and_then(|line| log_seconds(line).ok())
        };
        match (at("replaying recorded files"), at("replayer stopped")) {
            (Some(began), Some(ended)) => (ended - began).rem_euclid(86_400.0),
            _ => self.wall.as_secs_f64(),
        }
    }

    fn log_tail(&self) -> String {
        let from = self.log.len().saturating_sub(20);
        self.log[from..].join("\n")
    }
}

/// Runs the replayer to its exit, reaping it with `wait4` for its exact CPU time and peak RSS
/// (`/proc` is gone once it has exited). `on_pid` runs beside it with its pid, until it exits.
async fn run_replayer(
    binary: &Path,
    args: &[String],
    limit: Duration,
    on_pid: impl FnOnce(u32, tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()>,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id();
    let stderr = child.stderr.take().context("child stderr")?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let reader_log = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            reader_log.lock().expect("log lock").push(line);
        }
    });
    let (exited, exited_watch) = tokio::sync::watch::channel(false);
    let sampler = on_pid(pid, exited_watch);
    let reaped = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data, filled in by the kernel.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child, which nothing else reaps (std's Child is not waited on).
        let reaped = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
        (reaped, status, usage)
    });
    let (reaped, status, usage) = tokio::time::timeout(limit, reaped).await.map_err(|_| {
        // SAFETY: our child, still unreaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        anyhow::anyhow!("the replayer did not exit within {limit:?}; killed")
    })??;
    let wall = started.elapsed();
    exited.send_replace(true);
    let _ = sampler.await;
    ensure!(
        reaped == pid as i32,
        "wait4 failed: {}",
        std::io::Error::last_os_error()
    );
    let _ = reader.join();
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    let log = std::mem::take(&mut *log.lock().expect("log lock"));
    Ok(Run {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        log,
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_bytes: usage.ru_maxrss as u64 * 1024,
        wall,
    })
}

/// Nothing to watch beside the run.
fn no_sampling(_: u32, _: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {})
}

/// The replayer's flags for one run, targets aside.
fn replay_flags(file: &Path, rate: Option<u32>, concurrency: u32) -> Vec<String> {
    let mut flags = vec![
        "--input-file".into(),
        file.display().to_string(),
        "--timing".into(),
        "asap".into(),
        "--concurrency".into(),
        concurrency.to_string(),
    ];
    if let Some(rate) = rate {
        flags.extend([
            "--global-rate".into(),
            rate.to_string(),
            "--when-limited".into(),
            "queue".into(),
        ]);
    }
    flags
}

/// The comparison flags this replayer's `--help` lacks.
fn missing_comparison_flags(binary: &Path) -> anyhow::Result<Vec<&'static str>> {
    let help = Command::new(binary)
        .arg("--help")
        .output()
        .with_context(|| format!("cannot run {} --help", binary.display()))?;
    let help = String::from_utf8_lossy(&help.stdout);
    Ok(COMPARISON_FLAGS
        .into_iter()
        .filter(|flag| {
            !help
                .split(|c: char| !(c.is_alphanumeric() || c == '-'))
                .any(|word| word == *flag)
        })
        .collect())
}

/// One measured run's figures.
struct Figures {
    per_target_rate: f64,
    cpu_seconds: f64,
    peak_rss_bytes: u64,
}

/// The share of `requests` the diff log's last summary says were compared, and the reasons
/// the rest were not.
fn compared_share(diff_log: &Path, requests: u64) -> String {
    let summary = std::fs::read_to_string(diff_log)
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|line| line["type"] == "summary")
        })
        .map(|line| line["summary"].clone());
    let Some(summary) = summary else {
        return "no log".to_owned();
    };
    let compared = summary["compared"].as_u64().unwrap_or_default();
    let mut share = format!("{:.1}%", 100.0 * compared as f64 / requests.max(1) as f64);
    if let Some(reasons) = summary["not_compared"]
        .as_object()
        .filter(|r| !r.is_empty())
    {
        let reasons: Vec<String> = reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
        share.push_str(&format!(" ({})", reasons.join(" ")));
    }
    share
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = args.bin_dir.join("tapwire-replayer");
    ensure!(
        binary.is_file(),
        "{} not found: build it (bench/compare-targets.sh builds a release) or pass --bin-dir",
        binary.display()
    );
    let missing = missing_comparison_flags(&binary)?;
    ensure!(
        missing.is_empty() || args.memory_run.is_none() || args.memory_plain,
        "{} has no {} (its --help lists none): the memory run needs the comparison",
        binary.display(),
        missing.join(", ")
    );
    if !missing.is_empty() && args.memory_run.is_none() {
        println!(
            "NOTE: {} has no {} (its --help lists none): the compare runs will fail; the plain \
             runs are measured anyway.",
            binary.display(),
            missing.join(", ")
        );
    }
    let targets = Targets {
        baseline: BuildServer::start(Build::Baseline).await?,
        baseline2: BuildServer::start(Build::Baseline).await?,
        candidate: BuildServer::start(Build::Candidate).await?,
    };
    let dir = tempfile::tempdir()?;
    match args.memory_run {
        Some(duration) => memory_run(&args, &binary, &targets, dir.path(), duration).await,
        None => rounds(&args, &binary, &targets, dir.path(), !missing.is_empty()).await,
    }
}

async fn rounds(
    args: &Args,
    binary: &Path,
    targets: &Targets,
    dir: &Path,
    compare_unavailable: bool,
) -> anyhow::Result<()> {
    let file = dir.join("requests.gor");
    write_requests(&file, args.requests, args.endpoints)?;
    println!(
        "comparison cost: {} GETs over {} distinct endpoints (+ /orders, /catalog) from a .gor \
         file to three targets (baseline, baseline2, candidate), {} in flight per target",
        args.requests, args.endpoints, args.concurrency
    );
    println!(
        "  {:>5} {:>6} {:>8} {:>17} {:>8} {:>11} {:>10} {:>9}",
        "round", "rate", "mode", "req/s per target", "cpu s", "cpu µs/req", "peak RSS", "compared"
    );
    let mut figures: BTreeMap<(String, &str), Vec<Figures>> = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 1..=args.rounds {
        for rate_name in &args.rates {
            let rate =
                match rate_name.as_str() {
                    "max" => None,
                    number => Some(number.parse::<u32>().with_context(|| {
                        format!("--rates: {number:?} is neither max nor a number")
                    })?),
                };
            for mode in [Mode::Plain, Mode::Compare] {
                let mut flags = replay_flags(&file, rate, args.concurrency);
                flags.extend(targets.flags(mode));
                let diff_log = dir.join(format!("diff-{round}-{rate_name}.jsonl"));
                if mode == Mode::Compare {
                    flags.extend(["--diff-log".into(), diff_log.display().to_string()]);
                }
                let before = targets.served();
                let run = run_replayer(binary, &flags, RUN_TIMEOUT, no_sampling).await?;
                let after = targets.served();
                if !run.success {
                    let reason = if compare_unavailable && mode == Mode::Compare {
                        "the replayer has no comparison flags (--candidate...)".to_owned()
                    } else {
                        "the replayer failed".to_owned()
                    };
                    println!(
                        "  {round:>5} {rate_name:>6} {:>8} FAILED: {reason}",
                        mode.name()
                    );
                    failures.push(format!(
                        "round {round}, {rate_name}, {}: {reason}; its log ends:\n{}",
                        mode.name(),
                        run.log_tail()
                    ));
                    continue;
                }
                let delivered: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
                if delivered.iter().any(|&count| count != args.requests) {
                    failures.push(format!(
                        "round {round}, {rate_name}, {}: targets served {delivered:?} of {} each",
                        mode.name(),
                        args.requests
                    ));
                }
                let seconds = run.replay_seconds();
                let run_figures = Figures {
                    per_target_rate: delivered.iter().sum::<u64>() as f64 / 3.0 / seconds,
                    cpu_seconds: run.cpu_seconds,
                    peak_rss_bytes: run.peak_rss_bytes,
                };
                let compared = match mode {
                    Mode::Plain => "-".to_owned(),
                    Mode::Compare => compared_share(&diff_log, args.requests),
                };
                println!(
                    "  {:>5} {:>6} {:>8} {:>17.0} {:>8.2} {:>11.1} {:>6.1} MiB {:>9}",
                    round,
                    rate_name,
                    mode.name(),
                    run_figures.per_target_rate,
                    run_figures.cpu_seconds,
                    run_figures.cpu_seconds * 1e6 / args.requests as f64,
                    mib(run_figures.peak_rss_bytes),
                    compared
                );
                figures
                    .entry((rate_name.clone(), mode.name()))
                    .or_default()
                    .push(run_figures);
            }
        }
    }
    println!(
        "\ncompare / plain, means over the rounds (the bar: at a fixed rate, compare keeps at least \
         {:.0}% of plain's throughput; at max, the ratio shows what comparing costs a machine \
         the targets share):",
        100.0 * THROUGHPUT_BAR
    );
    println!(
        "  {:>6} {:>12} {:>8} {:>10} {:>8}",
        "rate", "throughput", "cpu", "peak RSS", "bar"
    );
    for rate_name in &args.rates {
        let mean = |mode: &str, value: fn(&Figures) -> f64| {
            let runs = figures.get(&(rate_name.clone(), mode))?;
            Some(runs.iter().map(value).sum::<f64>() / runs.len() as f64)
        };
        let ratio =
            |value: fn(&Figures) -> f64| Some(mean("compare", value)? / mean("plain", value)?);
        let show =
            |ratio: Option<f64>| ratio.map_or("n/a".to_owned(), |r| format!("{:.0}%", 100.0 * r));
        let throughput = ratio(|f| f.per_target_rate);
        let bar = match throughput {
            Some(_) if rate_name == "max" => "",
            Some(kept) if kept >= THROUGHPUT_BAR => "met",
            Some(_) => "MISSED",
            None => "",
        };
        println!(
            "  {:>6} {:>12} {:>8} {:>10} {:>8}",
            rate_name,
            show(throughput),
            show(ratio(|f| f.cpu_seconds)),
            show(ratio(|f| f.peak_rss_bytes as f64)),
            bar
        );
    }
    if !failures.is_empty() {
        bail!(
            "{} run(s) failed:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

/// RSS samples in one minute of the memory run.
#[derive(Debug, Clone, Copy)]
struct MinuteRss {
    min: u64,
    max: u64,
    last: u64,
}

/// The replayer's resident memory now, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

async fn memory_run(
    args: &Args,
    binary: &Path,
    targets: &Targets,
    dir: &Path,
    duration: Duration,
) -> anyhow::Result<()> {
    // Ten seconds of requests at the rate, and every endpoint at least once.
    let requests = (u64::from(args.memory_rate) * 10).max(args.memory_endpoints * 10 / 8 + 10);
    let file = dir.join("memory.gor");
    write_requests(&file, requests, args.memory_endpoints)?;
    let mode = if args.memory_plain {
        Mode::Plain
    } else {
        Mode::Compare
    };
    println!(
        "memory: {} run for {duration:?} at {}/s, looping a file of {requests} GETs over {} \
         distinct endpoints (+ /orders, /catalog); replayer RSS sampled every second",
        mode.name(),
        args.memory_rate,
        args.memory_endpoints
    );
    let mut flags = replay_flags(&file, Some(args.memory_rate), args.concurrency);
    flags.extend(targets.flags(mode));
    if mode == Mode::Compare {
        flags.extend([
            "--diff-log".into(),
            dir.join("memory-diff.jsonl").display().to_string(),
        ]);
    }
    flags.extend([
        "--input-file-loop".into(),
        "--exit-after".into(),
        format!("{}s", duration.as_secs()),
    ]);
    let minutes: Arc<Mutex<BTreeMap<u64, MinuteRss>>> = Arc::default();
    let sampled = Arc::clone(&minutes);
    let before = targets.served();
    // --exit-after, then the targets' drain and the last comparisons.
    let limit = duration + Duration::from_secs(60);
    let run = run_replayer(binary, &flags, limit, move |pid, mut exited| {
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // The first tick is at once: the process has only just started.
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = exited.wait_for(|&exited| exited) => return,
                }
                let Some(rss) = rss_bytes(pid) else { return };
                let minute = started.elapsed().as_secs() / 60;
                let mut minutes = sampled.lock().expect("samples lock");
                // Each minute is printed as it ends: a run cut short still shows its figures.
                if !minutes.contains_key(&minute)
                    && let Some(ended) = minute.checked_sub(1).and_then(|m| minutes.get(&m))
                {
                    println!(
                        "  minute {minute}: RSS min {:.1} MiB, max {:.1} MiB, last {:.1} MiB",
                        mib(ended.min),
                        mib(ended.max),
                        mib(ended.last)
                    );
                }
                let entry = minutes.entry(minute).or_insert(MinuteRss {
                    min: rss,
                    max: rss,
                    last: rss,
                });
                entry.min = entry.min.min(rss);
                entry.max = entry.max.max(rss);
                entry.last = rss;
            }
        })
    })
    .await?;
    let delivered: Vec<u64> = targets
        .served()
        .iter()
        .zip(before)
        .map(|(after, before)| after - before)
        .collect();
    println!(
        "  {:>6} {:>10} {:>10} {:>10}",
        "minute", "min RSS", "max RSS", "last RSS"
    );
    for (minute, rss) in minutes.lock().expect("samples lock").iter() {
        println!(
            "  {:>6} {:>6.1} MiB {:>6.1} MiB {:>6.1} MiB",
            minute + 1,
            mib(rss.min),
            mib(rss.max),
            mib(rss.last)
        );
    }
    println!(
        "  delivered per target {delivered:?} ({:.0}/s), cpu {:.1} s, peak RSS {:.1} MiB",
        delivered.iter().sum::<u64>() as f64 / 3.0 / run.wall.as_secs_f64(),
        run.cpu_seconds,
        mib(run.peak_rss_bytes)
    );
    ensure!(
        run.success,
        "the replayer failed; its log ends:\n{}",
        run.log_tail()
    );
    Ok(())
}
