//! Where a reassembled message becomes a record. [`RecordStage`] receives what reassembly
//! reports, on the capture thread: each complete request (and tracked response) is counted as
//! captured, redacted before it can leave the host (a message that cannot be redacted is not
//! sent at all: fail closed), given the shard of its client connection, and handed to every
//! output. With `--real-ip-header` each request first gets its client's address in a header.
//! Drops and protocol switches reported by reassembly are counted here too.

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use tapwire_shared::http1::{self, HttpError};
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
    real_ip_header: Option<String>,
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
            real_ip_header: None,
        }
    }

    /// Every request carries its client's address in the header `name`.
    pub fn with_real_ip_header(mut self, name: Option<String>) -> Self {
        self.real_ip_header = name;
        self
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
                let bytes = match &self.real_ip_header {
                    Some(name) => match with_header(&bytes, name, flow.client.ip()) {
                        Ok(bytes) => bytes,
                        // The cutter only hands over requests it parsed, so this should not
                        // happen; if it does, the client's own value must not go on as ours.
                        Err(_) => {
                            self.metrics.dropped(DropReason::MalformedHttp).inc();
                            return;
                        }
                    },
                    None => bytes,
                };
                // Redacted last, so that nothing added escapes it.
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

/// `request` with the header `name` set to `ip`, as GoReplay's `--input-raw-realip-header`
/// does: the value of a field of that name sent by the client is replaced (every such field,
/// where GoReplay replaces the first: a second copy would still carry what the client claimed);
/// otherwise `name: ip` is added as the last header. Every other byte is kept.
fn with_header(request: &Bytes, name: &str, ip: IpAddr) -> Result<Bytes, HttpError> {
    let layout = http1::request_layout(request)?;
    let value = ip.to_string();
    let mut out = BytesMut::with_capacity(request.len() + name.len() + value.len() + 4);
    let mut copied = 0;
    let mut replaced = false;
    for field in &layout.fields {
        if request[field.name.clone()].eq_ignore_ascii_case(name.as_bytes()) {
            out.extend_from_slice(&request[copied..field.value.start]);
            out.extend_from_slice(value.as_bytes());
            copied = field.value.end;
            replaced = true;
        }
    }
    if !replaced {
        let headers_end = layout
            .fields
            .last()
            .map_or(layout.line_tail.end, |field| field.line.end);
        out.extend_from_slice(&request[..headers_end]);
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        copied = headers_end;
    }
    out.extend_from_slice(&request[copied..]);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    fn set(request: &str) -> String {
        let out = with_header(
            &Bytes::copy_from_slice(request.as_bytes()),
            "X-Real-IP",
            CLIENT,
        );
        String::from_utf8(out.unwrap().to_vec()).unwrap()
    }

    #[test]
    fn the_client_address_is_added_as_the_last_header() {
        assert_eq!(
            set("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"),
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Real-IP: 10.1.2.3\r\n\r\nhi"
        );
        assert_eq!(
            set("GET / HTTP/1.0\r\n\r\n"),
            "GET / HTTP/1.0\r\nX-Real-IP: 10.1.2.3\r\n\r\n"
        );
    }

    #[test]
    fn a_value_the_client_sent_is_replaced_in_every_copy() {
        assert_eq!(
            set("GET / HTTP/1.1\r\nx-real-ip: 6.6.6.6\r\nHost: x\r\nX-Real-IP:7.7.7.7\r\n\r\n"),
            "GET / HTTP/1.1\r\nx-real-ip: 10.1.2.3\r\nHost: x\r\nX-Real-IP:10.1.2.3\r\n\r\n"
        );
    }
}
