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

/// Shows progress until aborted; `errors` counts requests dropped or rejected so far.
pub fn show(
    total: u64,
    done: Arc<AtomicU64>,
    errors: impl Fn() -> u64 + Send + 'static,
) -> JoinHandle<()> {
    if std::io::stderr().is_terminal() {
        tokio::spawn(bar(total, done, errors))
    } else {
        tokio::spawn(lines(total, done, errors))
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

async fn lines(total: u64, done: Arc<AtomicU64>, errors: impl Fn() -> u64) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(LINE_INTERVAL).await;
        let finished = done.load(Ordering::Relaxed);
        let rate = finished as f64 / started.elapsed().as_secs_f64();
        let left = total.saturating_sub(finished);
        let eta = (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate));
        tracing::info!(done = finished, total, rate = format!("{rate:.0}/s"),
            eta = ?eta, errors = errors(), "replaying files");
    }
}
