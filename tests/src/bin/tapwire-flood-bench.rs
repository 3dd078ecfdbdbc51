//! `bench/flood.sh`: the listener's memory under hostile packet mixes at its default limits.
//! Crafted segments are sent on `lo` to an address that is not local (192.0.2.1, TEST-NET-1),
//! so no kernel answers them: the listener sees them and nothing else does. For each mix it
//! prints the packets sent and captured, the kernel's capture drops, and the listener's peak
//! RSS (VmHWM); it exits non-zero if a peak is over the limit (64 MiB). Needs root.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use tapwire_testkit::pcap_fixture::{LoopbackSender, Segment};
use tapwire_testkit::process::{Process, addr_in};
use tapwire_testkit::scrape::scrape;

/// Flood benchmark of the listener's reassembly memory.
#[derive(Parser)]
#[command(name = "tapwire-flood-bench", max_term_width = 100)]
struct Args {
    /// Mixes to run: `flows` (that many connections, each with a partial request),
    /// `scattered` (two connections, one-byte segments every other byte behind a hole that
    /// never fills), `holes` (connections each holding scattered one-byte segments).
    #[arg(long, value_delimiter = ',', default_value = "flows,scattered,holes")]
    mixes: Vec<String>,
    /// Connections for `flows` (the listener tracks 65,536 at most by default).
    #[arg(long, default_value_t = 100_000)]
    flows: u32,
    /// One-byte segments per connection for `scattered`.
    #[arg(long, default_value_t = 1_000_000)]
    segments: u32,
    /// Connections for `holes`, each sent 16 scattered one-byte segments.
    #[arg(long, default_value_t = 65_536)]
    hole_flows: u32,
    /// Peak RSS allowed, in MiB.
    #[arg(long, default_value_t = 64)]
    limit_mib: u64,
    /// Extra flag for tapwire-listener (repeatable).
    #[arg(long = "listener-arg", allow_hyphen_values = true)]
    listener_args: Vec<String>,
}

const PORT: u16 = 8099;
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PARTIAL: &[u8] = b"POST /upload HTTP/1.1\r\nHost: prod\r\nContent-Length: 100000\r\n\r\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "tapwire flood benchmark: listener at default limits, peak RSS must stay under {} MiB\n",
        args.limit_mib
    );
    println!(
        "{:<10} {:>10} {:>10} {:>12} {:>8} {:>11} {:>10}",
        "mix", "sent", "captured", "kernel drop", "flows", "peak RSS", "verdict"
    );
    let mut over = false;
    for mix in &args.mixes {
        let mut listener = start_listener(&args.listener_args).await?;
        let metrics = addr_in(
            &listener
                .wait_for_line("metrics endpoint listening", Duration::from_secs(20))
                .await?,
        )
        .ok_or_else(|| anyhow::anyhow!("no metrics address"))?;
        listener
            .wait_for_line("capture started", Duration::from_secs(20))
            .await?;
        let mut sender = LoopbackSender::open()?;
        let sent = match mix.as_str() {
            "flows" => flows(&mut sender, args.flows)?,
            "scattered" => scattered(&mut sender, 2, args.segments)?,
            "holes" => scattered(&mut sender, args.hole_flows, 16)?,
            other => anyhow::bail!("unknown mix {other:?}"),
        };
        let captured = settled(metrics).await?;
        let snapshot = scrape(metrics).await?;
        let usage = listener.resource_usage()?;
        listener.terminate(Duration::from_secs(10)).await?;
        let peak_mib = usage.peak_rss_bytes as f64 / (1024.0 * 1024.0);
        let within = usage.peak_rss_bytes <= args.limit_mib << 20;
        over |= !within;
        println!(
            "{:<10} {:>10} {:>10} {:>12} {:>8} {:>7.1} MiB {:>10}",
            mix,
            sent,
            captured,
            snapshot.sum("tapwire_listener_pcap_dropped_packets", &[]),
            snapshot.sum("tapwire_listener_flows_active", &[]),
            peak_mib,
            if within { "ok" } else { "OVER" }
        );
    }
    if over {
        anyhow::bail!("the listener's peak RSS went over {} MiB", args.limit_mib);
    }
    Ok(())
}

async fn start_listener(extra: &[String]) -> anyhow::Result<Process> {
    let mut args: Vec<String> = [
        "--interface",
        "lo",
        "--port",
        &PORT.to_string(),
        "--output-null",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().cloned());
    Process::spawn("tapwire-listener", &args)
}

/// The `n`th distinct client address: 127.x.y.1 with ports from 10000.
fn client(n: u32) -> SocketAddr {
    let (host, port) = (n / 50_000, 10_000 + n % 50_000);
    SocketAddr::from(([127, 1 + (host >> 8) as u8, host as u8, 1], port as u16))
}

fn segment(client: SocketAddr, seq: u32, syn: bool, payload: &[u8]) -> Segment {
    Segment {
        client,
        server: SocketAddr::from((SERVER, PORT)),
        from_server: false,
        seq,
        syn,
        fin: false,
        rst: false,
        ack: None,
        payload: payload.to_vec(),
    }
}

/// Connections each opened by a SYN and left with a partial request.
fn flows(sender: &mut LoopbackSender, count: u32) -> anyhow::Result<u64> {
    for n in 0..count {
        sender.send(&segment(client(n), 1000, true, b""))?;
        sender.send(&segment(client(n), 1001, false, PARTIAL))?;
        pace(n);
    }
    Ok(2 * u64::from(count))
}

/// `flows` connections, each sent `per_flow` one-byte segments, one every other byte, behind a
/// hole at its start that never fills: nothing coalesces.
fn scattered(sender: &mut LoopbackSender, flows: u32, per_flow: u32) -> anyhow::Result<u64> {
    for n in 0..flows {
        sender.send(&segment(client(n), 1000, true, b""))?;
    }
    let mut sent = u64::from(flows);
    for i in 0..per_flow {
        for n in 0..flows {
            sender.send(&segment(client(n), 1001 + 10 + 2 * i, false, b"x"))?;
            sent += 1;
            pace(sent as u32);
        }
    }
    Ok(sent)
}

/// A short pause every few thousand packets, so that the kernel's capture ring (16 MiB) is not
/// what limits the listener: the benchmark measures reassembly, not drops.
fn pace(n: u32) {
    if n % 4096 == 4095 {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the listener has read everything sent (its packet count stops moving).
async fn settled(metrics: SocketAddr) -> anyhow::Result<u64> {
    let mut last = u64::MAX;
    loop {
        let now = scrape(metrics)
            .await?
            .sum("tapwire_listener_packets_captured_total", &[]);
        if now == last {
            // One more housekeeping round (every second) refreshes the gauges.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            return Ok(now);
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
