//! The listener cuts requests only where production's server would (live capture on loopback,
//! the real binaries): a request whose framing a server must refuse ends what is replayed of
//! its connection, so a request pipelined after it never reaches staging; an oversized chunked
//! upload is skipped by its chunks, so a request line inside it is never replayed and the real
//! next request is; an `Upgrade` the server ignored does not hide the rest of the connection;
//! a trailer is redacted like a header.

use std::net::SocketAddr;
use std::time::Duration;

use tapwire_shared::gor::{GorReader, PayloadType};
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::servers::SEQUENCE_HEADER;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `bytes` on a new connection to production, closes the sending side and reads
/// whatever production answers until it closes (or stays silent for a while).
async fn send_raw(production: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(production).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
}

/// A valid request carrying sequence number `sequence`.
fn numbered_get(path: &str, sequence: u64) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: prod\r\n{SEQUENCE_HEADER}: {sequence}\r\n\r\n")
        .into_bytes()
}

/// Requests nginx 1.22 answers with 400, 414 or 501 and then closes the connection on
/// (`bench/framing.sh` shows it), so nothing pipelined after them is served.
fn smuggling_shapes() -> Vec<(&'static str, Vec<u8>)> {
    let shapes: [(&str, &[u8]); 9] = [
        (
            "CL and TE",
            b"POST /s HTTP/1.1\r\nHost: prod\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "HTTP/1.0 chunked",
            b"POST /s HTTP/1.0\r\nHost: prod\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "gzip, chunked",
            b"POST /s HTTP/1.1\r\nHost: prod\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two TE",
            b"POST /s HTTP/1.1\r\nHost: prod\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two identical CL",
            b"POST /s HTTP/1.1\r\nHost: prod\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "CL with a sign",
            b"POST /s HTTP/1.1\r\nHost: prod\r\nContent-Length: +3\r\n\r\nabc",
        ),
        (
            "space before the colon",
            b"POST /s HTTP/1.1\r\nHost: prod\r\nContent-Length : 3\r\n\r\nabc",
        ),
        (
            "obs-fold",
            b"POST /s HTTP/1.1\r\nHost: prod\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunk size with a leading space",
            b"POST /s HTTP/1.1\r\nHost: prod\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n",
        ),
    ];
    let mut shapes: Vec<(&str, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, bytes)| (name, bytes.to_vec()))
        .collect();
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: prod\r\n\r\n",
        "a".repeat(10 * 1024)
    );
    shapes.push(("10 KiB request line", long_line.into_bytes()));
    shapes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_after_a_smuggling_shape_never_reaches_staging() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production = pipeline.production.addr();
    let shapes = smuggling_shapes();
    for (i, (_, shape)) in shapes.iter().enumerate() {
        let pipelined = numbered_get("/pipelined", 100 + i as u64);
        send_raw(production, &[shape.as_slice(), &pipelined].concat()).await;
    }
    // Captured after every shape: once it is replayed, every shape has been cut.
    send_raw(production, &numbered_get("/marker", 0)).await;
    assert!(pipeline.wait_for_targets(1, REPLAY_TIMEOUT).await);
    let target = pipeline.targets[0].clone();
    let report = pipeline.finish(0).await.unwrap();

    let received = target.received();
    let mut sequences: Vec<u64> = received.keys().copied().collect();
    sequences.sort_unstable();
    assert_eq!(sequences, [0], "only the marker may be replayed");
    assert_eq!(
        report.listener_dropped.get("ambiguous_framing"),
        Some(&(shapes.len() as u64)),
        "{}",
        report.table()
    );
    assert_eq!(report.captured, 1, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_chunked_upload_is_skipped_by_its_chunks() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec!["--max-request-bytes".into(), "16384".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let embedded = numbered_get("/embedded", 999);
    let mut upload =
        b"POST /upload HTTP/1.1\r\nHost: prod\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2000 {
        upload.extend_from_slice(format!("{:x}\r\n", embedded.len()).as_bytes());
        upload.extend_from_slice(&embedded);
        upload.extend_from_slice(b"\r\n");
    }
    upload.extend_from_slice(b"0\r\n\r\n");
    let real_next = numbered_get("/after-upload", 1);
    send_raw(
        pipeline.production.addr(),
        &[upload.as_slice(), &real_next].concat(),
    )
    .await;
    assert!(pipeline.wait_for_targets(1, REPLAY_TIMEOUT).await);
    let target = pipeline.targets[0].clone();
    let report = pipeline.finish(0).await.unwrap();

    let received = target.received();
    assert_eq!(received[&1].len(), 1, "the real next request is replayed");
    assert_eq!(received[&1][0].path_and_query, "/after-upload");
    assert!(
        !received.contains_key(&999),
        "a request line inside the upload was replayed"
    );
    assert_eq!(
        report.listener_dropped.get("too_large"),
        Some(&1),
        "{}",
        report.table()
    );
    assert_eq!(report.captured, 1, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_server_ignored_keeps_the_connection_captured() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: prod\r\n{SEQUENCE_HEADER}: 1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    );
    let next = numbered_get("/after-upgrade", 2);
    // Production (hyper, no upgrade support) answers 200 to both on the same connection.
    send_raw(
        pipeline.production.addr(),
        &[upgrade.as_bytes(), &next].concat(),
    )
    .await;
    assert!(pipeline.wait_for_targets(2, REPLAY_TIMEOUT).await);
    let target = pipeline.targets[0].clone();
    let report = pipeline.finish(2).await.unwrap();
    let received = target.received();
    assert_eq!(received[&2][0].path_and_query, "/after-upgrade");
    assert_eq!(report.captured, 2, "{}", report.table());
    assert!(report.listener_dropped.is_empty(), "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailer_is_redacted_before_it_leaves_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.gor");
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec!["--redact-header".into(), "Authorization".into()],
        replayer_args: vec!["--record".into(), record.display().to_string()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: prod\r\n{SEQUENCE_HEADER}: 1\r\nTransfer-Encoding: chunked\r\nTrailer: Authorization\r\n\r\n5\r\nhello\r\n0\r\nAuthorization: Bearer trailer-secret\r\n\r\n"
    );
    send_raw(pipeline.production.addr(), request.as_bytes()).await;
    assert!(pipeline.wait_for_targets(1, REPLAY_TIMEOUT).await);
    let report = pipeline.finish(1).await.unwrap();
    assert_eq!(report.streamed, 1, "{}", report.table());

    // The recorder names its files after the path given (it may rotate them).
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let requests: Vec<Vec<u8>> = files
        .iter()
        .flat_map(|path| {
            let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
            GorReader::new(file, path.display().to_string())
        })
        .map(|message| message.unwrap())
        .filter(|message| message.header.payload_type == PayloadType::Request)
        .map(|message| message.payload.to_vec())
        .collect();
    assert_eq!(requests.len(), 1);
    let received = String::from_utf8(requests[0].clone()).unwrap();
    assert!(
        received.ends_with("0\r\nAuthorization: REDACTED\r\n\r\n"),
        "{received}"
    );
    assert!(!received.contains("trailer-secret"), "{received}");
}
