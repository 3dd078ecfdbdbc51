//! Whether the process is alive and whether it is ready, as the metrics port's `/healthz` and
//! `/readyz` report them ([`crate::metrics_endpoint`] serves them; this module owns the state).
//!
//! - **Alive**: every loop that registered a [`Heartbeat`] has turned within [`STALL_LIMIT`].
//!   A loop beats once per turn (one clock read and one atomic store, nothing per packet); a
//!   loop that ended (its `Heartbeat` dropped) no longer counts, since the process is then on
//!   its way out anyway.
//! - **Ready**: every registered [`Condition`] is met. A condition is met while at least one
//!   [`Hold`] on it lives: the part that knows takes a hold when the thing comes up (a link
//!   connects, the capture opens) and drops it when it goes away, so "at least one replayer
//!   link up" is simply one condition held by every link that is up.
//!
//! Which loops and conditions exist is each binary's business; the reason a condition is
//! unmet is the line `/readyz` shows for it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lock;

/// A loop that has not turned for this long makes the process not alive. The capture loop
/// turns at least every 100 ms (its poll timeout) and the runtime's heartbeat every second,
/// so 10 s is far beyond a slow turn, and still well within a Kubernetes liveness probe's
/// default patience (3 failures, 10 s apart).
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// The process's liveness and readiness state; clones share it.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    /// Heartbeats are times since this instant, in milliseconds, so one fits an atomic.
    started: Instant,
    // Locked with [`crate::lock`]: the lists only grow and every entry is valid on its own, so
    // a panic elsewhere cannot leave them inconsistent.
    loops: Mutex<Vec<Arc<LoopState>>>,
    conditions: Mutex<Vec<Arc<ConditionState>>>,
}

struct LoopState {
    name: &'static str,
    last_turn_ms: AtomicU64,
    ended: AtomicBool,
}

struct ConditionState {
    unmet: &'static str,
    holds: AtomicUsize,
}

/// Owned by one loop: [`Heartbeat::beat`] once per turn.
pub struct Heartbeat {
    state: Arc<LoopState>,
    started: Instant,
}

/// A readiness condition; clones name the same one. Met while any [`Hold`] on it lives.
#[derive(Clone)]
pub struct Condition {
    state: Arc<ConditionState>,
}

/// Keeps its [`Condition`] met until dropped.
pub struct Hold {
    state: Arc<ConditionState>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            inner: Arc::new(Inner {
                started: Instant::now(),
                loops: Mutex::default(),
                conditions: Mutex::default(),
            }),
        }
    }

    /// Registers a loop named `name` (shown when it stalls), as having just turned.
    pub fn heartbeat(&self, name: &'static str) -> Heartbeat {
        let state = Arc::new(LoopState {
            name,
            last_turn_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        let heartbeat = Heartbeat {
            state: Arc::clone(&state),
            started: self.inner.started,
        };
        heartbeat.beat();
        lock(&self.inner.loops).push(state);
        heartbeat
    }

    /// Registers a readiness condition, unmet until something holds it; `unmet` is the line
    /// `/readyz` shows while it is.
    pub fn condition(&self, unmet: &'static str) -> Condition {
        let state = Arc::new(ConditionState {
            unmet,
            holds: AtomicUsize::new(0),
        });
        lock(&self.inner.conditions).push(Arc::clone(&state));
        Condition { state }
    }

    /// `Ok` while alive; otherwise one line per stalled loop.
    pub fn liveness(&self) -> Result<(), Vec<String>> {
        self.stalled_loops(self.inner.started.elapsed())
    }

    /// `Ok` when ready; otherwise one line per unmet condition, in registration order.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let unmet: Vec<String> = lock(&self.inner.conditions)
            .iter()
            .filter(|condition| condition.holds.load(Ordering::Relaxed) == 0)
            .map(|condition| condition.unmet.to_owned())
            .collect();
        if unmet.is_empty() { Ok(()) } else { Err(unmet) }
    }

    /// The loops that have not turned within [`STALL_LIMIT`] of `now` (time since start).
    fn stalled_loops(&self, now: Duration) -> Result<(), Vec<String>> {
        let now_ms = now.as_millis() as u64;
        let stalled: Vec<String> = lock(&self.inner.loops)
            .iter()
            .filter(|state| !state.ended.load(Ordering::Relaxed))
            .filter_map(|state| {
                let idle = now_ms.saturating_sub(state.last_turn_ms.load(Ordering::Relaxed));
                (idle > STALL_LIMIT.as_millis() as u64).then(|| {
                    format!(
                        "{} loop has not turned for {:.1} s",
                        state.name,
                        idle as f64 / 1000.0
                    )
                })
            })
            .collect();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled)
        }
    }
}

impl Heartbeat {
    /// The loop has turned.
    pub fn beat(&self) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.state.last_turn_ms.store(now_ms, Ordering::Relaxed);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.state.ended.store(true, Ordering::Relaxed);
    }
}

impl Condition {
    /// Marks the condition met until the returned hold is dropped.
    pub fn hold(&self) -> Hold {
        self.state.holds.fetch_add(1, Ordering::Relaxed);
        Hold {
            state: Arc::clone(&self.state),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.state.holds.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_met_while_any_hold_lives() {
        let health = Health::new();
        let links_up = health.condition("no replayer link is up");
        assert_eq!(
            health.readiness(),
            Err(vec!["no replayer link is up".to_owned()])
        );
        let first = links_up.hold();
        let second = links_up.clone().hold();
        assert_eq!(health.readiness(), Ok(()));
        drop(first);
        assert_eq!(health.readiness(), Ok(()));
        drop(second);
        assert!(health.readiness().is_err());
    }

    #[test]
    fn every_unmet_condition_has_its_line_in_order() {
        let health = Health::new();
        let capture = health.condition("capture is not open");
        let _output = health.condition("no output is up");
        let _open = capture.hold();
        let _target = health.condition("no target is reachable");
        assert_eq!(
            health.readiness(),
            Err(vec![
                "no output is up".to_owned(),
                "no target is reachable".to_owned()
            ])
        );
    }

    #[test]
    fn a_loop_that_stops_turning_is_reported_after_the_stall_limit() {
        let health = Health::new();
        let capture = health.heartbeat("capture");
        let _runtime = health.heartbeat("runtime");
        let within = STALL_LIMIT;
        assert_eq!(health.stalled_loops(within), Ok(()));
        let past = STALL_LIMIT + Duration::from_millis(1500);
        assert_eq!(
            health.stalled_loops(past),
            Err(vec![
                format!(
                    "capture loop has not turned for {:.1} s",
                    past.as_secs_f64()
                ),
                format!(
                    "runtime loop has not turned for {:.1} s",
                    past.as_secs_f64()
                ),
            ])
        );
        // A beat at `past` (as `beat` stores it) leaves only the other loop stalled.
        capture
            .state
            .last_turn_ms
            .store(past.as_millis() as u64, Ordering::Relaxed);
        assert_eq!(
            health.stalled_loops(past).map_err(|lines| lines.len()),
            Err(1)
        );
    }

    #[test]
    fn a_loop_that_ended_is_not_a_stalled_one() {
        let health = Health::new();
        let capture = health.heartbeat("capture");
        drop(capture);
        assert_eq!(health.stalled_loops(STALL_LIMIT * 100), Ok(()));
    }
}
