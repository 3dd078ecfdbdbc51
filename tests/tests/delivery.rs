//! Acknowledged delivery across a replayer crash: the listener keeps what the replayer has not
//! acknowledged and sends it again after reconnecting; nothing is lost, nothing replayed twice.

use std::time::Duration;

use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::scrape::scrape;
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
    let received = target.received();
    for sequence in 0..600 {
        let copies = received.get(&sequence).map_or(0, Vec::len);
        assert_eq!(copies, 1, "request {sequence} replayed {copies} times");
    }
    // The listener's accounting: everything captured, everything acknowledged, nothing dropped.
    assert_eq!(report.captured, 600, "{}", report.table());
    assert_eq!(report.streamed, 600, "{}", report.table());
    assert!(report.listener_dropped.is_empty(), "{}", report.table());
    // The new replayer took exactly the outage's records.
    assert_eq!(report.received_by_replayer, 300, "{}", report.table());
}
