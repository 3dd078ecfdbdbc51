//! `--output-stdout`: every request that passes the global stages printed, as it would be
//! sent (global rewrites applied), in GoReplay's `.gor` format; with `--prettify` bodies are
//! shown decoded. A sink like a target, beside or instead of them: with `--input-file` and no
//! target it shows what a replay would send without sending anything.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tapwire_runtime::gor_output::{Destination, GorOutput, GorOutputSettings, OutputDone};
use tapwire_shared::gor::{GorHeader, GorMessage, PayloadType};

use crate::metrics::ReplayerMetrics;
use crate::request::{HostRule, ReplayRequest};
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

/// The request as a target would get it, but for the target's own rewrites and Host.
fn as_sent(request: &ReplayRequest) -> BytesMut {
    let mut out = BytesMut::with_capacity(256 + request.body.len());
    let host = match &request.host_override {
        Some(host) => HostRule::Set(host),
        None => HostRule::Keep,
    };
    request.write_head(&mut out, &request.path_and_query, &request.fields, host);
    out.put_slice(&request.body);
    out
}
