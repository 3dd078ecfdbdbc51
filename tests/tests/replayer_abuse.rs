//! The replayer's gRPC port under abuse that needs no token: thousands of idle TCP connections
//! against a replayer held to systemd's default of 1024 open files, and a listener id crafted
//! to forge log lines. The real listener linked before the flood keeps delivering, the metrics
//! endpoint keeps answering, the replayer does not spin on `accept` errors, and every idle
//! connection is closed once its handshake time is up, or, if it spoke HTTP/2, once its time to
//! open an authenticated stream is.

use std::time::{Duration, Instant};

use tapwire_shared::proto::{self, replay_client::ReplayClient};
use tapwire_testkit::feed::named_record;
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::traffic;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(30);
const OPEN_FILES: u64 = 1024;
const IDLE_CONNECTIONS: usize = 2000;
/// Long enough for the checks made while the idle connections are open, on a loaded machine.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(8);
const REFUSED: &str = "tapwire_replayer_link_refused_total";

/// Lets this test process hold the idle connections (its own limit may be 1024 too).
fn raise_own_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= IDLE_CONNECTIONS as u64 + 512,
        "this test needs {} open files, the hard limit is {}",
        IDLE_CONNECTIONS + 512,
        limit.rlim_cur
    );
}

/// Opens [`IDLE_CONNECTIONS`] connections that send nothing, a few at a time (all at once would
/// overflow the kernel's accept queue, leaving some half-open whatever the replayer does),
/// giving up after [`TIMEOUT`] on a replayer that is not taking them.
async fn open_idle_connections(grpc: std::net::SocketAddr) -> Vec<TcpStream> {
    let opening = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..IDLE_CONNECTIONS {
        let permit = std::sync::Arc::clone(&opening)
            .acquire_owned()
            .await
            .unwrap();
        connecting.spawn(async move {
            let connection =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(grpc)).await;
            drop(permit);
            connection.ok().and_then(Result::ok)
        });
    }
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    let _ = tokio::time::timeout(TIMEOUT, async {
        while let Some(connection) = connecting.join_next().await {
            idle.extend(connection.unwrap());
        }
    })
    .await;
    idle
}

/// The replayer uses well under a core for 2 s: it is waiting, not looping on errors.
async fn assert_not_spinning(pipeline: &Pipeline, during: &str) {
    let cpu_before = pipeline.replayer.resource_usage().unwrap().cpu_seconds;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = pipeline.replayer.resource_usage().unwrap().cpu_seconds - cpu_before;
    eprintln!("replayer CPU during 2 s ({during}): {cpu:.2} s");
    assert!(
        cpu < 0.5,
        "{cpu:.2} CPU seconds in 2 s ({during}): the replayer is spinning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_under_a_1024_file_limit_lock_no_listener_out() {
    raise_own_open_files_limit();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        record: false,
        replayer_open_files: Some(OPEN_FILES),
        replayer_args: vec![
            "--handshake-timeout".into(),
            format!("{}s", HANDSHAKE_TIMEOUT.as_secs()),
        ],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let target = pipeline.targets[0].clone();
    let production = pipeline.production.addr();
    assert_eq!(traffic::send_mix_range(production, 0..100, 4).await.ok, 100);
    assert_eq!(target.wait_for_served(100, TIMEOUT).await, 100);

    // The flood: connections that never say a word, more than the replayer has files for.
    let idle = open_idle_connections(pipeline.replayer_grpc).await;
    eprintln!("{} of {IDLE_CONNECTIONS} idle connections open", idle.len());
    let flooded_at = Instant::now();

    // While they are open: the replayer is not spinning...
    assert_not_spinning(&pipeline, "idle connections").await;
    // ...its metrics answer, and the linked listener keeps delivering.
    let metrics = tokio::time::timeout(TIMEOUT, scrape(pipeline.replayer_metrics))
        .await
        .expect("metrics endpoint hung")
        .expect("metrics endpoint refused");
    assert!(
        metrics.sum(REFUSED, &[("reason", "connection_limit")]) > 0,
        "no connection refused at the cap"
    );
    assert_eq!(
        traffic::send_mix_range(production, 100..300, 4).await.ok,
        200
    );
    assert_eq!(target.wait_for_served(300, TIMEOUT).await, 300);
    assert!(
        flooded_at.elapsed() < HANDSHAKE_TIMEOUT,
        "the checks above ran after the idle connections' handshake time: they proved nothing"
    );

    let idle_count = idle.len();
    // Every idle connection is closed: at once past the cap, after its handshake time else.
    for (n, mut connection) in idle.into_iter().enumerate() {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(TIMEOUT, connection.read(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("idle connection {n} still open after {TIMEOUT:?}"));
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "idle connection {n} got data"
        );
    }
    let metrics = scrape(pipeline.replayer_metrics).await.unwrap();
    let refused = metrics.sum(REFUSED, &[("reason", "connection_limit")]);
    let timed_out = metrics.sum(REFUSED, &[("reason", "handshake_timeout")]);
    eprintln!("refused at the cap: {refused}, closed for saying nothing: {timed_out}");
    assert_eq!(
        idle_count, IDLE_CONNECTIONS,
        "connections the replayer never took"
    );
    assert_eq!(refused + timed_out, IDLE_CONNECTIONS as u64);

    // Once they are gone a new listener connection is taken as usual.
    assert_delivers_the_rest(pipeline, 300..400).await;
}

/// Connections that pass the handshake (they send the HTTP/2 preface and SETTINGS) but never
/// open a stream that passes the token check.
const SILENT_HTTP2_CONNECTIONS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_speak_http2_but_never_authenticate_are_closed() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        record: false,
        replayer_args: vec!["--handshake-timeout".into(), "1s".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production = pipeline.production.addr();
    let target = pipeline.targets[0].clone();
    assert_eq!(traffic::send_mix_range(production, 0..100, 4).await.ok, 100);
    assert_eq!(target.wait_for_served(100, TIMEOUT).await, 100);

    // The preface, then an empty SETTINGS frame: a well-behaved HTTP/2 client that says no more.
    let hello = [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
        &[0, 0, 0, 4, 0, 0, 0, 0, 0],
    ]
    .concat();
    let mut silent = Vec::new();
    for _ in 0..SILENT_HTTP2_CONNECTIONS {
        let mut connection = TcpStream::connect(pipeline.replayer_grpc).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut connection, &hello)
            .await
            .unwrap();
        silent.push(connection);
    }
    // Each is closed once its time to authenticate is up (what it reads before is the server's
    // own SETTINGS and GOAWAY, never a stream).
    for (n, mut connection) in silent.into_iter().enumerate() {
        let closed = tokio::time::timeout(TIMEOUT, async {
            let mut buffer = [0u8; 1024];
            loop {
                match connection.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "silent connection {n} still open after {TIMEOUT:?}"
        );
    }
    let metrics = scrape(pipeline.replayer_metrics).await.unwrap();
    // Exactly these: the real listener's connection, which streams, is never closed for it.
    assert_eq!(
        metrics.sum(REFUSED, &[("reason", "no_authenticated_stream")]),
        SILENT_HTTP2_CONNECTIONS as u64
    );
    assert_delivers_the_rest(pipeline, 100..200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_replayer_backs_off_instead_of_spinning() {
    raise_own_open_files_limit();
    // A connection cap above the file limit: accepting runs out of descriptors (EMFILE).
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        record: false,
        replayer_open_files: Some(OPEN_FILES),
        replayer_args: vec![
            "--max-connections".into(),
            "5000".into(),
            "--handshake-timeout".into(),
            format!("{}s", HANDSHAKE_TIMEOUT.as_secs()),
        ],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let idle = open_idle_connections(pipeline.replayer_grpc).await;
    assert_not_spinning(&pipeline, "out of file descriptors").await;
    // Once the idle connections' handshake time is up their descriptors come back.
    drop(idle);
    let metrics = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Ok(metrics) = scrape(pipeline.replayer_metrics).await {
                return metrics;
            }
            // Refused while descriptors are short; no other signal says when they are back.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the metrics endpoint never answered again");
    let errors = metrics.sum("tapwire_replayer_accept_errors_total", &[]);
    eprintln!("accept errors counted: {errors}");
    assert!(errors > 0, "the file limit was never reached");
    let target = pipeline.targets[0].clone();
    assert_eq!(
        traffic::send_mix_range(pipeline.production.addr(), 0..100, 4)
            .await
            .ok,
        100
    );
    assert_eq!(target.wait_for_served(100, TIMEOUT).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_id_with_a_newline_forges_no_log_line() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        record: false,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let forged = "FORGED level=ERROR replayer compromised";
    let listener_id = format!("evil\n{forged}");
    let mut client = ReplayClient::connect(format!("http://{}", pipeline.replayer_grpc))
        .await
        .unwrap();
    let batch = proto::RecordBatch {
        sequence: 1,
        listener_id: listener_id.clone(),
        listener_instance: 1,
        records: vec![named_record("evil", 0, 0)],
        responses: Vec::new(),
    };
    let outcome = async {
        let mut acks = client
            .stream(tokio_stream::iter([batch]).chain(tokio_stream::pending()))
            .await?
            .into_inner();
        loop {
            match acks.message().await? {
                Some(_) => continue,
                None => return Ok::<_, tonic::Status>(()),
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcome).await;
    // Logged escaped inside the refusal's line, or as a line of its own if forged.
    pipeline
        .replayer
        .wait_for_line("FORGED", TIMEOUT)
        .await
        .unwrap();
    let log = pipeline.replayer.log();
    assert!(
        !log.lines().any(|line| line.starts_with("FORGED")),
        "a client forged a log line:\n{log}"
    );
    let status = outcome
        .expect("the stream was neither refused nor ended")
        .expect_err("a listener id with a newline was accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let metrics = scrape(pipeline.replayer_metrics).await.unwrap();
    assert_eq!(
        metrics.sum(REFUSED, &[("reason", "invalid_listener_id")]),
        1
    );
    assert!(
        log.contains("invalid listener id"),
        "the refusal was not logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_share_a_held_bytes_cap_smaller_than_one_batch_and_all_get_through() {
    use tapwire_testkit::feed::feed_as;
    use tapwire_testkit::pipeline::Replayer;
    use tapwire_testkit::servers::RecordingServer;
    // 1 KiB: each batch takes the whole budget, so one batch at a time is held in all.
    let target = RecordingServer::start(false).await.unwrap();
    let mut replayer = Replayer::start(&target.url(), &["--max-held-bytes".into(), "1KiB".into()])
        .await
        .unwrap();
    let (feeds, per_feed) = (4, 2000u64);
    let running: Vec<_> = (0..feeds)
        .map(|i| {
            let grpc = replayer.grpc;
            tokio::spawn(async move { feed_as(grpc, &format!("capped-{i}"), per_feed, None).await })
        })
        .collect();
    for feed in running {
        tokio::time::timeout(TIMEOUT, feed)
            .await
            .expect("a feed hung behind the held-bytes cap")
            .unwrap()
            .expect("a feed was not fully acknowledged");
    }
    let total = feeds * per_feed;
    assert_eq!(target.wait_for_served(total, TIMEOUT).await, total);
    let summary = replayer.stop().await.unwrap();
    assert_eq!(summary.get("received"), total);
    assert_eq!(target.served(), total);
}

/// Requests `sequences` (the last ones of the test) reach production and the target, and the
/// whole run adds up: nothing lost, nothing twice.
async fn assert_delivers_the_rest(pipeline: Pipeline, sequences: std::ops::Range<u64>) {
    let production = pipeline.production.addr();
    let target = pipeline.targets[0].clone();
    let count = sequences.end - sequences.start;
    assert_eq!(
        traffic::send_mix_range(production, sequences.clone(), 4)
            .await
            .ok,
        count
    );
    assert_eq!(
        target.wait_for_served(sequences.end, TIMEOUT).await,
        sequences.end
    );
    let report = pipeline.finish(sequences.end).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
}
