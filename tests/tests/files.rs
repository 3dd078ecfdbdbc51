//! Recording and replaying files, GoReplay's way: live capture into `.gor` files and back to a
//! target byte for byte, a pcap converted in one command, GoReplay-format fixtures written here
//! byte for byte (multi-line, binary and bare-LF bodies, responses, gzip, rotated sets, and
//! bad input), the replayer recording a fleet, and middleware (a Python and a shell script under
//! `tests/middleware/`, one that crashes and one that hangs). Real binaries, real sockets.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use tapwire_shared::gor::{GorHeader, GorMessage, GorReader, PayloadType, SEPARATOR};
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, SummaryLine, require_root};
use tapwire_testkit::process::{Process, binary_path};
use tapwire_testkit::servers::{RecordingServer, SEQUENCE_HEADER, replayed_once_intact};
use tapwire_testkit::traffic;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Every message of `.gor` files (gzipped or not), in file order.
fn read_gor(paths: &[PathBuf]) -> Vec<GorMessage> {
    let mut messages = Vec::new();
    for path in paths {
        let file = std::fs::File::open(path).unwrap();
        let input: Box<dyn std::io::BufRead> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
                file,
            )))
        } else {
            Box::new(std::io::BufReader::new(file))
        };
        for message in GorReader::new(input, path.display().to_string()) {
            messages.push(message.unwrap());
        }
    }
    messages
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Runs a replayer over `args` until it exits by itself; its exit status, and its summary.
async fn replay_files(args: &[String]) -> (std::process::ExitStatus, SummaryLine, Process) {
    let mut replayer = Process::spawn("tapwire-replayer", args).unwrap();
    let status = replayer.wait_exit(RUN_TIMEOUT).await.unwrap();
    let line = replayer
        .wait_for_line("replayer stopped", Duration::from_secs(5))
        .await
        .unwrap();
    (status, SummaryLine::parse(&line).unwrap(), replayer)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_capture_to_a_file_replays_byte_for_byte_what_production_received() {
    require_root().unwrap();
    let production = RecordingServer::start(true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("capture_%Y%m%d.gor.gz");
    let mut listener = Process::spawn(
        "tapwire-listener",
        &strings(&[
            "--interface",
            "lo",
            "--port",
            &production.addr().port().to_string(),
            "--track-responses",
            "--output-file",
            template.to_str().unwrap(),
        ]),
    )
    .unwrap();
    listener
        .wait_for_line("capture started", RUN_TIMEOUT)
        .await
        .unwrap();
    let total = 300;
    let load = traffic::send_mix(production.addr(), total, 4).await;
    assert_eq!(load.ok, total, "{load:?}");
    // The listener must have cut every request before it stops.
    let status = listener.terminate(RUN_TIMEOUT).await.unwrap();
    assert!(status.success(), "{}", listener.log());
    let summary = SummaryLine::parse(
        &listener
            .wait_for_line("listener stopped", RUN_TIMEOUT)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary.get("captured"), total, "{}", listener.log());
    assert_eq!(summary.get("written_file"), total, "{}", listener.log());
    assert_eq!(
        summary.get("responses_written"),
        total,
        "{}",
        listener.log()
    );
    assert_eq!(summary.get("dropped"), 0, "{}", listener.log());

    // One gzip chunk, named from the template as GoReplay names it.
    let files = files_in(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("capture_20") && name.ends_with(".gor_0.gz"),
        "{name}"
    );
    let messages = read_gor(&files);
    let requests: Vec<&GorMessage> = messages
        .iter()
        .filter(|m| m.header.payload_type == PayloadType::Request)
        .collect();
    assert_eq!(requests.len() as u64, total);
    // What GoReplay 1.3's stricter reader insists on: 24-digit lowercase hex ids, 19-digit
    // nanosecond timestamps.
    for message in &messages {
        let id = &message.header.id;
        assert!(
            id.len() == 24
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        assert_eq!(message.header.timestamp_ns.to_string().len(), 19);
    }
    // Each response shares its request's id.
    for response in messages
        .iter()
        .filter(|m| m.header.payload_type == PayloadType::Response)
    {
        assert!(requests.iter().any(|r| r.header.id == response.header.id));
        assert!(response.payload.starts_with(b"HTTP/1.1 200"));
    }

    let target = RecordingServer::start(true).await.unwrap();
    let pattern = dir.path().join("capture_*.gor*");
    let (status, summary, replayer) = replay_files(&strings(&[
        "--input-file",
        pattern.to_str().unwrap(),
        "--timing",
        "asap",
        "--target",
        &target.url(),
    ]))
    .await;
    assert!(status.success(), "{}", replayer.log());
    assert_eq!(summary.get("received"), total);
    assert_eq!(summary.get("production_responses"), total);
    let production = production.received();
    let replayed = target.received();
    assert_eq!(replayed.len() as u64, total);
    for sequence in 0..total {
        replayed_once_intact(&production, &replayed, sequence);
    }
}

#[test]
fn a_pcap_becomes_a_gor_file_in_one_command() {
    use tapwire_testkit::pcap_fixture::{Connection, FixtureLink, write_pcap};
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("in.pcap");
    let requests: Vec<Vec<u8>> = (0..3u64)
        .map(|sequence| {
            let body = traffic::body_for(sequence, 3000);
            let head = format!(
                "POST /converted/{sequence} HTTP/1.1\r\nHost: prod\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            [head.as_bytes(), &body].concat()
        })
        .collect();
    let chunked = b"POST /chunked HTTP/1.1\r\nHost: prod\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec();
    let connection = Connection::new("10.9.0.1:40000", "10.9.0.2:80", 5);
    let mut segments = vec![connection.syn()];
    let stream = [requests.concat(), chunked.clone()].concat();
    segments.extend(connection.split(0, &stream, 1448));
    write_pcap(&pcap, FixtureLink::Ethernet, &segments).unwrap();

    let out = dir.path().join("out.gor");
    let status = std::process::Command::new(binary_path("tapwire-listener").unwrap())
        .args(["--input-pcap", pcap.to_str().unwrap(), "--port", "80"])
        .args([
            "--output-file",
            out.to_str().unwrap(),
            "--output-file-append",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let messages = read_gor(&[out]);
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_ref()).collect();
    let mut expected: Vec<&[u8]> = requests.iter().map(Vec::as_slice).collect();
    expected.push(&chunked);
    assert_eq!(payloads, expected, "byte for byte, in order");

    // The same capture on stdout, prettified: the chunked body shown decoded.
    let output = std::process::Command::new(binary_path("tapwire-listener").unwrap())
        .args(["--input-pcap", pcap.to_str().unwrap(), "--port", "80"])
        .args(["--output-stdout", "--prettify"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        shown.contains(
            "POST /chunked HTTP/1.1\r\nHost: prod\r\nContent-Length: 11\r\n\r\nhello world"
        ),
        "{shown}"
    );
    assert_eq!(
        shown.matches("\u{1F435}\u{1F648}\u{1F649}").count(),
        4,
        "{shown}"
    );
}

/// A request as a fixture holds it, numbered for the recording server.
fn fixture_request(sequence: u64, extra_headers: &str, body: &[u8], line_end: &str) -> Vec<u8> {
    let mut request = format!(
        "POST /fixture/{sequence} HTTP/1.1{e}Host: recorded{e}{SEQUENCE_HEADER}: {sequence}{e}{extra_headers}Content-Length: {}{e}{e}",
        body.len(),
        e = line_end
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn gor(kind: PayloadType, id: &str, timestamp_ns: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GorMessage {
        header: GorHeader {
            payload_type: kind,
            id: id.into(),
            timestamp_ns,
            latency_ns: (kind != PayloadType::Request).then_some(81_000),
        },
        payload: Bytes::copy_from_slice(payload),
    }
    .encode(&mut out);
    out
}

const T0: u64 = 1_700_000_000_000_000_000;

/// A `.gor` file in `dir` of small requests numbered from 0, each captured at `T0` plus its
/// offset.
fn requests_file(dir: &Path, name: &str, offsets_ns: impl IntoIterator<Item = u64>) -> PathBuf {
    let mut file = Vec::new();
    for (sequence, offset_ns) in offsets_ns.into_iter().enumerate() {
        let sequence = sequence as u64;
        let request = fixture_request(sequence, "", b"x", "\r\n");
        let id = format!("{sequence:024x}");
        file.extend(gor(PayloadType::Request, &id, T0 + offset_ns, &request));
    }
    let path = dir.join(name);
    std::fs::write(&path, file).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goreplay_files_replay_whatever_their_shape_and_bad_input_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bodies: Vec<Vec<u8>> = vec![
        b"line one\nline two\r\nline three\n".to_vec(),
        (0..=255u8).collect(),
        b"ends with a separator's first bytes: \n\xF0\x9F\x90\xB5".to_vec(),
        b"{\"json\": true}\n".to_vec(),
    ];
    bodies.extend((4..8u64).map(|s| traffic::body_for(s, 2000).to_vec()));
    // A rotated set as GoReplay writes it, the second chunk gzipped, and requests with their
    // production responses.
    let mut first = Vec::new();
    let mut second = Vec::new();
    for (sequence, body) in bodies.iter().enumerate() {
        let sequence = sequence as u64;
        let line_end = if sequence == 3 { "\n" } else { "\r\n" };
        let id = format!("{sequence:024x}");
        let request = fixture_request(sequence, "", body, line_end);
        let chunk = if sequence < 4 {
            &mut first
        } else {
            &mut second
        };
        chunk.extend(gor(
            PayloadType::Request,
            &id,
            T0 + sequence * 1_000_000,
            &request,
        ));
        chunk.extend(gor(
            PayloadType::Response,
            &id,
            T0 + sequence * 1_000_000 + 500,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ));
    }
    // A replayed response (type 3) is not input.
    first.extend(gor(
        PayloadType::ReplayedResponse,
        "ff",
        T0,
        b"HTTP/1.1 200 OK\r\n\r\n",
    ));
    let bad_header_at = first.len();
    // Bad input, each reported and counted while the rest is replayed: a header that is not
    // `<type> <id> <timestamp>`, two requests run together (no separator between them), and a
    // file cut inside its last message.
    first.extend(b"not a header\nGET /bad HTTP/1.1\r\n\r\n");
    first.extend(SEPARATOR);
    let glued = [
        fixture_request(100, "", b"a", "\r\n"),
        fixture_request(101, "", b"b", "\r\n"),
    ]
    .concat();
    first.extend(gor(PayloadType::Request, "glued", T0 + 10_000_000, &glued));
    std::fs::write(dir.path().join("requests_0.gor"), &first).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&second).unwrap();
    gz.write_all(b"1 cut 1700000000900000000 -1\nPOST /cut HTTP/1.1\r\nContent-Len")
        .unwrap();
    std::fs::write(dir.path().join("requests_1.gor.gz"), gz.finish().unwrap()).unwrap();

    let target = RecordingServer::start(true).await.unwrap();
    let pattern = dir.path().join("requests_*");
    let (status, summary, replayer) = replay_files(&strings(&[
        "--input-file",
        pattern.to_str().unwrap(),
        "--target",
        &target.url(),
    ]))
    .await;
    assert!(status.success(), "{}", replayer.log());
    let received = target.received();
    assert_eq!(received.len(), bodies.len(), "{}", replayer.log());
    for (sequence, body) in bodies.iter().enumerate() {
        let copies = &received[&(sequence as u64)];
        assert_eq!(copies.len(), 1);
        assert_eq!(
            copies[0].body.as_ref(),
            body.as_slice(),
            "request {sequence}"
        );
        assert_eq!(copies[0].path_and_query, format!("/fixture/{sequence}"));
    }
    assert_eq!(
        summary.get("rejected_malformed_record"),
        3,
        "{}",
        replayer.log()
    );
    assert_eq!(summary.get("received"), bodies.len() as u64 + 3);
    assert_eq!(summary.get("production_responses"), bodies.len() as u64);
    let log = replayer.log();
    assert!(
        log.contains(&format!("requests_0.gor: message at byte {bad_header_at} ")),
        "{log}"
    );
    assert!(log.contains("missing separator"), "{log}");
    assert!(
        log.contains("requests_1.gor.gz") && log.contains("truncated"),
        "{log}"
    );

    // A dry run counts the same files and sends nothing.
    let output = std::process::Command::new(binary_path("tapwire-replayer").unwrap())
        .args([
            "--input-file",
            pattern.to_str().unwrap(),
            "--input-file-dry-run",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains(&format!("requests: {}", bodies.len())),
        "{report}"
    );
    assert!(report.contains("malformed: 3"), "{report}");
    assert!(report.contains("expected replay time: 7ms"), "{report}");
    assert_eq!(
        target.served(),
        bodies.len() as u64,
        "the dry run sent nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_far_future_timestamps_never_cause_a_long_pause() {
    let dir = tempfile::tempdir().unwrap();
    // 0 ms, 200 ms, then 100 ms (out of order), then one an hour ahead, then 300 ms.
    let offsets_ms = [0u64, 200, 100, 3_600_000, 300];
    let path = requests_file(dir.path(), "odd.gor", offsets_ms.map(|ms| ms * 1_000_000));
    let target = RecordingServer::start(true).await.unwrap();
    let started = tokio::time::Instant::now();
    let (status, summary, replayer) = replay_files(&strings(&[
        "--input-file",
        path.to_str().unwrap(),
        "--input-file-max-wait",
        "500ms",
        "--target",
        &target.url(),
    ]))
    .await;
    assert!(status.success(), "{}", replayer.log());
    assert_eq!(summary.get("received"), 5);
    assert_eq!(target.served(), 5);
    // Not an hour: the hour-long pause is cut to 500 ms.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looped_file_replays_until_exit_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = requests_file(dir.path(), "loop.gor", (0..5).map(|n| n * 50_000_000));
    let target = RecordingServer::start(true).await.unwrap();
    let (status, summary, replayer) = replay_files(&strings(&[
        "--input-file",
        path.to_str().unwrap(),
        "--input-file-loop",
        "--exit-after",
        "1s",
        "--target",
        &target.url(),
    ]))
    .await;
    assert!(status.success(), "{}", replayer.log());
    // Each pass takes 200 ms: several passes, each request of each pass replayed (a repeat is
    // not a resend to be de-duplicated).
    let received = summary.get("received");
    assert!(received >= 10, "{}", replayer.log());
    assert_eq!(target.served(), received);
    assert!(target.received()[&0].len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_longer_than_the_target_queue_is_replayed_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let total = 3000u64;
    let path = requests_file(dir.path(), "long.gor", 0..total);
    let target = RecordingServer::start(true).await.unwrap();
    let (status, summary, replayer) = replay_files(&strings(&[
        "--input-file",
        path.to_str().unwrap(),
        "--timing",
        "asap",
        "--target-queue",
        "100",
        "--target",
        &target.url(),
    ]))
    .await;
    assert!(status.success(), "{}", replayer.log());
    assert_eq!(summary.get("received"), total);
    // Reading waited for the target instead of overflowing its queue.
    assert_eq!(target.served(), total, "{}", replayer.log());
    assert!(target.received().values().all(|copies| copies.len() == 1));
}

#[test]
fn a_middleware_that_cannot_start_stops_the_replayer_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.gor");
    std::fs::write(
        &path,
        gor(
            PayloadType::Request,
            "aa",
            T0,
            &fixture_request(0, "", b"x", "\r\n"),
        ),
    )
    .unwrap();
    let output = std::process::Command::new(binary_path("tapwire-replayer").unwrap())
        .args([
            "--input-file",
            path.to_str().unwrap(),
            "--target",
            "http://127.0.0.1:9",
        ])
        .args(["--middleware", "/nonexistent/middleware --flag"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot start the middleware")
            && stderr.contains("/nonexistent/middleware"),
        "{stderr}"
    );
}

/// A file whose first request logs in (production answered with a token) and whose later
/// requests use that token; the /drop ones are for the middleware to drop.
fn login_file(dir: &Path) -> PathBuf {
    let mut file = Vec::new();
    let login = fixture_request(0, "", b"user=a", "\r\n").replace_path("/fixture/0", "/login");
    file.extend(gor(
        PayloadType::Request,
        &format!("{:024x}", 0),
        T0,
        &login,
    ));
    file.extend(gor(
        PayloadType::Response,
        &format!("{:024x}", 0),
        T0 + 1_000,
        b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\nproduction-token",
    ));
    for sequence in 1..10u64 {
        let mut request = fixture_request(
            sequence,
            "Authorization: Bearer production-token\r\n",
            b"payload",
            "\r\n",
        );
        if sequence % 3 == 0 {
            request = request.replace_path(&format!("/fixture/{sequence}"), "/drop/me");
        }
        // A GoReplay middleware learns from responses as they come, with no ordering promise:
        // the later requests come 3 s after the login, so its replayed response (a loopback
        // round trip) reaches the middleware first even on a loaded machine.
        let at = T0 + 3_000_000_000 + sequence * 1_000_000;
        file.extend(gor(
            PayloadType::Request,
            &format!("{sequence:024x}"),
            at,
            &request,
        ));
    }
    let path = dir.join("login.gor");
    std::fs::write(&path, file).unwrap();
    path
}

trait ReplacePath {
    fn replace_path(self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplacePath for Vec<u8> {
    fn replace_path(self, from: &str, to: &str) -> Vec<u8> {
        let text = String::from_utf8(self).unwrap();
        text.replacen(from, to, 1).into_bytes()
    }
}

fn middleware(script: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("middleware")
        .join(script)
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goreplay_middleware_rewrites_drops_and_keeps_state_across_responses() {
    let dir = tempfile::tempdir().unwrap();
    let path = login_file(dir.path());
    let target = RecordingServer::start(true).await.unwrap();
    let (status, summary, replayer) = replay_files(&strings(&[
        "--input-file",
        path.to_str().unwrap(),
        "--middleware",
        &middleware("token_rewrite.py"),
        "--target",
        &target.url(),
    ]))
    .await;
    assert!(status.success(), "{}", replayer.log());
    let received = target.received();
    // Sequences 3, 6 and 9 went to /drop: filtered by the middleware, counted.
    assert_eq!(summary.get("filtered_middleware"), 3, "{}", replayer.log());
    assert_eq!(received.len(), 7, "{}", replayer.log());
    assert!(
        received
            .keys()
            .all(|sequence| sequence % 3 != 0 || *sequence == 0)
    );
    for (sequence, copies) in &received {
        let copy = &copies[0];
        assert_eq!(copy.headers["x-middleware"], "tapwire-test");
        if *sequence > 0 {
            // Staging answered the login with "ok\n": the middleware learned it from the
            // replayed response and swapped production's token for it.
            assert_eq!(
                copy.headers[header::AUTHORIZATION],
                "Bearer ok",
                "request {sequence}"
            );
        }
    }
    // Its stderr reached our log.
    assert!(
        replayer.log().contains("token alias learned"),
        "{}",
        replayer.log()
    );

    // The shell middleware that echoes everything changes nothing.
    let target = RecordingServer::start(true).await.unwrap();
    let (status, summary, replayer) = replay_files(&strings(&[
        "--input-file",
        path.to_str().unwrap(),
        "--timing",
        "asap",
        "--middleware",
        &middleware("echo.sh"),
        "--target",
        &target.url(),
    ]))
    .await;
    assert!(status.success(), "{}", replayer.log());
    assert_eq!(summary.get("received"), 10);
    assert_eq!(target.received().len(), 10);
    assert_eq!(
        target.received()[&1][0].headers[header::AUTHORIZATION],
        "Bearer production-token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middleware_that_crashes_or_hangs_costs_only_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let total = 20u64;
    // 2 s in all: a hung middleware is found (after 1 s) and restarted mid-file.
    let path = requests_file(
        dir.path(),
        "twenty.gor",
        (0..total).map(|n| n * 100_000_000),
    );
    for script in ["crash_after_3.py", "hang.sh"] {
        let target = RecordingServer::start(true).await.unwrap();
        let (status, summary, replayer) = replay_files(&strings(&[
            "--input-file",
            path.to_str().unwrap(),
            "--middleware",
            &middleware(script),
            "--middleware-timeout",
            "1s",
            "--target",
            &target.url(),
        ]))
        .await;
        let log = replayer.log();
        assert!(status.success(), "{script}: {log}");
        let lost = summary.get("rejected_middleware");
        let filtered = summary.get("filtered_middleware");
        assert_eq!(
            target.served() + lost + filtered,
            total,
            "{script}: every request accounted for: {log}"
        );
        assert!(lost > 0, "{script}: {log}");
        assert!(target.served() > 0, "{script}: {log}");
        assert!(summary.get("middleware_restarts") >= 1, "{script}: {log}");
        assert!(target.received().values().all(|copies| copies.len() == 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replayer_records_the_fleet_requests_and_both_sides_answers() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("fleet.gor");
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec!["--track-responses".into()],
        replayer_args: vec!["--record".into(), record.display().to_string()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 100;
    let load = traffic::send_mix(pipeline.production.addr(), total, 4).await;
    assert_eq!(load.ok, total);
    assert!(pipeline.wait_for_targets(total, RUN_TIMEOUT).await);
    let report = pipeline.finish(total).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
    let messages = read_gor(&files_in(dir.path()));
    let count = |kind| {
        messages
            .iter()
            .filter(|m| m.header.payload_type == kind)
            .count() as u64
    };
    assert_eq!(count(PayloadType::Request), total);
    assert_eq!(count(PayloadType::Response), total);
    assert_eq!(count(PayloadType::ReplayedResponse), total);
    // All three of a request share its id.
    for request in messages
        .iter()
        .filter(|m| m.header.payload_type == PayloadType::Request)
    {
        let same_id = messages
            .iter()
            .filter(|m| m.header.id == request.header.id)
            .count();
        assert_eq!(same_id, 3, "{}", request.header.id);
    }
}
