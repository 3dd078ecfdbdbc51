//! The multi-host lab (`deploy/lab/lab.py`) as a test: two production hosts with listeners, two
//! replayers behind one name, two staging hosts and a client, each in its own network
//! namespace, the real debug binaries. While traffic flows one replayer's link is cut and
//! restored, then the other is killed (`SIGKILL`) and restarted. The script prints its
//! accounting as a final `LAB_RESULT {json}` line, checked here field by field.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use tapwire_testkit::pipeline::require_root;
use tapwire_testkit::process::binary_path;

fn count(value: &Value, path: &[&str]) -> u64 {
    let field = path.iter().fold(value, |value, key| &value[key]);
    field
        .as_u64()
        .unwrap_or_else(|| panic!("{} is not a count in {value}", path.join(".")))
}

#[test]
fn every_request_reaches_both_staging_hosts_through_a_link_cut_and_a_replayer_kill() {
    require_root().unwrap();
    let bin_dir = binary_path("tapwire-lab-server")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lab/lab.py");
    let started = Instant::now();
    let output = Command::new("python3")
        .arg(&script)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--rate", "100", "--max-requests", "5000"])
        .output()
        .expect("python3 runs the lab script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("lab took {:?}", started.elapsed());
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("LAB_RESULT "))
        .expect("the lab prints its result");
    let result: Value = serde_json::from_str(line).unwrap();
    assert_eq!(result["passed"], true, "{result}");
    assert!(output.status.success());

    let steps = result["steps"].as_array().unwrap();
    let names: Vec<&str> = steps
        .iter()
        .map(|step| step["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "steady traffic",
            "cut replay-a's link",
            "kill -9 and restart replay-b"
        ]
    );
    let served = count(&result, &["served"]);
    assert!(served >= 1000, "only {served} requests were served");
    for listener in ["prod-a", "prod-b"] {
        // Everything production served was captured and acknowledged; nothing dropped.
        let production = count(&result, &["production", listener, "served"]);
        assert_eq!(
            count(&result, &["listeners", listener, "captured"]),
            production
        );
        assert_eq!(count(&result, &["listeners", listener, "sent"]), production);
        assert_eq!(count(&result, &["listeners", listener, "dropped"]), 0);
    }
    for replayer in ["replay-a", "replay-b"] {
        assert!(count(&result, &["replayers", replayer, "received"]) > 0);
    }
    // Nothing lost anywhere. A second copy is tapwire's at-least-once allowance: only a
    // request a listener resent (its batch unacknowledged when the link was cut or the
    // replayer died) may reach a target twice; steady traffic resends nothing and must be
    // exactly once.
    let resent = count(&result, &["resent"]);
    assert_eq!(count(&steps[0], &["resent"]), 0, "{}", steps[0]);
    for staging in ["stage-a", "stage-b"] {
        assert_eq!(count(&result, &["staging", staging, "missing"]), 0);
        assert_eq!(count(&result, &["staging", staging, "unexpected"]), 0);
        assert_eq!(
            count(&result, &["staging", staging, "distinct_ids"]),
            served
        );
        assert_eq!(count(&steps[0], &["extra_copies", staging]), 0);
        let extra = count(&result, &["staging", staging, "extra_copies"]);
        assert!(
            extra <= resent,
            "{staging}: {extra} second copies, {resent} resent"
        );
    }
}
