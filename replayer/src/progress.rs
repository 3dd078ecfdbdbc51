//! Progress of a file replay: on a terminal, a bar with requests done of the total, the rate,
//! the time left and the errors so far; otherwise (a log file, CI) a line every 10 seconds.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How often the plain progress line is logged.
const LINE_INTERVAL: Duration = Duration::from_secs(10);
/// How often the bar is refreshed.
const BAR_INTERVAL: Duration = Duration::from_millis(200);

/// Whether progress is shown as a bar (stderr is a terminal).
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Shows progress until aborted, against `total` requests (0 while unknown); `errors` counts
/// requests dropped or rejected so far.
pub fn show(
    total: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    errors: impl Fn() -> u64 + Send + 'static,
) -> JoinHandle<()> {
    if on_terminal() {
        tokio::spawn(bar(total, done, errors))
    } else {
        drop(total);
        tokio::spawn(lines(done, errors))
    }
}

async fn bar(total: Arc<AtomicU64>, done: Arc<AtomicU64>, errors: impl Fn() -> u64) {
    // A spinner until the total is known (or for ever, with --input-file-loop).
    let bar = indicatif::ProgressBar::new_spinner();
    let counting = indicatif::ProgressStyle::with_template(
        "{spinner} {pos} requests  {per_sec}  errors: {msg}",
    );
    let known = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} requests  {per_sec}  ETA {eta}  errors: {msg}",
    )
    .ok();
    if let Ok(style) = counting {
        bar.set_style(style);
    }
    let mut length_set = false;
    loop {
        let total = total.load(Ordering::Relaxed);
        if total > 0 && !length_set {
            length_set = true;
            bar.set_length(total);
            if let Some(style) = known.clone() {
                bar.set_style(style);
            }
        }
        bar.set_position(done.load(Ordering::Relaxed));
        bar.set_message(errors().to_string());
        if length_set && bar.position() >= total {
            bar.finish();
            return;
        }
        bar.tick();
        tokio::time::sleep(BAR_INTERVAL).await;
    }
}

async fn lines(done: Arc<AtomicU64>, errors: impl Fn() -> u64) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(LINE_INTERVAL).await;
        let finished = done.load(Ordering::Relaxed);
        let rate = finished as f64 / started.elapsed().as_secs_f64();
        tracing::info!(
            done = finished,
            rate = format!("{rate:.0}/s"),
            errors = errors(),
            "replaying files"
        );
    }
}
