//! `--record PATH`: what the replayer sees, as a GoReplay `.gor` file (named, cut into chunks
//! and gzipped like the listener's `--output-file`): each request as it arrived from the fleet
//! or a file (type 1, before middleware, filters and rewrites), production's responses (type 2)
//! and every target's responses (type 3), all sharing the request's id. Writing happens on its
//! own thread: recording never delays replay, and what it cannot write is counted.

use std::sync::Arc;

use tapwire_runtime::gor_output::{
    DEFAULT_CHUNK_BYTES, Destination, GorOutput, GorOutputSettings, OutputDone,
};
use tapwire_shared::gor::GorMessage;

use crate::metrics::ReplayerMetrics;
use crate::observe::ReplayObserver;

/// Message bytes waiting for the writer at most.
const QUEUE_BYTES: usize = 32 << 20;

pub struct Recorder {
    output: GorOutput,
}

impl Recorder {
    /// Starts writing to files named from `template`.
    pub fn start(
        template: String,
        metrics: &ReplayerMetrics,
    ) -> std::io::Result<(Arc<Recorder>, OutputDone)> {
        let settings = GorOutputSettings {
            destination: Destination::Files {
                template,
                size_limit: DEFAULT_CHUNK_BYTES,
                max_total: None,
                append: false,
            },
            prettify: false,
            queue_bytes: QUEUE_BYTES,
        };
        let (output, done) = GorOutput::start(settings, metrics.output_tally(|m| &m.recorded))?;
        Ok((Arc::new(Recorder { output }), done))
    }
}

impl ReplayObserver for Recorder {
    fn request(&self, message: &GorMessage) {
        self.output.write(message.clone());
    }

    fn original_response(&self, message: &GorMessage) {
        self.output.write(message.clone());
    }

    fn replayed_response(&self, _target: &str, message: &GorMessage) {
        self.output.write(message.clone());
    }
}
