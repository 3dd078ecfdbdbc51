//! The replayer's engine end to end, through the real binaries: per-target filters and rewrites
//! from a TOML file, consistent sampling by user, rate accuracy, queued rate limiting, original
//! timing, and preserved connections.

use std::collections::BTreeMap;
use std::time::Duration;

use tapwire_testkit::pcap_fixture::{Connection, FixtureLink, write_pcap, write_pcap_timed};
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, SummaryLine};
use tapwire_testkit::servers::{ReceivedRequest, SEQUENCE_HEADER};
use tapwire_testkit::traffic::{self, FixedRate, RequestShape, USER_HEADER, USERS};

const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Stops both processes and returns the replayer's final totals for `target_url`.
async fn stop_and_read_target_totals(pipeline: Pipeline, target_url: &str) -> SummaryLine {
    let mut totals = pipeline
        .stop_with_target_totals(&[target_url.to_owned()])
        .await
        .unwrap();
    totals.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_target_filters_and_rewrites_from_a_config_file() {
    let config = r#"
        [[target]]
        url = "{target0}"
        [target.filters]
        deny_url = ["^/mix/FreshGet/"]
        [target.rewrites]
        url = [{ from = "^/mix/(\\w+)/(\\d+)", to = "/replayed/$1/$2" }]
        set_headers = { "X-Replayed-By" = "tapwire" }
        redact_headers = ["Authorization"]

        [[target]]
        url = "{target1}"
    "#;
    let pipeline = Pipeline::start(PipelineOptions {
        replayer_config: Some(config.into()),
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 200;
    let load = traffic::send_mix(pipeline.production.addr(), total, 4).await;
    assert_eq!(load.ok, total);
    let fresh_gets = (0..total)
        .filter(|&s| RequestShape::of(s) == RequestShape::FreshGet)
        .count() as u64;
    assert!(fresh_gets > 0);
    let filtered_target = pipeline.targets[0].clone();
    let plain_target = pipeline.targets[1].clone();
    assert!(plain_target.wait_for_served(total, REPLAY_TIMEOUT).await == total);
    assert_eq!(
        filtered_target
            .wait_for_served(total - fresh_gets, REPLAY_TIMEOUT)
            .await,
        total - fresh_gets
    );
    let totals = stop_and_read_target_totals(pipeline, &filtered_target.url()).await;
    assert_eq!(totals.get("filtered_deny_url"), fresh_gets);
    assert_eq!(totals.get("responses"), total - fresh_gets);

    let rewritten = filtered_target.received();
    let untouched = plain_target.received();
    for (sequence, copies) in &rewritten {
        let request = &copies[0];
        assert_ne!(RequestShape::of(*sequence), RequestShape::FreshGet);
        let shape = format!("{:?}", RequestShape::of(*sequence));
        assert!(
            request
                .path_and_query
                .starts_with(&format!("/replayed/{shape}/{sequence}?")),
            "{}",
            request.path_and_query
        );
        assert_eq!(request.headers["x-replayed-by"], "tapwire");
        if sequence.is_multiple_of(3) {
            assert_eq!(request.headers["authorization"], "REDACTED");
            assert_eq!(
                untouched[sequence][0].headers["authorization"],
                format!("Bearer secret-{sequence}"),
                "the other target is not rewritten"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_by_user_replays_whole_sessions() {
    let config = r#"
        [[target]]
        url = "{target0}"
        sample = "40%"
        sample_key = "header:x-user-id"
    "#;
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_config: Some(config.into()),
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 400;
    assert_eq!(
        traffic::send_mix(pipeline.production.addr(), total, 4)
            .await
            .ok,
        total
    );
    let target = pipeline.targets[0].clone();
    let totals = stop_and_read_target_totals(pipeline, &target.url()).await;
    let received = target.received();
    let mut per_user: BTreeMap<String, u64> = BTreeMap::new();
    for copies in received.values() {
        let user = copies[0].headers[USER_HEADER].to_str().unwrap().to_owned();
        *per_user.entry(user).or_default() += 1;
    }
    // Every kept user has all of its requests: the mix gives each user total / USERS.
    for (user, count) in &per_user {
        assert_eq!(*count, total / USERS, "{user} was split");
    }
    assert!(
        !per_user.is_empty() && per_user.len() < USERS as usize,
        "{per_user:?}"
    );
    assert_eq!(
        totals.get("responses") + totals.get("filtered_sample"),
        total
    );
}

/// Arrival counts in every one-second window starting at each arrival.
fn max_per_second(mut arrivals: Vec<std::time::Instant>) -> usize {
    arrivals.sort();
    (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|&&t| t - arrivals[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_rate_requests_are_dropped_and_the_rate_holds_in_every_second() {
    let rate = 200;
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: vec!["--rate".into(), rate.to_string()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    // Offer twice the rate for 4 seconds.
    let offered = 1600;
    let load = traffic::fixed_rate(
        pipeline.production.addr(),
        FixedRate {
            rate: Some(400.0),
            total: offered,
            connections: 8,
            body_bytes: 0,
        },
    )
    .await;
    assert_eq!(load.ok, offered);
    let target = pipeline.targets[0].clone();
    let totals = stop_and_read_target_totals(pipeline, &target.url()).await;
    let delivered = totals.get("responses");
    assert_eq!(delivered + totals.get("dropped_rate_limited"), offered);
    // 4 s of offered load at 200/s plus the 6-request default burst; the edges of the capture
    // window make a few percent either way.
    let burst = 6;
    let expected = rate as f64 * load.elapsed.as_secs_f64() + burst as f64;
    assert!(
        (delivered as f64 - expected).abs() / expected < 0.03,
        "delivered {delivered}, expected about {expected:.0}"
    );
    let arrivals: Vec<_> = target
        .received()
        .values()
        .map(|copies| copies[0].arrived_at)
        .collect();
    let busiest = max_per_second(arrivals);
    // Network jitter can squeeze a few admitted requests closer together on arrival.
    assert!(
        busiest <= rate + burst + 4,
        "{busiest} requests in one second at rate {rate}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_limiting_delivers_everything_at_the_rate() {
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: vec![
            "--rate".into(),
            "100".into(),
            "--when-limited".into(),
            "queue".into(),
        ],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 250;
    let load = traffic::fixed_rate(
        pipeline.production.addr(),
        FixedRate {
            rate: None,
            total,
            connections: 4,
            body_bytes: 0,
        },
    )
    .await;
    assert_eq!(load.ok, total);
    let target = pipeline.targets[0].clone();
    assert_eq!(target.wait_for_served(total, REPLAY_TIMEOUT).await, total);
    let mut arrivals: Vec<_> = target
        .received()
        .values()
        .map(|copies| copies[0].arrived_at)
        .collect();
    arrivals.sort();
    let span = *arrivals.last().unwrap() - arrivals[0];
    // 250 requests at 100/s with a burst of 1: about 2.5 s, never much faster.
    assert!(span >= Duration::from_millis(2_300), "span {span:?}");
    let totals = stop_and_read_target_totals(pipeline, &target.url()).await;
    assert_eq!(totals.get("responses"), total);
    assert_eq!(totals.get("dropped_rate_limited"), 0);
}

fn request_bytes(sequence: u64, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: prod\r\n{SEQUENCE_HEADER}: {sequence}\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_timing_keeps_captured_gaps_scaled_by_speed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timed.pcap");
    let c = Connection::new("10.7.0.1:42000", "10.7.0.2:8080", 9);
    let mut segments = vec![(0, c.syn())];
    let mut offset = 0;
    for sequence in 0..5u64 {
        let bytes = request_bytes(sequence, &format!("/timed/{sequence}"));
        // Captured 400 ms apart.
        segments.push((1_000 + sequence * 400_000, c.data(offset, &bytes)));
        offset += bytes.len();
    }
    write_pcap_timed(&path, FixtureLink::Ethernet, &segments).unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec![
            "--input-pcap".into(),
            path.display().to_string(),
            "--port".into(),
            "8080".into(),
        ],
        replayer_args: vec![
            "--timing".into(),
            "original".into(),
            "--speed".into(),
            "2".into(),
        ],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let target = pipeline.targets[0].clone();
    assert_eq!(target.wait_for_served(5, REPLAY_TIMEOUT).await, 5);
    let received = target.received();
    let arrivals: Vec<_> = (0..5u64).map(|s| received[&s][0].arrived_at).collect();
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        // 400 ms captured at speed 2: 200 ms.
        assert!(
            (Duration::from_millis(150)..Duration::from_millis(260)).contains(&gap),
            "gap {gap:?}"
        );
    }
    stop_and_read_target_totals(pipeline, &target.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserved_connections_replay_in_order_over_one_connection_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.pcap");
    let connections = [
        Connection::new("10.7.0.1:43001", "10.7.0.2:8080", 100),
        Connection::new("10.7.0.1:43002", "10.7.0.2:8080", 200),
    ];
    let mut segments = vec![connections[0].syn(), connections[1].syn()];
    let mut offsets = [0usize; 2];
    // Interleaved on the wire: sequences 0..20 on the first connection, 100..120 on the second.
    for n in 0..20u64 {
        for (i, c) in connections.iter().enumerate() {
            let sequence = n + 100 * i as u64;
            let bytes = request_bytes(sequence, &format!("/session/{i}/{n}"));
            segments.push(c.data(offsets[i], &bytes));
            offsets[i] += bytes.len();
        }
    }
    write_pcap(&path, FixtureLink::Ethernet, &segments).unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        listener_args: vec![
            "--input-pcap".into(),
            path.display().to_string(),
            "--port".into(),
            "8080".into(),
        ],
        replayer_args: vec!["--preserve-connections".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let target = pipeline.targets[0].clone();
    assert_eq!(target.wait_for_served(40, REPLAY_TIMEOUT).await, 40);
    let received = target.received();
    for first in [0u64, 100] {
        let session: Vec<&ReceivedRequest> =
            (first..first + 20).map(|s| &received[&s][0]).collect();
        assert!(
            session.iter().all(|r| r.peer == session[0].peer),
            "one upstream connection per captured connection"
        );
        assert!(
            session
                .windows(2)
                .all(|pair| pair[0].arrived_at <= pair[1].arrived_at),
            "in captured order"
        );
    }
    assert_ne!(received[&0][0].peer, received[&100][0].peer);
    stop_and_read_target_totals(pipeline, &target.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_fills_only_its_own_queue() {
    let slow = tapwire_testkit::servers::RecordingServer::start_slow(
        std::net::IpAddr::from([127, 0, 0, 1]),
        false,
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    // The slow target gets 2 connections and a queue of 10, and holds the others back for
    // at most 1 s before it sheds.
    let config = format!(
        "[[target]]\nurl = \"{{target0}}\"\n[[target]]\nurl = \"{}\"\nconcurrency = 2\nqueue = 10\nshed_after = \"1s\"\n",
        slow.url()
    );
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_config: Some(config),
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 300;
    let started = std::time::Instant::now();
    assert_eq!(
        traffic::send_mix(pipeline.production.addr(), total, 4)
            .await
            .ok,
        total
    );
    let fast = pipeline.targets[0].clone();
    assert_eq!(fast.wait_for_served(total, REPLAY_TIMEOUT).await, total);
    // 300 requests at 2 x 5/s would take 30 s; the fast target did not wait for that.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let totals = stop_and_read_target_totals(pipeline, &slow.url()).await;
    let line = format!("{totals:?}");
    let shed = totals
        .with_prefix("dropped_")
        .get("shed_slow_target")
        .copied()
        .unwrap_or(0);
    assert!(shed > 200, "{line}");
    // Every request is accounted for: answered, or shed once the slow target had held the
    // others back for --shed-after.
    assert_eq!(totals.get("sent") + shed, total, "{line}");
}
