//! TCP reassembly. Each connection has a request stream (client to server) and, with
//! `--track-responses`, a response stream. For each stream it restores sequence order:
//! retransmitted bytes are trimmed, out-of-order segments wait in a bounded buffer, and the
//! ordered bytes go to the stream's cutter. Responses are paired with requests in order.
//! Connections end on FIN, RST or idleness; the number of connections and the memory they hold
//! are capped, and connections shed to stay under the caps are counted. Sequence numbers wrap,
//! so positions are compared by signed 32-bit distance and stored as 64-bit stream offsets.
//!
//! **Only what production accepted is replayed.** The server's segments are always captured
//! (their payload is ignored unless responses are tracked) for their ACKs: a cut request is
//! released only once the server's ACK covers its last byte, which proves that production's
//! TCP stack accepted those exact bytes. Requests waiting for that ACK are held (bounded); if
//! the connection ends, idles or is shed first they are counted as `unacknowledged_by_server`.
//! One uniform rule serves connections seen from their handshake and connections already open
//! when capture started, and it also stops what a seen handshake alone would let through: a
//! spoofed segment (the server answers it with a RST, never an ACK), and bytes injected far
//! ahead of a real connection's window. ACKs on RST segments are ignored: a RST answering a
//! segment without ACK acknowledges that very segment (RFC 9293, 3.10.7.1). The cost is
//! latency: a request leaves when production's ACK is captured (usually at once, at worst the
//! server's delayed-ACK timer, 40 ms on Linux, or its response). A connection already open
//! (or forgotten, e.g. after idleness) is picked up from the server's side: its client stream
//! starts at the ACK of the first server segment with response bytes, so bytes claiming an
//! earlier place (a forged retransmission the server discards with a duplicate ACK) are never
//! cut; client bytes alone never open a flow.
//!
//! A hole that does not fill in time is given up. If the server acknowledged past it, the
//! server has those bytes and only capture missed them: the hole is skipped, costing only the
//! message it falls in (`capture_gap`). Otherwise what is held behind it was never accepted by
//! production: it is discarded (`unacknowledged_by_server`) and the stream waits on at the
//! hole, so injected bytes cannot push a real connection's stream position.
//!
//! **Memory is counted by cost**, not payload: a held segment costs its allocation plus
//! [`HELD_SEGMENT_OVERHEAD`], adjacent held segments are coalesced into one, and a stream holds
//! at most [`MAX_HELD_SEGMENTS`]. Flows are boxed and allocate nothing until they hold bytes, so
//! an idle connection costs its table entry and one small allocation; that cost
//! ([`FLOW_STATE_COST`]) counts in the same budget as held bytes, so that no mix of many
//! connections and held segments exceeds it (`bench/flood.sh`).
//!
//! **Every request is accounted for**: one cut short by FIN, RST, idleness or the end of
//! capture is counted as `incomplete`; one in a flow shed to respect a limit as `flow_shed`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use tapwire_shared::http1::{self, ProtocolSwitch, RequestLineSearch};

use crate::http::{CutEvent, Cutter, RequestCutter, ResponseCutter, ResponseEvent};
use crate::metrics::DropReason;
use crate::packet::{FlowKey, Segment};

/// What a held out-of-order segment costs beyond its allocation's capacity: its B-tree entry
/// (8-byte key, 24-byte vector, node headers and half-empty nodes) and the allocator's chunk
/// header and rounding: an estimate, checked as a whole by `bench/flood.sh` (millions of 1-byte
/// segments, one every other byte, so none coalesce) staying under 64 MiB.
pub const HELD_SEGMENT_OVERHEAD: usize = 96;
/// Out-of-order segments one stream holds at most. A real hole has at most a window of
/// segments behind it: 1 MiB of 1448-byte segments is 724.
pub const MAX_HELD_SEGMENTS: usize = 1024;
/// Cut requests one connection holds at most while waiting for the server's ACK; past it the
/// oldest is counted as `unacknowledged_by_server`. Their bytes count in the memory budget
/// too; the count bounds tiny pipelined requests (a 1 MiB window of 64-byte GETs).
const MAX_UNACKNOWLEDGED_REQUESTS: usize = 16 * 1024;
/// What a request waiting for its ACK costs beyond its bytes (queue slot, shared buffer).
const WAITING_REQUEST_OVERHEAD: usize = 64;
/// What tracking a connection costs before it holds any bytes: its boxed state (272 bytes) and
/// its share of the flow table (two 72-byte slots at the table's load). Counted in the memory
/// budget, so that many idle connections and held bytes share one bound.
pub const FLOW_STATE_COST: usize = 512;

/// Limits that keep reassembly memory bounded.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// Largest request (or response) kept; larger ones are dropped as `too_large`.
    pub max_request_bytes: usize,
    /// Memory held per stream for out-of-order segments (bytes plus bookkeeping).
    pub max_out_of_order_bytes: usize,
    /// How long a hole may stay open before its bytes are declared lost.
    pub gap_timeout_ns: u64,
    /// A flow with no packets for this long is forgotten.
    pub flow_idle_timeout_ns: u64,
    /// Memory held across all flows; past it the largest flows are shed.
    pub max_buffered_bytes: usize,
    /// Flows tracked at once; past it the least recently active are shed.
    pub max_flows: usize,
}

/// What reassembly reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEvent {
    /// A complete request that the server acknowledged; `id` is unique within this reassembler.
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
    /// Server to client: responses, and the ACKs that release requests.
    Response,
}

/// Every flow being reassembled, and the limits they share.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    track_responses: bool,
    /// Boxed: the table's slots stay small, so a table sized for many flows costs little.
    /// Looked up once per packet in each direction: a fast hasher, randomly seeded per process
    /// so that clients choosing their addresses and ports cannot aim at one bucket.
    flows: HashMap<FlowKey, Box<Flow>, foldhash::fast::RandomState>,
    /// Sum of every flow's buffered cost.
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
    /// Segments ahead of `next_seq`, by stream offset; adjacent ones coalesced.
    held: BTreeMap<u64, Vec<u8>>,
    /// What `held` costs: capacities plus [`HELD_SEGMENT_OVERHEAD`] per segment.
    held_cost: usize,
    /// When the oldest still-open hole was first seen.
    hole_since_ns: Option<u64>,
    /// Sequence number just past the sender's FIN, once seen.
    fin_seq: Option<u32>,
    /// Times held bytes were discarded because the server never acknowledged the hole.
    unacknowledged_discards: u32,
    cutter: C,
}

/// Cut requests waiting until the server's ACK covers them, in cut order.
#[derive(Debug, Default)]
struct AckGate {
    /// Request-stream offset up to which the server has acknowledged.
    acked: u64,
    /// Cut events in order, each with the stream offset reached when it was cut (its request
    /// ends at or before it). Other events wait behind a request, to keep the order.
    waiting: VecDeque<(u64, CutEvent)>,
    waiting_cost: usize,
}

#[derive(Debug)]
struct Flow {
    requests: Stream<RequestCutter>,
    acknowledgement: AckGate,
    /// Present when responses are tracked and the connection was seen from its SYN-ACK.
    responses: Option<Box<Stream<ResponseCutter>>>,
    /// Requests awaiting their response, oldest first: (id, first byte time).
    unanswered: VecDeque<(u64, u64)>,
    last_seen_ns: u64,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            track_responses: false,
            flows: HashMap::default(),
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

    /// Memory held across all flows (partial messages, out-of-order segments, requests waiting
    /// for their ACK), by cost.
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
            // The connection is gone, but what the server acknowledged before the reset counts.
            self.remove(key, now_ns, observer);
            return;
        }
        match direction {
            Direction::Request => self.open_for_request(segment, now_ns, observer),
            Direction::Response if segment.syn && self.track_responses => {
                if let Some(flow) = self.flows.get_mut(&key) {
                    let cutter = ResponseCutter::new(self.limits.max_request_bytes);
                    flow.responses =
                        Some(Box::new(Stream::new(segment.seq.wrapping_add(1), cutter)));
                }
            }
            Direction::Response => self.open_already_open(segment, now_ns, observer),
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
                flow.take_request_segment(key, segment, now_ns, &limits, next_request_id, observer)
            }
            Direction::Response => {
                flow.take_response_segment(key, segment, now_ns, &limits, next_request_id, observer)
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
            let cutter = RequestCutter::new(self.limits.max_request_bytes);
            self.admit_flow(key, segment.seq.wrapping_add(1), cutter, now_ns, observer);
        } else if !self.flows.contains_key(&key)
            && http1::find_request_line(segment.payload) == RequestLineSearch::Found(0)
        {
            // A request on a connection not known (yet): spoofed, or the first one seen of a
            // connection already open, which is picked up at the server's next answer.
            observer.event(key, FlowEvent::Dropped(DropReason::UnacknowledgedByServer));
        }
    }

    /// Picks up a connection that was open before capture started (or forgotten since) from
    /// the server's side: a server segment carrying response bytes. The client's stream starts
    /// at that segment's ACK, so what the client sent before it, and anything claiming an
    /// earlier place in the stream (a forged "retransmission" the server discards and answers
    /// with a duplicate ACK), is never cut; the cutter resynchronises at the next request
    /// line. Client bytes alone never open a flow: a spoofed segment costs nothing. Bare ACKs
    /// and FINs open nothing either, so the last segments of a closed connection leave no
    /// ghost flow behind.
    fn open_already_open(
        &mut self,
        segment: &Segment<'_>,
        now_ns: u64,
        observer: &mut impl FlowObserver,
    ) {
        let key = segment.flow;
        let Some(ack) = segment.ack else { return };
        if segment.payload.is_empty() || segment.fin || self.flows.contains_key(&key) {
            return;
        }
        let cutter = RequestCutter::resynchronising(self.limits.max_request_bytes);
        self.admit_flow(key, ack, cutter, now_ns, observer);
    }

    /// Adds a flow whose client stream starts at `start_seq`, first making room for it; its
    /// state counts in the memory budget from now on.
    fn admit_flow(
        &mut self,
        key: FlowKey,
        start_seq: u32,
        cutter: RequestCutter,
        now_ns: u64,
        observer: &mut impl FlowObserver,
    ) {
        self.make_room_for_a_flow(observer);
        let flow = Flow::new(Stream::new(start_seq, cutter), now_ns);
        self.flows.insert(key, Box::new(flow));
        self.buffered_bytes += FLOW_STATE_COST;
    }

    /// Time-based work: holes that waited too long are given up, idle flows forgotten.
    pub fn expire(&mut self, now_ns: u64, observer: &mut impl FlowObserver) {
        let limits = self.limits;
        let mut idle = Vec::new();
        let next_request_id = &mut self.next_request_id;
        for (&key, flow) in &mut self.flows {
            let before = flow.buffered();
            flow.expire_holes(key, now_ns, &limits, next_request_id, observer);
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

    /// Ends a flow: what the server acknowledged is still cut and released, the rest counted.
    fn remove(&mut self, key: FlowKey, now_ns: u64, observer: &mut impl FlowObserver) {
        let Some(mut flow) = self.flows.remove(&key) else {
            return;
        };
        self.buffered_bytes -= flow.buffered();
        flow.close(key, now_ns, &mut self.next_request_id, observer);
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

    /// Drops a flow to respect a limit: a partial request is counted as `flow_shed`, requests
    /// still waiting for the server's ACK as `unacknowledged_by_server`.
    fn shed(&mut self, key: FlowKey, observer: &mut impl FlowObserver) {
        let Some(mut flow) = self.flows.remove(&key) else {
            return;
        };
        self.buffered_bytes -= flow.buffered();
        observer.flow_shed();
        if flow.requests.has_partial_message() {
            observer.event(key, FlowEvent::Dropped(DropReason::FlowShed));
        }
        let Flow {
            acknowledgement,
            responses,
            unanswered,
            ..
        } = &mut *flow;
        let next_request_id = &mut self.next_request_id;
        acknowledgement.abandon(&mut |event| {
            handle_request_event(event, key, next_request_id, responses, unanswered, observer)
        });
        if flow
            .responses
            .as_deref()
            .is_some_and(Stream::has_partial_message)
        {
            observer.event(key, FlowEvent::ResponseDropped(DropReason::FlowShed));
        }
    }
}

/// A request cut from the client's stream and acknowledged by the server: numbered,
/// remembered for pairing, reported.
fn handle_request_event(
    event: CutEvent,
    key: FlowKey,
    next_request_id: &mut u64,
    responses: &mut Option<Box<Stream<ResponseCutter>>>,
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
            acknowledgement: AckGate::default(),
            responses: None,
            unanswered: VecDeque::new(),
            last_seen_ns: now_ns,
        }
    }

    /// What the flow costs: its state, the bytes it holds, its waiting requests.
    fn buffered(&self) -> usize {
        FLOW_STATE_COST
            + self.requests.buffered()
            + self.acknowledgement.waiting_cost
            + self.responses.as_deref().map_or(0, Stream::buffered)
    }

    /// The client is done and acknowledged, and so is the server when its responses are
    /// tracked.
    fn is_finished(&self) -> bool {
        self.requests.is_finished()
            && self.acknowledgement.waiting.is_empty()
            && self.responses.as_deref().is_none_or(Stream::is_finished)
    }

    /// A client segment: its bytes go through the cutter, what is cut waits for its ACK.
    fn take_request_segment(
        &mut self,
        key: FlowKey,
        segment: &Segment<'_>,
        now_ns: u64,
        limits: &ReassemblyLimits,
        next_request_id: &mut u64,
        observer: &mut impl FlowObserver,
    ) {
        let seq = segment.seq.wrapping_add(u32::from(segment.syn));
        let Flow {
            requests,
            acknowledgement,
            responses,
            unanswered,
            ..
        } = self;
        let acked = Some(acknowledgement.acked);
        requests.take(seq, segment, now_ns, limits, acked, &mut |event, end| {
            acknowledgement.admit(end, event, &mut |event| {
                handle_request_event(event, key, next_request_id, responses, unanswered, observer)
            })
        });
        self.report_discards(key, observer);
    }

    /// A server segment: its ACK releases the requests it covers (before its response bytes
    /// are paired with them); its payload is cut only when responses are tracked.
    fn take_response_segment(
        &mut self,
        key: FlowKey,
        segment: &Segment<'_>,
        now_ns: u64,
        limits: &ReassemblyLimits,
        next_request_id: &mut u64,
        observer: &mut impl FlowObserver,
    ) {
        let Flow {
            requests,
            acknowledgement,
            responses,
            unanswered,
            ..
        } = self;
        if let Some(ack) = segment.ack {
            acknowledgement.acknowledge(requests.offset_of(ack), &mut |event| {
                handle_request_event(event, key, next_request_id, responses, unanswered, observer)
            });
        }
        if let Some(responses) = responses {
            let seq = segment.seq.wrapping_add(u32::from(segment.syn));
            responses.take(seq, segment, now_ns, limits, None, &mut |event, _| {
                handle_response_event(event, key, &mut requests.cutter, unanswered, observer)
            });
        }
    }

    fn expire_holes(
        &mut self,
        key: FlowKey,
        now_ns: u64,
        limits: &ReassemblyLimits,
        next_request_id: &mut u64,
        observer: &mut impl FlowObserver,
    ) {
        let Flow {
            requests,
            acknowledgement,
            responses,
            unanswered,
            ..
        } = self;
        let acked = Some(acknowledgement.acked);
        requests.expire_hole(now_ns, limits, acked, &mut |event, end| {
            acknowledgement.admit(end, event, &mut |event| {
                handle_request_event(event, key, next_request_id, responses, unanswered, observer)
            })
        });
        if let Some(responses) = responses {
            responses.expire_hole(now_ns, limits, None, &mut |event, _| {
                handle_response_event(event, key, &mut requests.cutter, unanswered, observer)
            });
        }
        self.report_discards(key, observer);
    }

    /// The connection is over: what the server acknowledged is cut and released; a request
    /// cut short is `incomplete`, one never acknowledged `unacknowledged_by_server`; a
    /// close-delimited response ends.
    fn close(
        &mut self,
        key: FlowKey,
        now_ns: u64,
        next_request_id: &mut u64,
        observer: &mut impl FlowObserver,
    ) {
        let Flow {
            requests,
            acknowledgement,
            responses,
            unanswered,
            ..
        } = self;
        let acked = Some(acknowledgement.acked);
        requests.close(now_ns, acked, &mut |event, end| {
            acknowledgement.admit(end, event, &mut |event| {
                handle_request_event(event, key, next_request_id, responses, unanswered, observer)
            })
        });
        if requests.cutter.has_partial_message() {
            observer.event(key, FlowEvent::Dropped(DropReason::Incomplete));
        }
        acknowledgement.abandon(&mut |event| {
            handle_request_event(event, key, next_request_id, responses, unanswered, observer)
        });
        if let Some(responses) = responses {
            responses.close(now_ns, None, &mut |event, _| {
                handle_response_event(event, key, &mut requests.cutter, unanswered, observer)
            });
        }
        self.report_discards(key, observer);
    }

    /// Counts held bytes the server never acknowledged, discarded since the last report.
    fn report_discards(&mut self, key: FlowKey, observer: &mut impl FlowObserver) {
        for _ in 0..std::mem::take(&mut self.requests.unacknowledged_discards) {
            observer.event(key, FlowEvent::Dropped(DropReason::UnacknowledgedByServer));
        }
    }
}

impl AckGate {
    /// Takes a cut event reached at stream offset `end`: released now if nothing waits and the
    /// server has acknowledged it already, else queued behind what waits.
    fn admit(&mut self, end: u64, event: CutEvent, release: &mut impl FnMut(CutEvent)) {
        let is_request = matches!(event, CutEvent::Request { .. });
        if self.waiting.is_empty() && (!is_request || end <= self.acked) {
            return release(event);
        }
        self.waiting_cost += waiting_cost(&event);
        self.waiting.push_back((end, event));
        if self.waiting.len() > MAX_UNACKNOWLEDGED_REQUESTS
            && let Some((_, oldest)) = self.waiting.pop_front()
        {
            self.waiting_cost -= waiting_cost(&oldest);
            release(unacknowledged(oldest));
            self.release_covered(release);
        }
    }

    /// The server acknowledged up to stream offset `acked`.
    fn acknowledge(&mut self, acked: u64, release: &mut impl FnMut(CutEvent)) {
        self.acked = self.acked.max(acked);
        self.release_covered(release);
    }

    fn release_covered(&mut self, release: &mut impl FnMut(CutEvent)) {
        while let Some((end, event)) = self.waiting.front() {
            if matches!(event, CutEvent::Request { .. }) && *end > self.acked {
                return;
            }
            if let Some((_, event)) = self.waiting.pop_front() {
                self.waiting_cost -= waiting_cost(&event);
                release(event);
            }
        }
    }

    /// The connection is gone: what the server never acknowledged is dropped.
    fn abandon(&mut self, release: &mut impl FnMut(CutEvent)) {
        for (_, event) in self.waiting.drain(..) {
            release(unacknowledged(event));
        }
        self.waiting_cost = 0;
    }
}

/// A waiting request given up, as its drop; other events unchanged.
fn unacknowledged(event: CutEvent) -> CutEvent {
    match event {
        CutEvent::Request { .. } => CutEvent::Dropped(DropReason::UnacknowledgedByServer),
        other => other,
    }
}

fn waiting_cost(event: &CutEvent) -> usize {
    match event {
        CutEvent::Request { bytes, .. } => bytes.len() + WAITING_REQUEST_OVERHEAD,
        _ => WAITING_REQUEST_OVERHEAD,
    }
}

/// What one held segment costs in memory.
fn held_cost(held: &Vec<u8>) -> usize {
    held.capacity() + HELD_SEGMENT_OVERHEAD
}

impl<C: Cutter> Stream<C> {
    fn new(next_seq: u32, cutter: C) -> Self {
        Stream {
            next_seq,
            delivered: 0,
            held: BTreeMap::new(),
            held_cost: 0,
            hole_since_ns: None,
            fin_seq: None,
            unacknowledged_discards: 0,
            cutter,
        }
    }

    fn buffered(&self) -> usize {
        self.cutter.buffered_bytes() + self.held_cost
    }

    fn has_partial_message(&self) -> bool {
        self.cutter.has_partial_message() || !self.held.is_empty()
    }

    fn is_finished(&self) -> bool {
        self.fin_seq.is_some_and(|fin| fin == self.next_seq)
            || (self.fin_seq.is_some() && self.cutter.is_broken())
    }

    /// The stream offset of sequence number `seq` (0 for anything before the stream's start).
    fn offset_of(&self, seq: u32) -> u64 {
        let distance = i64::from(seq.wrapping_sub(self.next_seq) as i32);
        (self.delivered as i64).saturating_add(distance).max(0) as u64
    }

    /// Takes one segment of this direction, whose data starts at `seq`. `acked` is the offset
    /// the server acknowledged, for a stream whose bytes need it (requests). Events come with
    /// the stream offset reached when they were cut.
    fn take(
        &mut self,
        seq: u32,
        segment: &Segment<'_>,
        now_ns: u64,
        limits: &ReassemblyLimits,
        acked: Option<u64>,
        on_event: &mut impl FnMut(C::Event, u64),
    ) {
        if !segment.payload.is_empty() {
            self.accept(seq, segment.payload, now_ns, limits, acked, on_event);
        }
        if segment.fin {
            self.fin_seq = Some(seq.wrapping_add(segment.payload.len() as u32));
        }
        self.expire_hole(now_ns, limits, acked, on_event);
        if self.fin_seq.is_some_and(|fin| fin == self.next_seq) {
            let at = self.delivered;
            self.cutter.close(now_ns, &mut |event| on_event(event, at));
        }
    }

    /// Ends the stream: every hole is given up, then the cutter closes.
    fn close(&mut self, now_ns: u64, acked: Option<u64>, on_event: &mut impl FnMut(C::Event, u64)) {
        while !self.held.is_empty() {
            self.give_up_hole(now_ns, acked, on_event);
        }
        let at = self.delivered;
        self.cutter.close(now_ns, &mut |event| on_event(event, at));
    }

    fn accept(
        &mut self,
        seq: u32,
        payload: &[u8],
        now_ns: u64,
        limits: &ReassemblyLimits,
        acked: Option<u64>,
        on_event: &mut impl FnMut(C::Event, u64),
    ) {
        if self.cutter.is_broken() {
            return;
        }
        let distance = seq.wrapping_sub(self.next_seq) as i32;
        if distance > 0 {
            self.hold(distance as u64, payload, now_ns, limits, acked, on_event);
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

    /// Keeps a segment that arrived ahead of a hole: appended to the held segment it continues,
    /// ignored if one already covers it, else held on its own.
    fn hold(
        &mut self,
        ahead: u64,
        payload: &[u8],
        now_ns: u64,
        limits: &ReassemblyLimits,
        acked: Option<u64>,
        on_event: &mut impl FnMut(C::Event, u64),
    ) {
        let offset = self.delivered + ahead;
        let end = offset + payload.len() as u64;
        let before = self.held.range_mut(..=offset).next_back();
        match before {
            Some((&start, held)) if start + held.len() as u64 >= end => {}
            Some((&start, held)) if start + held.len() as u64 == offset => {
                let cost = held_cost(held);
                held.extend_from_slice(payload);
                self.held_cost = self.held_cost + held_cost(held) - cost;
            }
            _ => {
                let held = payload.to_vec();
                self.held_cost += held_cost(&held);
                if let Some(replaced) = self.held.insert(offset, held) {
                    self.held_cost -= held_cost(&replaced);
                }
            }
        }
        self.hole_since_ns.get_or_insert(now_ns);
        // The hole is not filling while this much piles up behind it.
        while self.held_cost > limits.max_out_of_order_bytes || self.held.len() > MAX_HELD_SEGMENTS
        {
            self.give_up_hole(now_ns, acked, on_event);
        }
    }

    fn expire_hole(
        &mut self,
        now_ns: u64,
        limits: &ReassemblyLimits,
        acked: Option<u64>,
        on_event: &mut impl FnMut(C::Event, u64),
    ) {
        while self
            .hole_since_ns
            .is_some_and(|since| now_ns.saturating_sub(since) >= limits.gap_timeout_ns)
        {
            self.give_up_hole(now_ns, acked, on_event);
        }
    }

    /// The hole before the first held segment will not fill. If the server acknowledged past
    /// it (or acknowledgement is not required), only capture missed its bytes: skip it.
    /// Otherwise production never accepted what is held: discard it all and wait on at the
    /// hole.
    fn give_up_hole(
        &mut self,
        now_ns: u64,
        acked: Option<u64>,
        on_event: &mut impl FnMut(C::Event, u64),
    ) {
        let Some((&offset, _)) = self.held.first_key_value() else {
            self.hole_since_ns = None;
            return;
        };
        if acked.is_none_or(|acked| acked >= offset) {
            self.skip_hole(offset, now_ns, on_event);
        } else {
            self.held = BTreeMap::new();
            self.held_cost = 0;
            self.hole_since_ns = None;
            self.unacknowledged_discards += 1;
        }
    }

    /// Gives up on the bytes before the held segment at `offset` and carries on from there.
    fn skip_hole(&mut self, offset: u64, now_ns: u64, on_event: &mut impl FnMut(C::Event, u64)) {
        let missing = offset.saturating_sub(self.delivered);
        let at = self.delivered;
        self.cutter
            .skip_gap(missing, &mut |event| on_event(event, at));
        self.delivered += missing;
        self.next_seq = self.next_seq.wrapping_add(missing as u32);
        self.hole_since_ns = None;
        self.release_held(now_ns, on_event);
    }

    /// Delivers held segments that the stream has now reached.
    fn release_held(&mut self, now_ns: u64, on_event: &mut impl FnMut(C::Event, u64)) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > self.delivered {
                // A later hole remains; its clock starts now.
                self.hole_since_ns = Some(now_ns);
                return;
            }
            let already_delivered = (self.delivered - *entry.key()) as usize;
            let held = entry.remove();
            self.held_cost -= held_cost(&held);
            if already_delivered < held.len() {
                self.deliver(&held[already_delivered..], now_ns, on_event);
            }
        }
        self.hole_since_ns = None;
    }

    fn deliver(&mut self, bytes: &[u8], now_ns: u64, on_event: &mut impl FnMut(C::Event, u64)) {
        self.next_seq = self.next_seq.wrapping_add(bytes.len() as u32);
        self.delivered += bytes.len() as u64;
        let at = self.delivered;
        self.cutter
            .push(bytes, now_ns, &mut |event| on_event(event, at));
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
            ack: None,
            payload,
        }
    }

    /// The server's bare ACK of the client's bytes up to `ack`.
    fn server_ack(ack: u32) -> Segment<'static> {
        Segment {
            ack: Some(ack),
            ..segment(0, b"")
        }
    }

    fn syn(seq: u32) -> Segment<'static> {
        Segment {
            syn: true,
            ..segment(seq, b"")
        }
    }

    /// Feeds client segments, each acknowledged by the server as it arrives (as production
    /// does when it received everything), returning the requests and drops that came out.
    fn run(reassembler: &mut Reassembler, segments: &[Segment<'_>]) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            reassembler.ingest(segment, i as u64, &mut |_, event| events.push(event));
            if !segment.rst {
                let end = segment.seq.wrapping_add(
                    segment.payload.len() as u32 + u32::from(segment.syn) + u32::from(segment.fin),
                );
                let ack = Segment {
                    flow: segment.flow,
                    ..server_ack(end)
                };
                reassembler.ingest_directed(
                    &ack,
                    Direction::Response,
                    i as u64,
                    &mut |_, event| events.push(event),
                );
            }
        }
        events
    }

    /// Feeds segments in both directions exactly as given.
    fn run_exact(
        reassembler: &mut Reassembler,
        segments: &[(Direction, Segment<'_>)],
    ) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        for (i, (direction, segment)) in segments.iter().enumerate() {
            reassembler.ingest_directed(segment, *direction, i as u64, &mut |_, event| {
                events.push(event)
            });
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
    fn client_bytes_alone_never_open_a_flow() {
        let mut reassembler = Reassembler::new(LIMITS);
        let events = run(
            &mut reassembler,
            &[segment(5000, b""), segment(7000, REQUEST)],
        );
        assert_eq!(request_bytes(&events), Vec::<Vec<u8>>::new());
        assert_eq!(
            events,
            [FlowEvent::Dropped(DropReason::UnacknowledgedByServer)]
        );
        assert_eq!(reassembler.active_flows(), 0);
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
        assert!(
            reassembler.buffered_bytes()
                <= FLOW_STATE_COST + LIMITS.max_out_of_order_bytes + 8 * 1024
        );
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
        // The server did receive the segment that capture missed: it acknowledges it all.
        let ack = server_ack(after + get.len() as u32);
        reassembler.ingest_directed(&ack, Direction::Response, 3, &mut |_, e| events.push(e));
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

    fn rst(seq: u32) -> Segment<'static> {
        Segment {
            rst: true,
            ..segment(seq, b"")
        }
    }

    fn dropped(events: &[FlowEvent], reason: DropReason) -> usize {
        events
            .iter()
            .filter(|event| **event == FlowEvent::Dropped(reason))
            .count()
    }

    const INJECTED: &[u8] = b"GET /INJECTED HTTP/1.1\r\nHost: prod\r\n\r\n";

    #[test]
    fn spoofed_segment_without_handshake_is_never_released() {
        let mut reassembler = Reassembler::new(LIMITS);
        // No handshake, a random sequence number; production's kernel answers with a RST
        // whose ACK (it may carry one) must not count.
        let answer = Segment {
            ack: Some(7000 + INJECTED.len() as u32),
            ..rst(0)
        };
        let events = run_exact(
            &mut reassembler,
            &[
                (Direction::Request, segment(7000, INJECTED)),
                (Direction::Response, answer),
            ],
        );
        assert_eq!(request_bytes(&events), Vec::<Vec<u8>>::new());
        assert_eq!(dropped(&events, DropReason::UnacknowledgedByServer), 1);
        assert_eq!(reassembler.active_flows(), 0);
    }

    #[test]
    fn spoofed_segment_the_server_never_answers_is_dropped_when_the_flow_idles() {
        let mut reassembler = Reassembler::new(LIMITS);
        let mut events = run_exact(
            &mut reassembler,
            &[(Direction::Request, segment(7000, INJECTED))],
        );
        reassembler.expire(5_000, &mut |_, e| events.push(e));
        assert_eq!(request_bytes(&events), Vec::<Vec<u8>>::new());
        assert_eq!(dropped(&events, DropReason::UnacknowledgedByServer), 1);
    }

    #[test]
    fn a_request_is_released_once_the_server_acknowledges_its_last_byte() {
        let mut reassembler = Reassembler::new(LIMITS);
        let end = 1 + REQUEST.len() as u32;
        let mut events = run_exact(
            &mut reassembler,
            &[
                (Direction::Request, syn(0)),
                (Direction::Response, server_ack(1)),
                (Direction::Request, segment(1, REQUEST)),
                (Direction::Response, server_ack(end - 1)),
            ],
        );
        assert!(events.is_empty(), "{events:?}");
        reassembler.ingest_directed(&server_ack(end), Direction::Response, 9, &mut |_, e| {
            events.push(e)
        });
        assert_eq!(request_bytes(&events), [REQUEST]);
    }

    #[test]
    fn a_connection_open_before_capture_is_picked_up_when_the_server_acknowledges() {
        let mut reassembler = Reassembler::new(LIMITS);
        let get = b"GET /a HTTP/1.1\r\n\r\n";
        let answer = Segment {
            ack: Some(5000 + get.len() as u32),
            ..segment(90_000, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        };
        let events = run_exact(
            &mut reassembler,
            &[
                // Seen before the server's side: counted, not replayed.
                (Direction::Request, segment(5000, get)),
                (Direction::Response, answer),
                (
                    Direction::Request,
                    segment(5000 + get.len() as u32, REQUEST),
                ),
                (
                    Direction::Response,
                    server_ack(5000 + (get.len() + REQUEST.len()) as u32),
                ),
            ],
        );
        assert_eq!(request_bytes(&events), [REQUEST.to_vec()]);
        assert_eq!(dropped(&events, DropReason::UnacknowledgedByServer), 1);
    }

    #[test]
    fn a_forged_retransmission_answered_by_a_duplicate_ack_is_never_cut() {
        // A connection the listener does not know (forgotten, or open before capture); the
        // attacker sends a request at an old sequence number: the server discards it and
        // answers with a duplicate ACK for everything it has, past the forged bytes.
        let mut reassembler = Reassembler::new(LIMITS);
        let forged_at = 4000;
        let received_up_to = 9000;
        let duplicate_ack = Segment {
            ack: Some(received_up_to),
            ..segment(90_000, b"")
        };
        let response = Segment {
            ack: Some(received_up_to),
            ..segment(90_000, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        };
        let events = run_exact(
            &mut reassembler,
            &[
                (Direction::Request, segment(forged_at, INJECTED)),
                (Direction::Response, duplicate_ack),
                (Direction::Response, response),
                (Direction::Request, segment(forged_at, INJECTED)),
                (Direction::Response, server_ack(received_up_to)),
            ],
        );
        assert_eq!(request_bytes(&events), Vec::<Vec<u8>>::new());
        assert_eq!(dropped(&events, DropReason::UnacknowledgedByServer), 1);
    }

    #[test]
    fn bytes_injected_far_ahead_of_the_window_are_discarded_and_the_flow_goes_on() {
        let mut reassembler = Reassembler::new(LIMITS);
        let get = b"GET /real HTTP/1.1\r\n\r\n";
        let first_end = 1 + REQUEST.len() as u32;
        let mut events = run(&mut reassembler, &[syn(0), segment(1, REQUEST)]);
        // Injected a million bytes ahead; the server's ACKs never move past the real stream.
        let injected = segment(first_end + 1_000_000, INJECTED);
        reassembler.ingest(&injected, 10, &mut |_, e| events.push(e));
        reassembler.expire(500, &mut |_, e| events.push(e));
        assert_eq!(dropped(&events, DropReason::UnacknowledgedByServer), 1);
        // The real connection carries on where it was.
        events.extend(run(&mut reassembler, &[segment(first_end, get)]));
        reassembler.finish(&mut |_, e| events.push(e));
        assert_eq!(request_bytes(&events), [REQUEST.to_vec(), get.to_vec()]);
        assert_eq!(dropped(&events, DropReason::CaptureGap), 0);
    }

    #[test]
    fn held_bytes_the_server_never_acknowledged_are_not_replayed_at_the_end() {
        let mut reassembler = Reassembler::new(LIMITS);
        let mut events = run(&mut reassembler, &[syn(0)]);
        let injected = segment(1 + 5000, INJECTED);
        reassembler.ingest(&injected, 3, &mut |_, e| events.push(e));
        reassembler.finish(&mut |_, e| events.push(e));
        assert_eq!(request_bytes(&events), Vec::<Vec<u8>>::new());
        assert_eq!(dropped(&events, DropReason::UnacknowledgedByServer), 1);
    }

    #[test]
    fn a_request_cut_short_by_fin_rst_idleness_or_the_end_is_incomplete() {
        let partial = &REQUEST[..REQUEST.len() - 3];
        let fin = Segment {
            fin: true,
            ..segment(1 + partial.len() as u32, b"")
        };
        type Ending<'a> = &'a dyn Fn(&mut Reassembler, &mut Vec<FlowEvent>);
        let ends: [Ending; 4] = [
            &|r, events| events.extend(run(r, &[fin])),
            &|r, events| events.extend(run(r, &[rst(1 + partial.len() as u32)])),
            &|r, events| r.expire(5_000, &mut |_, e| events.push(e)),
            &|r, events| r.finish(&mut |_, e| events.push(e)),
        ];
        for end in ends {
            let mut reassembler = Reassembler::new(LIMITS);
            let mut events = run(&mut reassembler, &[syn(0), segment(1, partial)]);
            end(&mut reassembler, &mut events);
            assert_eq!(events, [FlowEvent::Dropped(DropReason::Incomplete)]);
            assert_eq!(reassembler.active_flows(), 0);
        }
    }

    #[test]
    fn adjacent_tiny_segments_behind_a_hole_are_held_as_one() {
        let mut reassembler = Reassembler::new(LIMITS);
        run(&mut reassembler, &[syn(0)]);
        for n in 0..2000u32 {
            reassembler.ingest(&segment(100 + n, b"x"), 1, &mut |_, _| {});
        }
        let held = &reassembler.flows[&key()].requests.held;
        assert_eq!(held.len(), 1);
        assert!(reassembler.buffered_bytes() <= 4096 + HELD_SEGMENT_OVERHEAD + FLOW_STATE_COST);
    }

    #[test]
    fn scattered_tiny_segments_are_counted_by_cost_and_capped_in_number() {
        let limits = ReassemblyLimits {
            max_out_of_order_bytes: 1 << 20,
            ..LIMITS
        };
        let mut reassembler = Reassembler::new(limits);
        run(&mut reassembler, &[syn(0)]);
        for n in 0..20_000u32 {
            // One byte every other byte: nothing coalesces.
            reassembler.ingest(&segment(100 + 2 * n, b"x"), 1, &mut |_, _| {});
            let held = &reassembler.flows[&key()].requests;
            assert!(held.held.len() <= MAX_HELD_SEGMENTS);
            assert!(held.held_cost <= limits.max_out_of_order_bytes);
            assert_eq!(
                held.held_cost + FLOW_STATE_COST,
                reassembler.buffered_bytes()
            );
        }
    }
}
