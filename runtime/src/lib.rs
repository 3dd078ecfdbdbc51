//! Process plumbing both tapwire binaries share, owning no data of either side:
//!
//! - [`gor_output`]: writing `.gor` files (or stdout) from a bounded queue, never waiting.
//! - [`health`]: liveness (loops that turn) and readiness (conditions held by the parts that
//!   know), served by the metrics endpoint.
//! - [`logging`]: log set-up (stderr, `RUST_LOG`, text or JSON).
//! - [`metrics_endpoint`]: serving a Prometheus registry at `/metrics`, and `/healthz`, `/readyz`.
//! - [`periodic`]: the tick of the periodic loops (accounting lines, probes) and how a rate is
//!   written.
//! - [`shutdown`]: the one stop request every task and thread obeys, and the signals that ask it.

pub mod gor_output;
pub mod health;
pub mod logging;
pub mod metrics_endpoint;
pub mod periodic;
pub mod shutdown;

pub use health::Health;

/// Locks `mutex`, whether or not a panic poisoned it: for data a panic elsewhere cannot leave
/// inconsistent (each holder documents why).
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
pub use logging::init_logging;
pub use metrics_endpoint::serve_metrics;
pub use shutdown::Shutdown;
