//! A host's HTTP service for the multi-host lab (`deploy/lab/`): the testkit's recording server
//! on a free port of one address, printing `listening on ADDR` once it accepts. It answers
//! every request with 200 and, on SIGTERM or Ctrl-C, writes what it received to `--report`
//! as one JSON object, `{"served": N, "ids": {"<sequence>": copies, ...}}`, keyed by each
//! request's `x-tapwire-seq` header, so the lab can prove every request arrived exactly once.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tapwire_testkit::servers::RecordingServer;
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
    let copies: BTreeMap<u64, usize> = server
        .received()
        .into_iter()
        .map(|(sequence, copies)| (sequence, copies.len()))
        .collect();
    let ids: Vec<String> = copies
        .iter()
        .map(|(sequence, copies)| format!("\"{sequence}\":{copies}"))
        .collect();
    let report = format!(
        "{{\"served\":{},\"ids\":{{{}}}}}\n",
        server.served(),
        ids.join(",")
    );
    // Written whole, then renamed: a reader never sees half a report.
    let partial = args.report.with_extension("partial");
    std::fs::write(&partial, report).with_context(|| format!("{}", partial.display()))?;
    std::fs::rename(&partial, &args.report)
        .with_context(|| format!("{}", args.report.display()))?;
    Ok(())
}
