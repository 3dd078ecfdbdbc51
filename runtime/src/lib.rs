//! Process plumbing both tapwire binaries share, owning no data of either side:
//!
//! - [`gor_output`]: writing `.gor` files (or stdout) from a bounded queue, never waiting.
//! - [`logging`]: log set-up (stderr, `RUST_LOG`).
//! - [`metrics_endpoint`]: serving a Prometheus registry at `/metrics`.
//! - [`shutdown`]: the one stop request every task and thread obeys, and the signals that ask it.

pub mod gor_output;
pub mod logging;
pub mod metrics_endpoint;
pub mod shutdown;

pub use logging::init_logging;
pub use metrics_endpoint::serve_metrics;
pub use shutdown::Shutdown;
