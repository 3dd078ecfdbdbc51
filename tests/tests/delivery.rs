//! Acknowledged delivery across a replayer crash: the listener keeps what the replayer has not
//! acknowledged and sends it again after reconnecting; nothing is lost, nothing replayed twice.

use std::time::Duration;

use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::servers::RecordingServer;
use tapwire_testkit::traffic;

const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// A loopback port with nothing listening on it, for a replayer that must come back on it.
async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until the listener reports `count` records acknowledged.
async fn wait_for_acknowledged(pipeline: &Pipeline, count: u64) {
    let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
    loop {
        let metrics = scrape(pipeline.listener_metrics).await.unwrap();
        if metrics.sum("tapwire_listener_records_sent_total", &[]) >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never acknowledged {count}"
        );
        // The listener exposes no event for acknowledgements; its counter is the signal.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replayer_loses_nothing_and_replays_nothing_twice() {
    let port = free_port().await;
    let mut pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_grpc_listen: format!("127.0.0.1:{port}"),
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production = pipeline.production.addr();
    let target = pipeline.targets[0].clone();

    // Before the crash: everything replayed and acknowledged.
    assert_eq!(traffic::send_mix_range(production, 0..300, 4).await.ok, 300);
    assert_eq!(target.wait_for_served(300, REPLAY_TIMEOUT).await, 300);
    wait_for_acknowledged(&pipeline, 300).await;

    // The replayer dies without draining; traffic goes on and the listener buffers it.
    pipeline.kill_replayer().await.unwrap();
    assert_eq!(
        traffic::send_mix_range(production, 300..600, 4).await.ok,
        300
    );
    pipeline
        .listener
        .wait_for_line("replayer link down", REPLAY_TIMEOUT)
        .await
        .unwrap();

    // A new replayer on the same port: the listener reconnects and sends what it kept.
    pipeline.restart_replayer().await.unwrap();
    assert_eq!(target.wait_for_served(600, REPLAY_TIMEOUT).await, 600);
    let report = pipeline.finish(600).await.unwrap();
    assert_eq!(target.not_exactly_once(0..600), [], "(request, copies)");
    // The listener's accounting: everything captured, everything acknowledged, nothing dropped.
    assert_eq!(report.captured, 600, "{}", report.table());
    assert_eq!(report.streamed, 600, "{}", report.table());
    assert!(report.listener_dropped.is_empty(), "{}", report.table());
    // The new replayer took exactly the outage's records.
    assert_eq!(report.received_by_replayer, 300, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_spooled_to_disk_survives_a_listener_restart() {
    let port = free_port().await;
    let spool = tempfile::tempdir().unwrap();
    let mut pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_grpc_listen: format!("127.0.0.1:{port}"),
        listener_args: vec!["--spool-dir".into(), spool.path().display().to_string()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production = pipeline.production.addr();
    let target = pipeline.targets[0].clone();
    assert_eq!(traffic::send_mix_range(production, 0..100, 4).await.ok, 100);
    assert_eq!(target.wait_for_served(100, REPLAY_TIMEOUT).await, 100);
    wait_for_acknowledged(&pipeline, 100).await;

    // No replayer: records go to disk; then the listener itself is restarted.
    pipeline.kill_replayer().await.unwrap();
    pipeline
        .listener
        .wait_for_line("replayer link down", REPLAY_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        traffic::send_mix_range(production, 100..400, 4).await.ok,
        300
    );
    let stopped = pipeline.stop_listener().await.unwrap();
    assert_eq!(stopped.get("captured"), 400);
    assert_eq!(stopped.get("sent"), 100);
    assert_eq!(stopped.get("spooled"), 300, "{stopped:?}");
    assert_eq!(stopped.get("dropped"), 0, "{stopped:?}");
    assert!(std::fs::read_dir(spool.path()).unwrap().count() > 0);

    // Replayer and listener back: the spooled records are sent, once each.
    pipeline.restart_replayer().await.unwrap();
    pipeline.restart_listener().await.unwrap();
    assert_eq!(target.wait_for_served(400, REPLAY_TIMEOUT).await, 400);
    assert_eq!(target.not_exactly_once(0..400), [], "(request, copies)");
    wait_for_acknowledged(&pipeline, 300).await;
    let restarted = pipeline.stop_listener().await.unwrap();
    assert_eq!(restarted.get("restored"), 300, "{restarted:?}");
    assert_eq!(restarted.get("sent"), 300, "{restarted:?}");
    assert_eq!(restarted.get("dropped"), 0, "{restarted:?}");
    assert_eq!(restarted.get("spooled"), 0, "{restarted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_killed_under_steady_load_loses_nothing() {
    let port = free_port().await;
    // A target taking 50 ms per answer: at 1000 requests/s about 50 are always being answered
    // and more wait in the replayer's target queue, so the kill always catches some.
    let target =
        RecordingServer::start_slow([127, 0, 0, 1].into(), true, Duration::from_millis(50))
            .await
            .unwrap();
    let mut pipeline = Pipeline::start(PipelineOptions {
        targets: 0,
        replayer_grpc_listen: format!("127.0.0.1:{port}"),
        replayer_args: vec![
            "--target".into(),
            target.url(),
            "--concurrency".into(),
            "128".into(),
        ],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production = pipeline.production.clone();
    let total = 3000;
    // 1000 requests/s for 3 s, on many connections.
    let load = tokio::spawn(traffic::fixed_rate(
        production.addr(),
        traffic::FixedRate {
            rate: Some(1000.0),
            total,
            connections: 16,
            body_bytes: 0,
        },
    ));
    // Mid-stream: killed with requests in flight and in its target queue.
    target.wait_for_served(800, REPLAY_TIMEOUT).await;
    pipeline.kill_replayer().await.unwrap();
    // Down for a while under load, then back.
    production.wait_for_served(1800, REPLAY_TIMEOUT).await;
    pipeline.restart_replayer().await.unwrap();
    assert_eq!(load.await.unwrap().ok, total);
    // Second copies count too: at least every request.
    assert!(target.wait_for_served(total, REPLAY_TIMEOUT).await >= total);

    let resent = scrape(pipeline.listener_metrics)
        .await
        .unwrap()
        .sum("tapwire_listener_records_resent_total", &[]);
    let report = pipeline.finish(total).await.unwrap();
    let received = target.received();
    let produced = production.received();
    assert_eq!(produced.len() as u64, total);
    let mut copies_beyond_one = 0;
    for sequence in produced.keys() {
        let copies = received.get(sequence).map_or(0, Vec::len);
        assert!(copies >= 1, "request {sequence} was lost");
        copies_beyond_one += (copies - 1) as u64;
    }
    // At-least-once: only records sent again (their batch unacknowledged when the replayer
    // died) can arrive twice, and only those the dead replayer had already replayed.
    eprintln!(
        "after kill -9 under load: {resent} records resent, {copies_beyond_one} replayed twice"
    );
    assert!(resent > 0, "the kill caught no batch in flight");
    assert!(
        copies_beyond_one <= resent,
        "{copies_beyond_one} second copies but only {resent} resent"
    );
    // The listener's accounting holds exactly: everything captured was acknowledged.
    assert_eq!(report.captured, total, "{}", report.table());
    assert_eq!(report.streamed, total, "{}", report.table());
    assert!(report.listener_dropped.is_empty(), "{}", report.table());
}
