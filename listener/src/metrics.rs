//! The listener's counters: one struct of handles, registered once, read for `/metrics` and for
//! the exit summary. The accounting they must satisfy:
//! `captured + restored = sent + buffered + dropped(by reason, after capture)`, where buffered
//! is what is queued, in flight or spooled, and restored what an earlier run left in the spool.
//! Requests given up before they became records (reasons [`DropReason::is_before_capture`]:
//! a gap, a malformed or too large request, one cut short or never acknowledged by the server,
//! a shed flow) are counted beside them: every request seen is captured or dropped.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tapwire_shared::http1::ProtocolSwitch;

/// Why a captured request (or the rest of a flow) did not reach the replayer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The queue to the replayer link was full.
    QueueFull,
    /// The flow stopped being HTTP/1.x; the rest of that connection is skipped.
    MalformedHttp,
    /// The request exceeded `--max-request-bytes`.
    TooLarge,
    /// Bytes of the flow never arrived (kernel drop, or a hole that did not fill in time).
    CaptureGap,
    /// The flow was shed to keep memory or the number of flows under its limit.
    FlowShed,
    /// Responses only: a response to a request that was not captured.
    Unpaired,
    /// Sent on three streams in a row that failed without acknowledging anything.
    Unacknowledged,
    /// Still queued or unacknowledged when the shutdown deadline passed (and not spooled).
    Shutdown,
    /// Evicted from a full buffer to make room for newer records (`--buffer-policy drop-oldest`).
    Evicted,
    /// The spool was full (`--spool-bytes`).
    SpoolFull,
    /// The spool could not be written or read back.
    SpoolError,
    /// Redaction was asked for but the message could not be redacted (e.g. a JSON body that
    /// is not valid JSON, or compressed); it is not sent rather than sent unredacted.
    Unredactable,
    /// A file (or stdout) output's queue was full, or its total size limit reached.
    FileFull,
    /// A file (or stdout) output could not be written.
    FileError,
    /// A request whose framing or size production's server must refuse and close on (both
    /// Content-Length and Transfer-Encoding, a coding other than chunked, repeated framing
    /// headers, a request line or head past the limits...): it and the rest of its connection
    /// are not replayed, since production never served what followed.
    AmbiguousFraming,
    /// The connection ended (FIN, RST, idleness, or the listener stopping) in the middle of
    /// the request.
    Incomplete,
    /// Production's server never acknowledged the request's bytes (a spoofed segment, bytes
    /// outside the connection's window, or a connection gone before the ACK): never replayed.
    UnacknowledgedByServer,
}

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        DropReason::QueueFull,
        DropReason::MalformedHttp,
        DropReason::TooLarge,
        DropReason::CaptureGap,
        DropReason::FlowShed,
        DropReason::Unpaired,
        DropReason::Unacknowledged,
        DropReason::Shutdown,
        DropReason::Evicted,
        DropReason::SpoolFull,
        DropReason::SpoolError,
        DropReason::Unredactable,
        DropReason::FileFull,
        DropReason::FileError,
        DropReason::AmbiguousFraming,
        DropReason::Incomplete,
        DropReason::UnacknowledgedByServer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::MalformedHttp => "malformed_http",
            DropReason::TooLarge => "too_large",
            DropReason::CaptureGap => "capture_gap",
            DropReason::FlowShed => "flow_shed",
            DropReason::Unpaired => "unpaired",
            DropReason::Unacknowledged => "unacknowledged",
            DropReason::Shutdown => "shutdown",
            DropReason::Evicted => "evicted",
            DropReason::SpoolFull => "spool_full",
            DropReason::SpoolError => "spool_error",
            DropReason::Unredactable => "unredactable",
            DropReason::FileFull => "file_full",
            DropReason::FileError => "file_error",
            DropReason::AmbiguousFraming => "ambiguous_framing",
            DropReason::Incomplete => "incomplete",
            DropReason::UnacknowledgedByServer => "unacknowledged_by_server",
        }
    }

    /// Drops of a file (or stdout) output alone: the replayer link may still have the record.
    pub fn is_file_output(self) -> bool {
        matches!(self, DropReason::FileFull | DropReason::FileError)
    }

    /// Drops decided by reassembly and cutting, before a request became a record: never part
    /// of `captured`, so never part of what is buffered.
    pub fn is_before_capture(self) -> bool {
        matches!(
            self,
            DropReason::MalformedHttp
                | DropReason::AmbiguousFraming
                | DropReason::TooLarge
                | DropReason::CaptureGap
                | DropReason::FlowShed
                | DropReason::Incomplete
                | DropReason::UnacknowledgedByServer
        )
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: DropReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReplayerLabel {
    replayer: String,
}

/// The outputs that write records themselves, beside the replayer link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriterOutput {
    File,
    Stdout,
    Null,
}

impl WriterOutput {
    pub const ALL: [WriterOutput; 3] =
        [WriterOutput::File, WriterOutput::Stdout, WriterOutput::Null];

    pub fn as_str(self) -> &'static str {
        match self {
            WriterOutput::File => "file",
            WriterOutput::Stdout => "stdout",
            WriterOutput::Null => "null",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutputLabel {
    output: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SwitchLabel {
    reason: &'static str,
}

fn switch_name(switch: ProtocolSwitch) -> &'static str {
    match switch {
        ProtocolSwitch::Upgrade => "upgrade",
        ProtocolSwitch::Connect => "connect",
    }
}

/// Handles to every listener metric. Cloning shares the underlying counters.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub packets_captured: Counter,
    /// Packets that were not decodable IPv4/IPv6 TCP.
    pub packets_malformed: Counter,
    pub requests_captured: Counter,
    /// Records the replayer acknowledged.
    pub records_sent: Counter,
    /// Kernel-side drops reported by libpcap (cumulative).
    pub pcap_dropped_packets: Gauge,
    pub flows_active: Gauge,
    /// Flows dropped to stay under --max-buffered-bytes or --max-flows.
    pub flows_shed: Counter,
    /// Bytes held for incomplete requests and out-of-order segments.
    pub buffered_bytes: Gauge,
    /// Records captured or restored and neither acknowledged nor dropped: queued, in flight
    /// or spooled.
    pub records_buffered: Gauge,
    /// Records found in the spool at start, left by an earlier run.
    pub records_restored: Counter,
    pub responses_restored: Counter,
    /// Records on disk in the spool now (part of `records_buffered`).
    pub records_spooled: Gauge,
    /// Records handed from a replayer that went down to one that is up.
    pub records_rerouted: Counter,
    /// Records sent again because their batch was not acknowledged: the only records a
    /// replayer can receive twice.
    pub records_resent: Counter,
    replayer_up: Family<ReplayerLabel, Gauge>,
    /// Flows that left HTTP/1.x (websocket upgrade, CONNECT tunnel).
    switched: [Counter; 2],
    /// With --track-responses: complete responses paired with a captured request.
    pub responses_captured: Counter,
    pub responses_sent: Counter,
    responses_dropped: [Counter; DropReason::ALL.len()],
    /// One counter per reason, resolved up front so the hot path never looks labels up.
    dropped: [Counter; DropReason::ALL.len()],
    /// Requests written by each file-like output.
    written: [Counter; WriterOutput::ALL.len()],
    /// Responses written by the file-like outputs.
    pub responses_written: Counter,
    /// Whether records go to replayers: only then are they buffered for the link.
    link: bool,
}

impl ListenerMetrics {
    /// Registers every metric under `tapwire_listener_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("tapwire_listener");
        let dropped_family = Family::<ReasonLabel, Counter>::default();
        let dropped = DropReason::ALL
            .map(|reason| dropped_family.get_or_create_owned(&ReasonLabel { reason }));
        let responses_dropped_family = Family::<ReasonLabel, Counter>::default();
        let responses_dropped = DropReason::ALL
            .map(|reason| responses_dropped_family.get_or_create_owned(&ReasonLabel { reason }));
        let switched_family = Family::<SwitchLabel, Counter>::default();
        let switched = [ProtocolSwitch::Upgrade, ProtocolSwitch::Connect].map(|switch| {
            switched_family.get_or_create_owned(&SwitchLabel {
                reason: switch_name(switch),
            })
        });
        let written_family = Family::<OutputLabel, Counter>::default();
        let written = WriterOutput::ALL.map(|output| {
            written_family.get_or_create_owned(&OutputLabel {
                output: output.as_str(),
            })
        });
        let metrics = ListenerMetrics {
            packets_captured: Counter::default(),
            packets_malformed: Counter::default(),
            requests_captured: Counter::default(),
            records_sent: Counter::default(),
            pcap_dropped_packets: Gauge::default(),
            flows_active: Gauge::default(),
            flows_shed: Counter::default(),
            buffered_bytes: Gauge::default(),
            records_buffered: Gauge::default(),
            records_restored: Counter::default(),
            responses_restored: Counter::default(),
            records_spooled: Gauge::default(),
            records_rerouted: Counter::default(),
            records_resent: Counter::default(),
            replayer_up: Family::default(),
            switched,
            responses_captured: Counter::default(),
            responses_sent: Counter::default(),
            responses_dropped,
            dropped,
            written,
            responses_written: Counter::default(),
            link: true,
        };
        registry.register(
            "packets_captured",
            "TCP packets read from the capture handle",
            metrics.packets_captured.clone(),
        );
        registry.register(
            "packets_malformed",
            "Captured packets that were not decodable IPv4/IPv6 TCP",
            metrics.packets_malformed.clone(),
        );
        registry.register(
            "requests_captured",
            "Complete HTTP requests cut from reassembled TCP streams",
            metrics.requests_captured.clone(),
        );
        registry.register(
            "records_sent",
            "Records acknowledged by a replayer",
            metrics.records_sent.clone(),
        );
        registry.register(
            "records_dropped",
            "Requests that did not reach a replayer, by reason",
            dropped_family,
        );
        registry.register(
            "pcap_dropped_packets",
            "Packets the kernel dropped because the capture buffer was full",
            metrics.pcap_dropped_packets.clone(),
        );
        registry.register(
            "flows_active",
            "TCP flows being reassembled",
            metrics.flows_active.clone(),
        );
        registry.register(
            "flows_shed",
            "Flows dropped to stay under the memory or flow-count limit",
            metrics.flows_shed.clone(),
        );
        registry.register(
            "buffered_bytes",
            "Bytes held for incomplete requests and out-of-order segments",
            metrics.buffered_bytes.clone(),
        );
        registry.register(
            "responses_captured",
            "Production responses paired with a captured request (--track-responses)",
            metrics.responses_captured.clone(),
        );
        registry.register(
            "responses_sent",
            "Responses acknowledged by a replayer",
            metrics.responses_sent.clone(),
        );
        registry.register(
            "responses_dropped",
            "Responses that did not reach a replayer, by reason",
            responses_dropped_family,
        );
        registry.register(
            "records_buffered",
            "Records captured (or restored) and not yet acknowledged or dropped, in memory or spooled (captured + restored = sent + buffered + dropped)",
            metrics.records_buffered.clone(),
        );
        registry.register(
            "records_restored",
            "Records found in the spool at start, left there by an earlier run",
            metrics.records_restored.clone(),
        );
        registry.register(
            "records_spooled",
            "Records on disk in the spool",
            metrics.records_spooled.clone(),
        );
        registry.register(
            "records_rerouted",
            "Records and responses handed from a replayer that went down to one that is up",
            metrics.records_rerouted.clone(),
        );
        registry.register(
            "records_resent",
            "Requests sent again because their batch was not acknowledged (the only ones a replayer may receive twice)",
            metrics.records_resent.clone(),
        );
        registry.register(
            "replayer_up",
            "1 while the link to this replayer is streaming",
            metrics.replayer_up.clone(),
        );
        registry.register(
            "records_written",
            "Requests written by an output (file, stdout, null)",
            written_family,
        );
        registry.register(
            "responses_written",
            "Responses written by the file and stdout outputs",
            metrics.responses_written.clone(),
        );
        registry.register(
            "flows_switched",
            "Connections that left HTTP/1.x after a request (upgrade, connect); the rest of each is skipped",
            switched_family,
        );
        metrics
    }

    /// Records go to no replayer (only to files, stdout or nowhere): nothing is buffered for a
    /// link, and the accounting says so.
    pub fn without_link(mut self) -> Self {
        self.link = false;
        self
    }

    /// Records written by `output`.
    pub fn written(&self, output: WriterOutput) -> &Counter {
        &self.written[output as usize]
    }

    pub fn replayer_up(&self, replayer: &str) -> Gauge {
        self.replayer_up.get_or_create_owned(&ReplayerLabel {
            replayer: replayer.to_owned(),
        })
    }

    pub fn dropped(&self, reason: DropReason) -> &Counter {
        &self.dropped[reason as usize]
    }

    pub fn switched(&self, switch: ProtocolSwitch) -> &Counter {
        &self.switched[match switch {
            ProtocolSwitch::Upgrade => 0,
            ProtocolSwitch::Connect => 1,
        }]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum()
    }

    pub fn response_dropped(&self, reason: DropReason) -> &Counter {
        &self.responses_dropped[reason as usize]
    }

    pub fn responses_dropped_total(&self) -> u64 {
        self.responses_dropped.iter().map(Counter::get).sum()
    }

    /// Records captured or restored and neither acknowledged by a replayer nor dropped on the
    /// way there (a file output's drops do not count: the link may still have the record).
    pub fn buffered(&self) -> u64 {
        if !self.link {
            return 0;
        }
        (self.requests_captured.get() + self.records_restored.get())
            .saturating_sub(self.records_sent.get() + link_drops(&self.dropped))
    }

    /// Responses captured or restored and neither acknowledged nor dropped on the way.
    pub fn responses_buffered(&self) -> u64 {
        if !self.link {
            return 0;
        }
        (self.responses_captured.get() + self.responses_restored.get())
            .saturating_sub(self.responses_sent.get() + link_drops(&self.responses_dropped))
    }

    /// Requests seen: captured as records, or given up before (reasons
    /// [`DropReason::is_before_capture`]).
    pub fn requests_seen(&self) -> u64 {
        self.requests_captured.get()
            + DropReason::ALL
                .into_iter()
                .filter(|reason| reason.is_before_capture())
                .map(|reason| self.dropped(reason).get())
                .sum::<u64>()
    }

    /// Records that reached an output: acknowledged by a replayer, or written by a file,
    /// stdout or null output.
    pub fn records_delivered(&self) -> u64 {
        self.records_sent.get() + self.written.iter().map(Counter::get).sum::<u64>()
    }

    /// One line for logs: every count that the accounting needs.
    pub fn summary(&self) -> String {
        let mut line = format!("captured={}", self.requests_captured.get());
        if self.link {
            let _ = write!(
                line,
                " sent={} buffered={}",
                self.records_sent.get(),
                self.buffered()
            );
        }
        let _ = write!(line, " dropped={}", self.dropped_total());
        for output in WriterOutput::ALL {
            let written = self.written(output).get();
            if written > 0 {
                let _ = write!(line, " written_{}={written}", output.as_str());
            }
        }
        let (restored, spooled) = (self.records_restored.get(), self.records_spooled.get());
        if restored > 0 || spooled > 0 {
            let _ = write!(line, " restored={restored} spooled={spooled}");
        }
        let (rerouted, resent) = (self.records_rerouted.get(), self.records_resent.get());
        if rerouted > 0 || resent > 0 {
            let _ = write!(line, " rerouted={rerouted} resent={resent}");
        }
        for reason in DropReason::ALL {
            let count = self.dropped(reason).get();
            if count > 0 {
                let _ = write!(line, " dropped_{}={count}", reason.as_str());
            }
        }
        let _ = write!(
            line,
            " packets={} packets_malformed={} pcap_kernel_drops={} flows_shed={}",
            self.packets_captured.get(),
            self.packets_malformed.get(),
            self.pcap_dropped_packets.get(),
            self.flows_shed.get()
        );
        if self.responses_captured.get() + self.responses_dropped_total() > 0 {
            let _ = write!(
                line,
                " responses_captured={} responses_sent={} responses_dropped={}",
                self.responses_captured.get(),
                self.responses_sent.get(),
                self.responses_dropped_total()
            );
            if self.responses_written.get() > 0 {
                let _ = write!(line, " responses_written={}", self.responses_written.get());
            }
            for reason in DropReason::ALL {
                let count = self.response_dropped(reason).get();
                if count > 0 {
                    let _ = write!(line, " responses_dropped_{}={count}", reason.as_str());
                }
            }
        }
        for switch in [ProtocolSwitch::Upgrade, ProtocolSwitch::Connect] {
            let count = self.switched(switch).get();
            if count > 0 {
                let _ = write!(line, " switched_{}={count}", switch_name(switch));
            }
        }
        line
    }
}

/// Drops of captured records on the way to the replayers: every reason but a file output's
/// own and those decided before capture.
fn link_drops(dropped: &[Counter; DropReason::ALL.len()]) -> u64 {
    DropReason::ALL
        .iter()
        .zip(dropped)
        .filter(|(reason, _)| !reason.is_file_output() && !reason.is_before_capture())
        .map(|(_, counter)| counter.get())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_indexes_its_own_counter() {
        for (index, reason) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason:?}");
        }
    }
}
