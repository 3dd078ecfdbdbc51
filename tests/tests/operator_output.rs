//! What an operator sees of a run, on the real binaries: the accounting lines every
//! `--stats-interval` (none with `0`), `--log-format json` lines, and the exit codes of runs
//! that end by themselves (a replayed file, `--exit-after`): 3 when everything was dropped,
//! 0 otherwise, 2 for a configuration error printed plainly.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tapwire_shared::gor::{GorHeader, GorMessage, PayloadType};
use tapwire_testkit::pipeline::require_root;
use tapwire_testkit::process::Process;
use tapwire_testkit::servers::RecordingServer;
use tapwire_testkit::traffic;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Exit code of a run that delivered nothing (README, "Exit codes").
const NOTHING_DELIVERED: i32 = 3;

/// A `.gor` file of `count` GET requests captured `spacing_ms` apart.
fn write_requests(path: &Path, count: u64, spacing_ms: u64) {
    let mut out = Vec::new();
    let start_ns = 1_700_000_000_000_000_000u64;
    for index in 0..count {
        GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Request,
                id: format!("{index:024x}"),
                timestamp_ns: start_ns + index * spacing_ms * 1_000_000,
                latency_ns: None,
            },
            payload: Bytes::from(format!(
                "GET /item/{index} HTTP/1.1\r\nHost: production\r\n\r\n"
            )),
        }
        .encode(&mut out);
    }
    std::fs::write(path, out).unwrap();
}

/// A local address nothing listens on (bound, then let go).
async fn closed_url() -> String {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", socket.local_addr().unwrap())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Runs `binary` until it exits by itself: its exit code and its log.
async fn run_to_exit(binary: &str, args: &[String]) -> (i32, Process) {
    let mut process = Process::spawn(binary, args).unwrap();
    let status = process.wait_exit(RUN_TIMEOUT).await.unwrap();
    let code = status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {}", process.log()));
    (code, process)
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayer_logs_totals_and_each_targets_accounting_every_interval() {
    let staging = RecordingServer::start(false).await.unwrap();
    let dead = closed_url().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.gor");
    // 20 requests 50 ms apart, looped: about 20 per second, for 2 s.
    write_requests(&file, 20, 50);
    let (code, replayer) = run_to_exit(
        "tapwire-replayer",
        &strings(&[
            "--input-file",
            file.to_str().unwrap(),
            "--input-file-loop",
            "--exit-after",
            "2s",
            "--stats-interval",
            "300ms",
            "--target",
            &staging.url(),
            "--target",
            &dead,
        ]),
    )
    .await;
    let log = replayer.log();
    assert_eq!(code, 0, "a target answered: {log}");

    let totals = lines_with(&log, " accounting rate_per_s=");
    // About six in 2 s; at least two even on a machine busy enough to delay start-up.
    assert!(totals.len() >= 2, "a line every 300 ms: {log}");
    for field in [" answered=", " dropped=", " summary=received="] {
        assert!(
            totals.iter().all(|line| line.contains(field)),
            "{field}: {log}"
        );
    }
    let live: Vec<_> = lines_with(&log, "target accounting")
        .into_iter()
        .filter(|line| line.contains(&format!("target={} ", staging.url())))
        .collect();
    assert!(live.len() >= 2, "{log}");
    for field in [
        "rate_per_s=",
        "p50_ms=",
        "p99_ms=",
        "summary=received=",
        " status_2xx=",
        " dropped=0",
    ] {
        assert!(live.last().unwrap().contains(field), "{field}: {log}");
    }
    let dead_lines: Vec<_> = lines_with(&log, "target accounting")
        .into_iter()
        .filter(|line| line.contains(&format!("target={dead} ")))
        .collect();
    let last = dead_lines.last().unwrap_or_else(|| panic!("{log}"));
    // Nothing answered: no latency, and the drops by (only the non-zero) reason.
    assert!(!last.contains("p50_ms="), "{last}");
    assert!(last.contains(" responses=0 "), "{last}");
    assert!(last.contains(" dropped_connect_error="), "{last}");
    assert!(!last.contains(" dropped_timeout="), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_interval_zero_logs_no_accounting_line() {
    let staging = RecordingServer::start(false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.gor");
    write_requests(&file, 20, 50);
    // The file asks for a line every 100 ms; the flag (a deployment flag, so it may come with
    // --config, and wins) turns them off: ignoring 0 would leave the file's interval.
    let config = dir.path().join("replayer.toml");
    std::fs::write(
        &config,
        format!(
            "input_file = [{:?}]\ninput_file_loop = true\nexit_after = \"1s\"\n\
             stats_interval = \"100ms\"\n[[target]]\nurl = {:?}\n",
            file.to_str().unwrap(),
            staging.url()
        ),
    )
    .unwrap();
    let (code, replayer) = run_to_exit(
        "tapwire-replayer",
        &strings(&[
            "--config",
            config.to_str().unwrap(),
            "--stats-interval",
            "0",
        ]),
    )
    .await;
    let log = replayer.log();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("target totals"), "{log}");
    assert!(lines_with(&log, "accounting").is_empty(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_logs_its_accounting_every_interval_and_none_with_zero() {
    require_root().unwrap();
    for (interval, expect_lines) in [("200ms", true), ("0", false)] {
        let (code, listener) = run_to_exit(
            "tapwire-listener",
            &strings(&[
                "--interface",
                "lo",
                "--port",
                "9",
                "--output-null",
                "--exit-after",
                "1s",
                "--stats-interval",
                interval,
            ]),
        )
        .await;
        let log = listener.log();
        assert_eq!(code, 0, "nothing seen is not a failure: {log}");
        assert!(log.contains("listener stopped"), "{log}");
        let lines = lines_with(&log, " accounting rate_per_s=");
        if expect_lines {
            assert!(lines.len() >= 2, "a line every 200 ms for 1 s: {log}");
            assert!(lines[0].contains(" summary=captured=0"), "{log}");
        } else {
            assert!(lines_with(&log, "accounting").is_empty(), "{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_are_objects_with_level_and_message() {
    let staging = RecordingServer::start(false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.gor");
    write_requests(&file, 10, 0);
    let (code, replayer) = run_to_exit(
        "tapwire-replayer",
        &strings(&[
            "--log-format",
            "json",
            "--input-file",
            file.to_str().unwrap(),
            "--target",
            &staging.url(),
        ]),
    )
    .await;
    let log = replayer.log();
    assert_eq!(code, 0, "{log}");
    // A field named like the message would give the object two `message` keys, which log
    // stores refuse (serde_json keeps the last): an escaped quote cannot fake the key.
    for line in log.lines() {
        assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
    }
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    for event in &events {
        assert!(event["level"].is_string(), "{event}");
        assert!(event["message"].is_string(), "{event}");
        assert!(event["timestamp"].is_string(), "{event}");
    }
    let totals = events
        .iter()
        .find(|event| event["message"] == "target totals")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(totals["level"], "INFO");
    assert_eq!(totals["target"], staging.url().as_str());
    assert!(
        totals["summary"]
            .as_str()
            .unwrap()
            .contains(" responses=10 "),
        "{totals}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_error_is_printed_plainly_even_asking_for_json() {
    for binary in ["tapwire-replayer", "tapwire-listener"] {
        let (code, process) = run_to_exit(
            binary,
            &strings(&["--log-format", "json", "--stats-interval", "soon"]),
        )
        .await;
        let log = process.log();
        assert_eq!(code, 2, "{binary}: {log}");
        assert!(log.contains("error:"), "{binary}: {log}");
        assert!(log.contains("--stats-interval"), "{binary}: {log}");
        assert!(
            log.lines().all(|line| !line.starts_with('{')),
            "{binary}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replayed_to_a_closed_port_exits_3_and_to_a_live_server_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.gor");
    write_requests(&file, 10, 0);
    let dead = closed_url().await;
    let (code, replayer) = run_to_exit(
        "tapwire-replayer",
        &strings(&["--input-file", file.to_str().unwrap(), "--target", &dead]),
    )
    .await;
    let log = replayer.log();
    assert_eq!(code, NOTHING_DELIVERED, "{log}");
    let totals = lines_with(&log, "target totals target=");
    assert_eq!(totals.len(), 1, "{log}");
    assert!(
        totals[0].contains(
            "summary=received=10 sent=10 responses=0 dropped=10 dropped_connect_error=10"
        ),
        "the final accounting says why: {log}"
    );
    assert!(log.contains("no target answered any request"), "{log}");

    let staging = RecordingServer::start(false).await.unwrap();
    let (code, replayer) = run_to_exit(
        "tapwire-replayer",
        &strings(&[
            "--input-file",
            file.to_str().unwrap(),
            "--target",
            &staging.url(),
        ]),
    )
    .await;
    assert_eq!(code, 0, "{}", replayer.log());
    assert_eq!(staging.served(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_captured_requests_were_all_dropped_exits_3() {
    require_root().unwrap();
    let production = RecordingServer::start(false).await.unwrap();
    let port = production.addr().port().to_string();
    let no_replayer = closed_url().await;
    for (output, expected) in [
        (vec!["--replayer", no_replayer.as_str()], NOTHING_DELIVERED),
        (vec!["--output-null"], 0),
    ] {
        let mut args = strings(&[
            "--interface",
            "lo",
            "--port",
            &port,
            "--exit-after",
            "3s",
            "--drain-timeout",
            "200ms",
        ]);
        args.extend(strings(&output));
        let mut listener = Process::spawn("tapwire-listener", &args).unwrap();
        listener
            .wait_for_line("capture started", RUN_TIMEOUT)
            .await
            .unwrap();
        let load = traffic::send_mix(production.addr(), 20, 2).await;
        assert_eq!(load.ok, 20, "{load:?}");
        let status = listener.wait_exit(RUN_TIMEOUT).await.unwrap();
        let log = listener.log();
        assert_eq!(status.code(), Some(expected), "{output:?}: {log}");
        let stopped = lines_with(&log, "listener stopped");
        assert!(
            stopped[0].contains("summary=captured=20 "),
            "{output:?}: {log}"
        );
        if expected == NOTHING_DELIVERED {
            assert!(stopped[0].contains(" dropped_shutdown=20"), "{log}");
            assert!(log.contains("every request seen was dropped"), "{log}");
        }
    }
}
