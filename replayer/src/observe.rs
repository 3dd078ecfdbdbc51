//! Taps on the replay, for what records it (`--record`) and what rewrites it (the middleware):
//! each request as it arrived (before any middleware, filter or rewrite), production's response
//! to it, and each target's response. All three travel as `.gor` messages sharing the request's
//! id. Watching never delays replay: an observer queues what it sees or drops it, counted.

use std::sync::Arc;

use tapwire_shared::gor::GorMessage;

pub trait ReplayObserver: Send + Sync {
    /// A request as a source handed it over (type 1).
    fn request(&self, _message: &GorMessage) {}
    /// Production's response to a request (type 2).
    fn original_response(&self, _message: &GorMessage) {}
    /// A target's response to a replayed request (type 3).
    fn replayed_response(&self, _target: &str, _message: &GorMessage) {}
}

/// Every observer; empty when nothing watches, so nothing is built for them.
#[derive(Clone, Default)]
pub struct Observers(Vec<Arc<dyn ReplayObserver>>);

impl Observers {
    pub fn new(observers: Vec<Arc<dyn ReplayObserver>>) -> Self {
        Observers(observers)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any observer wants targets' responses (their bodies are then kept).
    pub fn wants_replayed_responses(&self) -> bool {
        !self.0.is_empty()
    }

    pub fn request(&self, message: &GorMessage) {
        self.0.iter().for_each(|o| o.request(message));
    }

    pub fn original_response(&self, message: &GorMessage) {
        self.0.iter().for_each(|o| o.original_response(message));
    }

    pub fn replayed_response(&self, target: &str, message: &GorMessage) {
        self.0
            .iter()
            .for_each(|o| o.replayed_response(target, message));
    }
}
