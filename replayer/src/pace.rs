//! Pacing within one source stream, before the fan-out: with `--timing original` each record
//! waits for its captured offset from the stream's first (divided by `--speed`), and with a
//! global rate in queue mode it waits for the rate. A stream waits alone: pacing one listener
//! (holding back its acknowledgements) never delays another.

use std::sync::Arc;

use governor::DefaultDirectRateLimiter;
use tokio::time::{Duration, Instant};

use crate::config::Timing;

/// How one stream's records are paced.
pub struct Pacer {
    original: Option<OriginalTiming>,
    global_rate: Option<Arc<DefaultDirectRateLimiter>>,
}

impl Pacer {
    pub fn new(
        timing: Timing,
        speed: f64,
        global_rate: Option<Arc<DefaultDirectRateLimiter>>,
    ) -> Self {
        Pacer {
            original: (timing == Timing::Original).then_some(OriginalTiming { speed, start: None }),
            global_rate,
        }
    }

    /// Whether records ever wait.
    pub fn paces(&self) -> bool {
        self.original.is_some() || self.global_rate.is_some()
    }

    /// Waits until the record captured at `captured_at_ns` may go on.
    pub async fn until_due(&mut self, captured_at_ns: u64) {
        if let Some(original) = &mut self.original {
            original.wait_for(captured_at_ns).await;
        }
        if let Some(rate) = &self.global_rate {
            rate.until_ready().await;
        }
    }
}

/// Keeps a stream's captured inter-arrival times: the first record goes at once, each later
/// one when its capture offset (divided by the speed) has passed.
struct OriginalTiming {
    speed: f64,
    start: Option<(u64, Instant)>,
}

impl OriginalTiming {
    async fn wait_for(&mut self, captured_at_ns: u64) {
        let (first_captured, started) = *self.start.get_or_insert((captured_at_ns, Instant::now()));
        let offset_ns = captured_at_ns.saturating_sub(first_captured) as f64 / self.speed;
        tokio::time::sleep_until(started + Duration::from_nanos(offset_ns as u64)).await;
    }
}
