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

/// Shows progress until aborted, against `total` requests (0: unknown); `errors` counts
/// requests dropped or rejected so far.
pub fn show(
    total: u64,
    done: Arc<AtomicU64>,
    errors: impl Fn() -> u64 + Send + 'static,
) -> JoinHandle<()> {
    if on_terminal() {
        tokio::spawn(bar(total, done, errors))
    } else {
        tokio::spawn(lines(done, errors))
    }
}

async fn bar(total: u64, done: Arc<AtomicU64>, errors: impl Fn() -> u64) {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests  {per_sec}  ETA {eta}  errors: {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        bar.set_position(done.load(Ordering::Relaxed));
        bar.set_message(errors().to_string());
        if bar.position() >= total {
            bar.finish();
            return;
        }
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
