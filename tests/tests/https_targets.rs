//! `https://` targets, against a local TLS server whose certificates the test generates: the
//! recorded bytes arrive exactly over TLS with connections reused; a certificate from a CA the
//! replayer does not trust is refused, every request counted `dropped{reason="tls"}` and the
//! cause logged a bounded number of times; `--target-insecure` accepts it, with a warning;
//! `--host-override` is the server name sent; TLS settings on an `http://` target are refused.
//! Also: an unreachable target is named at start-up, with its address and the cause.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tapwire_shared::gor::{GorHeader, GorMessage, PayloadType};
use tapwire_testkit::certs::TestCa;
use tapwire_testkit::process::Process;
use tapwire_testkit::tls_server::TlsRawServer;

const WAIT: Duration = Duration::from_secs(30);

/// Writes `requests` as a `.gor` file in `dir`, captured 1 ns apart; its path.
fn gor_file(dir: &Path, requests: &[String]) -> String {
    gor_file_spaced(dir, requests, Duration::from_nanos(1))
}

/// Writes `requests` as a `.gor` file in `dir`, captured `gap` apart; its path.
fn gor_file_spaced(dir: &Path, requests: &[String], gap: Duration) -> String {
    let mut file = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Request,
                id: format!("{index:024x}"),
                timestamp_ns: 1_700_000_000_000_000_000 + index as u64 * gap.as_nanos() as u64,
                latency_ns: None,
            },
            payload: Bytes::from(request.clone()),
        }
        .encode(&mut file);
    }
    let path = dir.join("requests.gor");
    std::fs::write(&path, file).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Replays `file` to `target` with `extra` flags (as fast as possible unless they give a
/// `--timing`), one worker so that connection reuse shows; waits for its final accounting of
/// that target.
async fn replay(file: &str, target: &str, extra: &[&str]) -> Process {
    let mut args: Vec<String> = [
        "--input-file",
        file,
        "--concurrency",
        "1",
        "--target",
        target,
    ]
    .map(String::from)
    .to_vec();
    if !extra.contains(&"--timing") {
        args.extend(["--timing".into(), "asap".into()]);
    }
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let mut replayer = Process::spawn("tapwire-replayer", &args).unwrap();
    replayer
        .wait_for_line(&format!("target totals target={target}"), WAIT)
        .await
        .unwrap();
    replayer.wait_exit(WAIT).await.unwrap();
    replayer
}

/// Requests that keep the connection open (odd header case and spacing, duplicates, a chunked
/// body with trailers, a sized body), then one that closes it and one after.
fn requests() -> Vec<String> {
    [
        "GET /tls/odd?a=1&b=%20 HTTP/1.1\r\nHost: production.example\r\nX-Dup: first\r\n\
         ACCEPT:   */*\r\nx-dup: second\r\nX-Empty:\r\n\r\n",
        "POST /tls/chunked HTTP/1.1\r\nHost: production.example\r\nTransfer-Encoding: chunked\r\n\
         Trailer: X-Checksum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\
         X-Checksum: 1234\r\n\r\n",
        "PUT /tls/sized HTTP/1.1\r\nhost: production.example\r\nContent-Length: 4\r\n\r\nbody",
        "GET /tls/again HTTP/1.1\r\nHost: production.example\r\n\r\n",
        "GET /tls/close HTTP/1.1\r\nHost: production.example\r\nConnection: close\r\n\r\n",
        "DELETE /tls/after-close HTTP/1.1\r\nHost: production.example\r\n\r\n",
    ]
    .map(String::from)
    .to_vec()
}

/// The requests as the target must receive them: only Host changed, to `host`.
fn expected(host: &str) -> Vec<String> {
    requests()
        .iter()
        .map(|request| {
            request
                .replace("Host: production.example", &format!("Host: {host}"))
                .replace("host: production.example", &format!("host: {host}"))
        })
        .collect()
}

/// Every request arrived exactly once, byte for byte, in order (one worker).
async fn assert_received_exactly(target: &TlsRawServer, expected: &[String]) {
    let received = target.raw().wait_for_requests(expected.len(), WAIT).await;
    let received: Vec<String> = received
        .iter()
        .map(|request| String::from_utf8_lossy(request).into_owned())
        .collect();
    assert_eq!(received, expected, "bytes at the target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_bytes_arrive_exactly_over_tls_on_reused_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "staging").unwrap();
    let target = TlsRawServer::start(&ca.server().unwrap()).await.unwrap();
    let file = gor_file(dir.path(), &requests());
    let ca_file = ca.cert.to_str().unwrap();
    let replayer = replay(&file, &target.url(), &["--target-ca", ca_file]).await;
    assert_received_exactly(&target, &expected(&target.raw().authority())).await;
    // One handshake for the start-up check, one for the first five requests, one after the
    // `Connection: close`: connections are reused over TLS as over TCP.
    assert_eq!(target.handshakes(), 3, "{}", replayer.log());
    assert!(
        replayer.log().contains("status_2xx=6"),
        "{}",
        replayer.log()
    );
    assert!(
        !replayer.log().contains("dropped_tls"),
        "{}",
        replayer.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_idle_between_requests_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "staging").unwrap();
    let target = TlsRawServer::start(&ca.server().unwrap()).await.unwrap();
    // Longer apart than the replayer's idle check (1 s), which must not mistake TLS's own
    // records (session tickets) for the target going away.
    let file = gor_file_spaced(dir.path(), &requests()[..2], Duration::from_millis(1500));
    let ca_file = ca.cert.to_str().unwrap();
    let extra = ["--target-ca", ca_file, "--timing", "original"];
    let replayer = replay(&file, &target.url(), &extra).await;
    assert_received_exactly(&target, &expected(&target.raw().authority())[..2]).await;
    assert_eq!(
        target.handshakes(),
        2,
        "the check, then one: {}",
        replayer.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_untrusted_ca_is_refused_counted_and_logged_a_few_times() {
    let dir = tempfile::tempdir().unwrap();
    let staging_ca = TestCa::new(dir.path(), "staging").unwrap();
    let other_ca = TestCa::new(dir.path(), "other").unwrap();
    let target = TlsRawServer::start(&staging_ca.server().unwrap())
        .await
        .unwrap();
    let many: Vec<String> = (0..200)
        .map(|i| format!("GET /refused/{i} HTTP/1.1\r\nHost: production.example\r\n\r\n"))
        .collect();
    let file = gor_file(dir.path(), &many);
    let other_ca_file = other_ca.cert.to_str().unwrap();
    let replayer = replay(&file, &target.url(), &["--target-ca", other_ca_file]).await;
    let log = replayer.log();
    assert!(log.contains("dropped_tls=200"), "every request: {log}");
    assert_eq!(target.handshakes(), 0, "no handshake completed");
    assert!(target.raw().wait_for_requests(0, WAIT).await.is_empty());
    let failure_lines: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains("WARN") && line.contains("failures")
                || line.contains("request to target failed")
        })
        .collect();
    let first = failure_lines
        .iter()
        .find(|line| line.contains("request to target failed"))
        .unwrap_or_else(|| panic!("no failure line: {log}"));
    assert!(first.contains(&target.url()), "names the target: {first}");
    assert!(first.contains("unknown issuer"), "names the cause: {first}");
    assert!(first.contains("tls"), "names the reason: {first}");
    assert!(
        failure_lines.len() <= 3,
        "rate-limited: {} lines for 200 failures:\n{log}",
        failure_lines.len()
    );
    let start_up = log
        .lines()
        .find(|line| line.contains("target unreachable at start-up"))
        .unwrap_or_else(|| panic!("no start-up warning: {log}"));
    assert!(start_up.contains("unknown issuer"), "{start_up}");
}

/// With neither `--target-ca` nor `--target-insecure` only the public roots are trusted: a
/// staging certificate from a private CA is refused, never accepted by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_private_ca_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let staging_ca = TestCa::new(dir.path(), "staging").unwrap();
    let target = TlsRawServer::start(&staging_ca.server().unwrap())
        .await
        .unwrap();
    let requests: Vec<String> = (0..5)
        .map(|i| format!("GET /default/{i} HTTP/1.1\r\nHost: production.example\r\n\r\n"))
        .collect();
    let file = gor_file(dir.path(), &requests);
    let replayer = replay(&file, &target.url(), &[]).await;
    let log = replayer.log();
    assert!(log.contains("dropped_tls=5"), "every request: {log}");
    assert_eq!(target.handshakes(), 0, "no handshake completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_insecure_accepts_an_untrusted_certificate_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let self_signed = TestCa::new(dir.path(), "self-signed").unwrap();
    let target = TlsRawServer::start(&self_signed.server().unwrap())
        .await
        .unwrap();
    let file = gor_file(dir.path(), &requests());
    let replayer = replay(&file, &target.url(), &["--target-insecure"]).await;
    assert_received_exactly(&target, &expected(&target.raw().authority())).await;
    let log = replayer.log();
    let warning = log
        .lines()
        .find(|line| line.contains("--target-insecure"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(
        warning.contains("WARN") && warning.contains(&target.url()),
        "{warning}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_override_is_the_server_name_sent_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "staging").unwrap();
    let target = TlsRawServer::start(&ca.server().unwrap()).await.unwrap();
    let file = gor_file(dir.path(), &requests()[..1]);
    let ca_file = ca.cert.to_str().unwrap();
    let extra = ["--target-ca", ca_file, "--host-override", "localhost"];
    replay(&file, &target.url(), &extra).await;
    assert_received_exactly(&target, &expected("localhost")[..1]).await;
    let names = target.server_names();
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|name| name.as_deref() == Some("localhost")),
        "{names:?}"
    );
    // A name the certificate does not hold is refused.
    let mismatch = TlsRawServer::start(&ca.server().unwrap()).await.unwrap();
    let extra = ["--target-ca", ca_file, "--host-override", "staging.example"];
    let replayer = replay(&file, &mismatch.url(), &extra).await;
    assert!(
        replayer.log().contains("dropped_tls=1"),
        "{}",
        replayer.log()
    );
    assert!(
        replayer.log().contains("name mismatch"),
        "{}",
        replayer.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_named_at_start_up_and_the_replayer_runs_on() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let target = format!("http://{addr}");
    let args: Vec<String> = ["--grpc-listen", "127.0.0.1:0", "--target", &target]
        .map(String::from)
        .to_vec();
    let mut replayer = Process::spawn("tapwire-replayer", &args).unwrap();
    let warning = replayer
        .wait_for_line("target unreachable at start-up", WAIT)
        .await
        .unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(&target), "names the target: {warning}");
    assert!(
        warning.contains(&format!("cannot connect to {addr}")),
        "names the address: {warning}"
    );
    assert!(warning.contains("connection refused"), "{warning}");
    replayer
        .wait_for_line("grpc server listening", WAIT)
        .await
        .unwrap();
    assert!(replayer.exit_status().unwrap().is_none(), "still running");
    replayer.terminate(WAIT).await.unwrap();
}

/// `--check-config` with `args`: its exit code and what it printed.
fn check_config(args: &[&str]) -> (i32, String) {
    tapwire_testkit::process::check_config("tapwire-replayer", args)
}

#[test]
fn tls_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "staging").unwrap();
    let ca_file = ca.cert.to_str().unwrap();
    let (code, printed) = check_config(&["--target", "https://staging", "--target-ca", ca_file]);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("target_ca"), "{printed}");
    let (code, printed) = check_config(&["--target", "http://staging", "--target-ca", ca_file]);
    assert_eq!(code, 2, "{printed}");
    assert!(
        printed.contains("--target-ca: only applies to https://"),
        "{printed}"
    );
    let (code, printed) = check_config(&["--target", "http://staging", "--target-insecure"]);
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("--target-insecure"), "{printed}");
    let inline = format!("http://staging;target_ca={ca_file}");
    let (code, printed) = check_config(&["--target", &inline]);
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("target[0].target_ca"), "{printed}");
    // The flags go to the https:// targets of a command line that mixes both kinds.
    let (code, printed) = check_config(&[
        "--target",
        "https://staging",
        "--target",
        "http://plain",
        "--target-ca",
        ca_file,
    ]);
    assert_eq!(code, 0, "{printed}");
    assert_eq!(printed.matches("target_ca = ").count(), 1, "{printed}");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "nothing here\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    let (code, printed) = check_config(&["--target", "https://staging", "--target-ca", not_pem]);
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("target[0].target_ca"), "{printed}");
    assert!(printed.contains("no PEM certificate"), "{printed}");
}
