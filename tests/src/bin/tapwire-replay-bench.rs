//! `bench/replay.sh`: the replayer on its own, fed by a synthetic listener over gRPC, against an
//! HTTP target (nginx, started by the script). Measures (1) replay throughput next to `oha`
//! sending the same GETs straight to the target with the same connection count, and (2) rate
//! accuracy: records offered at twice the rate for N seconds, delivered vs rate x seconds.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use tapwire_testkit::feed::feed;
use tapwire_testkit::oha;
use tapwire_testkit::pipeline::{Replayer, SummaryLine};
use tapwire_testkit::scrape::scrape;

/// Replayer throughput and rate accuracy.
#[derive(Parser)]
#[command(name = "tapwire-replay-bench", max_term_width = 100)]
struct Args {
    /// The target, e.g. http://127.0.0.1:18090 (bench/replay.sh starts nginx there).
    #[arg(long)]
    target: String,
    /// Requests for the throughput runs.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Connections to the target, for both the replayer and oha.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Rates to check for accuracy, per second.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    rates: Vec<u32>,
    /// Seconds per rate-accuracy run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const GRACE: Duration = Duration::from_secs(30);

/// Stops the replayer (it drains) and returns its totals for `target`.
async fn stop_and_totals(mut replayer: Replayer, target: &str) -> anyhow::Result<SummaryLine> {
    replayer.stop().await?;
    let name = target.trim_end_matches('/');
    SummaryLine::parse(
        &replayer
            .process
            .wait_for_line(&format!("target totals target={name} "), GRACE)
            .await?,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = args.target.trim_end_matches('/').to_owned();

    println!(
        "throughput: {} GETs, {} connections to {target}",
        args.requests, args.connections
    );
    let direct = oha::requests_per_second(&target, args.requests, args.connections)?;
    let queue = args.requests.to_string();
    let replayer = Replayer::start(
        &target,
        &[
            "--concurrency".into(),
            args.connections.to_string(),
            "--target-queue".into(),
            queue,
        ],
    )
    .await?;
    let started = Instant::now();
    feed(replayer.grpc, args.requests, None).await?;
    // Delivered when the target has answered every request.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let responses = scrape(replayer.metrics)
            .await?
            .sum("tapwire_replayer_responses_total", &[]);
        if responses >= args.requests {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {responses} of {} responses after 300 s",
                args.requests
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replayed = args.requests as f64 / started.elapsed().as_secs_f64();
    let totals = stop_and_totals(replayer, &target).await?;
    println!(
        "  {:<28} {:>10.0} requests/s",
        "oha straight to the target", direct
    );
    println!(
        "  {:<28} {:>10.0} requests/s  ({:.0}% of oha; responses={} dropped={:?})",
        "tapwire-replayer",
        replayed,
        100.0 * replayed / direct,
        totals.get("responses"),
        totals.with_prefix("dropped_")
    );

    println!(
        "\nrate accuracy: offered at twice the rate for {} s",
        args.seconds
    );
    println!(
        "  {:>8} {:>10} {:>10} {:>10} {:>9}",
        "rate/s", "offered", "expected", "delivered", "error"
    );
    for rate in &args.rates {
        let replayer = Replayer::start(&target, &["--rate".into(), rate.to_string()]).await?;
        let offered = 2 * u64::from(*rate) * args.seconds;
        feed(replayer.grpc, offered, Some(2.0 * f64::from(*rate))).await?;
        let totals = stop_and_totals(replayer, &target).await?;
        let delivered = totals.get("responses");
        // Rates are kept on the capture clock: the records span exactly `seconds` of it.
        let expected = f64::from(*rate) * args.seconds as f64;
        println!(
            "  {:>8} {:>10} {:>10.0} {:>10} {:>8.2}%",
            rate,
            offered,
            expected,
            delivered,
            100.0 * (delivered as f64 - expected) / expected
        );
    }
    Ok(())
}
