//! Where a reassembled message becomes a record. [`RecordStage`] receives what reassembly
//! reports, on the capture thread: each complete request (and tracked response) is counted as
//! captured, redacted before it can leave the host (a message that cannot be redacted is not
//! sent at all: fail closed), given the shard of its client connection, and handed to every
//! output. Drops and protocol switches reported by reassembly are counted here too.

use tapwire_shared::redact::Redaction;
use tapwire_shared::{RequestRecord, ResponseRecord};

use crate::metrics::{DropReason, ListenerMetrics};
use crate::packet::FlowKey;
use crate::reassembly::{FlowEvent, FlowObserver};
use crate::shard::shard_of;
use crate::sink::{Captured, RecordSink};

/// Turns reassembly's events into records for the outputs, and counts.
pub struct RecordStage {
    redaction: Redaction,
    sinks: Vec<Box<dyn RecordSink>>,
    metrics: ListenerMetrics,
}

impl RecordStage {
    pub fn new(
        metrics: ListenerMetrics,
        redaction: Redaction,
        sinks: Vec<Box<dyn RecordSink>>,
    ) -> Self {
        RecordStage {
            redaction,
            sinks,
            metrics,
        }
    }

    pub fn metrics(&self) -> &ListenerMetrics {
        &self.metrics
    }

    /// Wakes every output's consumer for the records handed over since the last time.
    pub fn flush(&self) {
        for sink in &self.sinks {
            sink.flush();
        }
    }

    fn hand_over(&self, record: Captured, shard: u32) {
        if let [only] = self.sinks.as_slice() {
            return only.take(record, shard);
        }
        for sink in &self.sinks {
            // Message bytes are shared, not copied.
            sink.take(record.clone(), shard);
        }
    }
}

impl FlowObserver for RecordStage {
    fn event(&mut self, flow: FlowKey, event: FlowEvent) {
        match event {
            FlowEvent::Request {
                id,
                bytes,
                started_at_ns,
            } => {
                self.metrics.requests_captured.inc();
                let Ok(request) = self.redaction.apply(&bytes) else {
                    self.metrics.dropped(DropReason::Unredactable).inc();
                    return;
                };
                let record = RequestRecord {
                    id,
                    captured_at_ns: started_at_ns,
                    client: flow.client,
                    server: flow.server,
                    request,
                };
                self.hand_over(
                    Captured::Request(record),
                    shard_of(flow.client, flow.server),
                );
            }
            FlowEvent::Response {
                request_id,
                bytes,
                started_at_ns,
                latency_ns,
            } => {
                self.metrics.responses_captured.inc();
                let Ok(response) = self.redaction.apply(&bytes) else {
                    self.metrics
                        .response_dropped(DropReason::Unredactable)
                        .inc();
                    return;
                };
                let record = ResponseRecord {
                    request_id,
                    captured_at_ns: started_at_ns,
                    latency_ns,
                    response,
                };
                // The connection's shard, so the response follows its request.
                self.hand_over(
                    Captured::Response(record),
                    shard_of(flow.client, flow.server),
                );
            }
            FlowEvent::Dropped(reason) => {
                self.metrics.dropped(reason).inc();
            }
            FlowEvent::ResponseDropped(reason) => {
                self.metrics.response_dropped(reason).inc();
            }
            FlowEvent::Switched(switch) => {
                self.metrics.switched(switch).inc();
            }
        }
    }

    fn flow_shed(&mut self) {
        self.metrics.flows_shed.inc();
    }
}
