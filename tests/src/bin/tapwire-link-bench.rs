//! `bench/link.sh`: the gRPC link between listeners and replayers at scale, one subcommand per
//! measurement.
//!
//! - `listeners`: many synthetic listeners, each its own stream, into one replayer and one
//!   target: throughput and the replayer's records/s per CPU core.
//! - `replayers`: live capture by one listener sharding client connections over several
//!   replayers, at fixed rates: each replayer's share and CPU, and the end-to-end accounting.
//! - `latency`: time from each request's arrival at production to its arrival at the target.
//!
//! CPU seconds are utime + stime from /proc, taken just before and after the measured load, so
//! start-up is left out. Everything shares the machine, load generators included.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tapwire_testkit::feed::feed_as;
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, Replayer};
use tapwire_testkit::process::Process;
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::servers::RecordingServer;
use tapwire_testkit::traffic::{self, FixedRate};

const READY: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(30);
/// Longest wait for the target to catch up with what production served.
const DELIVERY: Duration = Duration::from_secs(60);

/// Benchmarks of the listener-to-replayer link.
#[derive(Parser)]
#[command(name = "tapwire-link-bench", max_term_width = 100)]
struct Args {
    #[command(subcommand)]
    run: Run,
}

#[derive(Subcommand)]
enum Run {
    /// Many synthetic listeners streaming to one replayer as fast as it takes them.
    Listeners(ListenersArgs),
    /// One listener capturing live, sharding its connections over several replayers.
    Replayers(ReplayersArgs),
    /// Capture-to-replay latency: production arrival to target arrival, per request.
    Latency(LatencyArgs),
}

#[derive(clap::Args)]
struct ListenersArgs {
    /// Synthetic listeners, each streaming on its own gRPC connection.
    #[arg(long, default_value_t = 20)]
    listeners: usize,
    /// Records each listener sends.
    #[arg(long, default_value_t = 15_000)]
    records: u64,
}

#[derive(clap::Args)]
struct ReplayersArgs {
    /// Replayers the listener shards its client connections over.
    #[arg(long, default_value_t = 2)]
    replayers: usize,
    /// Request rates to run, per second.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000")]
    rates: Vec<f64>,
    /// Seconds of load per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client keep-alive connections to production: the unit the listener shards by.
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

#[derive(clap::Args)]
struct LatencyArgs {
    /// Request rates to run, per second.
    #[arg(long, value_delimiter = ',', default_value = "5000")]
    rates: Vec<f64>,
    /// Seconds of load per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client keep-alive connections to production.
    #[arg(long, default_value_t = 32)]
    connections: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().run {
        Run::Listeners(args) => listeners(args).await,
        Run::Replayers(args) => replayers(args).await,
        Run::Latency(args) => latency(args).await,
    }
}

fn cpu_seconds(process: &Process) -> anyhow::Result<f64> {
    Ok(process.resource_usage()?.cpu_seconds)
}

/// `records / cpu_seconds`, or `n/a` when the CPU time is below the 10 ms tick of /proc.
fn per_core(records: u64, cpu_seconds: f64) -> String {
    if cpu_seconds < 0.01 {
        "n/a".to_owned()
    } else {
        format!("{:.0}", records as f64 / cpu_seconds)
    }
}

async fn listeners(args: ListenersArgs) -> anyhow::Result<()> {
    let total = args.records * args.listeners as u64;
    let target = RecordingServer::start(false).await?;
    // Listeners outrun the target; a queue for everything keeps this a throughput measure
    // rather than one of drops.
    let replayer =
        Replayer::start(&target.url(), &["--target-queue".into(), total.to_string()]).await?;
    println!(
        "many listeners, one replayer: {} synthetic listeners x {} records (GETs), as fast as the replayer takes them\n",
        args.listeners, args.records
    );

    let cpu_before = cpu_seconds(&replayer.process)?;
    let started = Instant::now();
    let feeds: Vec<_> = (0..args.listeners)
        .map(|i| {
            // Named feeds: each is a distinct listener to the replayer's de-duplication.
            let name = format!("bench-{i:02}");
            let (grpc, records) = (replayer.grpc, args.records);
            tokio::spawn(async move { feed_as(grpc, &name, records, None).await })
        })
        .collect();
    for feed in feeds {
        feed.await?.context("a synthetic listener failed")?;
    }
    let acknowledged_after = started.elapsed();
    let served = target.wait_for_served(total, DELIVERY).await;
    let wall = started.elapsed();
    let cpu = cpu_seconds(&replayer.process)? - cpu_before;
    let snapshot = scrape(replayer.metrics).await?;
    let received = snapshot.sum("tapwire_replayer_records_received_total", &[]);
    let dropped = snapshot.by_label("tapwire_replayer_requests_dropped_total", "reason", &[]);
    let mut process = replayer.process;
    process.terminate(GRACE).await?;

    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8} {:>13}",
        "listeners", "records", "received", "served", "wall s", "records/s", "cpu s", "rec/s/core"
    );
    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>8.2} {:>10.0} {:>8.2} {:>13}",
        args.listeners,
        total,
        received,
        served,
        wall.as_secs_f64(),
        served as f64 / wall.as_secs_f64(),
        cpu,
        per_core(received, cpu),
    );
    println!(
        "\n  wall: first record sent to last one served by the target; rec/s/core: records\n  received / replayer CPU seconds (utime + stime)"
    );
    println!(
        "  all batches acknowledged after {:.2} s; target served every record: {}",
        acknowledged_after.as_secs_f64(),
        if served == total && dropped.is_empty() {
            "yes".to_owned()
        } else {
            format!("NO ({served} of {total}; replayer drops {dropped:?})")
        }
    );
    Ok(())
}

/// One replayer's part of a `replayers` run.
struct ReplayerShare {
    received: u64,
    cpu_seconds: f64,
}

/// A `replayers` run at one rate.
struct ShardedRun {
    rate: f64,
    achieved: f64,
    served: u64,
    captured: u64,
    acknowledged: u64,
    listener_dropped: u64,
    delivered: u64,
    shares: Vec<ReplayerShare>,
}

async fn replayers(args: ReplayersArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.replayers >= 1, "--replayers must be at least 1");
    println!(
        "one listener, {} replayers: live capture on lo, {} s per rate, {} client connections, GETs\n",
        args.replayers, args.seconds, args.connections
    );
    let mut runs = Vec::new();
    for &rate in &args.rates {
        runs.push(sharded_run(&args, rate).await?);
    }

    println!(
        "per replayer (CPU seconds during the load and its drain; rec/s/core = received / CPU seconds)"
    );
    println!(
        "{:>8} {:>9} {:>9} {:>7} {:>8} {:>13}",
        "rate/s", "replayer", "received", "share", "cpu s", "rec/s/core"
    );
    for run in &runs {
        let received: u64 = run.shares.iter().map(|s| s.received).sum();
        for (i, share) in run.shares.iter().enumerate() {
            println!(
                "{:>8.0} {:>9} {:>9} {:>6.1}% {:>8.2} {:>13}",
                run.rate,
                i + 1,
                share.received,
                100.0 * share.received as f64 / received.max(1) as f64,
                share.cpu_seconds,
                per_core(share.received, share.cpu_seconds),
            );
        }
    }

    println!("\nend to end");
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>12} {:>9} {:>9} {:>10}",
        "rate/s",
        "achieved",
        "served",
        "captured",
        "acknowledged",
        "dropped",
        "delivered",
        "replayed%"
    );
    for run in &runs {
        println!(
            "{:>8.0} {:>9.0} {:>9} {:>9} {:>12} {:>9} {:>9} {:>9.2}%",
            run.rate,
            run.achieved,
            run.served,
            run.captured,
            run.acknowledged,
            run.listener_dropped,
            run.delivered,
            100.0 * run.delivered as f64 / run.served.max(1) as f64,
        );
    }
    Ok(())
}

async fn sharded_run(args: &ReplayersArgs, rate: f64) -> anyhow::Result<ShardedRun> {
    let target = RecordingServer::start(false).await?;
    // The pipeline starts the first replayer; the others are started here and added to the
    // listener's --replayer list.
    let mut others = Vec::new();
    for _ in 1..args.replayers {
        others.push(Replayer::start(&target.url(), &[]).await?);
    }
    let listener_args = others
        .iter()
        .flat_map(|r| ["--replayer".to_owned(), format!("http://{}", r.grpc)])
        .collect();
    let mut pipeline = Pipeline::start(PipelineOptions {
        targets: 0,
        record: false,
        replayer_args: vec!["--target".into(), target.url()],
        listener_args,
        ..PipelineOptions::default()
    })
    .await?;
    wait_for_links(&pipeline, args.replayers as u64).await?;

    let cpu_before = all_replayers(&pipeline, &others)
        .into_iter()
        .map(|(process, _)| cpu_seconds(process))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let load = traffic::fixed_rate(
        pipeline.production.addr(),
        FixedRate {
            rate: Some(rate),
            total: (rate * args.seconds as f64) as u64,
            connections: args.connections,
            body_bytes: 0,
        },
    )
    .await;
    let served = pipeline.production.served();
    target.wait_for_served(served, DELIVERY).await;
    // The listener drains everything to the replayers before it exits: their counts are final.
    pipeline.stop_listener().await?;
    let mut shares = Vec::new();
    for ((process, metrics), before) in all_replayers(&pipeline, &others)
        .into_iter()
        .zip(cpu_before)
    {
        shares.push(ReplayerShare {
            received: scrape(metrics)
                .await?
                .sum("tapwire_replayer_records_received_total", &[]),
            cpu_seconds: cpu_seconds(process)? - before,
        });
    }
    let report = pipeline.finish(served).await?;
    for mut other in others {
        let status = other.process.terminate(GRACE).await?;
        if !status.success() {
            bail!("a replayer exited with {status}:\n{}", other.process.log());
        }
    }
    Ok(ShardedRun {
        rate,
        achieved: load.ok as f64 / load.elapsed.as_secs_f64(),
        served,
        captured: report.captured,
        acknowledged: report.streamed,
        listener_dropped: report.listener_dropped.values().sum(),
        // Every replayer has drained its queue to the target and exited.
        delivered: target.served(),
        shares,
    })
}

/// The pipeline's replayer, then the others: each process with its metrics address.
fn all_replayers<'a>(
    pipeline: &'a Pipeline,
    others: &'a [Replayer],
) -> Vec<(&'a Process, SocketAddr)> {
    let mut all = vec![(&pipeline.replayer, pipeline.replayer_metrics)];
    all.extend(others.iter().map(|r| (&r.process, r.metrics)));
    all
}

/// Waits until the listener streams to `replayers` replayers; it has no log line per link,
/// its `replayer_up` gauge is the signal.
async fn wait_for_links(pipeline: &Pipeline, replayers: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY;
    loop {
        let up = scrape(pipeline.listener_metrics)
            .await?
            .sum("tapwire_listener_replayer_up", &[]);
        if up == replayers {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the listener links to {up} of {replayers} replayers after {READY:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    println!(
        "capture-to-replay latency: arrival at production to arrival at the target, {} s per rate, {} connections, GETs\n",
        args.seconds, args.connections
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "rate/s", "served", "timed", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for &rate in &args.rates {
        let pipeline = Pipeline::start(PipelineOptions {
            targets: 1,
            record: false,
            ..PipelineOptions::default()
        })
        .await?;
        let target = &pipeline.targets[0];
        pipeline.production.keep_arrivals();
        target.keep_arrivals();
        traffic::fixed_rate(
            pipeline.production.addr(),
            FixedRate {
                rate: Some(rate),
                total: (rate * args.seconds as f64) as u64,
                connections: args.connections,
                body_bytes: 0,
            },
        )
        .await;
        let served = pipeline.production.served();
        target.wait_for_served(served, DELIVERY).await;
        let replayed = target.arrivals();
        let mut latencies: Vec<Duration> = pipeline
            .production
            .arrivals()
            .into_iter()
            .filter_map(|(sequence, at)| Some(replayed.get(&sequence)?.duration_since(at)))
            .collect();
        latencies.sort_unstable();
        let report = pipeline.finish(served).await?;
        let ms = |q: f64| percentile(&latencies, q).as_secs_f64() * 1e3;
        println!(
            "{:>8.0} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            rate,
            served,
            latencies.len(),
            ms(0.50),
            ms(0.90),
            ms(0.99),
            ms(1.0),
        );
        if !report.is_complete() {
            println!("{}", report.table());
        }
    }
    Ok(())
}

/// Nearest-rank percentile of sorted `values`; zero when there are none.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
