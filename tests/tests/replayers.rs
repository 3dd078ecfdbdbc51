//! Several replayers behind one listener: client connections are spread across them by a hash
//! of the connection, and when one dies its connections move to the others at once; every
//! request is replayed exactly once.

use std::time::{Duration, Instant};

use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::process::{Process, addr_in};
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::servers::RecordingServer;
use tapwire_testkit::traffic;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Polls a listener metric until `done` holds; the listener has no event for link changes,
/// its metrics are the signal. Returns how long it took.
async fn until_listener_metric(
    pipeline: &Pipeline,
    name: &str,
    done: impl Fn(u64) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let value = scrape(pipeline.listener_metrics)
            .await
            .unwrap()
            .sum(name, &[]);
        if done(value) {
            return started.elapsed();
        }
        assert!(started.elapsed() < TIMEOUT, "{name} stuck at {value}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replayers_share_connections_and_a_dead_ones_move_to_the_other() {
    tapwire_testkit::pipeline::require_root().unwrap();
    let target = RecordingServer::start(true).await.unwrap();
    let replayer_args = |metrics: bool| {
        let mut args: Vec<String> = vec![
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--target".into(),
            target.url(),
        ];
        if metrics {
            args.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        }
        args
    };
    let mut second = Process::spawn("tapwire-replayer", &replayer_args(true)).unwrap();
    let second_metrics = addr_in(
        &second
            .wait_for_line("metrics endpoint listening", TIMEOUT)
            .await
            .unwrap(),
    )
    .unwrap();
    let second_grpc = addr_in(
        &second
            .wait_for_line("grpc server listening", TIMEOUT)
            .await
            .unwrap(),
    )
    .unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 0,
        replayer_args: vec!["--target".into(), target.url()],
        listener_args: vec!["--replayer".into(), format!("http://{second_grpc}")],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    until_listener_metric(&pipeline, "tapwire_listener_replayer_up", |up| up == 2).await;
    let production = pipeline.production.addr();

    // Both up: many client connections, spread over both replayers.
    assert_eq!(
        traffic::send_mix_range(production, 0..400, 16).await.ok,
        400
    );
    assert_eq!(target.wait_for_served(400, TIMEOUT).await, 400);
    until_listener_metric(&pipeline, "tapwire_listener_records_sent_total", |n| {
        n >= 400
    })
    .await;
    let received = |snapshot: &tapwire_testkit::scrape::Snapshot| {
        snapshot.sum("tapwire_replayer_records_received_total", &[])
    };
    let first_share = received(&scrape(pipeline.replayer_metrics).await.unwrap());
    let second_share = received(&scrape(second_metrics).await.unwrap());
    assert_eq!(first_share + second_share, 400);
    assert!(
        first_share > 0 && second_share > 0,
        "one replayer took everything: {first_share} / {second_share}"
    );

    // One dies: its connections move to the other at once.
    second.kill().await.unwrap();
    let noticed =
        until_listener_metric(&pipeline, "tapwire_listener_replayer_up", |up| up == 1).await;
    assert!(
        noticed < Duration::from_secs(1),
        "noticed after {noticed:?}"
    );
    let moved_at = Instant::now();
    assert_eq!(
        traffic::send_mix_range(production, 400..800, 16).await.ok,
        400
    );
    assert_eq!(target.wait_for_served(800, TIMEOUT).await, 800);
    eprintln!(
        "dead replayer noticed in {noticed:?}; 400 more requests replayed {:?} later ({first_share}/{second_share} before)",
        moved_at.elapsed()
    );

    let received = target.received();
    for sequence in 0..800 {
        let copies = received.get(&sequence).map_or(0, Vec::len);
        assert_eq!(copies, 1, "request {sequence} replayed {copies} times");
    }
    let report = pipeline.finish(800).await.unwrap();
    assert_eq!(report.captured, 800, "{}", report.table());
    assert_eq!(report.streamed, 800, "{}", report.table());
    assert!(report.listener_dropped.is_empty(), "{}", report.table());
    // The survivor took its own share before the kill and everything after.
    assert_eq!(
        report.received_by_replayer,
        first_share + 400,
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_stopped_under_load_hands_its_connections_over_cleanly() {
    tapwire_testkit::pipeline::require_root().unwrap();
    let target = RecordingServer::start(true).await.unwrap();
    let mut second = Process::spawn(
        "tapwire-replayer",
        &[
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--target".into(),
            target.url(),
        ],
    )
    .unwrap();
    let second_grpc = addr_in(
        &second
            .wait_for_line("grpc server listening", TIMEOUT)
            .await
            .unwrap(),
    )
    .unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 0,
        replayer_args: vec!["--target".into(), target.url()],
        listener_args: vec!["--replayer".into(), format!("http://{second_grpc}")],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    until_listener_metric(&pipeline, "tapwire_listener_replayer_up", |up| up == 2).await;
    let production = pipeline.production.clone();
    let total = 3000;
    let load = tokio::spawn(traffic::fixed_rate(
        production.addr(),
        traffic::FixedRate {
            rate: Some(1000.0),
            total,
            connections: 16,
            body_bytes: 0,
        },
    ));
    target.wait_for_served(1000, TIMEOUT).await;
    // SIGTERM: it acknowledges what its targets finish, then tells the listener to move.
    let status = second.terminate(TIMEOUT).await.unwrap();
    assert!(status.success(), "{}", second.log());
    assert_eq!(load.await.unwrap().ok, total);
    assert!(target.wait_for_served(total, TIMEOUT).await >= total);

    let received = target.received();
    assert_eq!(production.received().len() as u64, total);
    for sequence in production.received().keys() {
        let copies = received.get(sequence).map_or(0, Vec::len);
        assert_eq!(copies, 1, "request {sequence} replayed {copies} times");
    }
    let report = pipeline.finish(total).await.unwrap();
    assert_eq!(report.captured, total, "{}", report.table());
    assert_eq!(report.streamed, total, "{}", report.table());
    assert!(report.listener_dropped.is_empty(), "{}", report.table());
}
