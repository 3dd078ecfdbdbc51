//! Which traffic the listener captures: `--host` keeps only the servers named, `--exclude-host`
//! leaves them out, `--bpf-filter` narrows further, and `--real-ip-header` tells the target
//! who the client was. Production listens on every local address; requests go to two of them
//! on the same port (127.0.0.1 and 127.0.0.2, both on lo) and the target must receive exactly
//! those the selection keeps.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tapwire_testkit::pipeline::{Replayer, SummaryLine, require_root};
use tapwire_testkit::process::Process;
use tapwire_testkit::servers::RecordingServer;
use tapwire_testkit::traffic;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Requests sent to 127.0.0.2, numbered from 0.
const TO_SECOND: std::ops::Range<u64> = 0..20;
/// Requests sent to 127.0.0.1, numbered after those.
const TO_FIRST: std::ops::Range<u64> = 100..130;

/// What reached the target, and the listener's final accounting.
struct Replayed {
    sequences: BTreeSet<u64>,
    target: RecordingServer,
    listener: SummaryLine,
}

/// Production on 0.0.0.0; a listener with `selection` captures its port on lo and streams to a
/// replayer with one target; requests [`TO_SECOND`] go to 127.0.0.2, then [`TO_FIRST`] to
/// 127.0.0.1. Everything is stopped (drained) before the target is read, so nothing the
/// listener captured can still be on its way.
async fn replay_with(selection: &[&str]) -> Replayed {
    require_root().unwrap();
    let production = RecordingServer::start_on(IpAddr::from([0, 0, 0, 0]), false)
        .await
        .unwrap();
    let port = production.addr().port();
    let target = RecordingServer::start(true).await.unwrap();
    let mut replayer = Replayer::start(&target.url(), &[]).await.unwrap();
    let mut args: Vec<String> = [
        "--interface",
        "lo",
        "--port",
        &port.to_string(),
        "--replayer",
        &format!("http://{}", replayer.grpc),
    ]
    .map(String::from)
    .to_vec();
    args.extend(selection.iter().map(|arg| arg.to_string()));
    let mut listener = Process::spawn("tapwire-listener", &args).unwrap();
    listener
        .wait_for_line("connected to replayer", TIMEOUT)
        .await
        .unwrap();
    for (ip, sequences) in [([127, 0, 0, 2], TO_SECOND), ([127, 0, 0, 1], TO_FIRST)] {
        let sent = sequences.end - sequences.start;
        let addr = SocketAddr::new(IpAddr::from(ip), port);
        let outcome = traffic::send_mix_range(addr, sequences, 2).await;
        assert_eq!(outcome.ok, sent, "production answered to {addr}");
    }
    assert_eq!(production.served(), 50);
    let status = listener.terminate(TIMEOUT).await.unwrap();
    assert!(status.success(), "{}", listener.log());
    let summary = listener
        .wait_for_line("listener stopped", TIMEOUT)
        .await
        .unwrap();
    replayer.stop().await.unwrap();
    Replayed {
        sequences: target.received().keys().copied().collect(),
        target,
        listener: SummaryLine::parse(&summary).unwrap(),
    }
}

fn numbers(range: std::ops::Range<u64>) -> BTreeSet<u64> {
    range.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_replays_only_requests_to_that_server_address() {
    let replayed = replay_with(&["--host", "127.0.0.1"]).await;
    assert_eq!(replayed.sequences, numbers(TO_FIRST));
    assert_eq!(replayed.target.served(), 30);
    assert_eq!(replayed.listener.get("captured"), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_host_leaves_that_server_address_out() {
    let replayed = replay_with(&["--exclude-host", "127.0.0.1"]).await;
    assert_eq!(replayed.sequences, numbers(TO_SECOND));
    assert_eq!(replayed.target.served(), 20);
    assert_eq!(replayed.listener.get("captured"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bpf_filter_narrows_the_capture() {
    let replayed = replay_with(&["--bpf-filter", "host 127.0.0.2"]).await;
    assert_eq!(replayed.sequences, numbers(TO_SECOND));
    assert_eq!(replayed.target.served(), 20);
    assert_eq!(replayed.listener.get("captured"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_ip_header_carries_the_client_address_to_the_target() {
    // Requests to 127.0.0.2 come from 127.0.0.1 (lo's source address): client and server
    // addresses differ, so a header naming the wrong end fails.
    let replayed = replay_with(&["--host", "127.0.0.2", "--real-ip-header", "X-Real-IP"]).await;
    assert_eq!(replayed.sequences, numbers(TO_SECOND));
    for (sequence, copies) in replayed.target.received() {
        let header = copies[0].headers.get("x-real-ip");
        assert_eq!(
            header.map(|value| value.as_bytes()),
            Some(&b"127.0.0.1"[..]),
            "request {sequence}: {:?}",
            copies[0].headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_bpf_filter_is_refused_at_start_with_libpcaps_message_once() {
    let path = tapwire_testkit::process::binary_path("tapwire-listener").unwrap();
    let output = tokio::process::Command::new(path)
        .args([
            "--port",
            "8080",
            "--output-null",
            "--bpf-filter",
            "port nonsense",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("bpf_filter"), "{stderr}");
    assert!(lines[0].contains("\"port nonsense\""), "{stderr}");
    assert_eq!(
        lines[0].matches("nonsense").count(),
        2,
        "libpcap's text once: {stderr}"
    );
}
