//! `/metrics` of both binaries, after real traffic through a listener (tracking responses) and a
//! replayer with two targets: families come in the same order on every scrape, each family's
//! series in the order of their labels (the encoder's own order is a hash map's, different on
//! every run), and every family is documented in README.md's metrics table.

use std::net::SocketAddr;
use std::time::Duration;

use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, require_root};
use tapwire_testkit::scrape::get;
use tapwire_testkit::traffic;

const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// One family of a scrape: its name (as its `# TYPE` line and the README write it, counters
/// with `_total`) and its series' labels (`le` left out) in order.
#[derive(Debug)]
struct Family {
    name: String,
    series: Vec<String>,
}

fn families(text: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, _kind) = declared.split_once(' ').unwrap();
            families.push(Family {
                name: name.to_owned(),
                series: Vec::new(),
            });
        } else if !line.starts_with('#') && !line.is_empty() {
            let labels = match (line.find('{'), line.rfind('}')) {
                (Some(open), Some(close)) => line[open + 1..close]
                    .split(',')
                    .map(|pair| pair.trim_end_matches('"'))
                    .filter(|pair| !pair.starts_with("le="))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => String::new(),
            };
            let family = families.last_mut().unwrap();
            if family.series.last() != Some(&labels) {
                family.series.push(labels);
            }
        }
    }
    families
}

async fn scrape_text(addr: SocketAddr) -> String {
    let (status, text) = get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_listed_in_a_stable_order_and_all_documented() {
    require_root().unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 2,
        record: false,
        listener_args: vec!["--track-responses".into()],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let total = 50;
    let load = traffic::send_mix(pipeline.production.addr(), total, 4).await;
    assert_eq!(load.ok, total, "{load:?}");
    assert!(pipeline.wait_for_targets(total, REPLAY_TIMEOUT).await);

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut undocumented = Vec::new();
    for (side, addr) in [
        ("listener", pipeline.listener_metrics),
        ("replayer", pipeline.replayer_metrics),
    ] {
        let first = families(&scrape_text(addr).await);
        let second = families(&scrape_text(addr).await);
        let names = |families: &[Family]| -> Vec<String> {
            families.iter().map(|family| family.name.clone()).collect()
        };
        assert_eq!(names(&first), names(&second), "{side}: family order");
        assert!(first.len() > 10, "{side}: {first:?}");
        for family in &first {
            let mut sorted = family.series.clone();
            sorted.sort();
            assert_eq!(family.series, sorted, "{side}: series of {}", family.name);
            let name = &family.name;
            if !readme.contains(&format!("`{name}`")) && !readme.contains(&format!("`{name}{{")) {
                undocumented.push(name.clone());
            }
        }
        // The traffic made the per-target families hold a series for each target.
        let responses = first
            .iter()
            .find(|family| family.name == "tapwire_replayer_responses_total")
            .map(|family| family.series.len());
        if side == "replayer" {
            assert!(responses >= Some(2), "{first:?}");
        }
    }
    assert!(
        undocumented.is_empty(),
        "families missing from README.md's metrics table: {undocumented:?}"
    );
}
