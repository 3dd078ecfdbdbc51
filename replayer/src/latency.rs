//! A target's response times for the accounting line: p50 and p99 over the last interval.
//!
//! Fixed log-scale buckets (8 per doubling, 10 µs to about 100 s: each bucket 9% wide, so a
//! quantile is within ±4.5% of the truth) of relaxed atomic counters: recording is one
//! `fetch_add`, memory is fixed (1.5 KiB per target) and nothing is ever reset. The reader
//! keeps the previous [`Snapshot`] and takes quantiles of the difference, so an interval's
//! figures are its own. The Prometheus histogram (`response_seconds`) is the long-run view;
//! its 19 doubling buckets are too coarse for a p99 worth printing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per doubling of the latency.
const PER_DOUBLING: f64 = 8.0;
/// The lowest bucket's upper bound; faster responses count in it.
const FLOOR_SECONDS: f64 = 10e-6;
/// The last bucket's upper bound is 10 µs × 2^(186/8) ≈ 100 s: longer than any sensible
/// `--timeout`; slower responses count in it.
const BUCKETS: usize = 187;

/// Response times counted in fixed buckets, shared by a target's workers.
#[derive(Debug)]
pub struct LatencyBuckets {
    counts: Box<[AtomicU64; BUCKETS]>,
}

/// The bucket counts at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Box<[u64; BUCKETS]>);

/// The median and 99th percentile of the responses of an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    pub p50: Duration,
    pub p99: Duration,
}

impl Default for LatencyBuckets {
    fn default() -> Self {
        LatencyBuckets {
            counts: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl LatencyBuckets {
    pub fn record(&self, seconds: f64) {
        self.counts[bucket_of(seconds)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot(Box::new(std::array::from_fn(|index| {
            self.counts[index].load(Ordering::Relaxed)
        })))
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot(Box::new([0; BUCKETS]))
    }
}

impl Snapshot {
    /// The quantiles of what was recorded between `earlier` and this snapshot; `None` if
    /// nothing was.
    pub fn quantiles_since(&self, earlier: &Snapshot) -> Option<Quantiles> {
        let counts: Vec<u64> = self
            .0
            .iter()
            .zip(earlier.0.iter())
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        let total: u64 = counts.iter().sum();
        (total > 0).then(|| Quantiles {
            p50: quantile(&counts, total, 0.50),
            p99: quantile(&counts, total, 0.99),
        })
    }

    /// The `q`-th quantile (0.0 to 1.0) of everything recorded; `None` if nothing was.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.0.iter().sum();
        (total > 0).then(|| quantile(&self.0[..], total, q))
    }

    /// `(upper bound in seconds, count)` of every non-empty bucket, ascending.
    pub fn histogram(&self) -> Vec<(f64, u64)> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, count)| (upper_bound(index), *count))
            .collect()
    }
}

fn upper_bound(index: usize) -> f64 {
    FLOOR_SECONDS * (index as f64 / PER_DOUBLING).exp2()
}

fn bucket_of(seconds: f64) -> usize {
    if seconds.is_nan() || seconds <= FLOOR_SECONDS {
        return 0;
    }
    let index = ((seconds / FLOOR_SECONDS).log2() * PER_DOUBLING).ceil();
    (index as usize).min(BUCKETS - 1)
}

/// The geometric middle of the bucket holding the `q`-th response.
fn quantile(counts: &[u64], total: u64, q: f64) -> Duration {
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    let index = counts
        .iter()
        .position(|&count| {
            seen += count;
            seen >= rank
        })
        .unwrap_or(BUCKETS - 1);
    let upper = upper_bound(index);
    let middle = upper * (-0.5 / PER_DOUBLING).exp2();
    Duration::from_secs_f64(if index == 0 { upper } else { middle })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(value: Duration, expected_ms: f64) -> bool {
        let ms = value.as_secs_f64() * 1000.0;
        (ms - expected_ms).abs() <= expected_ms * 0.05
    }

    #[test]
    fn quantiles_are_within_five_percent_and_cover_only_the_interval() {
        let buckets = LatencyBuckets::default();
        // A slow first interval, then 98 fast responses and 2 slow ones.
        for _ in 0..100 {
            buckets.record(2.0);
        }
        let first = buckets.snapshot();
        for _ in 0..98 {
            buckets.record(0.003);
        }
        buckets.record(0.250);
        buckets.record(0.250);
        let second = buckets.snapshot();

        let whole = first.quantiles_since(&Snapshot::default()).unwrap();
        assert!(within(whole.p50, 2000.0), "{whole:?}");
        let interval = second.quantiles_since(&first).unwrap();
        assert!(within(interval.p50, 3.0), "{interval:?}");
        assert!(within(interval.p99, 250.0), "{interval:?}");
        assert_eq!(second.quantiles_since(&second), None);
    }

    #[test]
    fn extremes_land_in_the_first_and_last_buckets() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(f64::NAN), 0);
        assert_eq!(bucket_of(1e6), BUCKETS - 1);
        assert!(bucket_of(0.001) < bucket_of(0.0011));
    }
}
