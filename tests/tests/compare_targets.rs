//! Response comparison end to end (issue 14): production (a [`Build::Production`] on loopback)
//! captured live with its responses (`--track-responses`), replayed to two baselines and a
//! candidate that differ on purpose ([`tapwire_testkit::builds`]). The diff log's last summary
//! must report exactly the candidate's documented changes, with their rates, and the random
//! fields only as noise; a `.gor` recording of the same run must give the same report offline.
//! Needs root (live capture) and the binaries built.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tapwire_shared::gor::{GorReader, PayloadType};
use tapwire_testkit::builds::{
    self, Build, BuildServer, CANDIDATE_CHANGES, CANDIDATE_DELAY, ENDPOINTS, NOISE_PATHS,
};
use tapwire_testkit::pipeline::require_root;
use tapwire_testkit::process::{Process, addr_in, binary_path};

const READY: Duration = Duration::from_secs(20);
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);
/// 80 requests per endpoint: a multiple of 4, so the catalog's 25% is exact.
const REQUESTS: u64 = 480;
const PER_ENDPOINT: u64 = REQUESTS / ENDPOINTS.len() as u64;

/// Production on loopback captured by a listener tracking its responses, streaming to a
/// replayer started with `replayer_args` (its gRPC and metrics ports added).
struct LiveRun {
    production: BuildServer,
    listener: Process,
    replayer: Process,
    /// The replayer's metrics port, which serves the live report at `/report`.
    metrics: std::net::SocketAddr,
}

impl LiveRun {
    async fn start(replayer_args: Vec<String>) -> anyhow::Result<LiveRun> {
        require_root()?;
        let production = BuildServer::start(Build::Production).await?;
        let mut args: Vec<String> = [
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec();
        args.extend(replayer_args);
        let replayer = Process::spawn("tapwire-replayer", &args)?;
        let metrics = addr_in(
            &replayer
                .wait_for_line("metrics endpoint listening", READY)
                .await?,
        )
        .ok_or_else(|| anyhow::anyhow!("no metrics address in the replayer's log"))?;
        let grpc = addr_in(
            &replayer
                .wait_for_line("grpc server listening", READY)
                .await?,
        )
        .ok_or_else(|| anyhow::anyhow!("no gRPC address in the replayer's log"))?;
        let listener = Process::spawn(
            "tapwire-listener",
            &[
                "--interface".into(),
                "lo".into(),
                "--port".into(),
                production.addr().port().to_string(),
                "--track-responses".into(),
                "--replayer".into(),
                format!("http://127.0.0.1:{}", grpc.port()),
                "--listener-id".into(),
                "compare".into(),
            ],
        )?;
        listener.wait_for_line("capture started", READY).await?;
        listener
            .wait_for_line("connected to replayer", READY)
            .await?;
        Ok(LiveRun {
            production,
            listener,
            replayer,
            metrics,
        })
    }

    /// Stops the listener (it drains to the replayer), then the replayer (it drains its
    /// targets and the comparison, and writes the last summary); both must exit cleanly.
    async fn stop(mut self) -> anyhow::Result<()> {
        for (process, last_line) in [
            (&mut self.listener, "listener stopped"),
            (&mut self.replayer, "replayer stopped"),
        ] {
            let status = process.terminate(Duration::from_secs(15)).await?;
            anyhow::ensure!(status.success(), "exited with {status}:\n{}", process.log());
            process
                .wait_for_line(last_line, Duration::from_secs(5))
                .await?;
        }
        Ok(())
    }
}

/// The diff log's lines, parsed.
fn diff_log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The run's report: the diff log's last `summary` line's `summary`.
fn last_summary(lines: &[Value]) -> &Value {
    &lines
        .iter()
        .rev()
        .find(|line| line["type"] == "summary")
        .expect("the diff log holds no summary line")["summary"]
}

fn by_key<'a>(list: &'a Value, key: &str) -> BTreeMap<String, &'a Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| (item[key].as_str().unwrap().to_owned(), item))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_candidates_changes_are_reported_and_the_random_fields_only_as_noise() {
    let baseline = BuildServer::start(Build::Baseline).await.unwrap();
    let baseline2 = BuildServer::start(Build::Baseline).await.unwrap();
    let candidate = BuildServer::start(Build::Candidate).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let diff_log = dir.path().join("diff.jsonl");
    let run = LiveRun::start(vec![
        "--baseline".into(),
        baseline.url(),
        "--baseline2".into(),
        baseline2.url(),
        "--candidate".into(),
        candidate.url(),
        "--diff-log".into(),
        diff_log.display().to_string(),
    ])
    .await
    .unwrap();
    // One connection, one request at a time: the targets' latency is their own, not a burst's
    // queue (with four connections the baselines' median reached 66 ms in a debug build).
    builds::send_mix(run.production.addr(), REQUESTS, 1)
        .await
        .unwrap();
    for target in [&baseline, &baseline2, &candidate] {
        assert_eq!(
            target.wait_for_served(REQUESTS, REPLAY_TIMEOUT).await,
            REQUESTS,
            "{}:\n{}",
            target.url(),
            run.replayer.log()
        );
    }
    // The live page counts every request once the last one is compared, and says what the
    // diff log will.
    let compared = format!("data-count=\"compared\" data-value=\"{REQUESTS}\"");
    let deadline = std::time::Instant::now() + REPLAY_TIMEOUT;
    let live_page = loop {
        let (status, page) = tapwire_testkit::scrape::get(run.metrics, "/report")
            .await
            .unwrap();
        assert_eq!(status, 200, "{page}");
        if page.contains(&compared) {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the live report never showed {REQUESTS} compared:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        live_page.contains("data-path=\"$.items[1].price\" data-signal=\"true\""),
        "{live_page}"
    );
    run.stop().await.unwrap();

    let lines = diff_log_lines(&diff_log);
    let summary = last_summary(&lines);
    assert_eq!(summary["compared"], REQUESTS, "{summary:#}");
    assert_eq!(
        summary["not_compared"],
        serde_json::json!({}),
        "{summary:#}"
    );
    assert_eq!(summary["reference"], "baseline");
    assert_eq!(
        summary["noise_pair"],
        serde_json::json!(["baseline", "baseline2"])
    );

    let targets = by_key(&summary["targets"], "role");
    assert_eq!(
        targets.keys().map(String::as_str).collect::<Vec<_>>(),
        ["baseline", "baseline2", "candidate", "production"],
        "{summary:#}"
    );
    for (role, target) in &targets {
        assert_eq!(target["responses"], REQUESTS, "{role}");
        assert_eq!(
            target["statuses"],
            serde_json::json!({"2xx": REQUESTS}),
            "{role}"
        );
    }
    // Latency is per target, not per endpoint: one request in six is the candidate's search,
    // at least 50 ms, so its p90 and above are too, whatever the machine's load. The baselines'
    // median is well under (21 to 25 ms in a debug build on two busy cores).
    let delay_ms = CANDIDATE_DELAY.as_secs_f64() * 1000.0;
    let latency = |role: &str, field: &str| targets[role]["latency"][field].as_f64().unwrap();
    for field in ["p90_ms", "p99_ms", "max_ms"] {
        assert!(
            latency("candidate", field) >= delay_ms,
            "{field}: {:#}",
            targets["candidate"]
        );
    }
    for role in ["baseline", "baseline2"] {
        assert!(latency(role, "p50_ms") < delay_ms, "{:#}", targets[role]);
    }

    let endpoints = by_key(&summary["endpoints"], "name");
    assert_eq!(
        endpoints
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        ENDPOINTS.into_iter().collect::<BTreeSet<_>>()
    );
    for endpoint in ENDPOINTS {
        let found = endpoints[endpoint];
        assert_eq!(found["compared"], PER_ENDPOINT, "{endpoint}: {found:#}");
        let changes: Vec<_> = CANDIDATE_CHANGES
            .iter()
            .filter(|change| change.endpoint == endpoint)
            .collect();
        let expected_rate = changes.iter().map(|c| c.rate).fold(0.0, f64::max);
        assert_eq!(
            found["difference_rate"].as_f64(),
            Some(expected_rate),
            "{endpoint}: {found:#}"
        );
        let paths = by_key(&found["paths"], "path");
        // Signal: exactly the documented changes, each with its kind and count.
        let signal: BTreeMap<&str, Value> = paths
            .iter()
            .filter(|(_, path)| path["signal"] == true)
            .map(|(name, path)| {
                let counts =
                    serde_json::json!({"candidate": path["candidate"], "kinds": path["kinds"]});
                (name.as_str(), counts)
            })
            .collect();
        let expected: BTreeMap<&str, Value> = changes
            .iter()
            .map(|change| {
                let count = (change.rate * PER_ENDPOINT as f64) as u64;
                let counts = serde_json::json!({"candidate": count, "kinds": {change.kind: count}});
                (change.path, counts)
            })
            .collect();
        assert_eq!(signal, expected, "{endpoint}: {found:#}");
        // Noise: the random fields, differing between the baselines on every request, and
        // never reported against the candidate.
        let noise: BTreeSet<&str> = paths
            .iter()
            .filter(|(_, path)| path["signal"] == false)
            .map(|(name, _)| name.as_str())
            .collect();
        let expected_noise: BTreeSet<&str> = match endpoint {
            "GET /health" => BTreeSet::new(),
            "GET /catalog/{n}" => NOISE_PATHS.into_iter().collect(),
            _ => ["$.request_id", "$.generated_at"].into_iter().collect(),
        };
        assert_eq!(noise, expected_noise, "{endpoint}: {found:#}");
        for path in &noise {
            let count = paths[*path]["noise"].as_u64().unwrap();
            if *path == "$.generated_at" {
                // Two answers may, rarely, stamp the same microsecond.
                assert!(count >= PER_ENDPOINT * 9 / 10, "{endpoint} {path}: {count}");
            } else {
                assert_eq!(count, PER_ENDPOINT, "{endpoint} {path}");
            }
        }
        // Examples only where the candidate really differs, both sides shown.
        let examples = found["examples"].as_array().unwrap();
        assert_eq!(
            examples.is_empty(),
            changes.is_empty(),
            "{endpoint}: {found:#}"
        );
        for example in examples {
            assert_eq!(example["reference"]["role"], "baseline");
            assert_eq!(example["candidate"]["role"], "candidate");
        }
    }
    // One difference line per request where the candidate differed from the reference at all
    // (noise included, since noise is known only in aggregate): at least every signal request.
    let signal_requests: u64 = 2 * PER_ENDPOINT + PER_ENDPOINT / 4;
    let difference_lines = lines
        .iter()
        .filter(|line| line["type"] == "difference")
        .count();
    assert!(
        difference_lines as u64 >= signal_requests,
        "{difference_lines}"
    );
}

/// The messages of each type in a `.gor` file, and the ids of each type.
fn gor_contents(path: &Path) -> BTreeMap<char, BTreeSet<String>> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = GorReader::new(std::io::BufReader::new(file), path.display().to_string());
    let mut ids: BTreeMap<char, BTreeSet<String>> = BTreeMap::new();
    while let Some(message) = reader.next_message() {
        let message = message.unwrap();
        let kind = message.header.payload_type;
        assert!(PayloadType::ALL.contains(&kind));
        ids.entry(kind.digit())
            .or_default()
            .insert(message.header.id);
    }
    ids
}

/// Runs `tapwire-replayer report INPUT -o OUTPUT`; the page written.
fn report(input: &Path, output: &Path) -> String {
    let result = std::process::Command::new(binary_path("tapwire-replayer").unwrap())
        .arg("report")
        .arg(input)
        .arg("-o")
        .arg(output)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "report {}: {}",
        input.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read_to_string(output).unwrap()
}

/// What a report page says about the comparison, in page order: the start tags carrying its
/// counts (`data-count`, the ranked `data-endpoint` rows with `data-rate`, each endpoint's
/// `data-path` rows with their signal verdict and counts, the noise section's rows). Latency
/// and the time it was generated are left out: they differ between two reports of one run.
fn report_facts(html: &str) -> Vec<String> {
    html.split('<')
        .filter_map(|tag| tag.split_once('>').map(|(tag, _)| tag))
        .filter(|tag| {
            [
                "data-count=",
                "data-endpoint=",
                "data-path=",
                "data-noise-path=",
            ]
            .iter()
            .any(|hook| tag.contains(hook))
        })
        .filter(|tag| !tag.contains("data-latency") && !tag.contains("data-role"))
        .map(str::to_owned)
        .collect()
}

/// Each endpoint's compared count, from the ranking rows' `data-count="compared"` cells.
fn endpoint_counts(facts: &[String]) -> BTreeMap<String, u64> {
    let attribute = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[start..].split('"').next()?.to_owned())
    };
    let mut counts = BTreeMap::new();
    let mut endpoint = None;
    for tag in facts {
        if tag.starts_with("tr data-endpoint=") {
            endpoint = attribute(tag, "data-endpoint");
        } else if tag.contains("data-count=\"compared\"")
            && let Some(endpoint) = endpoint.take()
        {
            let value = attribute(tag, "data-value").unwrap();
            counts.insert(endpoint, value.parse().unwrap());
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_of_the_run_gives_the_same_report_offline_as_the_diff_log() {
    let candidate = BuildServer::start(Build::Candidate).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let diff_log = dir.path().join("diff.jsonl");
    // The recorder names its files like the listener's --output-file (chunks): a directory of
    // their own.
    let recordings = dir.path().join("recording");
    std::fs::create_dir(&recordings).unwrap();
    let run = LiveRun::start(vec![
        "--candidate".into(),
        candidate.url(),
        "--diff-log".into(),
        diff_log.display().to_string(),
        "--record".into(),
        recordings.join("run.gor").display().to_string(),
    ])
    .await
    .unwrap();
    builds::send_mix(run.production.addr(), REQUESTS, 1)
        .await
        .unwrap();
    assert_eq!(
        candidate.wait_for_served(REQUESTS, REPLAY_TIMEOUT).await,
        REQUESTS
    );
    run.stop().await.unwrap();

    // The recording, one file, holds every request with production's and the candidate's
    // response.
    let files: Vec<_> = std::fs::read_dir(&recordings)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let recording = &files[0];
    let contents = gor_contents(recording);
    assert_eq!(contents.keys().collect::<String>(), "123");
    assert_eq!(contents[&'1'].len() as u64, REQUESTS);
    assert_eq!(contents[&'1'], contents[&'2']);
    assert_eq!(contents[&'1'], contents[&'3']);

    let live = last_summary(&diff_log_lines(&diff_log)).clone();
    assert_eq!(live["compared"], REQUESTS);
    assert_eq!(live["reference"], "production");

    let offline = report_facts(&report(recording, &dir.path().join("offline.html")));
    let logged = report_facts(&report(&diff_log, &dir.path().join("logged.html")));
    assert_eq!(offline, logged, "the two reports' counts differ");
    let counts = endpoint_counts(&logged);
    let expected: BTreeMap<String, u64> = ENDPOINTS
        .iter()
        .map(|endpoint| (endpoint.to_string(), PER_ENDPOINT))
        .collect();
    assert_eq!(counts, expected);
    assert!(
        logged
            .iter()
            .any(|tag| tag.contains("data-path=\"$.items[1].price\" data-signal=\"true\"")),
        "{logged:#?}"
    );
}
