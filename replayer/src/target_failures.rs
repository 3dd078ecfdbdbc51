//! A target's failures (refused, unresolvable, TLS, timed out, broken answers) at the default
//! log level, without a line per request: the first failure is logged at once with its cause,
//! later ones are counted and summed up at most once per [`REPORT_INTERVAL`] ("N more failures
//! in the last 10s: connect_error=K, tls=J, last: <cause>"), and one line says when the target
//! answers again. Bounded whatever the traffic: a failure line needs the interval to have
//! passed since the last line, and an "answers again" line needs a failure line before it, so
//! a flapping target gets at most two lines per interval.
//!
//! [`FailureLog`] decides, with the time passed in (tested without sleeping); [`TargetFailures`]
//! is a target's log, shared by its workers, which logs what it decides. The counters in
//! `/metrics` count every failure; these lines say what, where and why.

use std::fmt::{self, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::outcome::TargetDropReason;

/// At most one failure line per target this often (a summary of what came in between).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// One line to log about a target.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A failure, after a healthy spell: its cause.
    Failed {
        reason: TargetDropReason,
        cause: String,
    },
    /// Failures since the last line.
    Summary {
        unreported: Unreported,
        /// Whether a failure line came before in this spell (then they are "more").
        more: bool,
    },
    /// A response after logged failures; the failures not yet logged, if any.
    AnswersAgain { unreported: Option<Unreported> },
}

/// Failures not yet logged: how many of each reason, over how long, and the latest cause.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreported {
    counts: [u64; TargetDropReason::ALL.len()],
    pub since: Duration,
    pub last_cause: String,
}

impl Unreported {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl fmt::Display for Unreported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut reasons = String::new();
        for reason in TargetDropReason::ALL {
            let count = self.counts[reason as usize];
            if count > 0 {
                let separator = if reasons.is_empty() { "" } else { ", " };
                let _ = write!(reasons, "{separator}{}={count}", reason.as_str());
            }
        }
        write!(
            f,
            "in the last {}s: {reasons}, last: {}",
            self.since.as_secs_f64().round() as u64,
            self.last_cause
        )
    }
}

/// The decisions for one target: what to log, and when.
#[derive(Debug, Default)]
pub struct FailureLog {
    last_line: Option<Instant>,
    counts: [u64; TargetDropReason::ALL.len()],
    last_cause: String,
    /// A failure line was logged and no response came since.
    reported_down: bool,
}

impl FailureLog {
    /// A request failed at `now`; the line to log, if one is due.
    pub fn failed(
        &mut self,
        now: Instant,
        reason: TargetDropReason,
        cause: String,
    ) -> Option<Report> {
        self.counts[reason as usize] += 1;
        self.last_cause = cause;
        if self
            .last_line
            .is_some_and(|last| now.duration_since(last) < REPORT_INTERVAL)
        {
            return None;
        }
        // Never empty: this failure was just counted.
        let unreported = self.take_unreported(now)?;
        let report = if unreported.total() == 1 && !self.reported_down {
            Report::Failed {
                reason,
                cause: unreported.last_cause,
            }
        } else {
            Report::Summary {
                unreported,
                more: self.reported_down,
            }
        };
        self.reported_down = true;
        self.last_line = Some(now);
        Some(report)
    }

    /// A response came at `now`; the line to log, if the target had been reported failing.
    pub fn answered(&mut self, now: Instant) -> Option<Report> {
        if !self.reported_down {
            // Failures since the last line stay counted for the next one.
            return None;
        }
        self.reported_down = false;
        let unreported = self.take_unreported(now);
        self.last_line = Some(now);
        Some(Report::AnswersAgain { unreported })
    }

    /// Whether a response would change anything (checked before taking a lock).
    pub fn wants_answers(&self) -> bool {
        self.reported_down
    }

    fn take_unreported(&mut self, now: Instant) -> Option<Unreported> {
        if self.counts.iter().all(|&count| count == 0) {
            return None;
        }
        let since = self
            .last_line
            .map_or(Duration::ZERO, |last| now.duration_since(last));
        Some(Unreported {
            counts: std::mem::take(&mut self.counts),
            since,
            last_cause: std::mem::take(&mut self.last_cause),
        })
    }
}

/// A target's failure log, shared by its workers.
pub struct TargetFailures {
    /// The target's name, `http(s)://host:port`.
    name: String,
    log: Mutex<FailureLog>,
    /// Mirrors [`FailureLog::wants_answers`], so that a response costs no lock.
    reported_down: AtomicBool,
}

impl TargetFailures {
    pub fn new(name: &str) -> Self {
        TargetFailures {
            name: name.to_owned(),
            log: Mutex::new(FailureLog::default()),
            reported_down: AtomicBool::new(false),
        }
    }

    /// A request to the target failed for `reason`, `cause` in words.
    pub fn failed(&self, reason: TargetDropReason, cause: impl fmt::Display) {
        let report = {
            let mut log = self.log.lock().expect("failure log lock");
            let report = log.failed(Instant::now(), reason, cause.to_string());
            self.reported_down
                .store(log.wants_answers(), Ordering::Relaxed);
            report
        };
        if let Some(report) = report {
            self.emit(&report);
        }
    }

    /// The target answered a request.
    pub fn answered(&self) {
        if !self.reported_down.load(Ordering::Relaxed) {
            return;
        }
        let report = {
            let mut log = self.log.lock().expect("failure log lock");
            let report = log.answered(Instant::now());
            self.reported_down
                .store(log.wants_answers(), Ordering::Relaxed);
            report
        };
        if let Some(report) = report {
            self.emit(&report);
        }
    }

    fn emit(&self, report: &Report) {
        let target = &self.name;
        match report {
            Report::Failed { reason, cause } => {
                let reason = reason.as_str();
                tracing::warn!(%target, reason, %cause, "request to target failed");
            }
            Report::Summary { unreported, more } => {
                let count = unreported.total();
                let more = if *more { " more" } else { "" };
                tracing::warn!(%target, "{count}{more} failures {unreported}");
            }
            Report::AnswersAgain { unreported: None } => {
                tracing::info!(%target, "target answers again");
            }
            Report::AnswersAgain {
                unreported: Some(unreported),
            } => {
                let count = unreported.total();
                tracing::info!(%target, "target answers again; {count} more failures {unreported}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetDropReason::{ConnectError, Timeout, Tls};

    fn at(start: Instant, seconds: f64) -> Instant {
        start + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn the_first_failure_is_logged_at_once() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        let report = log.failed(start, ConnectError, "connection refused".into());
        assert_eq!(
            report,
            Some(Report::Failed {
                reason: ConnectError,
                cause: "connection refused".into()
            })
        );
    }

    #[test]
    fn later_failures_are_summed_up_once_per_interval() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        let mut lines = Vec::new();
        // 200 failures a second for 25 seconds.
        for i in 0..5000 {
            let reason = if i % 2 == 0 { ConnectError } else { Tls };
            let cause = format!("cause {i}");
            lines.extend(log.failed(at(start, i as f64 * 0.005), reason, cause));
        }
        assert_eq!(lines.len(), 3, "at 0s, 10s and 20s: {lines:?}");
        let Report::Summary { unreported, more } = &lines[1] else {
            panic!("{lines:?}")
        };
        assert!(more);
        assert_eq!(unreported.total(), 2000);
        assert_eq!(
            unreported.to_string(),
            "in the last 10s: connect_error=1000, tls=1000, last: cause 2000"
        );
    }

    #[test]
    fn an_answer_after_logged_failures_is_logged_once_with_what_was_not() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        assert!(log.answered(start).is_none(), "nothing failed");
        log.failed(start, Timeout, "timed out after 10s".into());
        log.failed(at(start, 1.0), Timeout, "timed out after 10s".into());
        let Some(Report::AnswersAgain {
            unreported: Some(unreported),
        }) = log.answered(at(start, 2.0))
        else {
            panic!("expected an answers-again line")
        };
        assert_eq!(unreported.total(), 1);
        assert!(log.answered(at(start, 3.0)).is_none(), "once");
    }

    #[test]
    fn a_flapping_target_gets_at_most_two_lines_per_interval() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        let mut lines = Vec::new();
        for i in 0..1000 {
            let now = at(start, i as f64 * 0.01);
            if i % 2 == 0 {
                lines.extend(log.failed(now, ConnectError, "connection refused".into()));
            } else {
                lines.extend(log.answered(now));
            }
        }
        // 10 seconds: a failure and its answers-again line, then the next failure line at 10s.
        assert!(lines.len() <= 3, "{lines:?}");
        assert!(matches!(lines[0], Report::Failed { .. }), "{lines:?}");
        assert!(matches!(lines[1], Report::AnswersAgain { .. }), "{lines:?}");
    }

    #[test]
    fn failures_while_answering_again_are_kept_for_the_next_line() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        log.failed(start, ConnectError, "refused".into());
        log.answered(at(start, 1.0));
        // Within the interval: counted, not logged; a response does not drop them.
        assert!(
            log.failed(at(start, 2.0), Tls, "unknown issuer".into())
                .is_none()
        );
        assert!(log.answered(at(start, 3.0)).is_none());
        let Some(Report::Summary { unreported, more }) =
            log.failed(at(start, 12.0), Tls, "unknown issuer".into())
        else {
            panic!("expected a summary")
        };
        assert!(!more, "the target had answered in between");
        assert_eq!(unreported.total(), 2);
    }
}
