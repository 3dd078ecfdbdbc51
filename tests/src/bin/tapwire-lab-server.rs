//! A host's HTTP service for the multi-host lab (`deploy/lab/`): the testkit's recording server
//! on a free port of one address, printing `listening on ADDR` once it accepts. It answers
//! every request with 200 and, on SIGTERM or Ctrl-C, writes what it received to `--report` as
//! one JSON object keyed by each request's `x-tapwire-seq` header:
//! `{"served": N, "ids": {"<seq>": copies, ...}, "repeated_at": {"<seq>": [[t, ip], ...]}}`:
//! for a request that came more than once, the Unix time each copy arrived and the address it
//! came from (which replayer). The lab proves with it that every request arrived exactly once,
//! or tells when and from where a second copy came.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use tapwire_testkit::servers::{ReceivedRequest, RecordingServer};
use tokio::signal::unix::{SignalKind, signal};

/// Serves and counts requests by sequence number.
#[derive(Parser)]
#[command(name = "tapwire-lab-server", max_term_width = 100)]
struct Args {
    /// Address to serve on (a free port is chosen).
    #[arg(long)]
    ip: IpAddr,
    /// Where to write the JSON report at exit.
    #[arg(long)]
    report: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut terminate = signal(SignalKind::terminate())?;
    let server = RecordingServer::start_on(args.ip, true).await?;
    println!("listening on {}", server.addr());
    std::io::stdout().flush()?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let received: BTreeMap<u64, Vec<ReceivedRequest>> = server.received().into_iter().collect();
    let ids: Vec<String> = received
        .iter()
        .map(|(sequence, copies)| format!("\"{sequence}\":{}", copies.len()))
        .collect();
    // The recording keeps monotonic instants; the lab's clock is the wall clock.
    let (now, now_instant) = (SystemTime::now(), Instant::now());
    let unix_seconds = |at: Instant| {
        (now - now_instant.duration_since(at))
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64())
    };
    let repeated: Vec<String> = received
        .iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|(sequence, copies)| {
            let times: Vec<String> = copies
                .iter()
                .map(|copy| {
                    let at = unix_seconds(copy.arrived_at);
                    format!("[{at:.3},\"{}\"]", copy.peer.ip())
                })
                .collect();
            format!("\"{sequence}\":[{}]", times.join(","))
        })
        .collect();
    let report = format!(
        "{{\"served\":{},\"ids\":{{{}}},\"repeated_at\":{{{}}}}}\n",
        server.served(),
        ids.join(","),
        repeated.join(",")
    );
    // Written whole, then renamed: a reader never sees half a report.
    let partial = args.report.with_extension("partial");
    std::fs::write(&partial, report).with_context(|| format!("{}", partial.display()))?;
    std::fs::rename(&partial, &args.report)
        .with_context(|| format!("{}", args.report.display()))?;
    Ok(())
}
