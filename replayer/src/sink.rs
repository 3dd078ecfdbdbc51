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
use std::sync::{Arc, Weak};

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
    /// Room for more than `spare` requests now (or shedding): no need to take turns.
    fn has_room_beyond(&self, spare: usize) -> bool;

    /// `None` when the sink can take a request now (or is shedding); otherwise a wait that
    /// ends when it can, or when it has been full for longer than its shed time.
    fn wait_for_room(&self) -> Option<RoomWait<'_>>;
}

/// Streams that can be between seeing room and offering their record at the same moment: that
/// stretch never awaits, so at most one per runtime thread, far fewer than this.
const RACING_STREAMS: usize = 256;

/// Every bounded sink, and the turn that lets one record at a time through to them when room
/// is short, so that room seen by one stream is not taken by another before its record is
/// offered. With plenty of room, streams go on without taking turns.
#[derive(Default)]
pub struct Room {
    /// Weak: a source still open (a connection that cannot flush) must not keep a target's
    /// queue open, or the target would never drain at shutdown.
    sinks: Vec<Weak<dyn Backpressure>>,
    turn: Mutex<()>,
}

impl Room {
    pub fn new(sinks: Vec<Weak<dyn Backpressure>>) -> Self {
        Room {
            sinks,
            turn: Mutex::new(()),
        }
    }

    /// Returns at once while every sink has plenty of room; else waits for this stream's
    /// turn, then until every sink has room (or sheds). The record must be dispatched with no
    /// await in between, and while the returned turn (if any) is held.
    pub async fn for_one(&self) -> Option<MutexGuard<'_, ()>> {
        if self.sinks.iter().all(|sink| {
            sink.upgrade()
                .is_none_or(|sink| sink.has_room_beyond(RACING_STREAMS))
        }) {
            return None;
        }
        let turn = self.turn.lock().await;
        for sink in &self.sinks {
            let Some(sink) = sink.upgrade() else { continue };
            if let Some(wait) = sink.wait_for_room() {
                wait.await;
            }
        }
        Some(turn)
    }
}
