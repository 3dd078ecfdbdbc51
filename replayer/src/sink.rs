//! The fan-out's contract with what it feeds. A [`ReplaySink`] is offered every request that
//! passed the global stages (a staging [`Target`](crate::target::Target) is one; other outputs
//! plug in beside it), and must never make the fan-out wait: what it cannot take now, it drops
//! and counts under a reason of its own, so one slow output never delays another.

use std::sync::Arc;

use crate::request::ReplayRequest;

pub trait ReplaySink: Send + Sync {
    /// Takes a request without waiting. Holding the request holds its batch's acknowledgement
    /// back until the sink is done with it.
    fn offer(&self, request: &Arc<ReplayRequest>);
}
