//! What a target receives is the captured request's bytes, with only the documented changes
//! (Host names the target, an absolute-form target becomes origin-form): compared byte for byte
//! at a raw target, through live capture and from a `.gor` file; header rewrites change only
//! what they match. Also: target URLs that could
//! not be reached as written, or would leak credentials, are refused by `--check-config`.

use std::time::Duration;

use bytes::Bytes;
use tapwire_shared::gor::{GorHeader, GorMessage, PayloadType};
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::process::Process;
use tapwire_testkit::servers::RawServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// One request as a client sends it, and the path that identifies it at the target.
struct Case {
    path: &'static str,
    sent: String,
    /// What the target must receive, for a target whose Host is `{target}`.
    expected: String,
}

/// Header case, order, duplicates and odd spacing; HTTP/1.0; a chunked body with extensions
/// and trailers; an absolute-form target; `Connection: close` (honoured by reconnecting).
fn cases() -> Vec<Case> {
    let case = |path, sent: &str, expected: &str| Case {
        path,
        sent: sent.to_owned(),
        expected: expected.to_owned(),
    };
    vec![
        case(
            "/exact/case",
            "GET /exact/case?a=1&b=%20 HTTP/1.1\r\nHost: production.example\r\nUser-Agent: curl/8.5\r\n\
             X-Dup: first\r\nACCEPT:   */*\r\nx-dup: second\r\nX-Empty:\r\n\r\n",
            "GET /exact/case?a=1&b=%20 HTTP/1.1\r\nHost: {target}\r\nUser-Agent: curl/8.5\r\n\
             X-Dup: first\r\nACCEPT:   */*\r\nx-dup: second\r\nX-Empty:\r\n\r\n",
        ),
        case(
            "/exact/http10",
            "GET /exact/http10 HTTP/1.0\r\nHost: production.example\r\nAccept: text/plain\r\n\r\n",
            "GET /exact/http10 HTTP/1.0\r\nHost: {target}\r\nAccept: text/plain\r\n\r\n",
        ),
        case(
            "/exact/chunked",
            "POST /exact/chunked HTTP/1.1\r\nHost: production.example\r\nTransfer-Encoding: chunked\r\n\
             Trailer: X-Checksum\r\nContent-Type: text/plain\r\n\r\n5;ext=1\r\nhello\r\n\
             6\r\n world\r\n0\r\nX-Checksum: 1234\r\n\r\n",
            "POST /exact/chunked HTTP/1.1\r\nHost: {target}\r\nTransfer-Encoding: chunked\r\n\
             Trailer: X-Checksum\r\nContent-Type: text/plain\r\n\r\n5;ext=1\r\nhello\r\n\
             6\r\n world\r\n0\r\nX-Checksum: 1234\r\n\r\n",
        ),
        case(
            "/exact/absolute",
            "GET http://production.example/exact/absolute?q=1 HTTP/1.1\r\nHost: production.example\r\n\
             Connection: close\r\n\r\n",
            "GET /exact/absolute?q=1 HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n",
        ),
        case(
            "/exact/after-close",
            "PUT /exact/after-close HTTP/1.1\r\nhost: production.example\r\nContent-Length: 4\r\n\r\nbody",
            "PUT /exact/after-close HTTP/1.1\r\nhost: {target}\r\nContent-Length: 4\r\n\r\nbody",
        ),
    ]
}

/// Checks that each case reached `target` exactly once, byte for byte as expected.
async fn assert_received_exactly(target: &RawServer, cases: &[Case]) {
    let received = target.wait_for_requests(cases.len(), WAIT).await;
    for case in cases {
        let copies: Vec<&Vec<u8>> = received
            .iter()
            .filter(|request| {
                let line_end = request.iter().position(|&b| b == b'\n').unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..line_end]);
                line.contains(&format!("{}?", case.path))
                    || line.contains(&format!("{} ", case.path))
            })
            .collect();
        assert_eq!(
            copies.len(),
            1,
            "{} arrived {} times",
            case.path,
            copies.len()
        );
        let expected = case.expected.replace("{target}", &target.authority());
        assert_eq!(
            String::from_utf8_lossy(copies[0]),
            expected,
            "{}: bytes at the target",
            case.path
        );
    }
    assert_eq!(received.len(), cases.len(), "nothing else arrived");
}

/// Sends `request` on a connection of its own and reads the response to its end.
async fn send_raw(production: std::net::SocketAddr, request: &[u8]) {
    let mut stream = tokio::net::TcpStream::connect(production).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let mut chunk = [0; 4096];
    // The recording server answers "ok\n"; HTTP/1.0 and `Connection: close` end with a close.
    while !response.ends_with(b"ok\n") {
        match stream.read(&mut chunk).await.unwrap() {
            0 => break,
            read => response.extend_from_slice(&chunk[..read]),
        }
    }
    assert!(
        response.starts_with(b"HTTP/1."),
        "production answered {:?}",
        String::from_utf8_lossy(&response)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_capture_replays_the_captured_bytes() {
    let target = RawServer::start().await.unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 0,
        record: false,
        replayer_args: vec!["--target".into(), target.url()],
        ..Default::default()
    })
    .await
    .unwrap();
    let cases = cases();
    for case in &cases {
        send_raw(pipeline.production.addr(), case.sent.as_bytes()).await;
    }
    assert_received_exactly(&target, &cases).await;
}

/// Writes the cases' requests to a `.gor` file in `dir`.
fn gor_file_of(cases: &[Case], dir: &std::path::Path) -> String {
    let mut file = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Request,
                id: format!("{index:024x}"),
                timestamp_ns: 1_700_000_000_000_000_000 + index as u64,
                latency_ns: None,
            },
            payload: Bytes::from(case.sent.clone()),
        }
        .encode(&mut file);
    }
    let path = dir.join("requests.gor");
    std::fs::write(&path, file).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Replays `cases` from a `.gor` file to a raw target with `extra_args`, and checks the bytes.
async fn replay_file_and_compare(cases: &[Case], extra_args: &[&str]) {
    let target = RawServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = gor_file_of(cases, dir.path());
    let mut args: Vec<String> = ["--input-file", &path, "--timing", "asap", "--target"]
        .map(String::from)
        .to_vec();
    args.push(target.url());
    args.extend(extra_args.iter().map(|arg| arg.to_string()));
    let mut replayer = Process::spawn("tapwire-replayer", &args).unwrap();
    let status = replayer.wait_exit(WAIT).await.unwrap();
    assert!(status.success(), "{}", replayer.log());
    assert_received_exactly(&target, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gor_file_replays_the_recorded_bytes() {
    replay_file_and_compare(&cases(), &[]).await;
}

/// GoReplay's `--http-rewrite-header` syntax: every line of the header whose value matches is
/// rewritten in place (groups, name case and position kept); a Host rewrite keeps the captured
/// Host, rewritten, instead of naming the target; nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rewrites_change_only_the_values_they_match() {
    let case = |path, sent: &str, expected: &str| Case {
        path,
        sent: sent.to_owned(),
        expected: expected.to_owned(),
    };
    let cases = [
        case(
            "/rewrite/matched",
            "GET /rewrite/matched HTTP/1.1\r\nhost: api.example.com\r\nUser-Agent: curl/8\r\n\
             user-agent: curl/7\r\nAccept: */*\r\n\r\n",
            "GET /rewrite/matched HTTP/1.1\r\nhost: api.beta.example.com\r\n\
             User-Agent: replayed-curl/8\r\nuser-agent: replayed-curl/7\r\nAccept: */*\r\n\r\n",
        ),
        case(
            "/rewrite/unmatched",
            "GET /rewrite/unmatched HTTP/1.1\r\nHost: other.org\r\nUser-Agent: wget\r\n\r\n",
            "GET /rewrite/unmatched HTTP/1.1\r\nHost: other.org\r\nUser-Agent: wget\r\n\r\n",
        ),
    ];
    replay_file_and_compare(
        &cases,
        &[
            "--rewrite-header",
            r"Host: ^(\w+)\.example\.com$,$1.beta.example.com",
            "--rewrite-header",
            "User-Agent: curl/(.*),replayed-curl/$1",
        ],
    )
    .await;
}

/// `--check-config` with `--target url`: its exit code and what it printed.
fn check_target(url: &str) -> (i32, String) {
    tapwire_testkit::process::check_config("tapwire-replayer", &["--target", url])
}

#[test]
fn target_urls_without_a_host_or_with_credentials_are_refused() {
    let (code, message) = check_target("http://user:secret@staging:8080");
    assert_eq!(code, 2, "{message}");
    assert!(message.contains("target[0].url"), "{message}");
    assert!(message.contains("credentials"), "{message}");
    assert!(
        message.contains("--set-header"),
        "says where they go: {message}"
    );
    assert!(!message.contains("secret"), "{message}");
    for url in ["http://:8080", "http://staging:", "http://staging:0"] {
        let (code, message) = check_target(url);
        assert_eq!(code, 2, "{url}: {message}");
        assert!(message.contains("target[0].url"), "{url}: {message}");
    }
    let (code, message) = check_target("http://staging");
    assert_eq!(code, 0, "port 80 by default: {message}");
}
