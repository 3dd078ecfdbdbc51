//! Who may stream to a replayer: a listener with the wrong token, a certificate from another
//! CA, or no TLS at all is refused and counted; the right one is served; the token never
//! appears in either side's logs.

use std::time::Duration;

use tapwire_testkit::certs::{CertFiles, TestCa};
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions};
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::traffic;

const TIMEOUT: Duration = Duration::from_secs(30);

fn token_file(dir: &tempfile::TempDir, name: &str, token: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path.display().to_string()
}

fn options(replayer_token: &str, listener_token: &str, wait_for_link: bool) -> PipelineOptions {
    PipelineOptions {
        targets: 1,
        replayer_args: vec!["--token-file".into(), replayer_token.into()],
        listener_args: vec!["--token-file".into(), listener_token.into()],
        wait_for_link,
        ..PipelineOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_the_wrong_token_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let right = token_file(&dir, "right", "s3cret-right-token");
    let wrong = token_file(&dir, "wrong", "s3cret-wrong-token");
    let pipeline = Pipeline::start(options(&right, &wrong, false))
        .await
        .unwrap();
    pipeline
        .listener
        .wait_for_line("missing or wrong token", TIMEOUT)
        .await
        .unwrap();
    pipeline
        .replayer
        .wait_for_line("refused a listener stream", TIMEOUT)
        .await
        .unwrap();
    let replayer = scrape(pipeline.replayer_metrics).await.unwrap();
    assert!(replayer.sum("tapwire_replayer_streams_unauthenticated_total", &[]) >= 1);
    assert_eq!(
        replayer.sum("tapwire_replayer_records_received_total", &[]),
        0
    );
    for log in [pipeline.listener.log(), pipeline.replayer.log()] {
        assert!(!log.contains("s3cret"), "a token reached the logs:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_the_right_token_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&dir, "token", "s3cret-shared-token");
    let pipeline = Pipeline::start(options(&token, &token, true))
        .await
        .unwrap();
    assert_eq!(
        traffic::send_mix(pipeline.production.addr(), 30, 2)
            .await
            .ok,
        30
    );
    assert!(pipeline.wait_for_targets(30, TIMEOUT).await);
    let logs = [pipeline.listener.log(), pipeline.replayer.log()];
    let report = pipeline.finish(30).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
    for log in logs {
        assert!(
            !log.contains("s3cret"),
            "the token reached the logs:\n{log}"
        );
    }
}

/// The replayer's TLS flags with mutual TLS against `ca`.
fn replayer_tls(ca: &TestCa, server: &CertFiles) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        server.cert.display().to_string(),
        "--tls-key".into(),
        server.key.display().to_string(),
        "--tls-ca".into(),
        ca.cert.display().to_string(),
    ]
}

fn listener_tls(trusted: &TestCa, client: &CertFiles) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        trusted.cert.display().to_string(),
        "--tls-cert".into(),
        client.cert.display().to_string(),
        "--tls-key".into(),
        client.key.display().to_string(),
    ]
}

/// Waits for the replayer to count a refused TLS handshake and checks nothing got through.
async fn assert_refused_by_tls(pipeline: &Pipeline) {
    pipeline
        .replayer
        .wait_for_line("TLS handshake failed", TIMEOUT)
        .await
        .unwrap();
    let replayer = scrape(pipeline.replayer_metrics).await.unwrap();
    assert!(replayer.sum("tapwire_replayer_tls_handshakes_failed_total", &[]) >= 1);
    assert_eq!(
        replayer.sum("tapwire_replayer_records_received_total", &[]),
        0
    );
    pipeline
        .listener
        .wait_for_line("replayer link down", TIMEOUT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_carries_the_link_with_compressed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet").unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: replayer_tls(&ca, &ca.server().unwrap()),
        listener_args: [
            listener_tls(&ca, &ca.client().unwrap()),
            vec!["--compression".into(), "gzip".into()],
        ]
        .concat(),
        replayer_url_base: "https://localhost".into(),
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(
        traffic::send_mix(pipeline.production.addr(), 40, 2)
            .await
            .ok,
        40
    );
    assert!(pipeline.wait_for_targets(40, TIMEOUT).await);
    let replayer = scrape(pipeline.replayer_metrics).await.unwrap();
    assert_eq!(
        replayer.sum("tapwire_replayer_tls_handshakes_failed_total", &[]),
        0
    );
    let report = pipeline.finish(40).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet").unwrap();
    let rogue = TestCa::new(dir.path(), "rogue").unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: replayer_tls(&ca, &ca.server().unwrap()),
        // It trusts the real replayer, but its own certificate is signed by the rogue CA.
        listener_args: listener_tls(&ca, &rogue.client().unwrap()),
        replayer_url_base: "https://localhost".into(),
        wait_for_link: false,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    assert_refused_by_tls(&pipeline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_listener_is_refused_by_a_tls_replayer() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet").unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 1,
        replayer_args: replayer_tls(&ca, &ca.server().unwrap()),
        wait_for_link: false,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    assert_refused_by_tls(&pipeline).await;
}
