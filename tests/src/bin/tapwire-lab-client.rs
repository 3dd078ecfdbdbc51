//! The client host of the multi-host lab (`deploy/lab/`): sends the testkit's request mix
//! (keep-alive and fresh connections, chunked and large bodies; every request numbered in
//! `x-tapwire-seq`) to each `--addr` at `--rate` requests per second, until `--requests` per
//! address are sent or SIGTERM/Ctrl-C arrives, so traffic flows for as long as the lab's failure
//! steps take. Address `i` gets sequence numbers `i * requests ..`, so no two requests share
//! one. Prints one line per address, `addr=A ok=N failed=M`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tapwire_testkit::traffic;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Requests are sent in slices of this length, each slice's share of the rate at once: the
/// pacing the testkit's `send_mix_range` allows, fine enough at lab rates.
const SLICE: Duration = Duration::from_millis(100);

/// Sends paced, numbered requests to several servers.
#[derive(Parser)]
#[command(name = "tapwire-lab-client", max_term_width = 100)]
struct Args {
    /// Server address, IP:PORT. Repeat for several servers.
    #[arg(long, required = true)]
    addr: Vec<SocketAddr>,
    /// Most requests sent to each server.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Requests per second to each server.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Concurrent connections to each server.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let per_slice = (args.rate * SLICE.as_millis() as u64 / 1000).max(1);
    let (stop, stopped) = watch::channel(false);
    let senders: Vec<_> = args
        .addr
        .iter()
        .enumerate()
        .map(|(index, &addr)| {
            let mut stopped = stopped.clone();
            let first = index as u64 * args.requests;
            let end = first + args.requests;
            let connections = args.connections;
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(SLICE);
                let (mut ok, mut failed) = (0, 0);
                let mut next = first;
                while next < end && !*stopped.borrow() {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    let slice = next..(next + per_slice).min(end);
                    next = slice.end;
                    let outcome = traffic::send_mix_range(addr, slice, connections).await;
                    ok += outcome.ok;
                    failed += outcome.failed;
                }
                (addr, ok, failed)
            })
        })
        .collect();
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop.send(true);
    });
    for sender in senders {
        let (addr, ok, failed) = sender.await?;
        println!("addr={addr} ok={ok} failed={failed}");
    }
    Ok(())
}
