//! Several replayers behind one listener: client connections are spread across them by a hash
//! of the connection, and when one dies its connections move to the others at once; every
//! request is replayed exactly once.

use std::time::{Duration, Instant};

use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, Replayer};
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

/// A target, a second replayer of its own, and a pipeline whose listener streams to both the
/// pipeline's replayer and the second one; returns once both links are up.
async fn two_replayers() -> (RecordingServer, Replayer, Pipeline) {
    tapwire_testkit::pipeline::require_root().unwrap();
    let target = RecordingServer::start(true).await.unwrap();
    let second = Replayer::start(&target.url(), &[]).await.unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 0,
        replayer_args: vec!["--target".into(), target.url()],
        listener_args: vec!["--replayer".into(), format!("http://{}", second.grpc)],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    until_listener_metric(&pipeline, "tapwire_listener_replayer_up", |up| up == 2).await;
    (target, second, pipeline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replayers_share_connections_and_a_dead_ones_move_to_the_other() {
    let (target, mut second, pipeline) = two_replayers().await;
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
    let second_share = received(&scrape(second.metrics).await.unwrap());
    assert_eq!(first_share + second_share, 400);
    assert!(
        first_share > 0 && second_share > 0,
        "one replayer took everything: {first_share} / {second_share}"
    );

    // One dies: its connections move to the other at once.
    second.process.kill().await.unwrap();
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

    assert_eq!(target.not_exactly_once(0..800), [], "(request, copies)");
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
    let (target, mut second, pipeline) = two_replayers().await;
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
    second.stop().await.unwrap();
    assert_eq!(load.await.unwrap().ok, total);
    assert!(target.wait_for_served(total, TIMEOUT).await >= total);

    let sequences: Vec<u64> = production.received().into_keys().collect();
    assert_eq!(sequences.len() as u64, total);
    assert_eq!(target.not_exactly_once(sequences), [], "(request, copies)");
    let report = pipeline.finish(total).await.unwrap();
    assert_eq!(report.captured, total, "{}", report.table());
    assert_eq!(report.streamed, total, "{}", report.table());
    assert!(report.listener_dropped.is_empty(), "{}", report.table());
}
