//! `--output-stdout`: every request that passes the global stages printed, as it would be
//! sent (global rewrites applied), in GoReplay's `.gor` format; with `--prettify` bodies are
//! shown decoded. A sink like a target, beside or instead of them: with `--input-file` and no
//! target it shows what a replay would send without sending anything.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use http::header;
use tapwire_runtime::gor_output::{Destination, GorOutput, GorOutputSettings, OutputDone};
use tapwire_shared::gor::{GorHeader, GorMessage, PayloadType};

use crate::metrics::ReplayerMetrics;
use crate::request::ReplayRequest;
use crate::sink::ReplaySink;

/// Message bytes waiting to be printed at most.
const QUEUE_BYTES: usize = 16 << 20;

pub struct PrintSink {
    output: GorOutput,
}

impl PrintSink {
    pub fn start(
        prettify: bool,
        metrics: &ReplayerMetrics,
    ) -> std::io::Result<(PrintSink, OutputDone)> {
        let settings = GorOutputSettings {
            destination: Destination::Stdout,
            prettify,
            queue_bytes: QUEUE_BYTES,
        };
        let (output, done) = GorOutput::start(settings, metrics.output_tally(|m| &m.printed))?;
        Ok((PrintSink { output }, done))
    }
}

impl ReplaySink for PrintSink {
    fn offer(&self, request: &Arc<ReplayRequest>) {
        self.output.write(GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Request,
                id: request.message_id(),
                timestamp_ns: request.captured_at_ns,
                latency_ns: None,
            },
            payload: as_sent(request).freeze(),
        });
    }
}

/// The request as a target would get it (but for the target's own rewrites and Host): its
/// body whole, with its length.
fn as_sent(request: &ReplayRequest) -> BytesMut {
    let mut out = BytesMut::with_capacity(256 + request.body.len());
    out.put_slice(request.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(request.path_and_query.as_str().as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &request.headers {
        let replaced = name == header::HOST && request.host_override.is_some();
        if replaced || name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if let Some(host) = &request.host_override {
        out.put_slice(b"host: ");
        out.put_slice(host.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !request.body.is_empty() {
        out.put_slice(format!("content-length: {}\r\n", request.body.len()).as_bytes());
    }
    out.put_slice(b"\r\n");
    out.put_slice(&request.body);
    out
}
