//! The metrics port's `/healthz` and `/readyz`, on the real binaries: readiness follows the
//! replayer link (stopped and brought back on the same port) and the staging target coming up.
//! Needs root (live capture on loopback) and the binaries built.

use std::net::SocketAddr;
use std::time::Duration;

use tapwire_testkit::pipeline::require_root;
use tapwire_testkit::process::{Process, addr_in};
use tapwire_testkit::scrape::get;
use tokio::net::TcpListener;

/// Long enough for a link's reconnect backoff (5 s at most) and a target probe (every 2 s).
const FLIP_TIMEOUT: Duration = Duration::from_secs(20);
const START_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_EVERY: Duration = Duration::from_millis(50);

const NO_OUTPUT: &str = "no replayer link is up and no file output is open\n";
const NO_TARGET: &str = "no target is reachable\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_readiness_follows_the_replayer_link() {
    require_root().unwrap();
    let grpc = free_port().await;
    let staging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let staging_url = format!("http://{}", staging.local_addr().unwrap());
    let listener = start_listener(&[
        "--replayer",
        &format!("http://{grpc}"),
        "--listener-id",
        "health",
    ])
    .await;
    let metrics = metrics_addr(&listener).await;
    assert_alive(metrics).await;
    // The capture is open: the missing link is the only reason.
    wait_for(metrics, "/readyz", 503, NO_OUTPUT).await;

    let mut replayer = start_replayer(grpc, &staging_url).await;
    wait_for(metrics, "/readyz", 200, "ready\n").await;

    replayer.kill().await.unwrap();
    wait_for(metrics, "/readyz", 503, NO_OUTPUT).await;
    assert_alive(metrics).await;

    let _replayer = start_replayer(grpc, &staging_url).await;
    wait_for(metrics, "/readyz", 200, "ready\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_writing_a_file_is_ready_without_replayers() {
    require_root().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.gor");
    let listener = start_listener(&["--output-file", file.to_str().unwrap()]).await;
    let metrics = metrics_addr(&listener).await;
    wait_for(metrics, "/readyz", 200, "ready\n").await;
    assert_alive(metrics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayer_is_ready_once_its_target_is_reachable() {
    // Nothing listens on the target's port yet.
    let target = free_port().await;
    let replayer =
        start_replayer("127.0.0.1:0".parse().unwrap(), &format!("http://{target}")).await;
    let metrics = metrics_addr(&replayer).await;
    assert_alive(metrics).await;
    // Serving gRPC: the unreachable target is the only reason.
    wait_for(metrics, "/readyz", 503, NO_TARGET).await;

    let staging = TcpListener::bind(target).await.unwrap();
    tokio::spawn(async move { while staging.accept().await.is_ok() {} });
    wait_for(metrics, "/readyz", 200, "ready\n").await;
    assert_alive(metrics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_of_the_metrics_port_are_not_found() {
    let replayer = start_replayer("127.0.0.1:0".parse().unwrap(), "http://127.0.0.1:9").await;
    let metrics = metrics_addr(&replayer).await;
    for path in ["/", "/health", "/readyz/extra", "/metricsz"] {
        let (status, _) = get(metrics, path).await.unwrap();
        assert_eq!(status, 404, "{path}");
    }
    assert_eq!(get(metrics, "/metrics").await.unwrap().0, 200);
}

/// A listener capturing a free port on lo, with metrics on a free port and `outputs` flags.
async fn start_listener(outputs: &[&str]) -> Process {
    let production_port = free_port().await.port().to_string();
    let mut args = strings(&[
        "--interface",
        "lo",
        "--port",
        &production_port,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    args.extend(strings(outputs));
    Process::spawn("tapwire-listener", &args).unwrap()
}

/// A replayer serving gRPC on `grpc` (port 0: any) with one target, its metrics port on any.
async fn start_replayer(grpc: SocketAddr, target: &str) -> Process {
    let replayer = Process::spawn(
        "tapwire-replayer",
        &strings(&[
            "--grpc-listen",
            &grpc.to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--target",
            target,
        ]),
    )
    .unwrap();
    replayer
        .wait_for_line("grpc server listening", START_TIMEOUT)
        .await
        .unwrap();
    replayer
}

async fn metrics_addr(process: &Process) -> SocketAddr {
    let line = process
        .wait_for_line("metrics endpoint listening", START_TIMEOUT)
        .await
        .unwrap();
    addr_in(&line).unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// `/healthz` answers 200 `ok`.
async fn assert_alive(metrics: SocketAddr) {
    assert_eq!(
        get(metrics, "/healthz").await.unwrap(),
        (200, "ok\n".into())
    );
}

/// Polls `path` until it answers `status` with exactly `body`; fails with the last answer.
async fn wait_for(metrics: SocketAddr, path: &str, status: u16, body: &str) {
    let deadline = tokio::time::Instant::now() + FLIP_TIMEOUT;
    loop {
        let answer = get(metrics, path).await.unwrap();
        if answer == (status, body.to_owned()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} did not answer {status} {body:?} within {FLIP_TIMEOUT:?}; last: {answer:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A loopback port free right now (bound, then released).
async fn free_port() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    probe.local_addr().unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}
