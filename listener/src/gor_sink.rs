//! The outputs that write records themselves, beside the replayer link: a GoReplay `.gor` file
//! (`--output-file`), stdout (`--output-stdout`), or nowhere (`--output-null`, to measure
//! capture alone). Each is a [`RecordSink`]: a record becomes a `.gor` message (a request and
//! its response share an id, and the response carries production's latency) queued for a
//! writer thread without waiting. Whatever the writer does not write is counted against the
//! record (`file_full`, `file_error`).

use std::sync::Arc;

use tapwire_runtime::gor_output::{GorOutput, GorOutputSettings, Outcome, OutputDone, Tally};
use tapwire_shared::gor::{GorMessage, PayloadType};

use crate::metrics::{DropReason, ListenerMetrics, WriterOutput};
use crate::sink::{Captured, RecordSink};

/// Records as `.gor` messages, to a file or stdout.
pub struct GorSink {
    output: GorOutput,
    /// This listener process: part of every message id.
    instance: u64,
}

impl GorSink {
    /// Starts the writer thread; returns the sink and what waits for the writer at the end.
    pub fn start(
        settings: GorOutputSettings,
        kind: WriterOutput,
        instance: u64,
        metrics: &ListenerMetrics,
    ) -> std::io::Result<(GorSink, OutputDone)> {
        let metrics = metrics.clone();
        let tally: Tally = Arc::new(move |payload, outcome| {
            let response = payload != PayloadType::Request;
            let reason = match outcome {
                Outcome::Written if response => {
                    metrics.responses_written.inc();
                    return;
                }
                Outcome::Written => {
                    metrics.written(kind).inc();
                    return;
                }
                Outcome::Full => DropReason::FileFull,
                Outcome::Error => DropReason::FileError,
            };
            if response {
                metrics.response_dropped(reason).inc();
            } else {
                metrics.dropped(reason).inc();
            }
        });
        let (output, done) = GorOutput::start(settings, tally)?;
        Ok((GorSink { output, instance }, done))
    }
}

impl RecordSink for GorSink {
    fn take(&self, record: Captured, _shard: u32) {
        self.output.write(message(&record, self.instance));
    }
}

/// A captured record as GoReplay writes it.
pub fn message(record: &Captured, instance: u64) -> GorMessage {
    match record {
        Captured::Request(request) => GorMessage::request(request, instance),
        Captured::Response(response) => GorMessage::response(response, instance),
    }
}

/// Takes every record and writes nothing (`--output-null`): capture's cost alone.
pub struct NullSink {
    metrics: ListenerMetrics,
}

impl NullSink {
    pub fn new(metrics: &ListenerMetrics) -> Self {
        NullSink {
            metrics: metrics.clone(),
        }
    }
}

impl RecordSink for NullSink {
    fn take(&self, record: Captured, _shard: u32) {
        match record {
            Captured::Request(_) => self.metrics.written(WriterOutput::Null).inc(),
            Captured::Response(_) => self.metrics.responses_written.inc(),
        };
    }
}
