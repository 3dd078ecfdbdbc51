//! Running `oha`, the reference load generator, for side-by-side benchmarks: the same number of
//! GETs, with the same connection count, straight to the target tapwire replays to.

use std::process::Command;

use anyhow::Context;

/// `oha`'s requests per second for `requests` GETs over `connections` to `target`.
pub fn requests_per_second(target: &str, requests: u64, connections: u32) -> anyhow::Result<f64> {
    let output = Command::new("oha")
        .args(["--no-tui", "-n", &requests.to_string()])
        .args(["-c", &connections.to_string()])
        .arg(format!("{}/bench/direct", target.trim_end_matches('/')))
        .output()
        .context("cannot run oha (bench/replay.sh and bench/files.sh install it)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in oha's output:\n{text}"))
}
