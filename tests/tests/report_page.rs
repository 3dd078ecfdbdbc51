//! The comparison report as a browser shows it: `tapwire-replayer report` writes the page from
//! a diff log, headless Chromium (Debian's `chromium`) renders it at a laptop's 1366×768, and
//! the counts are read back from the DOM Chromium built, through the page's `data-*` hooks.
//! The screenshot is kept as `target/test-artifacts/report_page.png`.
//!
//! That nothing scrolls sideways is measured by Chromium itself: the report has no script, so
//! the test renders a copy with a small probe script appended that opens every endpoint, then
//! writes the document's scroll width and every element reaching past the viewport into
//! attributes that `--dump-dom` prints.
//!
//! Without Chromium the test fails and says how to install it (`make test` installs it).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tapwire_testkit::process::binary_path;

/// A cold Chromium start on a loaded 2-core machine takes a few seconds; a minute means hung.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(60);
const WINDOW: (u32, u32) = (1366, 768);

/// A run that compared 1,234 requests: three targets, three endpoints ranked by rate, signal
/// and noise paths, hostile bodies and long unbreakable strings.
fn summary() -> Value {
    let target = |role: &str, name: &str, responses: u64, p50: f64| {
        json!({
            "role": role, "name": name, "responses": responses,
            "statuses": {"2xx": responses - 10, "4xx": 6, "5xx": 4},
            "latency": {
                "p50_ms": p50, "p90_ms": p50 * 2.0, "p99_ms": p50 * 4.0, "max_ms": p50 * 9.0,
                "histogram": [[p50 / 2.0, 200], [p50, 417], [p50 * 2.0, 500], [p50 * 4.0, responses - 1117]]
            }
        })
    };
    let path = |path: &str, kind: &str, candidate: u64, noise: u64, signal: bool| {
        json!({"path": path, "kinds": {kind: candidate.max(noise)}, "candidate": candidate,
               "noise": noise, "signal": signal})
    };
    let side = |role: &str, latency_ms: f64, body: &str| {
        json!({"role": role, "status": 200, "latency_ms": latency_ms, "truncated": false,
               "headers": [["content-type", "application/json"], ["x-note", "<b>bold</b>"]],
               "body": body})
    };
    let unbreakable = "x".repeat(600);
    json!({
        "source": "live replay",
        "generated_at_ms": 1_764_561_600_000u64,
        "reference": "baseline",
        "noise_pair": ["baseline", "baseline2"],
        "relative_threshold": 0.2,
        "absolute_threshold": 0.0003,
        "compared": 1234,
        "not_compared": {"queue_full": 7, "missing_response": 3},
        "targets": [
            target("candidate", &format!("http://127.0.0.1:8081/{}", "segment/".repeat(40)), 1234, 62.0),
            target("baseline", "http://127.0.0.1:8082", 1230, 11.0),
            target("baseline2", "http://127.0.0.1:8083", 1229, 12.0),
        ],
        "endpoints": [
            {
                "name": format!("GET /users/{{n}}/{}", "profile".repeat(30)),
                "compared": 800,
                "difference_rate": 0.5,
                "paths": [
                    path("$.items[1].price", "changed_value", 400, 0, true),
                    path("$.items[1].currency", "added", 120, 0, true),
                    path("$.generated_at", "changed_value", 800, 800, false),
                    path("$.request_id", "changed_value", 790, 800, false),
                ],
                "examples": [{
                    "id": "8f3a<script>",
                    "request_line": format!("GET /users/42?{}", "q=1&".repeat(120)),
                    "differences": ["$.items[1].price changed_value", "$.items[1].currency added"],
                    "reference": side("baseline", 11.5, &format!(
                        "{{\n  \"price\": 10,\n  \"blob\": \"{unbreakable}\"\n}}")),
                    "candidate": side("candidate", 63.0,
                        "{\"price\": 12, \"currency\": \"EUR\"}<script>document.title='owned'</script>"),
                }]
            },
            {
                "name": "POST /orders/<img src=x onerror=this.id=1>",
                "compared": 300,
                "difference_rate": 0.1,
                "paths": [
                    path("headers.content-type", "changed_value", 30, 0, true),
                    path("$.token", "changed_value", 300, 300, false),
                ],
                "examples": []
            },
            {
                "name": "GET /health",
                "compared": 134,
                "difference_rate": 0.0,
                "paths": [],
                "examples": []
            }
        ],
        "endpoints_folded": false
    })
}

fn write_diff_log(path: &Path) {
    let lines = [
        json!({"type": "summary", "summary": {"source": "an earlier summary"}}),
        json!({"type": "difference", "id": "8f3a", "endpoint": "GET /users/{n}"}),
        json!({"type": "summary", "summary": summary()}),
        json!({"type": "difference", "id": "9b2c"}),
    ];
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn report(args: &[&Path]) -> std::process::Output {
    std::process::Command::new(binary_path("tapwire-replayer").unwrap())
        .arg("report")
        .args(args)
        .output()
        .unwrap()
}

/// Debian names it `chromium`, Ubuntu's older packages `chromium-browser`.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "headless Chromium is needed to check the report page and was not found as `chromium` \
         or `chromium-browser` on PATH. Install it with:\n  \
         sudo apt-get update && sudo apt-get install -y chromium\n(`make test` installs it: \
         scripts/ensure-deps.sh)"
    );
}

/// Runs headless Chromium on `page` with `mode` (`--dump-dom`, `--screenshot=PATH`) in its
/// own process group and profile, killing the group when done or after [`CHROMIUM_LIMIT`].
async fn run_chromium(profile: &Path, page: &Path, mode: &str) -> Output {
    let child = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
        ])
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let group = Pid::from_raw(child.id().expect("chromium's pid") as i32);
    let finished = tokio::time::timeout(CHROMIUM_LIMIT, child.wait_with_output()).await;
    // Its helpers (zygote, renderer, crash handler) are in the group: none outlives the test.
    let _ = killpg(group, Signal::SIGKILL);
    let output = finished
        .unwrap_or_else(|_| panic!("chromium {mode} did not finish within {CHROMIUM_LIMIT:?}"))
        .expect("wait for chromium");
    assert!(
        output.status.success(),
        "chromium {mode} failed: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Every value of `attribute` in `dom`, in document order.
fn attribute_values<'a>(dom: &'a str, attribute: &str) -> Vec<&'a str> {
    let marker = format!(" {attribute}=\"");
    dom.match_indices(&marker)
        .map(|(at, _)| {
            let rest = &dom[at + marker.len()..];
            &rest[..rest.find('"').expect("a closing quote")]
        })
        .collect()
}

/// The probe that measures the page: every endpoint opened, then the document's widths and
/// the elements that reach past the viewport written into `<body>`'s attributes.
const WIDTH_PROBE: &str = "<script>
document.querySelectorAll('details').forEach(function (d) { d.open = true; });
var viewport = document.documentElement.clientWidth, past = [];
document.querySelectorAll('body *').forEach(function (e) {
  var right = e.getBoundingClientRect().right;
  if (right > viewport + 0.5) {
    past.push(e.tagName.toLowerCase() + (e.className ? '.' + e.className : '') + '@' + Math.round(right));
  }
});
document.body.setAttribute('data-window-width', String(window.innerWidth));
document.body.setAttribute('data-viewport-width', String(viewport));
document.body.setAttribute('data-scroll-width', String(document.documentElement.scrollWidth));
document.body.setAttribute('data-past-viewport', past.slice(0, 12).join(' '));
</script>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_page_shows_the_counts_and_fits_a_laptop_screen() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("diff.jsonl");
    let page = dir.path().join("page.html");
    write_diff_log(&log);

    let written = report(&[&log, Path::new("-o"), &page]);
    assert!(
        written.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&written.stderr)
    );

    // The DOM as Chromium built it from the page.
    let dom = run_chromium(&dir.path().join("profile-dom"), &page, "--dump-dom").await;
    let dom = String::from_utf8(dom.stdout).unwrap();
    assert!(dom.contains("tapwire comparison report"), "{dom}");
    assert!(dom.contains("data-count=\"compared\" data-value=\"1234\">1,234<"));
    assert!(dom.contains("data-count=\"not_compared\" data-value=\"10\">10<"));
    assert_eq!(
        attribute_values(&dom, "data-role")
            .into_iter()
            .zip(attribute_values(&dom, "data-responses"))
            .collect::<Vec<_>>(),
        [
            ("candidate", "1234"),
            ("baseline", "1230"),
            ("baseline2", "1229")
        ],
        "one row per target, with its responses"
    );
    assert_eq!(
        attribute_values(&dom, "data-rank"),
        ["1", "2", "3"],
        "the ranking table"
    );
    let ranked: Vec<&str> = dom
        .match_indices("<tr data-endpoint=\"")
        .map(|(at, _)| {
            let rest = &dom[at + "<tr data-endpoint=\"".len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(
        ranked,
        [
            format!("GET /users/{{n}}/{}", "profile".repeat(30)).as_str(),
            "POST /orders/&lt;img src=x onerror=this.id=1&gt;",
            "GET /health",
        ],
        "endpoints most differing first"
    );
    assert_eq!(
        attribute_values(&dom, "data-path")
            .into_iter()
            .zip(attribute_values(&dom, "data-signal"))
            .zip(attribute_values(&dom, "data-candidate-count"))
            .map(|((path, signal), count)| (path, signal, count))
            .collect::<Vec<_>>(),
        [
            ("$.items[1].price", "true", "400"),
            ("$.items[1].currency", "true", "120"),
            ("$.generated_at", "false", "800"),
            ("$.request_id", "false", "790"),
            ("headers.content-type", "true", "30"),
            ("$.token", "false", "300"),
        ],
        "paths with their signal-or-noise verdict and candidate counts"
    );
    assert_eq!(
        attribute_values(&dom, "data-noise-path"),
        ["$.generated_at", "$.request_id", "$.token"],
        "the noise section lists exactly the paths judged noise"
    );
    // Hostile text from the targets is text: the page has no script, no injected element.
    assert!(!dom.contains("<script"), "a script element in the DOM");
    assert!(!dom.contains("<img"), "an injected element in the DOM");
    assert!(dom.contains("&lt;script&gt;document.title='owned'&lt;/script&gt;"));
    assert!(dom.contains("x-note: &lt;b&gt;bold&lt;/b&gt;"));
    assert!(!dom.contains("<title>owned"));

    // Measured by Chromium's layout at 1366 wide: no sideways scrolling, nothing past the edge.
    let probe = dir.path().join("probe.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("</body>"),
        "the page ends its body where the probe goes"
    );
    std::fs::write(
        &probe,
        html.replacen("</body>", &format!("{WIDTH_PROBE}</body>"), 1),
    )
    .unwrap();
    let measured = run_chromium(&dir.path().join("profile-probe"), &probe, "--dump-dom").await;
    let measured = String::from_utf8(measured.stdout).unwrap();
    let read = |attribute: &str| -> String {
        attribute_values(&measured, attribute)
            .first()
            .unwrap_or_else(|| panic!("the probe did not run: no {attribute} in\n{measured}"))
            .to_string()
    };
    assert_eq!(
        read("data-window-width"),
        WINDOW.0.to_string(),
        "the window is a laptop's"
    );
    let viewport: u32 = read("data-viewport-width").parse().unwrap();
    let scroll: u32 = read("data-scroll-width").parse().unwrap();
    assert!(
        scroll <= viewport,
        "the page is {scroll}px wide in a {viewport}px viewport: it scrolls sideways; past the \
         edge: {}",
        read("data-past-viewport")
    );
    assert_eq!(
        read("data-past-viewport"),
        "",
        "elements reach past the viewport"
    );

    // The screenshot, kept for people to look at.
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("report_page.png");
    let _ = std::fs::remove_file(&screenshot);
    run_chromium(
        &dir.path().join("profile-screenshot"),
        &page,
        &format!("--screenshot={}", screenshot.display()),
    )
    .await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "{} is not a PNG",
        screenshot.display()
    );
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), WINDOW, "the screenshot is the window");
}

#[test]
fn report_exit_codes_say_whose_fault_it_is() {
    let dir = tempfile::tempdir().unwrap();

    let help = report(&[Path::new("--help")]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("-o, --output <PATH>"));

    let usage = report(&[]);
    assert_eq!(usage.status.code(), Some(2), "no file is a usage error");

    let missing = dir.path().join("missing.jsonl");
    let failed = report(&[&missing]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr)
            .contains(&format!("{}: cannot open", missing.display())),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    let no_summary = dir.path().join("no-summary.jsonl");
    std::fs::write(&no_summary, "{\"type\":\"difference\",\"id\":\"a\"}\n").unwrap();
    let failed = report(&[&no_summary]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains(&format!(
            "{}: a diff log without a summary line",
            no_summary.display()
        )),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    let broken = dir.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"type\":\"difference\"}\n{\"type\":\n{\"type\":\"x\"}\n",
    )
    .unwrap();
    let failed = report(&[&broken]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr)
            .contains(&format!("{}:2: not a diff log line", broken.display())),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    let log = dir.path().join("diff.jsonl");
    write_diff_log(&log);
    let mixed = report(&[&log, &broken]);
    assert_eq!(mixed.status.code(), Some(2), "a diff log goes alone");

    let printed = report(&[&log, Path::new("-o"), Path::new("-")]);
    assert_eq!(printed.status.code(), Some(0));
    let page = String::from_utf8(printed.stdout).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
    assert!(page.contains("data-count=\"compared\" data-value=\"1234\""));
}
