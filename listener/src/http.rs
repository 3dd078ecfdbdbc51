//! Cutting a connection's ordered byte streams into complete HTTP/1.x messages: requests from
//! the client ([`RequestCutter`]) and, with `--track-responses`, responses from the server
//! ([`ResponseCutter`]). The grammar lives in `tapwire_shared::http1`; this module owns the
//! per-flow state: buffered bytes, which part of a message is awaited, when to give up.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tapwire_shared::http1::{
    self, BodyFraming, ChunkedScanner, HttpError, ProtocolSwitch, RequestLineSearch,
};

use crate::metrics::DropReason;

/// A cutter of one direction of a connection, as the reassembler drives it.
pub trait Cutter {
    type Event;
    /// Appends in-order stream bytes captured at `now_ns`; emits every message they complete.
    fn push<F: FnMut(Self::Event)>(&mut self, data: &[u8], now_ns: u64, on_event: &mut F);
    /// `missing` bytes of the stream will never arrive.
    fn skip_gap<F: FnMut(Self::Event)>(&mut self, missing: u64, on_event: &mut F);
    /// The sender closed its side (FIN or RST): a close-delimited message ends here.
    fn close<F: FnMut(Self::Event)>(&mut self, now_ns: u64, on_event: &mut F);
    fn is_broken(&self) -> bool;
    fn buffered_bytes(&self) -> usize;
    /// Bytes are held for a message that is not complete yet.
    fn has_partial_message(&self) -> bool;
}

/// One direction's bytes not yet cut into messages, the capture time of the first of them, and
/// how much of a message already given up is still to arrive (skipped, never buffered).
#[derive(Debug, Default)]
struct MessageBuffer {
    bytes: BytesMut,
    started_at_ns: u64,
    skipping: u64,
}

impl MessageBuffer {
    /// Appends `data`, first passing over bytes of a message already given up. False when
    /// nothing was left to append.
    fn append(&mut self, data: &[u8], now_ns: u64) -> bool {
        let skipped = self.skipping.min(data.len() as u64);
        self.skipping -= skipped;
        let data = &data[skipped as usize..];
        if data.is_empty() {
            return false;
        }
        if self.bytes.is_empty() {
            self.started_at_ns = now_ns;
        }
        self.bytes.extend_from_slice(data);
        true
    }

    /// Takes the first `len` bytes as a complete message, with its first byte's capture time.
    /// Bytes left over belong to the next (pipelined) message, which started at `now_ns`.
    fn take(&mut self, len: usize, now_ns: u64) -> (Bytes, u64) {
        let started_at_ns = std::mem::replace(&mut self.started_at_ns, now_ns);
        let message = if len == self.bytes.len() {
            // The usual case, nothing pipelined behind it: hand over the buffer itself, which
            // costs no allocation, where splitting it would allocate a shared header.
            std::mem::take(&mut self.bytes)
        } else {
            self.bytes.split_to(len)
        };
        (message.freeze(), started_at_ns)
    }

    /// Gives up the `len`-byte message at the front: drops what is buffered of it and skips
    /// the rest as it arrives.
    fn abandon(&mut self, len: u64) {
        let buffered = self.bytes.len() as u64;
        if buffered >= len {
            self.bytes.advance(len as usize);
        } else {
            self.clear();
            self.skipping = len - buffered;
        }
    }

    /// Frees everything: a broken or resynchronising flow may live until FIN or idleness.
    fn clear(&mut self) {
        self.bytes = BytesMut::new();
        self.skipping = 0;
    }
}

/// What the request cutter produces for the reassembler to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum CutEvent {
    /// A complete request, byte for byte, with the capture time of its first byte.
    Request { bytes: Bytes, started_at_ns: u64 },
    /// A request (or the rest of the flow) was given up, for this reason.
    Dropped(DropReason),
    /// The connection switched protocols after a request; its remaining bytes are not HTTP/1.x
    /// and are skipped.
    Switched(ProtocolSwitch),
}

#[derive(Debug)]
enum Phase {
    /// Waiting for a complete request head.
    Head,
    /// Position in the stream unknown (after a gap, or a connection already open at start):
    /// skipping to the next request line.
    Resync,
    /// Head parsed; the request ends at this many buffered bytes.
    Sized {
        request_len: usize,
        switch: Option<ProtocolSwitch>,
    },
    /// Head parsed; walking a chunked body that starts after `head_len` bytes.
    Chunked {
        head_len: usize,
        scanner: ChunkedScanner,
        switch: Option<ProtocolSwitch>,
    },
    /// A chunked request given up as too large: its body is walked by its chunk sizes as it
    /// streams past, holding at most an unfinished chunk-size line, however large it is.
    SkipChunked { scanner: ChunkedScanner },
    /// The stream is not HTTP/1.x (or no longer is); everything after is ignored.
    Broken,
}

/// Per-flow request cutter. Feed it in-order stream bytes with [`RequestCutter::push`].
///
/// Rules (the grammar's strictness is in `tapwire_shared::http1`):
/// - A request production's server must refuse ([`HttpError::is_ambiguous_framing`]) is
///   counted `ambiguous_framing` and ends the flow: the server closed the connection on it, so
///   nothing pipelined after it was served. Bytes that are not HTTP/1.x at all end the flow
///   as `malformed_http`.
/// - A request larger than `--max-request-bytes` is skipped by its own framing (its length,
///   or its chunk sizes), never by looking for a request line inside its body, and counted
///   `too_large`; the next request is cut where it really starts.
/// - `CONNECT` ends HTTP on the connection after it (a tunnel, or nginx's 400 and close).
///   `Upgrade` does not by itself: the server may ignore it. The flow switches when production
///   answers `101` ([`RequestCutter::switch_protocols`], with tracked responses), or when the
///   bytes after the upgrade request are not HTTP/1.x (reported as a switch, not as malformed).
#[derive(Debug)]
pub struct RequestCutter {
    buffer: MessageBuffer,
    phase: Phase,
    max_request_bytes: usize,
    /// A protocol switch to report right after the request that caused it.
    switched: Option<ProtocolSwitch>,
    /// The last request asked for an upgrade and nothing has shown the server ignored it.
    upgrade_requested: bool,
}

impl RequestCutter {
    /// A cutter for a connection seen from its start.
    pub fn new(max_request_bytes: usize) -> Self {
        RequestCutter {
            buffer: MessageBuffer::default(),
            phase: Phase::Head,
            max_request_bytes,
            switched: None,
            upgrade_requested: false,
        }
    }

    /// A cutter for a connection first seen mid-stream: it starts at the next request line.
    pub fn resynchronising(max_request_bytes: usize) -> Self {
        RequestCutter {
            phase: Phase::Resync,
            ..RequestCutter::new(max_request_bytes)
        }
    }

    /// Bytes held for requests not yet complete.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.bytes.len()
    }

    pub fn is_broken(&self) -> bool {
        matches!(self.phase, Phase::Broken)
    }

    /// Production answered `101 Switching Protocols`: from now on the client speaks another
    /// protocol, skipped. True if the flow was still being cut, so the switch is to be
    /// reported (once).
    pub fn switch_protocols(&mut self) -> bool {
        if self.is_broken() {
            return false;
        }
        self.phase = Phase::Broken;
        self.buffer.clear();
        true
    }

    /// `missing` bytes of the stream will never arrive. Only the request they fall in is lost:
    /// when they fall inside a body of known length or inside a chunk's data, the cutter skips
    /// exactly to the next request, otherwise it resynchronises at the next request line.
    pub fn skip_gap(&mut self, missing: u64, on_event: &mut impl FnMut(CutEvent)) {
        if matches!(self.phase, Phase::Broken | Phase::Resync) {
            return;
        }
        // The gap falls inside a request already given up: nothing more is lost.
        if self.buffer.skipping > missing {
            self.buffer.skipping -= missing;
            return;
        }
        let buffered = self.buffer.bytes.len() as u64;
        let already_dropped = matches!(self.phase, Phase::SkipChunked { .. });
        match std::mem::replace(&mut self.phase, Phase::Resync) {
            // The gap ends inside the current request's known length: skip to its end.
            Phase::Sized { request_len, .. } if buffered + missing < request_len as u64 => {
                self.buffer.abandon(request_len as u64 - missing);
                self.phase = Phase::Head;
            }
            Phase::Chunked { mut scanner, .. } | Phase::SkipChunked { mut scanner } => {
                self.buffer.clear();
                // Inside chunk data (all of it buffered so far examined), the chunk sizes
                // still say where the request ends; otherwise resynchronise.
                scanner.forget_scanned();
                if scanner.skip_missing(missing) {
                    self.phase = Phase::SkipChunked { scanner };
                }
            }
            // Where the request ends is lost with the gap: resynchronise.
            _ => self.buffer.clear(),
        }
        // A request already given up was counted then.
        if already_dropped {
            return;
        }
        on_event(CutEvent::Dropped(DropReason::CaptureGap));
    }

    /// Appends in-order stream bytes captured at `now_ns` and emits every request they complete.
    pub fn push(&mut self, data: &[u8], now_ns: u64, on_event: &mut impl FnMut(CutEvent)) {
        if self.is_broken() || !self.buffer.append(data, now_ns) {
            return;
        }
        while let Some(event) = self.cut_next(now_ns) {
            on_event(event);
            if let Some(switch) = self.switched.take() {
                on_event(CutEvent::Switched(switch));
            }
        }
    }

    /// Advances the state machine over buffered bytes; `None` means more bytes are needed.
    fn cut_next(&mut self, now_ns: u64) -> Option<CutEvent> {
        loop {
            let buffered = &self.buffer.bytes;
            match &mut self.phase {
                Phase::Resync => match http1::find_request_line(buffered) {
                    RequestLineSearch::Found(start) => {
                        self.buffer.bytes.advance(start);
                        self.phase = Phase::Head;
                    }
                    RequestLineSearch::NotYet { discard } => {
                        self.buffer.bytes.advance(discard);
                        return None;
                    }
                },
                Phase::Head => match http1::parse_request_head(buffered) {
                    Ok(None) => return None,
                    Ok(Some(head)) => {
                        let switch = head.switch;
                        self.phase = match head.framing {
                            // A request body is never delimited by the close.
                            BodyFraming::Empty | BodyFraming::UntilClose
                                if head.len <= self.max_request_bytes =>
                            {
                                Phase::Sized {
                                    request_len: head.len,
                                    switch,
                                }
                            }
                            BodyFraming::Empty | BodyFraming::UntilClose => {
                                self.buffer.abandon(head.len as u64);
                                return Some(CutEvent::Dropped(DropReason::TooLarge));
                            }
                            BodyFraming::Length(body_len) => {
                                let request_len = (head.len as u64).saturating_add(body_len);
                                if request_len > self.max_request_bytes as u64 {
                                    self.buffer.abandon(request_len);
                                    return Some(CutEvent::Dropped(DropReason::TooLarge));
                                }
                                Phase::Sized {
                                    request_len: request_len as usize,
                                    switch,
                                }
                            }
                            BodyFraming::Chunked => Phase::Chunked {
                                head_len: head.len,
                                scanner: ChunkedScanner::default(),
                                switch,
                            },
                        }
                    }
                    Err(error) => return Some(self.refuse(error)),
                },
                Phase::Sized {
                    request_len,
                    switch,
                } => {
                    let (request_len, switch) = (*request_len, *switch);
                    if buffered.len() < request_len {
                        return None;
                    }
                    return Some(self.emit(request_len, switch, now_ns));
                }
                Phase::Chunked {
                    head_len,
                    scanner,
                    switch,
                } => {
                    let (head_len, switch) = (*head_len, *switch);
                    match scanner.advance(&buffered[head_len..], |_| {}) {
                        Ok(Some(body_len)) if head_len + body_len > self.max_request_bytes => {
                            // Complete in one go, but too large all the same.
                            self.buffer.bytes.advance(head_len + body_len);
                            self.buffer.started_at_ns = now_ns;
                            self.phase = Phase::Head;
                            return Some(CutEvent::Dropped(DropReason::TooLarge));
                        }
                        Ok(Some(body_len)) => {
                            return Some(self.emit(head_len + body_len, switch, now_ns));
                        }
                        Ok(None) if buffered.len() > self.max_request_bytes => {
                            // Too large to hold: walk the rest of its chunks as they pass.
                            let mut scanner = std::mem::take(scanner);
                            let scanned = head_len + scanner.forget_scanned();
                            self.buffer.bytes.advance(scanned);
                            self.phase = Phase::SkipChunked { scanner };
                            return Some(CutEvent::Dropped(DropReason::TooLarge));
                        }
                        Ok(None) => return None,
                        Err(error) => return Some(self.refuse(error)),
                    }
                }
                Phase::SkipChunked { scanner } => match scanner.advance(buffered, |_| {}) {
                    Ok(Some(body_len)) => {
                        self.buffer.bytes.advance(body_len);
                        // What is left started arriving with the latest bytes.
                        self.buffer.started_at_ns = now_ns;
                        self.phase = Phase::Head;
                    }
                    Ok(None) => {
                        let scanned = scanner.forget_scanned();
                        self.buffer.bytes.advance(scanned);
                        return None;
                    }
                    Err(error) => return Some(self.refuse(error)),
                },
                Phase::Broken => return None,
            }
        }
    }

    /// Emits the complete request. `CONNECT` ends HTTP on this connection after it; `Upgrade`
    /// is remembered until the next request shows the server ignored it.
    fn emit(
        &mut self,
        request_len: usize,
        switch: Option<ProtocolSwitch>,
        now_ns: u64,
    ) -> CutEvent {
        let (bytes, started_at_ns) = self.buffer.take(request_len, now_ns);
        self.phase = Phase::Head;
        self.upgrade_requested = switch == Some(ProtocolSwitch::Upgrade);
        if switch == Some(ProtocolSwitch::Connect) {
            // What follows is a tunnel: skip it, and report the switch.
            self.phase = Phase::Broken;
            self.buffer.clear();
            self.switched = Some(ProtocolSwitch::Connect);
        }
        CutEvent::Request {
            bytes,
            started_at_ns,
        }
    }

    /// The bytes at the front cannot be cut: the rest of the stream is skipped. A request the
    /// server refused and closed on, or bytes that are not HTTP/1.x at all: after an upgrade
    /// request, those are the new protocol starting (a switch).
    fn refuse(&mut self, error: HttpError) -> CutEvent {
        if self.upgrade_requested && !error.is_ambiguous_framing() {
            self.phase = Phase::Broken;
            self.buffer.clear();
            return CutEvent::Switched(ProtocolSwitch::Upgrade);
        }
        self.enter_broken(if error.is_ambiguous_framing() {
            DropReason::AmbiguousFraming
        } else {
            DropReason::MalformedHttp
        })
    }

    /// The rest of the stream is skipped; returns the drop that caused it.
    fn enter_broken(&mut self, reason: DropReason) -> CutEvent {
        self.phase = Phase::Broken;
        self.buffer.clear();
        CutEvent::Dropped(reason)
    }
}

impl Cutter for RequestCutter {
    type Event = CutEvent;

    fn push<F: FnMut(CutEvent)>(&mut self, data: &[u8], now_ns: u64, on_event: &mut F) {
        RequestCutter::push(self, data, now_ns, on_event)
    }
    fn skip_gap<F: FnMut(CutEvent)>(&mut self, missing: u64, on_event: &mut F) {
        RequestCutter::skip_gap(self, missing, on_event)
    }
    /// A request always carries its own length, so a close ends nothing.
    fn close<F: FnMut(CutEvent)>(&mut self, _now_ns: u64, _on_event: &mut F) {}
    fn is_broken(&self) -> bool {
        RequestCutter::is_broken(self)
    }
    fn buffered_bytes(&self) -> usize {
        RequestCutter::buffered_bytes(self)
    }
    fn has_partial_message(&self) -> bool {
        !self.buffer.bytes.is_empty()
            && !matches!(
                self.phase,
                Phase::Resync | Phase::Broken | Phase::SkipChunked { .. }
            )
    }
}

/// What the response cutter produces.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseEvent {
    /// A complete final response, with the capture times of its first and last bytes.
    Response {
        bytes: Bytes,
        started_at_ns: u64,
        completed_at_ns: u64,
        /// `101 Switching Protocols`: neither side speaks HTTP/1.x after it.
        switches: bool,
    },
    /// A response was given up (or all further ones: the stream is then broken).
    Dropped(DropReason),
}

#[derive(Debug)]
enum ResponsePhase {
    Head,
    Sized {
        response_len: usize,
        switches: bool,
    },
    Chunked {
        head_len: usize,
        scanner: ChunkedScanner,
    },
    UntilClose,
    Broken,
}

/// Per-flow cutter of the server's responses. It must be told, in order, which requests were
/// HEAD ([`ResponseCutter::expect`]), since their responses carry no body.
#[derive(Debug)]
pub struct ResponseCutter {
    buffer: MessageBuffer,
    phase: ResponsePhase,
    max_bytes: usize,
    /// For each request still unanswered, oldest first: was it HEAD?
    answers_head: VecDeque<bool>,
}

/// Requests remembered per connection while their responses are awaited.
const MAX_UNANSWERED: usize = 4096;

impl ResponseCutter {
    pub fn new(max_bytes: usize) -> Self {
        ResponseCutter {
            buffer: MessageBuffer::default(),
            phase: ResponsePhase::Head,
            max_bytes,
            answers_head: VecDeque::new(),
        }
    }

    /// A request was captured; its response comes after those of earlier requests.
    pub fn expect(&mut self, request: &[u8]) {
        if self.answers_head.len() < MAX_UNANSWERED {
            self.answers_head.push_back(request.starts_with(b"HEAD "));
        }
    }

    fn cut_next(&mut self, now_ns: u64) -> Option<ResponseEvent> {
        loop {
            let buffered = &self.buffer.bytes;
            match &mut self.phase {
                ResponsePhase::Head => {
                    let answers_head = self.answers_head.front().copied().unwrap_or(false);
                    let head = match http1::parse_response_head(buffered, answers_head) {
                        Ok(None) => return None,
                        Ok(Some(head)) => head,
                        Err(_) => return Some(self.enter_broken(DropReason::MalformedHttp)),
                    };
                    if head.is_interim() {
                        // `100 Continue` and friends: the final response follows.
                        self.buffer.bytes.advance(head.len);
                        continue;
                    }
                    self.answers_head.pop_front();
                    let switches = head.status == 101;
                    self.phase = match head.framing {
                        BodyFraming::Empty => ResponsePhase::Sized {
                            response_len: head.len,
                            switches,
                        },
                        BodyFraming::Length(body) => {
                            let response_len = (head.len as u64).saturating_add(body);
                            if response_len > self.max_bytes as u64 {
                                self.buffer.abandon(response_len);
                                return Some(ResponseEvent::Dropped(DropReason::TooLarge));
                            }
                            ResponsePhase::Sized {
                                response_len: response_len as usize,
                                switches,
                            }
                        }
                        BodyFraming::Chunked => ResponsePhase::Chunked {
                            head_len: head.len,
                            scanner: ChunkedScanner::default(),
                        },
                        BodyFraming::UntilClose => ResponsePhase::UntilClose,
                    };
                }
                ResponsePhase::Sized {
                    response_len,
                    switches,
                } => {
                    let (response_len, switches) = (*response_len, *switches);
                    if buffered.len() < response_len {
                        return None;
                    }
                    let mut event = self.emit(response_len, now_ns);
                    if switches {
                        // 101 Switching Protocols: what follows is not HTTP/1.x.
                        self.phase = ResponsePhase::Broken;
                        self.buffer.clear();
                        if let ResponseEvent::Response { switches, .. } = &mut event {
                            *switches = true;
                        }
                    }
                    return Some(event);
                }
                ResponsePhase::Chunked { head_len, scanner } => {
                    let head_len = *head_len;
                    match scanner.advance(&buffered[head_len..], |_| {}) {
                        Ok(Some(body_len)) => return Some(self.emit(head_len + body_len, now_ns)),
                        Ok(None) if buffered.len() > self.max_bytes => {
                            return Some(self.enter_broken(DropReason::TooLarge));
                        }
                        Ok(None) => return None,
                        Err(_) => return Some(self.enter_broken(DropReason::MalformedHttp)),
                    }
                }
                ResponsePhase::UntilClose if buffered.len() > self.max_bytes => {
                    return Some(self.enter_broken(DropReason::TooLarge));
                }
                ResponsePhase::UntilClose | ResponsePhase::Broken => return None,
            }
        }
    }

    fn emit(&mut self, response_len: usize, now_ns: u64) -> ResponseEvent {
        self.phase = ResponsePhase::Head;
        let (bytes, started_at_ns) = self.buffer.take(response_len, now_ns);
        ResponseEvent::Response {
            bytes,
            started_at_ns,
            completed_at_ns: now_ns,
            switches: false,
        }
    }

    /// Responses are paired with requests by order; once bytes are lost that order is unknown,
    /// so the rest of this connection's responses are not tracked.
    fn enter_broken(&mut self, reason: DropReason) -> ResponseEvent {
        self.phase = ResponsePhase::Broken;
        self.buffer.clear();
        self.answers_head.clear();
        ResponseEvent::Dropped(reason)
    }
}

impl Cutter for ResponseCutter {
    type Event = ResponseEvent;

    fn push<F: FnMut(ResponseEvent)>(&mut self, data: &[u8], now_ns: u64, on_event: &mut F) {
        if self.is_broken() || !self.buffer.append(data, now_ns) {
            return;
        }
        while let Some(event) = self.cut_next(now_ns) {
            on_event(event);
        }
    }

    fn skip_gap<F: FnMut(ResponseEvent)>(&mut self, missing: u64, on_event: &mut F) {
        if self.buffer.skipping > missing {
            // Inside a response already given up: nothing more is lost.
            self.buffer.skipping -= missing;
        } else if !self.is_broken() {
            on_event(self.enter_broken(DropReason::CaptureGap));
        }
    }

    fn close<F: FnMut(ResponseEvent)>(&mut self, now_ns: u64, on_event: &mut F) {
        if matches!(self.phase, ResponsePhase::UntilClose) {
            let len = self.buffer.bytes.len();
            on_event(self.emit(len, now_ns));
        }
    }

    fn is_broken(&self) -> bool {
        matches!(self.phase, ResponsePhase::Broken)
    }

    fn buffered_bytes(&self) -> usize {
        self.buffer.bytes.len()
    }

    fn has_partial_message(&self) -> bool {
        !self.buffer.bytes.is_empty() && !self.is_broken()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn cut_all(chunks: &[&[u8]]) -> Vec<CutEvent> {
        let mut cutter = RequestCutter::new(MAX);
        let mut events = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            cutter.push(chunk, i as u64, &mut |event| events.push(event));
        }
        events
    }

    fn requests(events: &[CutEvent]) -> Vec<&[u8]> {
        events
            .iter()
            .filter_map(|event| match event {
                CutEvent::Request { bytes, .. } => Some(bytes.as_ref()),
                CutEvent::Dropped(_) | CutEvent::Switched(_) => None,
            })
            .collect()
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: prod\r\n\r\n";
    const POST: &[u8] = b"POST /b HTTP/1.1\r\nHost: prod\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] =
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";

    #[test]
    fn keep_alive_requests_are_cut_one_by_one() {
        let events = cut_all(&[GET, POST, CHUNKED]);
        assert_eq!(requests(&events), [GET, POST, CHUNKED]);
    }

    #[test]
    fn pipelined_requests_in_one_segment_are_all_cut() {
        let stream = [GET, POST, CHUNKED, GET].concat();
        let events = cut_all(&[&stream]);
        assert_eq!(requests(&events), [GET, POST, CHUNKED, GET]);
    }

    #[test]
    fn stream_split_at_every_byte_yields_the_same_requests() {
        let stream = [POST, CHUNKED, GET].concat();
        for split in 0..stream.len() {
            let (first, second) = stream.split_at(split);
            let events = cut_all(&[first, second]);
            assert_eq!(requests(&events), [POST, CHUNKED, GET], "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(requests(&cut_all(&bytes)), [POST, CHUNKED, GET]);
    }

    #[test]
    fn request_time_is_when_its_first_byte_arrived() {
        let mut cutter = RequestCutter::new(MAX);
        let mut events = Vec::new();
        cutter.push(&POST[..10], 100, &mut |e| events.push(e));
        cutter.push(&POST[10..], 200, &mut |e| events.push(e));
        assert_eq!(
            events,
            [CutEvent::Request {
                bytes: Bytes::from_static(POST),
                started_at_ns: 100
            }]
        );
    }

    #[test]
    fn garbage_breaks_only_this_flow_and_is_reported_once() {
        let events = cut_all(&[b"\x16\x03\x01 not http at all\r\n\r\n", GET]);
        assert_eq!(events, [CutEvent::Dropped(DropReason::MalformedHttp)]);
    }

    #[test]
    fn requests_before_garbage_are_kept() {
        let stream = [GET, b"BAD LINE\r\n\r\n".as_slice()].concat();
        let events = cut_all(&[&stream]);
        assert_eq!(requests(&events), [GET]);
        assert_eq!(
            events.last(),
            Some(&CutEvent::Dropped(DropReason::MalformedHttp))
        );
    }

    #[test]
    fn oversized_request_is_skipped_and_the_next_one_kept() {
        let mut cutter = RequestCutter::new(64);
        let big_head = b"POST /big HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
        let mut events = Vec::new();
        cutter.push(big_head, 0, &mut |e| events.push(e));
        cutter.push(&[b'x'; 60], 1, &mut |e| events.push(e));
        cutter.push(&[[b'x'; 40].as_slice(), GET].concat(), 2, &mut |e| {
            events.push(e)
        });
        assert_eq!(events[0], CutEvent::Dropped(DropReason::TooLarge));
        assert_eq!(requests(&events), [GET]);
        assert_eq!(cutter.buffered_bytes(), 0);
    }

    #[test]
    fn unbounded_chunked_body_is_dropped_as_too_large() {
        let mut cutter = RequestCutter::new(128);
        let mut events = Vec::new();
        cutter.push(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            0,
            &mut |e| events.push(e),
        );
        for _ in 0..10 {
            cutter.push(b"10\r\n0123456789abcdef\r\n", 1, &mut |e| events.push(e));
        }
        assert_eq!(events, [CutEvent::Dropped(DropReason::TooLarge)]);
        assert_eq!(cutter.buffered_bytes(), 0);
        // The next request line after the oversized body is picked up again.
        cutter.push(b"0\r\n\r\n", 2, &mut |e| events.push(e));
        cutter.push(GET, 3, &mut |e| events.push(e));
        assert_eq!(requests(&events), [GET]);
    }

    #[test]
    fn gap_inside_a_sized_body_costs_only_that_request() {
        let mut cutter = RequestCutter::new(MAX);
        let mut events = Vec::new();
        // POST's body is 5 bytes; 3 of them never arrive.
        cutter.push(&POST[..POST.len() - 5], 0, &mut |e| events.push(e));
        cutter.skip_gap(3, &mut |e| events.push(e));
        cutter.push(&[&POST[POST.len() - 2..], GET].concat(), 1, &mut |e| {
            events.push(e)
        });
        assert_eq!(events[0], CutEvent::Dropped(DropReason::CaptureGap));
        assert_eq!(requests(&events), [GET]);
    }

    #[test]
    fn gap_in_a_head_resynchronises_at_the_next_request_line() {
        let mut cutter = RequestCutter::new(MAX);
        let mut events = Vec::new();
        cutter.push(&CHUNKED[..10], 0, &mut |e| events.push(e));
        cutter.skip_gap(20, &mut |e| events.push(e));
        cutter.push(&[&CHUNKED[30..], POST].concat(), 1, &mut |e| events.push(e));
        assert_eq!(events[0], CutEvent::Dropped(DropReason::CaptureGap));
        assert_eq!(requests(&events), [POST]);
    }

    #[test]
    fn gap_inside_a_discarded_request_loses_nothing_more() {
        let mut cutter = RequestCutter::new(64);
        let mut events = Vec::new();
        cutter.push(
            b"POST /big HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
            0,
            &mut |e| events.push(e),
        );
        cutter.skip_gap(50, &mut |e| events.push(e));
        cutter.push(&[[b'x'; 50].as_slice(), GET].concat(), 1, &mut |e| {
            events.push(e)
        });
        assert_eq!(events[0], CutEvent::Dropped(DropReason::TooLarge));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(requests(&events), [GET]);
    }

    #[test]
    fn connection_seen_mid_request_starts_at_the_next_request() {
        let mut cutter = RequestCutter::resynchronising(MAX);
        let mut events = Vec::new();
        cutter.push(&[&POST[20..], GET].concat(), 0, &mut |e| events.push(e));
        assert_eq!(requests(&events), [GET]);
        assert_eq!(events.len(), 1, "{events:?}");
    }

    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: prod\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

    #[test]
    fn upgrade_followed_by_another_protocol_is_a_switch_not_malformed() {
        let events = cut_all(&[UPGRADE, b"\x81\x85binary websocket frames", GET]);
        assert_eq!(requests(&events), [UPGRADE]);
        assert_eq!(events[1], CutEvent::Switched(ProtocolSwitch::Upgrade));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn upgrade_the_server_ignored_keeps_the_flow_http() {
        let events = cut_all(&[UPGRADE, GET, POST]);
        assert_eq!(requests(&events), [UPGRADE, GET, POST]);
        assert_eq!(events.len(), 3, "{events:?}");
        // Once a request followed, bytes that are not HTTP are malformed again.
        let events = cut_all(&[UPGRADE, GET, b"\x81\x85frames\r\n\r\n"]);
        assert_eq!(
            events.last(),
            Some(&CutEvent::Dropped(DropReason::MalformedHttp))
        );
    }

    #[test]
    fn a_101_switches_the_flow_even_if_what_follows_looks_like_http() {
        let mut cutter = RequestCutter::new(MAX);
        let mut events = Vec::new();
        cutter.push(UPGRADE, 0, &mut |e| events.push(e));
        assert!(cutter.switch_protocols());
        assert!(!cutter.switch_protocols(), "reported once");
        cutter.push(GET, 1, &mut |e| events.push(e));
        assert_eq!(requests(&events), [UPGRADE]);
        assert!(cutter.is_broken());
    }

    #[test]
    fn connect_ends_http_on_the_connection() {
        let connect = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n";
        let events = cut_all(&[connect, GET]);
        assert_eq!(requests(&events), [connect.as_slice()]);
        assert_eq!(events[1], CutEvent::Switched(ProtocolSwitch::Connect));
        assert_eq!(events.len(), 2);
    }

    /// Requests nginx refuses and closes the connection on (each checked against nginx 1.22).
    const SMUGGLING: &[&[u8]] = &[
        b"POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /s HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /s HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
        b"POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
    ];

    #[test]
    fn smuggling_shapes_end_the_flow_as_ambiguous_framing() {
        for shape in SMUGGLING {
            let stream = [shape, GET].concat();
            for split in [1, shape.len() / 2, shape.len(), stream.len() - 1] {
                let (first, second) = stream.split_at(split);
                assert_eq!(
                    cut_all(&[first, second]),
                    [CutEvent::Dropped(DropReason::AmbiguousFraming)],
                    "{} split at {split}",
                    String::from_utf8_lossy(shape)
                );
            }
        }
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(10 * 1024));
        assert_eq!(
            cut_all(&[long_line.as_bytes(), GET]),
            [CutEvent::Dropped(DropReason::AmbiguousFraming)]
        );
    }

    /// A chunked upload whose data carries request lines, larger than `max`.
    fn upload_with_embedded_requests(chunks: usize) -> Vec<u8> {
        let mut upload =
            b"POST /upload HTTP/1.1\r\nHost: prod\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let data = b"GET /embedded HTTP/1.1\r\nHost: prod\r\n\r\n";
        for _ in 0..chunks {
            upload.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            upload.extend_from_slice(data);
            upload.extend_from_slice(b"\r\n");
        }
        upload.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        upload
    }

    #[test]
    fn oversized_chunked_upload_is_skipped_by_its_chunks_not_searched() {
        let stream = [upload_with_embedded_requests(100).as_slice(), GET].concat();
        for segment in [1, 7, 100, 1448, stream.len()] {
            let mut cutter = RequestCutter::new(256);
            let mut events = Vec::new();
            let mut most_held = 0;
            for piece in stream.chunks(segment) {
                cutter.push(piece, 0, &mut |e| events.push(e));
                most_held = most_held.max(cutter.buffered_bytes());
            }
            assert_eq!(
                events,
                [
                    CutEvent::Dropped(DropReason::TooLarge),
                    CutEvent::Request {
                        bytes: Bytes::from_static(GET),
                        started_at_ns: 0
                    }
                ],
                "segments of {segment}"
            );
            assert!(most_held <= 256 + segment, "held {most_held}");
        }
    }

    #[test]
    fn gap_inside_chunk_data_costs_only_that_request() {
        let upload = upload_with_embedded_requests(3);
        let lost = 80..90; // inside the second chunk's data
        let mut cutter = RequestCutter::new(MAX);
        let mut events = Vec::new();
        cutter.push(&upload[..lost.start], 0, &mut |e| events.push(e));
        cutter.skip_gap(lost.len() as u64, &mut |e| events.push(e));
        cutter.push(&[&upload[lost.end..], GET].concat(), 1, &mut |e| {
            events.push(e)
        });
        assert_eq!(events[0], CutEvent::Dropped(DropReason::CaptureGap));
        assert_eq!(requests(&events), [GET]);
        assert_eq!(events.len(), 2, "{events:?}");
    }

    fn responses(cutter: &mut ResponseCutter, chunks: &[&[u8]]) -> Vec<ResponseEvent> {
        let mut events = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            Cutter::push(cutter, chunk, 10 * i as u64, &mut |e| events.push(e));
        }
        events
    }

    fn response_bytes(events: &[ResponseEvent]) -> Vec<&[u8]> {
        events
            .iter()
            .filter_map(|e| match e {
                ResponseEvent::Response { bytes, .. } => Some(bytes.as_ref()),
                ResponseEvent::Dropped(_) => None,
            })
            .collect()
    }

    #[test]
    fn responses_to_head_and_204_have_no_body_even_with_content_length() {
        let mut cutter = ResponseCutter::new(MAX);
        cutter.expect(b"HEAD / HTTP/1.1\r\n\r\n");
        cutter.expect(b"GET / HTTP/1.1\r\n\r\n");
        cutter.expect(b"GET / HTTP/1.1\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let stream = [head.as_slice(), no_content, sized].concat();
        let events = responses(&mut cutter, &[&stream]);
        assert_eq!(
            response_bytes(&events),
            [head.as_slice(), no_content, sized]
        );
    }

    #[test]
    fn interim_100_continue_is_skipped_and_the_final_response_kept() {
        let mut cutter = ResponseCutter::new(MAX);
        cutter.expect(b"POST / HTTP/1.1\r\n");
        let final_response = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let events = responses(
            &mut cutter,
            &[b"HTTP/1.1 100 Continue\r\n\r\n", final_response],
        );
        assert_eq!(response_bytes(&events), [final_response.as_slice()]);
    }

    #[test]
    fn close_delimited_response_ends_at_close() {
        let mut cutter = ResponseCutter::new(MAX);
        cutter.expect(b"GET / HTTP/1.0\r\n");
        let mut events = responses(&mut cutter, &[b"HTTP/1.0 200 OK\r\n\r\nall of ", b"this"]);
        assert!(events.is_empty());
        Cutter::close(&mut cutter, 99, &mut |e| events.push(e));
        assert_eq!(
            events,
            [ResponseEvent::Response {
                bytes: Bytes::from_static(b"HTTP/1.0 200 OK\r\n\r\nall of this"),
                started_at_ns: 0,
                completed_at_ns: 99,
                switches: false,
            }]
        );
    }

    #[test]
    fn chunked_response_split_anywhere_is_cut_whole() {
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
        for split in 1..chunked.len() {
            let mut cutter = ResponseCutter::new(MAX);
            cutter.expect(b"GET / HTTP/1.1\r\n");
            let events = responses(&mut cutter, &[&chunked[..split], &chunked[split..]]);
            assert_eq!(
                response_bytes(&events),
                [chunked.as_slice()],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_gap_in_responses_stops_response_tracking_for_the_connection() {
        let mut cutter = ResponseCutter::new(MAX);
        cutter.expect(b"GET / HTTP/1.1\r\n");
        let mut events = Vec::new();
        Cutter::skip_gap(&mut cutter, 10, &mut |e| events.push(e));
        Cutter::push(
            &mut cutter,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            1,
            &mut |e| events.push(e),
        );
        assert_eq!(events, [ResponseEvent::Dropped(DropReason::CaptureGap)]);
        assert!(Cutter::is_broken(&cutter));
    }
}
