//! Properties of reassembly + request cutting over generated input: any valid request stream,
//! cut at arbitrary points, reordered and duplicated, yields exactly its requests; arbitrary
//! bytes and sequence numbers never panic and never hold more memory than the limit.

use proptest::prelude::*;
use tapwire_listener::packet::{FlowKey, Segment};
use tapwire_listener::reassembly::{
    Direction, FLOW_STATE_COST, FlowEvent, Reassembler, ReassemblyLimits,
};

const LIMITS: ReassemblyLimits = ReassemblyLimits {
    max_request_bytes: 1 << 20,
    max_out_of_order_bytes: 1 << 20,
    gap_timeout_ns: u64::MAX,
    flow_idle_timeout_ns: u64::MAX,
    max_buffered_bytes: 4 << 20,
    max_flows: 64,
};

fn flow(port: u16) -> FlowKey {
    FlowKey {
        client: format!("10.9.0.1:{port}").parse().unwrap(),
        server: "10.9.0.2:80".parse().unwrap(),
    }
}

/// One valid HTTP/1.1 request: a method, a path, a few headers, and a body framed by
/// Content-Length or chunked coding.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
        "[a-z0-9/]{1,24}",
        prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,24}"), 0..4),
        prop::collection::vec(any::<u8>(), 0..3000),
        any::<bool>(),
        prop::collection::vec(1usize..700, 1..6),
    )
        .prop_map(|(method, path, headers, body, chunked, chunk_sizes)| {
            let mut head = format!("{method} /{path} HTTP/1.1\r\nHost: prod\r\n");
            for (name, value) in headers {
                // Keep generated headers from changing the framing.
                head.push_str(&format!("X-{name}: {}\r\n", value.trim()));
            }
            let mut out = Vec::new();
            if method == "GET" {
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(b"\r\n");
            } else if chunked {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                out.extend_from_slice(head.as_bytes());
                let mut rest = body.as_slice();
                for size in chunk_sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                    rest = tail;
                }
                out.extend_from_slice(b"0\r\n\r\n");
            } else {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(&body);
            }
            out
        })
}

fn requests_out(events: &[FlowEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|event| match event {
            FlowEvent::Request { bytes, .. } => Some(bytes.to_vec()),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_split_reordering_and_duplication_yields_the_same_requests(
        requests in prop::collection::vec(request(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        swaps in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        duplicates in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        isn in any::<u32>(),
    ) {
        let stream: Vec<u8> = requests.concat();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len())).collect();
        points.extend([0, stream.len()]);
        points.sort_unstable();
        points.dedup();
        let mut pieces: Vec<(usize, &[u8])> = points
            .windows(2)
            .map(|w| (w[0], &stream[w[0]..w[1]]))
            .collect();
        for swap in &swaps {
            let i = swap.index(pieces.len());
            if i + 1 < pieces.len() {
                pieces.swap(i, i + 1);
            }
        }
        for duplicate in &duplicates {
            let piece = pieces[duplicate.index(pieces.len())];
            pieces.push(piece);
        }

        let key = flow(40_000);
        let mut reassembler = Reassembler::new(LIMITS);
        let mut events = Vec::new();
        let syn = Segment { flow: key, seq: isn, syn: true, fin: false, rst: false, ack: None, payload: b"" };
        reassembler.ingest(&syn, 0, &mut |_, e| events.push(e));
        for (n, (offset, payload)) in pieces.iter().enumerate() {
            let segment = Segment {
                flow: key,
                seq: isn.wrapping_add(1).wrapping_add(*offset as u32),
                syn: false,
                fin: false,
                rst: false,
                ack: None,
                payload,
            };
            reassembler.ingest(&segment, n as u64 + 1, &mut |_, e| events.push(e));
        }
        // Production acknowledges the whole stream: only then are requests released.
        let ack = Segment {
            seq: 0,
            syn: false,
            ack: Some(isn.wrapping_add(1).wrapping_add(stream.len() as u32)),
            payload: b"",
            ..syn
        };
        let at = pieces.len() as u64 + 1;
        reassembler.ingest_directed(&ack, Direction::Response, at, &mut |_, e| events.push(e));
        prop_assert_eq!(events.len(), requests.len(), "no drops expected: {:?}", events);
        prop_assert_eq!(requests_out(&events), requests);
        // Nothing held but the open connection's own state.
        prop_assert_eq!(reassembler.buffered_bytes(), FLOW_STATE_COST);
    }

    #[test]
    fn arbitrary_segments_never_panic_or_exceed_the_memory_limit(
        segments in prop::collection::vec(
            (0u16..8, any::<u32>(), any::<bool>(), any::<bool>(), any::<bool>(),
             prop::collection::vec(any::<u8>(), 0..5000)),
            1..200,
        ),
    ) {
        let limits = ReassemblyLimits { max_buffered_bytes: 64 << 10, max_out_of_order_bytes: 16 << 10, ..LIMITS };
        let mut reassembler = Reassembler::new(limits);
        for (n, (port, seq, syn, fin, rst, payload)) in segments.iter().enumerate() {
            let segment = Segment { flow: flow(50_000 + port), seq: *seq, syn: *syn, fin: *fin, rst: *rst, ack: Some(seq.wrapping_add(payload.len() as u32)), payload };
            let direction = if n % 3 == 2 { Direction::Response } else { Direction::Request };
            reassembler.ingest_directed(&segment, direction, n as u64, &mut |_, _| {});
            prop_assert!(reassembler.buffered_bytes() <= limits.max_buffered_bytes);
        }
        reassembler.finish(&mut |_, _| {});
        prop_assert_eq!(reassembler.buffered_bytes(), 0);
        prop_assert_eq!(reassembler.active_flows(), 0);
    }
}
