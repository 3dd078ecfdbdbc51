//! The fan-out's contract with what it feeds. A [`ReplaySink`] is offered every request that
//! passed the global stages (a staging [`Target`](crate::target::Target) is one; other outputs
//! plug in beside it), and never makes the fan-out wait: what it cannot take, it drops and
//! counts under a reason of its own.
//!
//! Waiting happens one step earlier, in [`Room`]: before a source's record is dispatched, the
//! intake waits until every bounded sink has room for it. A burst (a listener resending its
//! backlog after a replayer restart, a spool restored) then stops the source from reading
//! instead of being dropped: HTTP/2 flow control pushes it back to the listener's bounded
//! buffer. A sink that stays full for longer than its shed time stops making anyone wait and
//! sheds, counted, so one slow target never holds the others back for long.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

use crate::request::ReplayRequest;

pub trait ReplaySink: Send + Sync {
    /// Takes a request without waiting. Holding the request holds its batch's acknowledgement
    /// back until the sink is done with it.
    fn offer(&self, request: &Arc<ReplayRequest>);
}

/// Waiting for room, boxed only when there is none.
pub type RoomWait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A sink with a bounded queue that sources wait on.
pub trait Backpressure: Send + Sync {
    /// `None` when the sink can take a request now (or is shedding); otherwise a wait that
    /// ends when it can, or when it has been full for longer than its shed time.
    fn wait_for_room(&self) -> Option<RoomWait<'_>>;
}

/// Every bounded sink, and the turn that lets one record at a time through to them, so that
/// room seen by one stream is not taken by another before its record is offered.
#[derive(Default)]
pub struct Room {
    sinks: Vec<Arc<dyn Backpressure>>,
    turn: Mutex<()>,
}

impl Room {
    pub fn new(sinks: Vec<Arc<dyn Backpressure>>) -> Self {
        Room {
            sinks,
            turn: Mutex::new(()),
        }
    }

    /// Waits for this stream's turn, then until every sink has room (or sheds); the record is
    /// dispatched while the returned turn is held.
    pub async fn for_one(&self) -> MutexGuard<'_, ()> {
        let turn = self.turn.lock().await;
        for sink in &self.sinks {
            if let Some(wait) = sink.wait_for_room() {
                wait.await;
            }
        }
        turn
    }
}
