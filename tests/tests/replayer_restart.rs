//! A burst is absorbed, not dropped. After a replayer restart the listener sends its whole
//! backlog at once; the replayer stops reading while its target queue is full (the listener
//! holds the rest) instead of dropping what does not fit, since the target absorbs the
//! average rate easily. Live capture of 2,000 requests/s on loopback, the replayer killed
//! (SIGKILL) for 3 s and restarted on the same port, ten times in a row.

use std::collections::HashMap;
use std::time::Duration;

use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::servers::RecordingServer;
use tapwire_testkit::traffic;

const TIMEOUT: Duration = Duration::from_secs(60);
const RUNS: usize = 10;
const RATE: f64 = 2000.0;
/// Each run: 1 s of traffic before the kill, 3 s down, the rest after the restart.
const PER_RUN: u64 = 12_000;
/// Smaller than an outage's backlog (3 s at 2,000/s), so the backlog cannot simply fit.
const TARGET_QUEUE: &str = "1000";

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Copies of each request a server has received so far.
fn copies(server: &RecordingServer) -> HashMap<u64, usize> {
    server
        .received()
        .into_iter()
        .map(|(sequence, copies)| (sequence, copies.len()))
        .collect()
}

/// Requests this run sent to production that the target has not received (yet), and how many
/// second copies it received.
fn this_run(
    production: &RecordingServer,
    target: &RecordingServer,
    produced_before: &HashMap<u64, usize>,
    replayed_before: &HashMap<u64, usize>,
) -> (Vec<u64>, usize) {
    let (produced, replayed) = (copies(production), copies(target));
    let (mut missing, mut twice) = (Vec::new(), 0);
    for (sequence, count) in &produced {
        let new = count - produced_before.get(sequence).copied().unwrap_or(0);
        if new == 0 {
            continue;
        }
        let got = replayed.get(sequence).copied().unwrap_or(0)
            - replayed_before.get(sequence).copied().unwrap_or(0);
        if got < new {
            missing.push(*sequence);
        }
        twice += got.saturating_sub(new);
    }
    (missing, twice)
}

fn second_copies(
    production: &RecordingServer,
    target: &RecordingServer,
    produced_before: &HashMap<u64, usize>,
    replayed_before: &HashMap<u64, usize>,
) -> usize {
    this_run(production, target, produced_before, replayed_before).1
}

/// What is still missing once the target has stopped receiving this run's requests (with
/// second copies, the count reached says nothing about which arrived).
async fn wait_for_all(
    production: &RecordingServer,
    target: &RecordingServer,
    produced_before: &HashMap<u64, usize>,
    replayed_before: &HashMap<u64, usize>,
) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (missing, _) = this_run(production, target, produced_before, replayed_before);
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            return missing;
        }
        // The recording server has no event for "this one arrived"; its record is the signal.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_killed_and_restarted_under_load_loses_nothing_ten_times_in_a_row() {
    let port = free_port().await;
    let mut pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_grpc_listen: format!("127.0.0.1:{port}"),
        replayer_args: vec!["--target-queue".into(), TARGET_QUEUE.into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production = pipeline.production.clone();
    let target = pipeline.targets[0].clone();
    let mut outcomes = Vec::new();
    for run in 0..RUNS {
        // The same sequence numbers come back each run: count copies added by this run.
        let (produced_before, replayed_before) = (copies(&production), copies(&target));
        let served_before = production.served();
        let target_before = target.served();
        let resent_before = scrape(pipeline.listener_metrics)
            .await
            .unwrap()
            .sum("tapwire_listener_records_resent_total", &[]);
        let load = tokio::spawn(traffic::fixed_rate(
            production.addr(),
            traffic::FixedRate {
                rate: Some(RATE),
                total: PER_RUN,
                connections: 16,
                body_bytes: 0,
            },
        ));
        // Killed after about 1 s of traffic, down for about 3 s of it.
        production
            .wait_for_served(served_before + 2000, TIMEOUT)
            .await;
        pipeline.kill_replayer().await.unwrap();
        production
            .wait_for_served(served_before + 8000, TIMEOUT)
            .await;
        pipeline.restart_replayer().await.unwrap();
        assert_eq!(load.await.unwrap().ok, PER_RUN, "run {run}");
        target
            .wait_for_served(target_before + PER_RUN, TIMEOUT)
            .await;
        let missing = wait_for_all(&production, &target, &produced_before, &replayed_before).await;
        let resent = scrape(pipeline.listener_metrics)
            .await
            .unwrap()
            .sum("tapwire_listener_records_resent_total", &[])
            - resent_before;

        let twice = second_copies(&production, &target, &produced_before, &replayed_before);
        eprintln!(
            "run {run}: {} missing, {twice} replayed twice, {resent} resent by the listener",
            missing.len()
        );
        outcomes.push((missing.len(), twice, resent));
        assert!(
            missing.is_empty(),
            "run {run}: {} requests never reached the target (first: {:?}); runs so far: {outcomes:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        // A second copy can only be of a record the killed replayer had replayed without
        // acknowledging it: the listener sent it again.
        assert!(
            twice as u64 <= resent,
            "run {run}: {twice} second copies but only {resent} resent"
        );
    }
    let report = pipeline.finish(RUNS as u64 * PER_RUN).await.unwrap();
    assert_eq!(report.captured, RUNS as u64 * PER_RUN, "{}", report.table());
    assert!(report.listener_dropped.is_empty(), "{}", report.table());
}
