//! `make demo`: the whole pipeline on loopback with built-in servers. Sends a mix of requests to
//! a built-in "production" service, lets tapwire capture and replay them to two built-in staging
//! targets, prints the accounting, and exits 0 only if every request reached every target
//! exactly once.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::traffic;

/// Runs production -> tapwire-listener -> tapwire-replayer -> staging targets on loopback.
#[derive(Parser)]
#[command(name = "tapwire-demo", max_term_width = 100)]
struct Args {
    /// Requests to send to production.
    #[arg(long, default_value_t = 3000)]
    requests: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Built-in staging targets.
    #[arg(long, default_value_t = 2)]
    targets: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: args.targets,
        ..PipelineOptions::default()
    })
    .await?;
    println!("production service  {}", pipeline.production.url());
    for target in &pipeline.targets {
        println!("staging target      {}", target.url());
    }
    println!(
        "replayer            grpc {}  metrics http://{}/metrics",
        pipeline.replayer_grpc, pipeline.replayer_metrics
    );
    println!(
        "listener            capturing lo:{}  metrics http://{}/metrics",
        pipeline.production.addr().port(),
        pipeline.listener_metrics
    );
    println!(
        "\nsending {} requests over {} connections (GET and POST, keep-alive and fresh connections, chunked bodies and bodies of 64 KiB to 1 MiB)...",
        args.requests, args.connections
    );
    let load = traffic::send_mix(pipeline.production.addr(), args.requests, args.connections).await;
    println!(
        "production answered {} ok, {} failed in {:.2?}; waiting for the replay...",
        load.ok, load.failed, load.elapsed
    );
    let arrived = pipeline
        .wait_for_targets(args.requests, Duration::from_secs(30))
        .await;

    let mut problems = Vec::new();
    for target in &pipeline.targets {
        let received = target.received();
        let missing = (0..args.requests)
            .filter(|seq| !received.contains_key(seq))
            .count();
        let duplicated = received.values().filter(|copies| copies.len() > 1).count();
        if missing > 0 || duplicated > 0 {
            problems.push(format!(
                "{}: {missing} requests missing, {duplicated} received more than once",
                target.url()
            ));
        }
    }
    let exactly_once = problems.is_empty();
    let report = pipeline.finish(args.requests).await?;
    println!("\n{}", report.table());
    for problem in problems {
        println!("{problem}");
    }
    let ok = arrived && exactly_once && report.is_complete();
    if ok {
        println!(
            "OK: all {} requests reached every target exactly once.",
            args.requests
        );
    } else {
        println!(
            "FAILED: not every request reached every target exactly once (see the table above)."
        );
    }
    Ok(ok)
}
