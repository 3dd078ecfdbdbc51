//! Rates, enforced with governor's GCRA twice over:
//!
//! - [`CaptureRate`] decides *which* requests are replayed: `rate` per second of captured time,
//!   on a clock driven by the records' capture timestamps, so how the records were batched on
//!   their way here (capture blocks, gRPC batches, a listener catching up) changes nothing.
//! - A real-time limiter ([`limiter`]) paces *when* they are sent, so no one-second window of
//!   replay exceeds the rate by more than the burst.
//!
//! [`Rate`] holds both for one configured rate.

use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tapwire_shared::config::ConfigError;

fn quota(rate: u32, burst: Option<u32>, field: &str) -> Result<Quota, ConfigError> {
    let rate = NonZeroU32::new(rate)
        .ok_or_else(|| ConfigError::new(field, "a rate must be at least 1"))?;
    let burst = burst.unwrap_or_else(|| default_burst(rate.get())).max(1);
    let burst = NonZeroU32::new(burst).expect("at least 1");
    Ok(Quota::per_second(rate).allow_burst(burst))
}

/// A rate, both ways it is enforced: which requests fit (on the capture clock, when over-rate
/// requests are dropped) and when they are sent (in real time).
pub struct Rate {
    pub admission: CaptureRate,
    pub pacing: DefaultDirectRateLimiter,
}

impl Rate {
    /// `rate` per second with `burst` above it; `field` names the setting in errors.
    pub fn new(rate: u32, burst: Option<u32>, field: &str) -> Result<Rate, ConfigError> {
        Ok(Rate {
            admission: CaptureRate::new(rate, burst, field)?,
            pacing: limiter(rate, burst, field)?,
        })
    }
}

/// A real-time rate limiter of `rate` requests per second with `burst` allowed above it.
pub fn limiter(
    rate: u32,
    burst: Option<u32>,
    field: &str,
) -> Result<DefaultDirectRateLimiter, ConfigError> {
    Ok(RateLimiter::direct(quota(rate, burst, field)?))
}

type CaptureClockLimiter = RateLimiter<
    NotKeyed,
    InMemoryState,
    FakeRelativeClock,
    NoOpMiddleware<<FakeRelativeClock as Clock>::Instant>,
>;

/// Admits `rate` requests per second of captured time (plus `burst`).
pub struct CaptureRate {
    limiter: CaptureClockLimiter,
    clock: FakeRelativeClock,
    /// Capture time of the first request seen: the clock's zero.
    origin_ns: OnceLock<u64>,
    /// How far past the origin the clock has been moved; it never goes back.
    position_ns: AtomicU64,
}

impl CaptureRate {
    pub fn new(rate: u32, burst: Option<u32>, field: &str) -> Result<CaptureRate, ConfigError> {
        let clock = FakeRelativeClock::default();
        Ok(CaptureRate {
            limiter: RateLimiter::direct_with_clock(quota(rate, burst, field)?, clock.clone()),
            clock,
            origin_ns: OnceLock::new(),
            position_ns: AtomicU64::new(0),
        })
    }

    /// Whether the request captured at `captured_at_ns` fits the rate.
    pub fn admits(&self, captured_at_ns: u64) -> bool {
        let origin = *self.origin_ns.get_or_init(|| captured_at_ns);
        let offset = captured_at_ns.saturating_sub(origin);
        // Whoever moves the high-water mark moves the clock, by exactly that much.
        let previous = self.position_ns.fetch_max(offset, Ordering::Relaxed);
        if offset > previous {
            self.clock.advance(Duration::from_nanos(offset - previous));
        }
        self.limiter.check().is_ok()
    }
}

/// Records reach the replayer in lumps (capture blocks of up to 20 ms, then gRPC batches), so the
/// burst must hold one lump's worth or the limiter would admit less than the rate. 30 ms of the
/// rate does; over 10 s it adds at most 0.3% above the rate.
pub fn default_burst(rate: u32) -> u32 {
    (rate * 3 / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_rate_counts_captured_time_however_records_arrive() {
        // 2000 requests captured evenly over 10 s (200/s), judged at 100/s with a burst of 3:
        // the order and lumping in which they reach the limiter does not matter.
        let rate = CaptureRate::new(100, None, "rate").unwrap();
        let admitted = (0..2000u64)
            .filter(|i| rate.admits(1_000_000_000_000 + i * 5_000_000))
            .count();
        assert!((1000..=1004).contains(&admitted), "admitted {admitted}");
    }
}
