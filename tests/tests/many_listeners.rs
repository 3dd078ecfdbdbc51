//! One replayer serving many listeners at once: fifty synthetic listeners (real gRPC streams)
//! each stream their records concurrently; every stream is served to the end and every record
//! replayed exactly once.

use std::time::Duration;

use tapwire_testkit::feed::feed;
use tapwire_testkit::pipeline::{Replayer, require_root};
use tapwire_testkit::servers::RecordingServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_listeners_are_all_served() {
    require_root().unwrap();
    let target = RecordingServer::start(false).await.unwrap();
    let mut replayer = Replayer::start(&target.url(), &["--target-queue".into(), "100000".into()])
        .await
        .unwrap();
    let grpc = replayer.grpc;

    let (listeners, per_listener) = (50, 400);
    let feeds: Vec<_> = (0..listeners)
        .map(|_| tokio::spawn(feed(grpc, per_listener, None)))
        .collect();
    for finished in feeds {
        let elapsed = finished.await.unwrap().unwrap();
        assert!(
            elapsed < Duration::from_secs(30),
            "a listener waited {elapsed:?}"
        );
    }
    let total = listeners * per_listener;
    assert_eq!(
        target.wait_for_served(total, Duration::from_secs(60)).await,
        total
    );

    let totals = replayer.stop().await.unwrap();
    assert_eq!(totals.get("received"), total);
    assert_eq!(totals.get("duplicates"), 0);
}
