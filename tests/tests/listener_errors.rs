//! The listener's failures say what, where and how to fix, once: an interface that does not
//! exist (named, with those that do), missing capture permission (the only case with the
//! CAP_NET_RAW hint), a port nothing listens on (a warning, not an error), an unknown `--user`
//! (refused before capture opens), and a replayer link that cannot come up (refused, DNS, TLS,
//! token), named with the replayer's address and logged once per outage, not per attempt.

use std::net::{IpAddr, TcpListener};
use std::process::Output;
use std::time::Duration;

use tapwire_testkit::certs::TestCa;
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, require_root};
use tapwire_testkit::process::{Process, binary_path};
use tapwire_testkit::servers::RecordingServer;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the listener to its exit (it must exit by itself, quickly), optionally as `nobody`.
async fn run_to_exit(args: &[&str], as_nobody: bool) -> Output {
    let listener = binary_path("tapwire-listener").unwrap();
    let mut command = if as_nobody {
        let mut command = tokio::process::Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(listener);
        command
    } else {
        tokio::process::Command::new(listener)
    };
    command
        .args(args)
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("the listener exits by itself")
        .unwrap()
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A loopback port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_that_does_not_exist_is_named_with_the_available_ones() {
    require_root().unwrap();
    let output = run_to_exit(
        &[
            "--interface",
            "tapwire-nosuch0",
            "--port",
            "8080",
            "--output-null",
        ],
        false,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = stderr_lines(&output);
    let errors: Vec<&String> = lines.iter().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{lines:#?}");
    let error = errors[0];
    assert!(
        error.contains(r#"no network interface "tapwire-nosuch0""#),
        "{error}"
    );
    assert!(
        error.contains("available: ") && error.contains("lo"),
        "{error}"
    );
    // libpcap's own words once, and no permission hint: permissions are not the cause.
    assert_eq!(error.matches("No such device").count(), 1, "{error}");
    assert!(!error.contains("CAP_NET_RAW"), "{error}");
    assert!(!lines.iter().any(|line| line.contains("capture started")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capture_permission_the_error_says_what_is_needed() {
    require_root().unwrap();
    let output = run_to_exit(
        &["--interface", "lo", "--port", "8080", "--output-null"],
        true,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = stderr_lines(&output);
    let errors: Vec<&String> = lines.iter().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert!(
        errors[0].contains(r#"no permission to capture on interface "lo""#),
        "{lines:#?}"
    );
    assert_eq!(errors[0].matches("CAP_NET_RAW").count(), 1, "{lines:#?}");
    assert_eq!(errors[0].matches("not permitted").count(), 1, "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_is_refused_before_capture_opens() {
    require_root().unwrap();
    let output = run_to_exit(
        &[
            "--interface",
            "lo",
            "--port",
            "8080",
            "--output-null",
            "--metrics-listen",
            "127.0.0.1:0",
            "--user",
            "tapwire-no-such-user",
        ],
        false,
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(r#"user: no user "tapwire-no-such-user""#),
        "{lines:#?}"
    );
}

/// Starts a listener capturing `port` on lo into nowhere; returns it once capture started.
async fn capture_port(port: u16) -> Process {
    let args = [
        "--interface",
        "lo",
        "--port",
        &port.to_string(),
        "--output-null",
    ];
    let listener = Process::spawn("tapwire-listener", &args.map(String::from)).unwrap();
    listener
        .wait_for_line("capture started", TIMEOUT)
        .await
        .unwrap();
    listener
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_nothing_listens_on_is_warned_about_and_still_captured() {
    require_root().unwrap();
    let port = closed_port();
    let mut listener = capture_port(port).await;
    let warning = listener
        .wait_for_line("nothing listens on this port", TIMEOUT)
        .await
        .unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(&format!("port={port}")), "{warning}");
    assert!(warning.contains("Kubernetes"), "{warning}");
    // A warning, not an error: the listener runs on.
    assert!(
        listener.exit_status().unwrap().is_none(),
        "{}",
        listener.log()
    );
    listener.terminate(TIMEOUT).await.unwrap();

    // The warning is logged before "capture started", so its absence is already settled here.
    let production = RecordingServer::start_on(IpAddr::from([127, 0, 0, 1]), false)
        .await
        .unwrap();
    let mut listener = capture_port(production.addr().port()).await;
    assert!(
        !listener.log().contains("nothing listens"),
        "{}",
        listener.log()
    );
    listener.terminate(TIMEOUT).await.unwrap();
}

/// A listener streaming to `replayer`, with `extra` flags; returns once it logged that the
/// link is down.
async fn link_down_line(replayer: &str, extra: &[&str]) -> (Process, String) {
    let mut args = vec![
        "--interface",
        "lo",
        "--port",
        "8080",
        "--replayer",
        replayer,
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let listener = Process::spawn("tapwire-listener", &args).unwrap();
    let line = listener
        .wait_for_line("replayer link down", TIMEOUT)
        .await
        .unwrap();
    (listener, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_link_names_the_replayer_and_is_logged_once_per_outage() {
    require_root().unwrap();
    let port = closed_port();
    let replayer = format!("http://127.0.0.1:{port}");
    let (mut listener, line) = link_down_line(&replayer, &[]).await;
    assert!(
        line.contains(&format!(
            "cannot connect to {replayer}/: connection refused"
        )),
        "{line}"
    );
    assert!(!line.contains("transport error"), "{line}");
    // Retries back off from 100 ms: in 3 s the link fails at least four more times, for the
    // same reason, and none of them may add a line (the next is due after 10 s). An absence
    // over a period has no readiness signal; this wait is the period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    listener.terminate(TIMEOUT).await.unwrap();
    let log = listener.log();
    assert_eq!(log.matches("replayer link down").count(), 1, "{log}");
    assert!(!log.contains("still down"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_a_dns_failure() {
    require_root().unwrap();
    let (_listener, line) = link_down_line("http://tapwire-replayer.invalid:7070", &[]).await;
    assert!(
        line.contains("cannot connect to http://tapwire-replayer.invalid:7070/: DNS lookup failed"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_certificate_from_another_ca_is_named_as_a_tls_failure() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet").unwrap();
    let rogue = TestCa::new(dir.path(), "rogue").unwrap();
    let server = ca.server().unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: vec![
            "--tls-cert".into(),
            server.cert.display().to_string(),
            "--tls-key".into(),
            server.key.display().to_string(),
        ],
        // The listener trusts only the rogue CA, which did not sign the replayer's certificate.
        listener_args: vec!["--tls-ca".into(), rogue.cert.display().to_string()],
        replayer_url_base: "https://localhost".into(),
        wait_for_link: false,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let line = pipeline
        .listener
        .wait_for_line("replayer link down", TIMEOUT)
        .await
        .unwrap();
    let replayer = format!("https://localhost:{}/", pipeline.replayer_grpc.port());
    assert!(
        line.contains(&format!(
            "cannot connect to {replayer}: TLS handshake failed: the replayer's certificate is \
             not signed by the CA in --tls-ca (unknown issuer)"
        )),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_named_with_the_replayer() {
    let dir = tempfile::tempdir().unwrap();
    let token = |name: &str, token: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path.display().to_string()
    };
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: vec!["--token-file".into(), token("right", "s3cret-right")],
        listener_args: vec!["--token-file".into(), token("wrong", "s3cret-wrong")],
        wait_for_link: false,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let line = pipeline
        .listener
        .wait_for_line("replayer link down", TIMEOUT)
        .await
        .unwrap();
    let replayer = format!(
        "replayer=http://127.0.0.1:{}/",
        pipeline.replayer_grpc.port()
    );
    assert!(line.contains(&replayer), "{line}");
    assert!(
        line.contains("the replayer refused this listener's token (Unauthenticated"),
        "{line}"
    );
    assert!(line.contains("check --token-file"), "{line}");
    assert!(!pipeline.listener.log().contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_that_never_answers_the_handshake_is_a_timeout() {
    require_root().unwrap();
    // A socket whose accept queue is full and never drained: the kernel drops further SYNs,
    // so a connection attempt waits out the link's 3 s connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let silent = socket.listen(0).unwrap();
    let addr = silent.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => queued.push(stream),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => break,
            Err(error) => panic!("filling the accept queue: {error}"),
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    let replayer = format!("http://{addr}");
    let (_listener, line) = link_down_line(&replayer, &[]).await;
    assert!(
        line.contains(&format!("cannot connect to {replayer}/: timed out")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_certificate_for_another_name_is_named_as_a_tls_failure() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet").unwrap();
    let server = ca.server().unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: vec![
            "--tls-cert".into(),
            server.cert.display().to_string(),
            "--tls-key".into(),
            server.key.display().to_string(),
        ],
        // The certificate names localhost and 127.0.0.1; the listener dials 127.0.0.2.
        replayer_grpc_listen: "0.0.0.0:0".into(),
        listener_args: vec!["--tls-ca".into(), ca.cert.display().to_string()],
        replayer_url_base: "https://127.0.0.2".into(),
        wait_for_link: false,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let line = pipeline
        .listener
        .wait_for_line("replayer link down", TIMEOUT)
        .await
        .unwrap();
    let replayer = format!("https://127.0.0.2:{}/", pipeline.replayer_grpc.port());
    assert!(
        line.contains(&format!(
            "cannot connect to {replayer}: TLS handshake failed: the replayer's certificate is \
             not valid for the name in the URL"
        )),
        "{line}"
    );
}
