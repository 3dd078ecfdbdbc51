//! Whether the staging targets can be reached: checked once for every target at start-up,
//! before traffic flows (a warning for each unreachable one, naming its address and the cause;
//! the replayer runs on, since staging may come up later), and then, for readiness (`/readyz`),
//! probed every [`PROBE_INTERVAL`]: the replayer is ready only while at least one target is.
//!
//! "Reachable" means the latest connect succeeded within [`PROBE_TIMEOUT`]: the DNS lookup, the
//! TCP connect and, for an `https://` target, the TLS handshake, exactly as a request connects
//! ([`TargetAddress::connect`]). A probe closes the connection without sending a request; no
//! HTTP is checked. Probes run whether or not requests flow: a staging target that receives no
//! traffic must not leave the replayer unready, and one that went away must make it unready
//! even while no request tries it, so a Kubernetes readiness probe can act on it (take this
//! replayer out of the Service).

use std::time::Duration;

use tapwire_runtime::Shutdown;
use tapwire_runtime::health::{Condition, Hold};

use crate::connect::TargetAddress;
use crate::plan::TargetPlan;

/// Often enough that readiness follows a target within a Kubernetes probe period (10 s by
/// default), rare enough to be one idle connection per target every few seconds.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A connect (and TLS handshake) on a live network takes milliseconds; one this slow is not
/// delivery-worthy. It also bounds how long the start-up check holds traffic back. Kept short
/// on purpose: a probe left waiting for seconds on a host that does not answer ARP marks the
/// neighbour failed, and the first requests after the network heals then fail to connect
/// (seen in the lab: a 3 s probe lost requests across a link cut that a 1 s probe does not).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects to the target once; the cause in words when it cannot be reached.
async fn probe(address: &TargetAddress) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, address.connect()).await {
        Ok(Ok(_connection)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no connection to {} within {}",
            address.authority,
            humantime::format_duration(PROBE_TIMEOUT)
        )),
    }
}

/// Probes every target at once and logs each outcome (a warning for each unreachable
/// target); whether each was reachable, in the order of `targets`.
pub async fn check_at_start(targets: &[TargetPlan]) -> Vec<bool> {
    let probes: Vec<_> = targets
        .iter()
        .map(|target| {
            let address = target.address.clone();
            tokio::spawn(async move { probe(&address).await })
        })
        .collect();
    let mut reachable = Vec::with_capacity(probes.len());
    for (target, probe) in targets.iter().zip(probes) {
        let outcome = probe
            .await
            .unwrap_or_else(|panic| Err(format!("the probe failed: {panic}")));
        match &outcome {
            Ok(()) => tracing::info!(target = %target.name, "target reachable"),
            Err(cause) => tracing::warn!(target = %target.name, addr = %target.address.authority,
                %cause, "target unreachable at start-up; replaying to it anyway (it may come up \
                later)"),
        }
        reachable.push(outcome.is_ok());
    }
    reachable
}

/// Probes the target at `address` (named `name` in logs) until `stop`, holding `reachable`
/// while the latest probe succeeded; `reachable_at_start` is what [`check_at_start`] found
/// (only changes from it are logged).
pub async fn probe_target(
    name: String,
    address: TargetAddress,
    reachable: Condition,
    stop: Shutdown,
    reachable_at_start: bool,
) {
    // The start-up check just probed: the first probe here comes one interval later.
    let mut tick = tapwire_runtime::periodic::every(PROBE_INTERVAL);
    let mut held: Option<Hold> = reachable_at_start.then(|| reachable.hold());
    loop {
        tokio::select! {
            () = stop.requested() => return,
            _ = tick.tick() => {}
        }
        match probe(&address).await {
            Ok(()) if held.is_none() => {
                tracing::info!(target = %name, "target reachable");
                held = Some(reachable.hold());
            }
            Err(cause) if held.is_some() => {
                let addr = &address.authority;
                tracing::warn!(target = %name, %addr, %cause, "target unreachable");
                held = None;
            }
            _ => {}
        }
    }
}
