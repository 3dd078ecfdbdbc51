//! Whether the staging targets can be reached, for readiness (`/readyz`): the replayer is
//! ready only while at least one target is.
//!
//! "Reachable" means the latest TCP connect to the target's `host:port` succeeded within
//! [`PROBE_TIMEOUT`]. Each target is probed at start and then every [`PROBE_INTERVAL`],
//! whether or not requests flow to it: a staging target that receives no traffic must not
//! leave the replayer unready, and one that went away must make it unready even while no
//! request tries it. A probe opens a connection and closes it without sending anything.
//! Only the connect is checked (no TLS, no HTTP): that is what delivery needs first, and
//! what a Kubernetes readiness probe can act on (take this replayer out of the Service).

use std::time::Duration;

use tapwire_runtime::Shutdown;
use tapwire_runtime::health::{Condition, Hold};
use tokio::net::TcpStream;

/// Often enough that readiness follows a target within a Kubernetes probe period (10 s by
/// default), rare enough to be one idle connection per target every few seconds.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A connect on a live network takes milliseconds; one this slow is not delivery-worthy.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes the target at `authority` (`host:port`, named `name` in logs) until `stop`, holding
/// `reachable` while the latest probe succeeded.
pub async fn probe_target(name: String, authority: String, reachable: Condition, stop: Shutdown) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `None` until the first probe: its outcome is logged either way, later only changes.
    let mut held: Option<Option<Hold>> = None;
    loop {
        tokio::select! {
            () = stop.requested() => return,
            _ = tick.tick() => {}
        }
        let connect = TcpStream::connect(authority.as_str());
        let failure = match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
            Ok(Ok(_connection)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("connect timed out after {PROBE_TIMEOUT:?}")),
        };
        let was_reachable = held.as_ref().map(Option::is_some);
        match failure {
            None if was_reachable != Some(true) => {
                tracing::info!(target = %name, "target reachable");
                held = Some(Some(reachable.hold()));
            }
            Some(error) if was_reachable != Some(false) => {
                tracing::warn!(target = %name, %error, "target unreachable");
                held = Some(None);
            }
            _ => {}
        }
    }
}
