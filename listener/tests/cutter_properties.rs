//! Fuzzing the request cutter with generated streams: valid requests (sized, chunked, with
//! trailers, upgrades), smuggling shapes, oversized chunked uploads carrying request lines,
//! and random bytes, in any order. Properties: any split of the stream into segments gives
//! the same events as the whole; it never panics; every request it emits parses as exactly one
//! complete request; nothing after a smuggling shape is ever emitted. Short runs here; a long
//! run with `bench/fuzz.sh` (`PROPTEST_CASES`).

use bytes::Bytes;
use proptest::prelude::*;
use tapwire_listener::http::{CutEvent, RequestCutter};
use tapwire_listener::metrics::DropReason;
use tapwire_shared::http1;

/// One valid request: sized or chunked (with chunk extensions and trailers), sometimes asking
/// for an upgrade the server ignores.
fn valid_request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "OPTIONS"]),
        "[a-z0-9/]{0,16}",
        prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,16}"), 0..3),
        prop::collection::vec(any::<u8>(), 0..600),
        0..3u8,
        prop::collection::vec(1usize..200, 1..4),
        any::<bool>(),
    )
        .prop_map(
            |(method, path, headers, body, framing, chunk_sizes, trailer)| {
                let mut head = format!("{method} /{path} HTTP/1.1\r\nHost: prod\r\n");
                for (name, value) in headers {
                    head.push_str(&format!("X-{name}: {}\r\n", value.trim()));
                }
                let mut out = Vec::new();
                match framing {
                    0 => {
                        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                        out.extend_from_slice(head.as_bytes());
                        out.extend_from_slice(&body);
                    }
                    1 => {
                        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                        out.extend_from_slice(head.as_bytes());
                        let mut rest = body.as_slice();
                        for size in chunk_sizes.iter().cycle() {
                            if rest.is_empty() {
                                break;
                            }
                            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                            out.extend_from_slice(format!("{:x};e=1\r\n", chunk.len()).as_bytes());
                            out.extend_from_slice(chunk);
                            out.extend_from_slice(b"\r\n");
                            rest = tail;
                        }
                        out.extend_from_slice(b"0\r\n");
                        if trailer {
                            out.extend_from_slice(b"Authorization: t\r\n");
                        }
                        out.extend_from_slice(b"\r\n");
                    }
                    _ => {
                        if trailer {
                            head.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\n");
                        }
                        out.extend_from_slice(head.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out
            },
        )
}

/// Heads a server must refuse and close on; each is followed by a body-like tail.
const SMUGGLING: &[&[u8]] = &[
    b"POST /s HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /s HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /s HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /s HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /s HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /s HTTP/1.1\r\nContent-Length: -3\r\n\r\nabc",
    b"POST /s HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc",
    b"POST /s HTTP/1.1\r\nX-A: 1\r\n folded\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /s HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    b"POST /s HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
];

fn smuggling_shape() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(SMUGGLING.to_vec()).prop_map(<[u8]>::to_vec)
}

/// A chunked upload whose data is request lines, usually larger than the limit.
fn upload_with_request_lines() -> impl Strategy<Value = Vec<u8>> {
    (1usize..40).prop_map(|chunks| {
        let mut out = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let data = b"GET /embedded HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..chunks {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    })
}

fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => valid_request(),
        1 => smuggling_shape(),
        1 => upload_with_request_lines(),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(
            prop::sample::select(b"GET POST / HTTP/1.1\r\n:chunked0123;abcTransfer-Encoding Content-Length".to_vec()),
            0..64,
        ),
    ]
}

/// Every event of cutting `stream` delivered in the given segments (all at time 0).
fn cut(stream: &[u8], splits: &[usize], max_request_bytes: usize) -> Vec<CutEvent> {
    let mut cutter = RequestCutter::new(max_request_bytes);
    let mut events = Vec::new();
    let mut start = 0;
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(stream.len());
    for end in cuts {
        cutter.push(&stream[start..end], 0, &mut |e| events.push(e));
        start = end;
    }
    events
}

fn requests(events: &[CutEvent]) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|event| match event {
            CutEvent::Request { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .collect()
}

/// Exactly one complete request, by the same grammar.
fn is_one_complete_request(bytes: &Bytes) -> bool {
    let Ok(Some(head)) = http1::parse_request_head(bytes) else {
        return false;
    };
    http1::decode_body(&bytes.slice(head.len..), head.framing)
        .is_ok_and(|body| head.len + body.consumed == bytes.len())
}

/// `PROPTEST_CASES` when set (the long runs of `bench/fuzz.sh`), else `short` cases.
fn cases(short: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(short)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn any_segmentation_gives_the_same_events_and_only_whole_requests(
        pieces in prop::collection::vec(piece(), 1..8),
        splits in prop::collection::vec(any::<usize>(), 0..12),
        max_request_bytes in 64usize..4096,
    ) {
        let stream = pieces.concat();
        let whole = cut(&stream, &[], max_request_bytes);
        let segmented = cut(&stream, &splits, max_request_bytes);
        prop_assert_eq!(&segmented, &whole);
        for request in requests(&whole) {
            prop_assert!(is_one_complete_request(&request), "{:?}", request);
            prop_assert!(request.len() <= max_request_bytes);
            prop_assert!(!request.starts_with(b"GET /embedded"));
        }
    }

    #[test]
    fn nothing_after_a_smuggling_shape_is_ever_emitted(
        before in prop::collection::vec(valid_request(), 0..4),
        shape in smuggling_shape(),
        after in prop::collection::vec(valid_request(), 1..4),
        splits in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream = [before.concat(), shape, after.concat()].concat();
        let events = cut(&stream, &splits, 1 << 20);
        let emitted: Vec<Vec<u8>> = requests(&events).iter().map(|r| r.to_vec()).collect();
        // Each request before the shape is emitted, nothing after it.
        prop_assert_eq!(emitted, before);
        prop_assert_eq!(events.last(), Some(&CutEvent::Dropped(DropReason::AmbiguousFraming)));
    }
}
