//! TCP reassembly. For each client->server flow it restores sequence order: retransmitted bytes
//! are trimmed, out-of-order segments wait in a bounded per-flow buffer, and the ordered bytes go
//! to the flow's [`RequestCutter`]. A hole that does not fill in time (a packet the kernel never
//! delivered to us) is skipped, costing only the request it falls in. Flows end on FIN, RST or
//! idleness; total buffered bytes and the number of flows are capped, and flows shed to stay
//! under the caps are counted. Sequence numbers wrap, so positions are compared by signed 32-bit
//! distance and stored as 64-bit stream offsets.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::http::{CutEvent, RequestCutter};
use crate::metrics::DropReason;
use crate::packet::{FlowKey, Segment};

/// Limits that keep reassembly memory bounded.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// Largest request kept; larger ones are dropped as `too_large`.
    pub max_request_bytes: usize,
    /// Out-of-order bytes held per flow while waiting for a hole to fill.
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

/// What reassembly reports besides cut requests.
pub trait FlowObserver {
    fn event(&mut self, flow: FlowKey, event: CutEvent);
    /// A flow was dropped to respect a limit.
    fn flow_shed(&mut self);
}

impl<F: FnMut(FlowKey, CutEvent)> FlowObserver for F {
    fn event(&mut self, flow: FlowKey, event: CutEvent) {
        self(flow, event)
    }
    fn flow_shed(&mut self) {}
}

/// Every flow being reassembled, and the limits they share.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    flows: HashMap<FlowKey, Flow>,
    /// Sum of every flow's buffered bytes.
    buffered_bytes: usize,
}

#[derive(Debug)]
struct Flow {
    /// Sequence number of the next byte the cutter expects.
    next_seq: u32,
    /// Stream offset of `next_seq`: bytes delivered (or skipped) so far.
    delivered: u64,
    /// Segments ahead of `next_seq`, by stream offset.
    out_of_order: BTreeMap<u64, Bytes>,
    out_of_order_bytes: usize,
    /// When the oldest still-open hole was first seen.
    hole_since_ns: Option<u64>,
    /// Sequence number just past the client's FIN, once seen.
    fin_seq: Option<u32>,
    last_seen_ns: u64,
    cutter: RequestCutter,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            flows: HashMap::new(),
            buffered_bytes: 0,
        }
    }

    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Bytes held across all flows (partial requests and out-of-order segments).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Takes one captured segment; reports the requests (and drops) it completes.
    pub fn ingest(&mut self, segment: &Segment<'_>, now_ns: u64, observer: &mut impl FlowObserver) {
        let key = segment.flow;
        let mut emit = |event| observer.event(key, event);
        if segment.rst {
            // The connection is gone, but what it sent before the reset still counts.
            if let Some(mut flow) = self.flows.remove(&key) {
                self.buffered_bytes -= flow.buffered();
                flow.close(&mut emit);
            }
            return;
        }
        let mut seq = segment.seq;
        if segment.syn {
            // A new connection, possibly reusing the 4-tuple of an old one.
            seq = seq.wrapping_add(1);
            if let Some(mut old) = self.flows.remove(&key) {
                self.buffered_bytes -= old.buffered();
                old.close(&mut emit);
            }
            self.make_room_for_a_flow(observer);
            let cutter = RequestCutter::new(self.limits.max_request_bytes);
            self.flows.insert(key, Flow::new(seq, now_ns, cutter));
        } else if !self.flows.contains_key(&key) {
            // Bare ACKs of a connection we never saw carry nothing to resynchronise on.
            if segment.payload.is_empty() {
                return;
            }
            // A connection already open when capture started: pick it up at a request line.
            self.make_room_for_a_flow(observer);
            let cutter = RequestCutter::resynchronising(self.limits.max_request_bytes);
            self.flows.insert(key, Flow::new(seq, now_ns, cutter));
        }
        let limits = self.limits;
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let mut emit = |event| observer.event(key, event);
        let before = flow.buffered();
        flow.last_seen_ns = now_ns;
        if !segment.payload.is_empty() {
            flow.accept(seq, segment.payload, now_ns, &limits, &mut emit);
        }
        if segment.fin {
            flow.fin_seq = Some(seq.wrapping_add(segment.payload.len() as u32));
        }
        flow.expire_hole(now_ns, &limits, &mut emit);
        let after = flow.buffered();
        let finished = flow.is_finished();
        self.buffered_bytes = self.buffered_bytes + after - before;
        if finished {
            self.remove(key, observer);
        }
        if self.buffered_bytes > self.limits.max_buffered_bytes {
            self.shed_largest(observer);
        }
    }

    /// Time-based work: holes that waited too long are skipped, idle flows forgotten.
    pub fn expire(&mut self, now_ns: u64, observer: &mut impl FlowObserver) {
        let limits = self.limits;
        let mut idle = Vec::new();
        for (&key, flow) in &mut self.flows {
            let before = flow.buffered();
            flow.expire_hole(now_ns, &limits, &mut |event| observer.event(key, event));
            self.buffered_bytes = self.buffered_bytes + flow.buffered() - before;
            if now_ns.saturating_sub(flow.last_seen_ns) >= limits.flow_idle_timeout_ns {
                idle.push(key);
            }
        }
        for key in idle {
            self.remove(key, observer);
        }
    }

    /// Closes every flow, e.g. at the end of a capture file.
    pub fn finish(&mut self, observer: &mut impl FlowObserver) {
        let keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        for key in keys {
            self.remove(key, observer);
        }
    }

    fn remove(&mut self, key: FlowKey, observer: &mut impl FlowObserver) {
        if let Some(mut flow) = self.flows.remove(&key) {
            self.buffered_bytes -= flow.buffered();
            flow.close(&mut |event| observer.event(key, event));
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
            if flow.cutter.has_partial_request() || flow.out_of_order_bytes > 0 {
                observer.event(key, CutEvent::Dropped(DropReason::FlowShed));
            }
        }
    }
}

impl Flow {
    fn new(next_seq: u32, now_ns: u64, cutter: RequestCutter) -> Self {
        Flow {
            next_seq,
            delivered: 0,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            hole_since_ns: None,
            fin_seq: None,
            last_seen_ns: now_ns,
            cutter,
        }
    }

    fn buffered(&self) -> usize {
        self.cutter.buffered_bytes() + self.out_of_order_bytes
    }

    fn is_finished(&self) -> bool {
        self.fin_seq.is_some_and(|fin| fin == self.next_seq)
            || (self.fin_seq.is_some() && self.cutter.is_broken())
    }

    /// Ends the flow: bytes held behind a hole are still cut, the hole counted as a gap.
    fn close(&mut self, on_event: &mut impl FnMut(CutEvent)) {
        while !self.out_of_order.is_empty() {
            self.skip_hole(self.last_seen_ns, on_event);
        }
    }

    fn accept(
        &mut self,
        seq: u32,
        payload: &[u8],
        now_ns: u64,
        limits: &ReassemblyLimits,
        on_event: &mut impl FnMut(CutEvent),
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
        on_event: &mut impl FnMut(CutEvent),
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
        on_event: &mut impl FnMut(CutEvent),
    ) {
        while self
            .hole_since_ns
            .is_some_and(|since| now_ns.saturating_sub(since) >= limits.gap_timeout_ns)
        {
            self.skip_hole(now_ns, on_event);
        }
    }

    /// Gives up on the bytes before the first held segment and carries on from there.
    fn skip_hole(&mut self, now_ns: u64, on_event: &mut impl FnMut(CutEvent)) {
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
    fn release_held(&mut self, now_ns: u64, on_event: &mut impl FnMut(CutEvent)) {
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

    fn deliver(&mut self, bytes: &[u8], now_ns: u64, on_event: &mut impl FnMut(CutEvent)) {
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
    fn run(reassembler: &mut Reassembler, segments: &[Segment<'_>]) -> Vec<CutEvent> {
        let mut events = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            reassembler.ingest(segment, i as u64, &mut |_, event| events.push(event));
        }
        events
    }

    fn request_bytes(events: &[CutEvent]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|event| match event {
                CutEvent::Request { bytes, .. } => Some(bytes.to_vec()),
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
        assert_eq!(events, [CutEvent::Dropped(DropReason::CaptureGap)]);
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
        assert_eq!(events[0], CutEvent::Dropped(DropReason::CaptureGap));
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
        assert_eq!(events[0], CutEvent::Dropped(DropReason::CaptureGap));
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
            .filter(|e| **e == CutEvent::Dropped(DropReason::FlowShed))
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
