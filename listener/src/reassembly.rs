//! TCP reassembly. Each connection has a request stream (client to server) and, with
//! `--track-responses`, a response stream. For each stream it restores sequence order:
//! retransmitted bytes are trimmed, out-of-order segments wait in a bounded buffer, and the
//! ordered bytes go to the stream's cutter. A hole that does not fill in time (a packet the
//! kernel never delivered to us) is skipped, costing only the message it falls in. Responses are
//! paired with requests in order. Connections end on FIN, RST or idleness; total buffered bytes
//! and the number of connections are capped, and connections shed to stay under the caps are
//! counted. Sequence numbers wrap, so positions are compared by signed 32-bit distance and
//! stored as 64-bit stream offsets.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use tapwire_shared::http1::ProtocolSwitch;

use crate::http::{CutEvent, Cutter, RequestCutter, ResponseCutter, ResponseEvent};
use crate::metrics::DropReason;
use crate::packet::{FlowKey, Segment};

/// Limits that keep reassembly memory bounded.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// Largest request (or response) kept; larger ones are dropped as `too_large`.
    pub max_request_bytes: usize,
    /// Out-of-order bytes held per stream while waiting for a hole to fill.
    pub max_out_of_order_bytes: usize,
    /// How long a hole may stay open before its bytes are declared lost.
    pub gap_timeout_ns: u64,
    /// A flow with no packets for this long is forgotten.
    pub flow_idle_timeout_ns: u64,
    /// Bytes buffered across all flows; past it the largest flows are shed.
    pub max_buffered_bytes: usize,
    /// Flows tracked at once; past it the least recently active are shed.
    pub max_flows: usize,
}

/// What reassembly reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEvent {
    /// A complete request; `id` is unique within this reassembler.
    Request {
        id: u64,
        bytes: Bytes,
        started_at_ns: u64,
    },
    /// Production's complete response to request `request_id`.
    Response {
        request_id: u64,
        bytes: Bytes,
        started_at_ns: u64,
        latency_ns: u64,
    },
    /// A request (or the rest of a flow's requests) was given up.
    Dropped(DropReason),
    /// A response was given up.
    ResponseDropped(DropReason),
    /// The connection left HTTP/1.x after a request.
    Switched(ProtocolSwitch),
}

/// Receives reassembly's events.
pub trait FlowObserver {
    fn event(&mut self, flow: FlowKey, event: FlowEvent);
    /// A flow was dropped to respect a limit.
    fn flow_shed(&mut self);
}

impl<F: FnMut(FlowKey, FlowEvent)> FlowObserver for F {
    fn event(&mut self, flow: FlowKey, event: FlowEvent) {
        self(flow, event)
    }
    fn flow_shed(&mut self) {}
}

/// Which way a segment travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: requests.
    Request,
    /// Server to client: responses.
    Response,
}

/// Every flow being reassembled, and the limits they share.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    track_responses: bool,
    flows: HashMap<FlowKey, Flow>,
    /// Sum of every flow's buffered bytes.
    buffered_bytes: usize,
    next_request_id: u64,
}

/// One direction of a connection: sequence ordering in front of a cutter.
#[derive(Debug)]
struct Stream<C> {
    /// Sequence number of the next byte the cutter expects.
    next_seq: u32,
    /// Stream offset of `next_seq`: bytes delivered (or skipped) so far.
    delivered: u64,
    /// Segments ahead of `next_seq`, by stream offset.
    out_of_order: BTreeMap<u64, Bytes>,
    out_of_order_bytes: usize,
    /// When the oldest still-open hole was first seen.
    hole_since_ns: Option<u64>,
    /// Sequence number just past the sender's FIN, once seen.
    fin_seq: Option<u32>,
    cutter: C,
}

#[derive(Debug)]
struct Flow {
    requests: Stream<RequestCutter>,
    /// Present when responses are tracked and the connection was seen from its SYN-ACK.
    responses: Option<Stream<ResponseCutter>>,
    /// Requests awaiting their response, oldest first: (id, first byte time).
    unanswered: VecDeque<(u64, u64)>,
    last_seen_ns: u64,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            track_responses: false,
            flows: HashMap::new(),
            buffered_bytes: 0,
            next_request_id: 0,
        }
    }

    /// Also cut server-to-client streams into responses and pair them with requests.
    pub fn tracking_responses(mut self) -> Self {
        self.track_responses = true;
        self
    }

    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Bytes held across all flows (partial messages and out-of-order segments).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Takes one client-to-server segment.
    pub fn ingest(&mut self, segment: &Segment<'_>, now_ns: u64, observer: &mut impl FlowObserver) {
        self.ingest_directed(segment, Direction::Request, now_ns, observer);
    }

    /// Takes one segment travelling in `direction`. A response segment's flow key is still
    /// written client first.
    pub fn ingest_directed(
        &mut self,
        segment: &Segment<'_>,
        direction: Direction,
        now_ns: u64,
        observer: &mut impl FlowObserver,
    ) {
        let key = segment.flow;
        if segment.rst {
            // The connection is gone, but what it sent before the reset still counts.
            self.remove(key, now_ns, observer);
            return;
        }
        match direction {
            Direction::Request => self.open_for_request(segment, now_ns, observer),
            Direction::Response if segment.syn => {
                if let Some(flow) = self.flows.get_mut(&key)
                    && self.track_responses
                {
                    let cutter = ResponseCutter::new(self.limits.max_request_bytes);
                    flow.responses = Some(Stream::new(segment.seq.wrapping_add(1), cutter));
                }
            }
            Direction::Response => {}
        }
        let limits = self.limits;
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let before = flow.buffered();
        flow.last_seen_ns = now_ns;
        let next_request_id = &mut self.next_request_id;
        match direction {
            Direction::Request => {
                let seq = if segment.syn {
                    segment.seq.wrapping_add(1)
                } else {
                    segment.seq
                };
                let Flow {
                    requests,
                    responses,
                    unanswered,
                    ..
                } = flow;
                let mut on_request = |event| {
                    handle_request_event(
                        event,
                        key,
                        next_request_id,
                        responses,
                        unanswered,
                        observer,
                    )
                };
                requests.take(seq, segment, now_ns, &limits, &mut on_request);
            }
            Direction::Response => {
                let Flow {
                    requests,
                    responses,
                    unanswered,
                    ..
                } = flow;
                if let Some(responses) = responses {
                    let mut on_response = |event| {
                        handle_response_event(
                            event,
                            key,
                            &mut requests.cutter,
                            unanswered,
                            observer,
                        )
                    };
                    let seq = segment.seq.wrapping_add(u32::from(segment.syn));
                    responses.take(seq, segment, now_ns, &limits, &mut on_response);
                }
            }
        }
        let after = flow.buffered();
        let finished = flow.is_finished();
        self.buffered_bytes = self.buffered_bytes + after - before;
        if finished {
            self.remove(key, now_ns, observer);
        }
        if self.buffered_bytes > self.limits.max_buffered_bytes {
            self.shed_largest(observer);
        }
    }

    /// Creates (or re-creates, on port reuse) the flow a client segment belongs to.
    fn open_for_request(
        &mut self,
        segment: &Segment<'_>,
        now_ns: u64,
        observer: &mut impl FlowObserver,
    ) {
        let key = segment.flow;
        if segment.syn {
            self.remove(key, now_ns, observer);
            self.make_room_for_a_flow(observer);
            let cutter = RequestCutter::new(self.limits.max_request_bytes);
            let flow = Flow::new(Stream::new(segment.seq.wrapping_add(1), cutter), now_ns);
            self.flows.insert(key, flow);
        } else if !self.flows.contains_key(&key) && !segment.payload.is_empty() {
            // A connection already open when capture started: pick it up at a request line.
            // (Bare ACKs of such a connection carry nothing to resynchronise on.)
            self.make_room_for_a_flow(observer);
            let cutter = RequestCutter::resynchronising(self.limits.max_request_bytes);
            self.flows
                .insert(key, Flow::new(Stream::new(segment.seq, cutter), now_ns));
        }
    }

    /// Time-based work: holes that waited too long are skipped, idle flows forgotten.
    pub fn expire(&mut self, now_ns: u64, observer: &mut impl FlowObserver) {
        let limits = self.limits;
        let mut idle = Vec::new();
        let next_request_id = &mut self.next_request_id;
        for (&key, flow) in &mut self.flows {
            let before = flow.buffered();
            let Flow {
                requests,
                responses,
                unanswered,
                ..
            } = flow;
            requests.expire_hole(now_ns, &limits, &mut |event| {
                handle_request_event(event, key, next_request_id, responses, unanswered, observer)
            });
            if let Some(responses) = responses {
                responses.expire_hole(now_ns, &limits, &mut |event| {
                    handle_response_event(event, key, &mut requests.cutter, unanswered, observer)
                });
            }
            self.buffered_bytes = self.buffered_bytes + flow.buffered() - before;
            if now_ns.saturating_sub(flow.last_seen_ns) >= limits.flow_idle_timeout_ns {
                idle.push(key);
            }
        }
        for key in idle {
            self.remove(key, now_ns, observer);
        }
    }

    /// Closes every flow, e.g. at the end of a capture file.
    pub fn finish(&mut self, observer: &mut impl FlowObserver) {
        let keys: Vec<(FlowKey, u64)> = self
            .flows
            .iter()
            .map(|(key, flow)| (*key, flow.last_seen_ns))
            .collect();
        for (key, last_seen_ns) in keys {
            self.remove(key, last_seen_ns, observer);
        }
    }

    /// Ends a flow: bytes held behind holes are still cut (the holes counted), and a
    /// close-delimited response ends.
    fn remove(&mut self, key: FlowKey, now_ns: u64, observer: &mut impl FlowObserver) {
        let Some(mut flow) = self.flows.remove(&key) else {
            return;
        };
        self.buffered_bytes -= flow.buffered();
        let Flow {
            requests,
            responses,
            unanswered,
            ..
        } = &mut flow;
        let next_request_id = &mut self.next_request_id;
        requests.close(now_ns, &mut |event| {
            handle_request_event(event, key, next_request_id, responses, unanswered, observer)
        });
        if let Some(responses) = responses {
            responses.close(now_ns, &mut |event| {
                handle_response_event(event, key, &mut requests.cutter, unanswered, observer)
            });
        }
    }

    /// Sheds the flows holding the most bytes until a tenth of the budget is free again.
    fn shed_largest(&mut self, observer: &mut impl FlowObserver) {
        let target = self.limits.max_buffered_bytes - self.limits.max_buffered_bytes / 10;
        let mut by_size: Vec<(usize, FlowKey)> = self
            .flows
            .iter()
            .map(|(key, flow)| (flow.buffered(), *key))
            .collect();
        by_size.sort_unstable_by_key(|(size, _)| std::cmp::Reverse(*size));
        for (_, key) in by_size {
            if self.buffered_bytes <= target {
                break;
            }
            self.shed(key, observer);
        }
    }

    /// At the flow limit, sheds the least recently active eighth of the flows, so the cost of
    /// finding them is paid once per many new flows.
    fn make_room_for_a_flow(&mut self, observer: &mut impl FlowObserver) {
        if self.flows.len() < self.limits.max_flows {
            return;
        }
        let mut by_age: Vec<(u64, FlowKey)> = self
            .flows
            .iter()
            .map(|(key, flow)| (flow.last_seen_ns, *key))
            .collect();
        let shed = (self.limits.max_flows / 8).clamp(1, by_age.len());
        by_age.select_nth_unstable_by_key(shed - 1, |(last_seen, _)| *last_seen);
        for (_, key) in by_age.into_iter().take(shed) {
            self.shed(key, observer);
        }
    }

    fn shed(&mut self, key: FlowKey, observer: &mut impl FlowObserver) {
        if let Some(flow) = self.flows.remove(&key) {
            self.buffered_bytes -= flow.buffered();
            observer.flow_shed();
            if flow.requests.has_partial_message() {
                observer.event(key, FlowEvent::Dropped(DropReason::FlowShed));
            }
            if flow
                .responses
                .as_ref()
                .is_some_and(Stream::has_partial_message)
            {
                observer.event(key, FlowEvent::ResponseDropped(DropReason::FlowShed));
            }
        }
    }
}

/// A request cut from the client's stream: numbered, remembered for pairing, reported.
fn handle_request_event(
    event: CutEvent,
    key: FlowKey,
    next_request_id: &mut u64,
    responses: &mut Option<Stream<ResponseCutter>>,
    unanswered: &mut VecDeque<(u64, u64)>,
    observer: &mut impl FlowObserver,
) {
    let event = match event {
        CutEvent::Request {
            bytes,
            started_at_ns,
        } => {
            *next_request_id += 1;
            let id = *next_request_id;
            if let Some(responses) = responses.as_mut().filter(|r| !r.cutter.is_broken()) {
                responses.cutter.expect(&bytes);
                unanswered.push_back((id, started_at_ns));
            }
            FlowEvent::Request {
                id,
                bytes,
                started_at_ns,
            }
        }
        CutEvent::Dropped(reason) => FlowEvent::Dropped(reason),
        CutEvent::Switched(switch) => FlowEvent::Switched(switch),
    };
    observer.event(key, event);
}

/// A response cut from the server's stream, paired with the oldest unanswered request. A
/// `101` switches the client's side of the connection to the new protocol too.
fn handle_response_event(
    event: ResponseEvent,
    key: FlowKey,
    requests: &mut RequestCutter,
    unanswered: &mut VecDeque<(u64, u64)>,
    observer: &mut impl FlowObserver,
) {
    let event = match event {
        ResponseEvent::Response {
            bytes,
            started_at_ns,
            completed_at_ns,
            switches,
        } => {
            if switches && requests.switch_protocols() {
                observer.event(key, FlowEvent::Switched(ProtocolSwitch::Upgrade));
            }
            match unanswered.pop_front() {
                Some((request_id, request_started_ns)) => FlowEvent::Response {
                    request_id,
                    bytes,
                    started_at_ns,
                    latency_ns: completed_at_ns.saturating_sub(request_started_ns),
                },
                // A response to a request we did not capture.
                None => FlowEvent::ResponseDropped(DropReason::Unpaired),
            }
        }
        ResponseEvent::Dropped(reason) => {
            // Pairing by order is lost: forget what was waiting.
            unanswered.clear();
            FlowEvent::ResponseDropped(reason)
        }
    };
    observer.event(key, event);
}

impl Flow {
    fn new(requests: Stream<RequestCutter>, now_ns: u64) -> Self {
        Flow {
            requests,
            responses: None,
            unanswered: VecDeque::new(),
            last_seen_ns: now_ns,
        }
    }

    fn buffered(&self) -> usize {
        self.requests.buffered() + self.responses.as_ref().map_or(0, Stream::buffered)
    }

    /// The client is done, and so is the server when its responses are tracked.
    fn is_finished(&self) -> bool {
        self.requests.is_finished() && self.responses.as_ref().is_none_or(Stream::is_finished)
    }
}

impl<C: Cutter> Stream<C> {
    fn new(next_seq: u32, cutter: C) -> Self {
        Stream {
            next_seq,
            delivered: 0,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            hole_since_ns: None,
            fin_seq: None,
            cutter,
        }
    }

    fn buffered(&self) -> usize {
        self.cutter.buffered_bytes() + self.out_of_order_bytes
    }

    fn has_partial_message(&self) -> bool {
        self.cutter.has_partial_message() || self.out_of_order_bytes > 0
    }

    fn is_finished(&self) -> bool {
        self.fin_seq.is_some_and(|fin| fin == self.next_seq)
            || (self.fin_seq.is_some() && self.cutter.is_broken())
    }

    /// Takes one segment of this direction, whose data starts at `seq`.
    fn take(
        &mut self,
        seq: u32,
        segment: &Segment<'_>,
        now_ns: u64,
        limits: &ReassemblyLimits,
        on_event: &mut impl FnMut(C::Event),
    ) {
        if !segment.payload.is_empty() {
            self.accept(seq, segment.payload, now_ns, limits, on_event);
        }
        if segment.fin {
            self.fin_seq = Some(seq.wrapping_add(segment.payload.len() as u32));
        }
        self.expire_hole(now_ns, limits, on_event);
        if self.fin_seq.is_some_and(|fin| fin == self.next_seq) {
            self.cutter.close(now_ns, on_event);
        }
    }

    /// Ends the stream: bytes held behind a hole are still cut, the hole counted as a gap.
    fn close(&mut self, now_ns: u64, on_event: &mut impl FnMut(C::Event)) {
        while !self.out_of_order.is_empty() {
            self.skip_hole(now_ns, on_event);
        }
        self.cutter.close(now_ns, on_event);
    }

    fn accept(
        &mut self,
        seq: u32,
        payload: &[u8],
        now_ns: u64,
        limits: &ReassemblyLimits,
        on_event: &mut impl FnMut(C::Event),
    ) {
        if self.cutter.is_broken() {
            return;
        }
        let distance = seq.wrapping_sub(self.next_seq) as i32;
        if distance > 0 {
            self.hold(distance as u64, payload, now_ns, limits, on_event);
            return;
        }
        // Bytes before `next_seq` were delivered already (retransmission or overlap).
        let already_delivered = distance.unsigned_abs() as usize;
        if already_delivered >= payload.len() {
            return;
        }
        self.deliver(&payload[already_delivered..], now_ns, on_event);
        self.release_held(now_ns, on_event);
    }

    fn hold(
        &mut self,
        ahead: u64,
        payload: &[u8],
        now_ns: u64,
        limits: &ReassemblyLimits,
        on_event: &mut impl FnMut(C::Event),
    ) {
        let offset = self.delivered + ahead;
        let longer = self
            .out_of_order
            .get(&offset)
            .is_none_or(|held| held.len() < payload.len());
        if longer {
            let held = Bytes::copy_from_slice(payload);
            if let Some(replaced) = self.out_of_order.insert(offset, held) {
                self.out_of_order_bytes -= replaced.len();
            }
            self.out_of_order_bytes += payload.len();
            self.hole_since_ns.get_or_insert(now_ns);
        }
        // The hole is not filling while this much piles up behind it: its bytes are lost.
        while self.out_of_order_bytes > limits.max_out_of_order_bytes {
            self.skip_hole(now_ns, on_event);
        }
    }

    fn expire_hole(
        &mut self,
        now_ns: u64,
        limits: &ReassemblyLimits,
        on_event: &mut impl FnMut(C::Event),
    ) {
        while self
            .hole_since_ns
            .is_some_and(|since| now_ns.saturating_sub(since) >= limits.gap_timeout_ns)
        {
            self.skip_hole(now_ns, on_event);
        }
    }

    /// Gives up on the bytes before the first held segment and carries on from there.
    fn skip_hole(&mut self, now_ns: u64, on_event: &mut impl FnMut(C::Event)) {
        let Some((&offset, _)) = self.out_of_order.first_key_value() else {
            self.hole_since_ns = None;
            return;
        };
        let missing = offset.saturating_sub(self.delivered);
        self.cutter.skip_gap(missing, on_event);
        self.delivered += missing;
        self.next_seq = self.next_seq.wrapping_add(missing as u32);
        self.hole_since_ns = None;
        self.release_held(now_ns, on_event);
    }

    /// Delivers held segments that the stream has now reached.
    fn release_held(&mut self, now_ns: u64, on_event: &mut impl FnMut(C::Event)) {
        while let Some(entry) = self.out_of_order.first_entry() {
            if *entry.key() > self.delivered {
                // A later hole remains; its clock starts now.
                self.hole_since_ns = Some(now_ns);
                return;
            }
            let already_delivered = (self.delivered - *entry.key()) as usize;
            let held = entry.remove();
            self.out_of_order_bytes -= held.len();
            if already_delivered < held.len() {
                self.deliver(&held[already_delivered..], now_ns, on_event);
            }
        }
        self.hole_since_ns = None;
    }

    fn deliver(&mut self, bytes: &[u8], now_ns: u64, on_event: &mut impl FnMut(C::Event)) {
        self.next_seq = self.next_seq.wrapping_add(bytes.len() as u32);
        self.delivered += bytes.len() as u64;
        self.cutter.push(bytes, now_ns, on_event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReassemblyLimits = ReassemblyLimits {
        max_request_bytes: 1 << 20,
        max_out_of_order_bytes: 4096,
        gap_timeout_ns: 100,
        flow_idle_timeout_ns: 1_000,
        max_buffered_bytes: 1 << 20,
        max_flows: 1000,
    };

    fn key() -> FlowKey {
        FlowKey {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        }
    }

    fn segment(seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            flow: key(),
            seq,
            syn: false,
            fin: false,
            rst: false,
            payload,
        }
    }

    fn syn(seq: u32) -> Segment<'static> {
        Segment {
            syn: true,
            ..segment(seq, b"")
        }
    }

    /// Feeds segments, returning the requests and drops that came out.
    fn run(reassembler: &mut Reassembler, segments: &[Segment<'_>]) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            reassembler.ingest(segment, i as u64, &mut |_, event| events.push(event));
        }
        events
    }

    fn request_bytes(events: &[FlowEvent]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|event| match event {
                FlowEvent::Request { bytes, .. } => Some(bytes.to_vec()),
                _ => None,
            })
            .collect()
    }

    const REQUEST: &[u8] = b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";

    #[test]
    fn out_of_order_segments_are_reassembled() {
        let (a, rest) = REQUEST.split_at(10);
        let (b, c) = rest.split_at(20);
        let mut reassembler = Reassembler::new(LIMITS);
        let events = run(
            &mut reassembler,
            &[syn(99), segment(130, c), segment(110, b), segment(100, a)],
        );
        assert_eq!(request_bytes(&events), [REQUEST]);
    }

    #[test]
    fn retransmitted_and_overlapping_segments_are_trimmed() {
        let mut reassembler = Reassembler::new(LIMITS);
        let events = run(
            &mut reassembler,
            &[
                syn(99),
                segment(100, &REQUEST[..20]),
                segment(100, &REQUEST[..20]),
                segment(110, &REQUEST[10..30]),
                segment(130, &REQUEST[30..]),
                segment(130, &REQUEST[30..]),
            ],
        );
        assert_eq!(request_bytes(&events), [REQUEST]);
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let start = u32::MAX - 5;
        let mut reassembler = Reassembler::new(LIMITS);
        let events = run(
            &mut reassembler,
            &[
                syn(start - 1),
                segment(start.wrapping_add(12), &REQUEST[12..]),
                segment(start, &REQUEST[..12]),
            ],
        );
        assert_eq!(request_bytes(&events), [REQUEST]);
    }

    #[test]
    fn flow_already_open_starts_at_first_segment_with_data() {
        let mut reassembler = Reassembler::new(LIMITS);
        let events = run(
            &mut reassembler,
            &[segment(5000, b""), segment(7000, REQUEST)],
        );
        assert_eq!(request_bytes(&events), [REQUEST]);
    }

    #[test]
    fn hole_with_too_much_behind_it_is_a_capture_gap() {
        let mut reassembler = Reassembler::new(LIMITS);
        let filler = vec![b'x'; 3000];
        let events = run(
            &mut reassembler,
            &[syn(0), segment(1000, &filler), segment(4000, &filler)],
        );
        assert_eq!(events, [FlowEvent::Dropped(DropReason::CaptureGap)]);
        // Held bytes plus, while resynchronising, at most one unfinished 8 KiB line.
        assert!(reassembler.buffered_bytes() <= LIMITS.max_out_of_order_bytes + 8 * 1024);
    }

    #[test]
    fn fin_and_rst_end_the_flow() {
        let mut reassembler = Reassembler::new(LIMITS);
        let fin = Segment {
            fin: true,
            ..segment(1, REQUEST)
        };
        run(&mut reassembler, &[syn(0), fin]);
        assert_eq!(reassembler.active_flows(), 0);

        let rst = Segment {
            rst: true,
            ..segment(11, b"")
        };
        run(&mut reassembler, &[syn(0), segment(1, &REQUEST[..10])]);
        assert_eq!(reassembler.active_flows(), 1);
        run(&mut reassembler, &[rst]);
        assert_eq!(reassembler.active_flows(), 0);
    }

    #[test]
    fn idle_flows_are_evicted() {
        let mut reassembler = Reassembler::new(LIMITS);
        run(&mut reassembler, &[syn(0), segment(1, &REQUEST[..10])]);
        reassembler.expire(500, &mut |_, _| {});
        assert_eq!(reassembler.active_flows(), 1);
        reassembler.expire(5_000, &mut |_, _| {});
        assert_eq!(reassembler.active_flows(), 0);
        assert_eq!(reassembler.buffered_bytes(), 0);
    }

    fn segment_of(key: FlowKey, seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            flow: key,
            ..segment(seq, payload)
        }
    }

    fn key_for(port: u16) -> FlowKey {
        FlowKey {
            client: format!("10.0.0.1:{port}").parse().unwrap(),
            ..key()
        }
    }

    #[test]
    fn lost_segment_costs_only_its_request_once_the_gap_times_out() {
        let get = b"GET /next HTTP/1.1\r\n\r\n";
        let mut reassembler = Reassembler::new(LIMITS);
        let mut events = Vec::new();
        let lost_len = 10;
        let after = 1 + REQUEST.len() as u32;
        for (at, segment) in [
            (0, syn(0)),
            // REQUEST[..10] never arrives.
            (1, segment(1 + lost_len, &REQUEST[lost_len as usize..])),
            (2, segment(after, get)),
        ] {
            reassembler.ingest(&segment, at, &mut |_, e| events.push(e));
        }
        assert!(
            events.is_empty(),
            "nothing is decided before the gap timeout"
        );
        reassembler.expire(500, &mut |_, e| events.push(e));
        assert_eq!(events[0], FlowEvent::Dropped(DropReason::CaptureGap));
        assert_eq!(request_bytes(&events), [get.to_vec()]);
    }

    #[test]
    fn reset_still_delivers_what_arrived_behind_a_hole() {
        let get = b"GET /next HTTP/1.1\r\n\r\n";
        let mut reassembler = Reassembler::new(LIMITS);
        let rst = Segment {
            rst: true,
            ..segment(500, b"")
        };
        let events = run(&mut reassembler, &[syn(0), segment(30, get), rst]);
        assert_eq!(events[0], FlowEvent::Dropped(DropReason::CaptureGap));
        assert_eq!(request_bytes(&events), [get.to_vec()]);
        assert_eq!(reassembler.active_flows(), 0);
    }

    #[test]
    fn past_the_memory_budget_the_largest_flows_are_shed_and_counted() {
        let limits = ReassemblyLimits {
            max_buffered_bytes: 10_000,
            ..LIMITS
        };
        let mut reassembler = Reassembler::new(limits);
        let mut events = Vec::new();
        let partial = [
            b"POST /slow HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".as_slice(),
            &[b'x'; 3000],
        ]
        .concat();
        for port in 0..5 {
            let key = key_for(40_000 + port);
            let syn = Segment {
                syn: true,
                ..segment_of(key, 0, b"")
            };
            reassembler.ingest(&syn, 0, &mut |_, e| events.push(e));
            reassembler.ingest(&segment_of(key, 1, &partial), 0, &mut |_, e| events.push(e));
            assert!(reassembler.buffered_bytes() <= 10_000);
        }
        let shed = events
            .iter()
            .filter(|e| **e == FlowEvent::Dropped(DropReason::FlowShed))
            .count();
        assert!(shed >= 2, "{events:?}");
        assert_eq!(reassembler.active_flows(), 5 - shed);
    }

    #[test]
    fn past_the_flow_limit_the_least_recently_active_flows_are_shed() {
        let limits = ReassemblyLimits {
            max_flows: 16,
            ..LIMITS
        };
        let mut reassembler = Reassembler::new(limits);
        for port in 0..100u16 {
            let key = key_for(30_000 + port);
            let syn = Segment {
                syn: true,
                ..segment_of(key, 0, b"")
            };
            reassembler.ingest(&syn, u64::from(port), &mut |_, _| {});
            assert!(reassembler.active_flows() <= 16);
        }
        // The newest flow survived.
        let newest = segment_of(key_for(30_099), 1, REQUEST);
        let events = run(&mut reassembler, &[newest]);
        assert_eq!(request_bytes(&events), [REQUEST]);
    }
}
