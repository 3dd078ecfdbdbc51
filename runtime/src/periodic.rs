//! What both binaries' periodic loops share (the accounting lines every `--stats-interval`,
//! the replayer's target probes): when they tick (one interval from now, never in a burst
//! after a stall) and how a rate is written.

use std::time::Duration;

/// Ticks every `interval`, the first one interval from now. A tick missed while the runtime was
/// busy is not made up in a burst: lines with near-zero intervals would show absurd rates,
/// and probes would pile up.
pub fn every(interval: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// `count` events over `elapsed`, per second, rounded to a tenth (the line is for reading).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64().max(1e-3);
    (count as f64 / seconds * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_to_a_tenth() {
        assert_eq!(per_second(25, Duration::from_secs(10)), 2.5);
        assert_eq!(per_second(1, Duration::from_secs(3)), 0.3);
        assert_eq!(per_second(0, Duration::ZERO), 0.0);
    }
}
