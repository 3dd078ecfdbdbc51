//! TCP reassembly. For each client->server flow it restores sequence order: retransmitted bytes
//! are trimmed, out-of-order segments wait in a bounded per-flow buffer, and the ordered bytes go
//! to the flow's [`RequestCutter`]. Flows end on FIN, RST or idleness. Sequence numbers wrap, so
//! positions are compared by signed 32-bit distance and stored as 64-bit stream offsets.

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
    /// A flow with no packets for this long is forgotten.
    pub flow_idle_timeout_ns: u64,
}

/// Every flow being reassembled, and the limits they share.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    flows: HashMap<FlowKey, Flow>,
}

#[derive(Debug)]
struct Flow {
    /// Sequence number of the next byte the cutter expects.
    next_seq: u32,
    /// Stream offset of `next_seq`: bytes delivered so far.
    delivered: u64,
    /// Segments ahead of `next_seq`, by stream offset.
    out_of_order: BTreeMap<u64, Bytes>,
    out_of_order_bytes: usize,
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
        }
    }

    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Takes one captured segment; emits the requests (and drops) it completes.
    pub fn ingest(
        &mut self,
        segment: &Segment<'_>,
        now_ns: u64,
        on_event: &mut impl FnMut(FlowKey, CutEvent),
    ) {
        let key = segment.flow;
        if segment.rst {
            // The connection is gone; a partial request in it was never complete.
            self.flows.remove(&key);
            return;
        }
        let mut seq = segment.seq;
        if segment.syn {
            // A new connection, possibly reusing the 4-tuple of an old one.
            seq = seq.wrapping_add(1);
            self.flows.insert(key, Flow::new(seq, now_ns, &self.limits));
        }
        let flow = match self.flows.get_mut(&key) {
            Some(flow) => flow,
            // Bare ACKs of a connection we never saw carry nothing to resynchronise on.
            None if segment.payload.is_empty() => return,
            // Connection already open when capture started: start at this segment.
            None => self
                .flows
                .entry(key)
                .or_insert_with(|| Flow::new(seq, now_ns, &self.limits)),
        };
        flow.last_seen_ns = now_ns;
        let mut emit = |event| on_event(key, event);
        if !segment.payload.is_empty() {
            flow.accept(seq, segment.payload, now_ns, &self.limits, &mut emit);
        }
        if segment.fin {
            flow.fin_seq = Some(seq.wrapping_add(segment.payload.len() as u32));
        }
        if flow.is_finished() {
            self.flows.remove(&key);
        }
    }

    /// Forgets flows idle for longer than the limit; returns how many.
    pub fn evict_idle(&mut self, now_ns: u64) -> usize {
        let before = self.flows.len();
        let timeout = self.limits.flow_idle_timeout_ns;
        self.flows
            .retain(|_, flow| now_ns.saturating_sub(flow.last_seen_ns) < timeout);
        before - self.flows.len()
    }
}

impl Flow {
    fn new(next_seq: u32, now_ns: u64, limits: &ReassemblyLimits) -> Self {
        Flow {
            next_seq,
            delivered: 0,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            fin_seq: None,
            last_seen_ns: now_ns,
            cutter: RequestCutter::new(limits.max_request_bytes),
        }
    }

    fn is_finished(&self) -> bool {
        self.fin_seq.is_some_and(|fin| fin == self.next_seq)
            || (self.fin_seq.is_some() && self.cutter.is_broken())
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
            self.hold(distance as u64, payload, limits, on_event);
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
        limits: &ReassemblyLimits,
        on_event: &mut impl FnMut(CutEvent),
    ) {
        if self.out_of_order_bytes + payload.len() > limits.max_out_of_order_bytes {
            // The hole is not filling: the bytes in it are lost for good.
            self.out_of_order = BTreeMap::new();
            self.out_of_order_bytes = 0;
            self.cutter.break_flow(DropReason::CaptureGap, on_event);
            return;
        }
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
        }
    }

    /// Delivers held segments that the stream has now reached.
    fn release_held(&mut self, now_ns: u64, on_event: &mut impl FnMut(CutEvent)) {
        while let Some(entry) = self.out_of_order.first_entry() {
            if *entry.key() > self.delivered {
                break;
            }
            let already_delivered = (self.delivered - *entry.key()) as usize;
            let held = entry.remove();
            self.out_of_order_bytes -= held.len();
            if already_delivered < held.len() {
                self.deliver(&held[already_delivered..], now_ns, on_event);
            }
        }
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
        flow_idle_timeout_ns: 1_000,
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
                CutEvent::Dropped(_) => None,
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
    fn hole_that_never_fills_is_a_capture_gap() {
        let mut reassembler = Reassembler::new(LIMITS);
        let filler = vec![b'x'; 3000];
        let events = run(
            &mut reassembler,
            &[syn(0), segment(1000, &filler), segment(4000, &filler)],
        );
        assert_eq!(events, [CutEvent::Dropped(DropReason::CaptureGap)]);
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
        assert_eq!(reassembler.evict_idle(500), 0);
        assert_eq!(reassembler.evict_idle(5_000), 1);
        assert_eq!(reassembler.active_flows(), 0);
    }
}
