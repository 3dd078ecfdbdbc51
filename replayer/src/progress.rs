//! Progress of a file replay on a terminal: a bar with requests done of the total, the rate,
//! the time left and the errors so far. Elsewhere (a log file, CI) the accounting lines of
//! [`crate::stats`] say the same.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How often the bar is refreshed.
const BAR_INTERVAL: Duration = Duration::from_millis(200);

/// Whether progress is shown as a bar (stderr is a terminal).
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Shows the bar until aborted, against `total` requests (0 while unknown); `errors` counts
/// requests dropped or rejected so far.
pub fn show(
    total: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    errors: impl Fn() -> u64 + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(bar(total, done, errors))
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
