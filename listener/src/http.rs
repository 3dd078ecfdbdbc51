//! Cutting one client->server byte stream into complete HTTP/1.x requests. The grammar lives in
//! `tapwire_shared::http1`; this module owns the per-flow state: buffered bytes, which part of a
//! request is being waited for, and when to give up on a flow.

use bytes::{Buf, Bytes, BytesMut};
use tapwire_shared::http1::{self, BodyFraming, ChunkedScanner};

use crate::metrics::DropReason;

/// What the cutter produces for the reassembler to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum CutEvent {
    /// A complete request, byte for byte, with the capture time of its first byte.
    Request { bytes: Bytes, started_at_ns: u64 },
    /// A request (or the rest of the flow) was given up, for this reason.
    Dropped(DropReason),
}

#[derive(Debug)]
enum Phase {
    /// Waiting for a complete request head.
    Head,
    /// Head parsed; the request ends at this many buffered bytes.
    Sized { request_len: usize },
    /// Head parsed; walking a chunked body that starts after `head_len` bytes.
    Chunked {
        head_len: usize,
        scanner: ChunkedScanner,
    },
    /// Skipping the rest of an oversized body without buffering it.
    Discarding { remaining: u64 },
    /// The stream is not HTTP/1.x; everything after is ignored.
    Broken,
}

/// Per-flow request cutter. Feed it in-order stream bytes with [`RequestCutter::push`].
#[derive(Debug)]
pub struct RequestCutter {
    buffer: BytesMut,
    phase: Phase,
    started_at_ns: u64,
    max_request_bytes: usize,
}

impl RequestCutter {
    pub fn new(max_request_bytes: usize) -> Self {
        RequestCutter {
            buffer: BytesMut::new(),
            phase: Phase::Head,
            started_at_ns: 0,
            max_request_bytes,
        }
    }

    /// Bytes held for requests not yet complete.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_broken(&self) -> bool {
        matches!(self.phase, Phase::Broken)
    }

    /// Marks the flow as no longer usable (bytes went missing); the partial request is dropped.
    pub fn break_flow(&mut self, reason: DropReason, on_event: &mut impl FnMut(CutEvent)) {
        if !self.is_broken() {
            on_event(CutEvent::Dropped(reason));
            self.enter_broken();
        }
    }

    /// Appends in-order stream bytes captured at `now_ns` and emits every request they complete.
    pub fn push(&mut self, mut data: &[u8], now_ns: u64, on_event: &mut impl FnMut(CutEvent)) {
        match &mut self.phase {
            Phase::Broken => return,
            Phase::Discarding { remaining } => {
                let skipped = (*remaining).min(data.len() as u64);
                *remaining -= skipped;
                data = &data[skipped as usize..];
                if *remaining > 0 {
                    return;
                }
                self.phase = Phase::Head;
            }
            _ => {}
        }
        if data.is_empty() {
            return;
        }
        if self.buffer.is_empty() {
            self.started_at_ns = now_ns;
        }
        self.buffer.extend_from_slice(data);
        while let Some(event) = self.cut_next() {
            on_event(event);
            // Bytes left over belong to the next (pipelined) request.
            self.started_at_ns = now_ns;
        }
    }

    /// Advances the state machine over buffered bytes; `None` means more bytes are needed.
    fn cut_next(&mut self) -> Option<CutEvent> {
        loop {
            match &mut self.phase {
                Phase::Head => match http1::parse_request_head(&self.buffer) {
                    Ok(None) => return None,
                    Ok(Some(head)) => {
                        self.phase = match head.framing {
                            BodyFraming::Empty => Phase::Sized {
                                request_len: head.len,
                            },
                            BodyFraming::Length(body_len) => {
                                let request_len = (head.len as u64).saturating_add(body_len);
                                if request_len > self.max_request_bytes as u64 {
                                    return Some(self.discard(request_len));
                                }
                                Phase::Sized {
                                    request_len: request_len as usize,
                                }
                            }
                            BodyFraming::Chunked => Phase::Chunked {
                                head_len: head.len,
                                scanner: ChunkedScanner::default(),
                            },
                        }
                    }
                    Err(_) => {
                        self.enter_broken();
                        return Some(CutEvent::Dropped(DropReason::MalformedHttp));
                    }
                },
                Phase::Sized { request_len } => {
                    let request_len = *request_len;
                    if self.buffer.len() < request_len {
                        return None;
                    }
                    return Some(self.emit(request_len));
                }
                Phase::Chunked { head_len, scanner } => {
                    let head_len = *head_len;
                    match scanner.advance(&self.buffer[head_len..], |_| {}) {
                        Ok(Some(body_len)) => return Some(self.emit(head_len + body_len)),
                        Ok(None) if self.buffer.len() > self.max_request_bytes => {
                            // Without a known length the rest of the body cannot be skipped.
                            self.enter_broken();
                            return Some(CutEvent::Dropped(DropReason::TooLarge));
                        }
                        Ok(None) => return None,
                        Err(_) => {
                            self.enter_broken();
                            return Some(CutEvent::Dropped(DropReason::MalformedHttp));
                        }
                    }
                }
                Phase::Discarding { .. } | Phase::Broken => return None,
            }
        }
    }

    fn emit(&mut self, request_len: usize) -> CutEvent {
        self.phase = Phase::Head;
        CutEvent::Request {
            bytes: self.buffer.split_to(request_len).freeze(),
            started_at_ns: self.started_at_ns,
        }
    }

    /// Drops an oversized request whose length is known, skipping bytes not yet received.
    fn discard(&mut self, request_len: u64) -> CutEvent {
        let buffered = self.buffer.len() as u64;
        if buffered >= request_len {
            self.buffer.advance(request_len as usize);
            self.phase = Phase::Head;
        } else {
            self.buffer.clear();
            self.phase = Phase::Discarding {
                remaining: request_len - buffered,
            };
        }
        CutEvent::Dropped(DropReason::TooLarge)
    }

    fn enter_broken(&mut self) {
        self.phase = Phase::Broken;
        // Free the memory now: a broken flow can live until FIN or idle eviction.
        self.buffer = BytesMut::new();
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
                CutEvent::Dropped(_) => None,
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
    }
}
