//! End-to-end behaviour of the real binaries: live libpcap capture on loopback, real gRPC over
//! TCP, real HTTP servers as production and staging targets. Needs root (live capture) and the
//! binaries built (`make test` does both).

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use http::header;
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, SummaryLine};
use tapwire_testkit::process::binary_path;
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::servers::{RecordingServer, replayed_once_intact};
use tapwire_testkit::traffic::{self, RequestShape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_reaches_every_target_exactly_once_and_intact() {
    let pipeline = Pipeline::start(PipelineOptions::default()).await.unwrap();
    let total = 1000;
    let load = traffic::send_mix(pipeline.production.addr(), total, 8).await;
    assert_eq!(
        load.ok, total,
        "production must answer every request: {load:?}"
    );
    assert!(pipeline.wait_for_targets(total, REPLAY_TIMEOUT).await);

    let production = pipeline.production.received();
    let targets: Vec<_> = pipeline
        .targets
        .iter()
        .map(|t| (t.addr(), t.received()))
        .collect();
    let report = pipeline.finish(total).await.unwrap();
    assert!(report.is_complete(), "accounting:\n{}", report.table());

    for (target_addr, received) in &targets {
        assert_eq!(received.len() as u64, total);
        for sequence in 0..total {
            let copy = replayed_once_intact(&production, received, sequence);
            // Host is rewritten to the target by default.
            assert_eq!(
                copy.headers[header::HOST].to_str().unwrap(),
                target_addr.to_string()
            );
            if RequestShape::of(sequence) == RequestShape::ChunkedPost {
                assert_eq!(copy.headers[header::TRANSFER_ENCODING], "chunked");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_host_sends_the_captured_host_header_to_the_target() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: vec!["--keep-host".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let load = traffic::send_mix(pipeline.production.addr(), 20, 2).await;
    assert_eq!(load.ok, 20);
    assert!(pipeline.wait_for_targets(20, REPLAY_TIMEOUT).await);
    let production_host = pipeline.production.addr().to_string();
    let received = pipeline.targets[0].received();
    assert_eq!(received.len(), 20);
    for copies in received.values() {
        assert_eq!(
            copies[0].headers[header::HOST].to_str().unwrap(),
            production_host
        );
    }
    let report = pipeline.finish(20).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_stream_is_counted_and_other_connections_flow_on() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production = pipeline.production.addr();
    // A TLS ClientHello-like byte stream on the HTTP port, kept open while real traffic flows.
    let mut garbage = TcpStream::connect(production).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 definitely not http\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The server rejects it and closes; reading to the end waits for that.
    garbage.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    let load = traffic::send_mix(production, 200, 4).await;
    assert_eq!(load.ok, 200);
    assert!(pipeline.wait_for_targets(200, REPLAY_TIMEOUT).await);
    let report = pipeline.finish(200).await.unwrap();
    assert_eq!(report.captured, 200, "{}", report.table());
    assert_eq!(report.targets[0].responses, 200, "{}", report.table());
    assert_eq!(
        report.listener_dropped.get("malformed_http"),
        Some(&1),
        "{}",
        report.table()
    );
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_target_does_not_slow_the_live_one() {
    let dead = closed_port().await;
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: vec!["--target".into(), format!("http://{dead}")],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 300;
    let load = traffic::send_mix(pipeline.production.addr(), total, 4).await;
    assert_eq!(load.ok, total);
    assert!(pipeline.wait_for_targets(total, REPLAY_TIMEOUT).await);
    let live_url = pipeline.targets[0].url();
    let mut totals = pipeline
        .stop_with_target_totals(&[live_url.clone(), format!("http://{dead}")])
        .await
        .unwrap();
    let dead = totals.pop().unwrap();
    let live = totals.pop().unwrap();
    assert_eq!(live.get("responses"), total);
    assert_eq!(live.with_prefix("dropped_"), Default::default());
    assert_eq!(dead.get("responses"), 0);
    assert_eq!(
        dead.with_prefix("dropped_").get("connect_error"),
        Some(&total)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_keeps_capturing_and_accounts_for_everything_while_the_replayer_is_down() {
    let mut pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec!["--drain-timeout".into(), "1s".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    // SIGTERM makes the replayer end the listener's stream; the listener must notice and retry.
    pipeline
        .replayer
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
    pipeline
        .listener
        .wait_for_line("replayer link down", REPLAY_TIMEOUT)
        .await
        .unwrap();
    let total = 100;
    let load = traffic::send_mix(pipeline.production.addr(), total, 2).await;
    assert_eq!(
        load.ok, total,
        "production is unaffected by the dead replayer"
    );
    pipeline
        .listener
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
    let line = pipeline
        .listener
        .wait_for_line("listener stopped", REPLAY_TIMEOUT)
        .await
        .unwrap();
    let summary = SummaryLine::parse(&line).unwrap();
    assert_eq!(summary.get("captured"), total, "{line}");
    assert_eq!(summary.get("sent"), 0, "{line}");
    // Queued when the drain deadline passed: counted, not lost silently.
    assert_eq!(summary.get("dropped"), total, "{line}");
    assert_eq!(
        summary.with_prefix("dropped_").get("shutdown"),
        Some(&total),
        "{line}"
    );
}

fn run_binary(name: &str, args: &[&str]) -> Output {
    std::process::Command::new(binary_path(name).unwrap())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn invalid_flags_are_refused_with_exit_code_2_and_a_clear_message() {
    let cases: [(&str, &[&str], &str); 5] = [
        (
            "tapwire-listener",
            &["--replayer", "http://127.0.0.1:7070"],
            "--port",
        ),
        (
            "tapwire-listener",
            &["--port", "0", "--replayer", "http://127.0.0.1:7070"],
            "--port",
        ),
        (
            "tapwire-listener",
            &["--port", "80", "--replayer", "127.0.0.1:7070"],
            "http://host:port",
        ),
        (
            "tapwire-replayer",
            &["--target", "ftp://staging:21"],
            "expected http://host:port or https://host:port",
        ),
        (
            "tapwire-replayer",
            &["--target", "http://staging:80", "--rate", "0"],
            "target[0].rate",
        ),
    ];
    for (binary, args, expected) in cases {
        let output = run_binary(binary, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{binary} {args:?}: {stderr}");
        assert!(stderr.contains(expected), "{binary} {args:?}: {stderr}");
    }
}

#[test]
fn a_config_file_is_checked_and_printed_or_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "global_rate = 500\n[filters]\ndeny_url = [\"^/health\"]\n[[target]]\nurl = \"http://a:80\"\nsample = \"10%\"\nsample_key = \"header:X-User\"\n[[target]]\nurl = \"http://b:80\"\nrate = 50\n[target.rewrites]\nredact_headers = [\"Authorization\"]\n",
    )
    .unwrap();
    let output = run_binary(
        "tapwire-replayer",
        &["--config", good.to_str().unwrap(), "--check-config"],
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("global_rate = 500"), "{printed}");
    assert!(
        printed.contains("timeout = \"10s\""),
        "defaults are printed: {printed}"
    );
    assert!(
        printed.contains("redact_headers = [\"Authorization\"]"),
        "{printed}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[target]]\nurl = \"http://a:80\"\n[[target]]\nurl = \"http://b:80\"\n[target.filters]\nallow_url = [\"(unclosed\"]\n").unwrap();
    let output = run_binary(
        "tapwire-replayer",
        &["--config", bad.to_str().unwrap(), "--check-config"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("target[1].filters.allow_url[0]"),
        "{stderr}"
    );

    let output = run_binary(
        "tapwire-replayer",
        &[
            "--config",
            good.to_str().unwrap(),
            "--target",
            "http://c:80",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(2),
        "a file and target flags do not mix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoints_expose_the_documented_series() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let load = traffic::send_mix(pipeline.production.addr(), 10, 1).await;
    assert_eq!(load.ok, 10);
    assert!(pipeline.wait_for_targets(10, REPLAY_TIMEOUT).await);
    let listener = scrape(pipeline.listener_metrics).await.unwrap();
    let replayer = scrape(pipeline.replayer_metrics).await.unwrap();
    assert_eq!(
        listener.sum("tapwire_listener_requests_captured_total", &[]),
        10
    );
    for name in [
        "tapwire_listener_records_sent_total",
        "tapwire_listener_records_dropped_total",
        "tapwire_listener_pcap_dropped_packets",
    ] {
        assert!(
            listener.series.iter().any(|s| s.name == name),
            "missing {name}"
        );
    }
    // Exact counts come from the exit summaries below; a live scrape may race the last response.
    for name in [
        "tapwire_replayer_records_received_total",
        "tapwire_replayer_responses_total",
        "tapwire_replayer_requests_sent_total",
        "tapwire_replayer_requests_filtered_total",
    ] {
        assert!(
            replayer.series.iter().any(|s| s.name == name),
            "missing {name}"
        );
    }
    assert!(
        replayer
            .series
            .iter()
            .any(|s| s.name == "tapwire_replayer_requests_dropped_total"
                && s.labels.get("reason").map(String::as_str) == Some("target_queue_full"))
    );
    let report = pipeline.finish(10).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
}

#[tokio::test]
async fn a_recording_server_counts_what_it_serves() {
    let server = RecordingServer::start(true).await.unwrap();
    let load = traffic::send_mix(server.addr(), 25, 3).await;
    assert_eq!(load.ok, 25);
    assert_eq!(server.served(), 25);
    assert_eq!(server.received().len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcap_file_is_replayed_like_live_traffic() {
    use tapwire_testkit::pcap_fixture::{Connection, FixtureLink, write_pcap};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.pcap");
    let requests: Vec<Vec<u8>> = (0..3u64)
        .map(|sequence| {
            let body = traffic::body_for(sequence, 5000);
            let head = format!(
                "POST /from-file/{sequence} HTTP/1.1\r\nHost: prod\r\n{}: {sequence}\r\nContent-Length: {}\r\n\r\n",
                tapwire_testkit::servers::SEQUENCE_HEADER,
                body.len()
            );
            [head.as_bytes(), &body].concat()
        })
        .collect();
    let connection = Connection::new("10.7.0.1:41000", "10.7.0.2:8080", 77);
    let mut segments = vec![connection.syn()];
    segments.extend(connection.split(0, &requests.concat(), 1448));
    write_pcap(&path, FixtureLink::Ethernet, &segments).unwrap();

    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec![
            "--input-pcap".into(),
            path.display().to_string(),
            "--port".into(),
            "8080".into(),
        ],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    assert!(pipeline.wait_for_targets(3, REPLAY_TIMEOUT).await);
    let received = pipeline.targets[0].received();
    let report = pipeline.finish(0).await.unwrap();
    assert_eq!(report.captured, 3, "{}", report.table());
    assert_eq!(report.streamed, 3, "{}", report.table());
    assert_eq!(report.targets[0].responses, 3, "{}", report.table());
    for sequence in 0..3u64 {
        let copy = &received[&sequence][0];
        assert_eq!(copy.path_and_query, format!("/from-file/{sequence}"));
        assert_eq!(copy.body, traffic::body_for(sequence, 5000));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_responses_are_paired_and_reach_the_replayer() {
    let mut pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec!["--track-responses".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 400;
    let load = traffic::send_mix(pipeline.production.addr(), total, 4).await;
    assert_eq!(load.ok, total);
    assert!(pipeline.wait_for_targets(total, REPLAY_TIMEOUT).await);
    let grace = Duration::from_secs(15);
    pipeline.listener.terminate(grace).await.unwrap();
    let listener = SummaryLine::parse(
        &pipeline
            .listener
            .wait_for_line("listener stopped", grace)
            .await
            .unwrap(),
    )
    .unwrap();
    let listener_log = pipeline.listener.log();
    pipeline.replayer.terminate(grace).await.unwrap();
    let replayer = SummaryLine::parse(
        &pipeline
            .replayer
            .wait_for_line("replayer stopped", grace)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(listener.get("captured"), total, "{listener_log}");
    assert_eq!(listener.get("responses_captured"), total, "{listener_log}");
    assert_eq!(listener.get("responses_sent"), total, "{listener_log}");
    assert_eq!(listener.get("responses_dropped"), 0, "{listener_log}");
    assert_eq!(replayer.get("production_responses"), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_headers_never_leave_the_production_host() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec!["--redact-header".into(), "authorization".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 60;
    assert_eq!(
        traffic::send_mix(pipeline.production.addr(), total, 2)
            .await
            .ok,
        total
    );
    assert!(pipeline.wait_for_targets(total, REPLAY_TIMEOUT).await);
    let production = pipeline.production.received();
    let replayed = pipeline.targets[0].received();
    let report = pipeline.finish(total).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
    let mut redacted = 0;
    for (sequence, copies) in &replayed {
        let original = &production[sequence][0];
        match original.headers.get("authorization") {
            Some(secret) => {
                assert!(secret.to_str().unwrap().starts_with("Bearer secret-"));
                assert_eq!(copies[0].headers["authorization"], "REDACTED");
                redacted += 1;
            }
            None => assert!(!copies[0].headers.contains_key("authorization")),
        }
        assert_eq!(copies[0].body, original.body, "bodies are untouched");
    }
    assert_eq!(redacted, total / 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_drops_root_after_opening_the_capture() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec!["--user".into(), "nobody".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    pipeline
        .listener
        .wait_for_line("dropped privileges", REPLAY_TIMEOUT)
        .await
        .unwrap();
    let pid = pipeline.listener.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace().skip(1).all(|uid| uid == "65534"),
        "real, effective, saved and fs uid must all be nobody: {uids}"
    );
    // Capture goes on without root.
    assert_eq!(
        traffic::send_mix(pipeline.production.addr(), 20, 2)
            .await
            .ok,
        20
    );
    assert!(pipeline.wait_for_targets(20, REPLAY_TIMEOUT).await);
    let report = pipeline.finish(20).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
}

/// Sends one raw HTTP/1.1 request on its own connection and reads the response to its end.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_json_fields_never_leave_the_production_host() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec!["--redact-json-field".into(), "password".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production = pipeline.production.addr();
    let post = |sequence: u64, body: &str| {
        format!(
            "POST /login HTTP/1.1\r\nHost: prod\r\nx-tapwire-seq: {sequence}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    raw_exchange(
        production,
        &post(0, r#"{"user":"ann","password":"hunter2"}"#),
    )
    .await;
    raw_exchange(
        production,
        &post(
            1,
            r#"{"users":[{"name":"bob","password":{"old":"x","new":"y"}}],"note":"password"}"#,
        ),
    )
    .await;
    let chunked = r#"{"password":"s3cr3t","keep":1}"#;
    raw_exchange(
        production,
        &format!(
            "POST /login HTTP/1.1\r\nHost: prod\r\nx-tapwire-seq: 2\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunked}\r\n0\r\n\r\n",
            chunked.len()
        ),
    )
    .await;
    // Not JSON although it says so: not sent at all rather than sent unredacted.
    raw_exchange(production, &post(3, r#"{"password":"oops""#)).await;
    assert!(pipeline.wait_for_targets(3, REPLAY_TIMEOUT).await);

    let replayed = pipeline.targets[0].received();
    let body = |sequence: u64| String::from_utf8(replayed[&sequence][0].body.to_vec()).unwrap();
    assert_eq!(body(0), r#"{"user":"ann","password":"REDACTED"}"#);
    assert_eq!(
        body(1),
        r#"{"users":[{"name":"bob","password":"REDACTED"}],"note":"password"}"#
    );
    assert_eq!(body(2), r#"{"password":"REDACTED","keep":1}"#);
    assert!(!replayed.contains_key(&3));
    let report = pipeline.finish(4).await.unwrap();
    assert_eq!(report.captured, 4, "{}", report.table());
    assert_eq!(report.streamed, 3, "{}", report.table());
    assert_eq!(
        report.listener_dropped.get("unredactable"),
        Some(&1),
        "{}",
        report.table()
    );
}
