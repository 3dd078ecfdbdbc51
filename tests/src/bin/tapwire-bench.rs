//! `bench/pipeline.sh`: production on loopback under fixed request rates, captured and replayed
//! by tapwire to one target. For each rate it prints served vs replayed counts, drops, the
//! packets captured per request (both directions: the server's ACKs prove what production
//! accepted), and the listener's CPU time and peak memory.

use std::time::Duration;

use clap::Parser;
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::traffic::{self, FixedRate};

/// Fixed-rate pipeline benchmark.
#[derive(Parser)]
#[command(name = "tapwire-bench", max_term_width = 100)]
struct Args {
    /// Request rates to run, per second; `max` sends as fast as production answers.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<String>,
    /// Seconds of load per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Total requests for a `max` run.
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// Client keep-alive connections to production.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// 0 sends GETs; otherwise POSTs with a body of this many bytes.
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// Extra flag for tapwire-listener (repeatable), e.g. `--listener-arg=--buffer-bytes=8388608`.
    #[arg(long = "listener-arg", allow_hyphen_values = true)]
    listener_args: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "tapwire pipeline benchmark: {}s per rate, {} connections, {}\n",
        args.seconds,
        args.connections,
        if args.body_bytes == 0 {
            "GET".to_owned()
        } else {
            format!("POST {} B", args.body_bytes)
        }
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>12} {:>10}",
        "rate/s",
        "achieved",
        "served",
        "captured",
        "replayed",
        "replayed%",
        "dropped",
        "pkts/req",
        "cpu s",
        "cpu µs/req",
        "peak RSS"
    );
    for rate in &args.rates {
        let (rate, total) = if rate == "max" {
            (None, args.max_requests)
        } else {
            let rate: f64 = rate.parse()?;
            (Some(rate), (rate * args.seconds as f64) as u64)
        };
        let pipeline = Pipeline::start(PipelineOptions {
            targets: 1,
            record: false,
            listener_args: args.listener_args.clone(),
            ..PipelineOptions::default()
        })
        .await?;
        let load = traffic::fixed_rate(
            pipeline.production.addr(),
            FixedRate {
                rate,
                total,
                connections: args.connections,
                body_bytes: args.body_bytes,
            },
        )
        .await;
        let served = pipeline.production.served();
        pipeline
            .wait_for_targets(served, Duration::from_secs(30))
            .await;
        let usage = pipeline.listener_usage()?;
        let report = pipeline.finish(served).await?;
        let target = &report.targets[0];
        let dropped: u64 =
            report.listener_dropped.values().sum::<u64>() + target.dropped.values().sum::<u64>();
        println!(
            "{:>8} {:>9.0} {:>9} {:>9} {:>9} {:>8.2}% {:>8} {:>9.2} {:>10.2} {:>12.1} {:>7.1} MiB",
            rate.map_or("max".to_owned(), |r| format!("{r:.0}")),
            load.ok as f64 / load.elapsed.as_secs_f64(),
            served,
            report.captured,
            target.responses,
            100.0 * target.responses as f64 / served.max(1) as f64,
            dropped,
            report.packets_captured as f64 / served.max(1) as f64,
            usage.cpu_seconds,
            usage.cpu_seconds * 1e6 / served.max(1) as f64,
            usage.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        );
        if !report.is_complete() {
            println!("{}", report.table());
        }
    }
    Ok(())
}
