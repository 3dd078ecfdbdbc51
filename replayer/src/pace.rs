//! Pacing within one source stream, before anything downstream: with `--timing original` each
//! record waits for its captured offset from the stream's first (divided by `--speed`), and with
//! a global rate in queue mode it waits for the rate. A stream waits alone: pacing one listener
//! (holding back its acknowledgements) never delays another.
//!
//! The schedule is absolute (the stream's start plus each record's offset), so a record whose
//! timestamp is older than one already sent goes at once and moves nothing, and waits do not
//! drift. A pause longer than `max_wait` is cut to it, and the schedule moves by the rest, so
//! one far-future timestamp costs one capped pause, not the rest of the run.

use std::sync::Arc;

use governor::DefaultDirectRateLimiter;
use tokio::time::{Duration, Instant};

use crate::config::Timing;

/// How one kind of source's streams are paced.
#[derive(Debug, Clone, Copy)]
pub struct StreamPacing {
    pub timing: Timing,
    pub speed: f64,
    /// The longest a record waits for its turn (`--input-file-max-wait`).
    pub max_wait: Option<Duration>,
}

/// How one stream's records are paced.
pub struct Pacer {
    original: Option<OriginalTiming>,
    global_rate: Option<Arc<DefaultDirectRateLimiter>>,
}

impl Pacer {
    pub fn new(pacing: StreamPacing, global_rate: Option<Arc<DefaultDirectRateLimiter>>) -> Self {
        Pacer {
            original: (pacing.timing == Timing::Original).then(|| OriginalTiming {
                schedule: Schedule::new(pacing.speed, pacing.max_wait),
            }),
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
            let due = original.schedule.due(captured_at_ns, Instant::now());
            tokio::time::sleep_until(due).await;
        }
        if let Some(rate) = &self.global_rate {
            rate.until_ready().await;
        }
    }
}

/// Keeps a stream's captured inter-arrival times.
struct OriginalTiming {
    schedule: Schedule,
}

/// When each record is due: the first at once, each later one at its capture offset from the
/// first (divided by the speed), a pause never longer than `max_wait`.
#[derive(Debug, Clone)]
pub struct Schedule {
    speed: f64,
    max_wait: Option<Duration>,
    /// The first record's capture time, and when it went.
    start: Option<(u64, Instant)>,
}

impl Schedule {
    pub fn new(speed: f64, max_wait: Option<Duration>) -> Self {
        Schedule {
            speed,
            max_wait,
            start: None,
        }
    }

    /// When the record captured at `captured_at_ns` is due, seen at `now`.
    pub fn due(&mut self, captured_at_ns: u64, now: Instant) -> Instant {
        let (first_captured, started) = *self.start.get_or_insert((captured_at_ns, now));
        let offset_ns = captured_at_ns.saturating_sub(first_captured) as f64 / self.speed;
        let due = started + Duration::from_nanos(offset_ns as u64);
        match self.max_wait {
            Some(max_wait) if due > now + max_wait => {
                // Move the whole schedule, so the records after this one keep their gaps.
                let capped = now + max_wait;
                let moved_by = due - capped;
                self.start = Some((
                    first_captured,
                    started.checked_sub(moved_by).unwrap_or(started),
                ));
                capped
            }
            _ => due,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn out_of_order_and_far_future_timestamps_never_cause_a_long_pause() {
        let now = Instant::now();
        let mut schedule = Schedule::new(1.0, Some(Duration::from_secs(1)));
        let base = 1_000_000 * MS;
        assert_eq!(schedule.due(base, now), now);
        assert_eq!(
            schedule.due(base + 100 * MS, now),
            now + Duration::from_millis(100)
        );
        // Older than the last one: due in the past, so it goes at once.
        assert!(schedule.due(base + 50 * MS, now) <= now + Duration::from_millis(100));
        // A bogus timestamp an hour ahead: one pause of max_wait.
        let far = schedule.due(base + 3_600_000 * MS, now);
        assert_eq!(far, now + Duration::from_secs(1));
        // Once it went, the ones after it keep their gap to it (here 10 ms), not the hour.
        let next = schedule.due(base + 3_600_010 * MS, far);
        assert_eq!(next, far + Duration::from_millis(10));
    }

    #[test]
    fn speed_divides_the_gaps() {
        let now = Instant::now();
        let mut schedule = Schedule::new(2.0, None);
        schedule.due(0, now);
        assert_eq!(
            schedule.due(1000 * MS, now),
            now + Duration::from_millis(500)
        );
    }
}
