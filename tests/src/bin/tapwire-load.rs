//! A client process for tests that must send from elsewhere (e.g. inside a network namespace
//! with `ip netns exec`): sends the standard request mix and prints `ok=N failed=M`.

use clap::Parser;
use tapwire_testkit::traffic;

/// Sends the test request mix to a server.
#[derive(Parser)]
#[command(name = "tapwire-load", max_term_width = 100)]
struct Args {
    /// Server address, IP:PORT.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// Requests to send (sequence numbers start at --first).
    #[arg(long, default_value_t = 100)]
    requests: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let outcome = traffic::send_mix(args.addr, args.requests, args.connections).await;
    println!("ok={} failed={}", outcome.ok, outcome.failed);
}
