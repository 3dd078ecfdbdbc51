//! Noise cancelling, as Diffy does it: a field path where the candidate differs from the
//! baseline is only reported if it differs clearly more often than the two baselines differ
//! from each other there (timestamps, generated ids and random tokens differ between any two
//! builds, the current one included). Decided per endpoint and path from counts, so it costs
//! nothing per request beyond counting.

/// When a difference is signal rather than noise (Diffy's defaults: 20% relative, 0.03%
/// absolute).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// How much of the candidate's difference rate must be beyond the noise's: 0.2 = 20%.
    pub relative: f64,
    /// How far the candidate's difference rate must be above the noise's, as a fraction of
    /// the requests compared: 0.0003 = 0.03%.
    pub absolute: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            relative: 0.20,
            absolute: 0.0003,
        }
    }
}

/// What was counted at one endpoint and field path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounts {
    /// Requests at the endpoint compared on all three targets.
    pub compared: u64,
    /// Of those, where candidate and baseline differ at the path.
    pub candidate: u64,
    /// Of those, where baseline and baseline2 differ at the path.
    pub noise: u64,
}

impl PathCounts {
    /// Whether the candidate's differences at this path are beyond the noise.
    pub fn is_signal(&self, thresholds: Thresholds) -> bool {
        if self.compared == 0 || self.candidate <= self.noise {
            return false;
        }
        let beyond = (self.candidate - self.noise) as f64;
        beyond / self.compared as f64 > thresholds.absolute
            && beyond / self.candidate as f64 > thresholds.relative
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(compared: u64, candidate: u64, noise: u64) -> PathCounts {
        PathCounts {
            compared,
            candidate,
            noise,
        }
    }

    #[test]
    fn a_field_every_build_changes_is_noise() {
        // A timestamp: different on every request, between the baselines too.
        assert!(!counts(1000, 1000, 1000).is_signal(Thresholds::default()));
        // A random id that now and then collides between the baselines.
        assert!(!counts(1000, 990, 960).is_signal(Thresholds::default()));
    }

    #[test]
    fn a_field_only_the_candidate_changes_is_signal() {
        assert!(counts(1000, 300, 0).is_signal(Thresholds::default()));
        // Rare, but above 0.03% and all of it beyond the noise.
        assert!(counts(100_000, 31, 0).is_signal(Thresholds::default()));
    }

    #[test]
    fn both_thresholds_must_be_passed() {
        // 0.02% of requests: under the absolute threshold.
        assert!(!counts(100_000, 20, 0).is_signal(Thresholds::default()));
        // Noisy field whose rate rose by 10% of itself: under the relative threshold.
        assert!(!counts(1000, 500, 450).is_signal(Thresholds::default()));
        let lenient = Thresholds {
            relative: 0.05,
            absolute: 0.0001,
        };
        assert!(counts(1000, 500, 450).is_signal(lenient));
        assert!(!counts(0, 0, 0).is_signal(lenient));
    }
}
