//! Capture scenarios replayed from crafted pcap files through exactly the path live capture
//! takes (`PacketSource` -> reassembly -> cutting -> queue). Each asserts which requests come
//! out, byte for byte, and which drop counters move.

use prometheus_client::registry::Registry;
use tapwire_listener::capture::{CaptureFilter, PacketSource};
use tapwire_listener::metrics::{DropReason, ListenerMetrics};
use tapwire_listener::queue::record_queue;
use tapwire_listener::reassembly::{Reassembler, ReassemblyLimits};
use tapwire_listener::record::RecordStage;
use tapwire_listener::sink;
use tapwire_runtime::{Health, Shutdown};
use tapwire_shared::http1::ProtocolSwitch;
use tapwire_shared::{RequestRecord, ResponseRecord};
use tapwire_testkit::pcap_fixture::{Connection, FixtureLink, Segment, write_pcap};

const PORT: u16 = 8080;
const LIMITS: ReassemblyLimits = ReassemblyLimits {
    max_request_bytes: 4 << 20,
    max_out_of_order_bytes: 1 << 20,
    gap_timeout_ns: 1_000_000_000,
    flow_idle_timeout_ns: 60_000_000_000,
    max_buffered_bytes: 24 << 20,
    max_flows: 1024,
};

struct Captured {
    records: Vec<RequestRecord>,
    responses: Vec<ResponseRecord>,
    metrics: ListenerMetrics,
}

impl Captured {
    fn requests(&self) -> Vec<&[u8]> {
        self.records.iter().map(|r| r.request.as_ref()).collect()
    }

    fn dropped(&self, reason: DropReason) -> u64 {
        self.metrics.dropped(reason).get()
    }
}

fn capture(link: FixtureLink, segments: &[Segment]) -> Captured {
    capture_with(link, segments, false)
}

fn capture_with(link: FixtureLink, segments: &[Segment], track_responses: bool) -> Captured {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.pcap");
    write_pcap(&path, link, segments).unwrap();
    let metrics = ListenerMetrics::register(&mut Registry::default());
    let (queue, mut queued) = record_queue(1 << 16, 1 << 30, metrics.clone());
    let source = PacketSource::open_file(&path, &CaptureFilter::ports(&[PORT])).unwrap();
    let records = RecordStage::new(metrics.clone(), Default::default(), vec![Box::new(queue)]);
    let mut reassembler = Reassembler::new(LIMITS);
    if track_responses {
        reassembler = reassembler.tracking_responses();
    }
    let heartbeat = Health::new().heartbeat("capture");
    source
        .run(reassembler, records, &Shutdown::new(), &heartbeat)
        .unwrap();
    let (mut records, mut responses) = (Vec::new(), Vec::new());
    while let Some(queued) = queued.try_recv() {
        match queued.into_item() {
            sink::Captured::Request(record) => records.push(record),
            sink::Captured::Response(response) => responses.push(response),
        }
    }
    assert_eq!(metrics.requests_captured.get(), records.len() as u64);
    assert_eq!(metrics.responses_captured.get(), responses.len() as u64);
    Captured {
        records,
        responses,
        metrics,
    }
}

fn connection() -> Connection {
    Connection::new("10.1.0.1:50000", "10.1.0.2:8080", 1_000)
}

const GET: &[u8] = b"GET /one HTTP/1.1\r\nHost: prod\r\nUser-Agent: fixture\r\n\r\n";
const POST: &[u8] =
    b"POST /two HTTP/1.1\r\nHost: prod\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz";
const CHUNKED: &[u8] =
    b"PUT /three HTTP/1.1\r\nHost: prod\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

fn stream() -> Vec<u8> {
    [GET, POST, CHUNKED, GET].concat()
}

#[test]
fn in_order_segments_yield_every_request_with_its_addresses() {
    let c = connection();
    let stream = stream();
    let mut segments = vec![c.syn()];
    segments.extend(c.split(0, &stream, 40));
    segments.push(c.fin(stream.len()));
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [GET, POST, CHUNKED, GET]);
    assert_eq!(captured.records[0].client, c.client);
    assert_eq!(captured.records[0].server, c.server);
    assert_eq!(captured.metrics.dropped_total(), 0);
    assert_eq!(captured.metrics.flows_active.get(), 0, "FIN ends the flow");
}

#[test]
fn reordered_duplicated_and_overlapping_segments_yield_each_request_once() {
    let c = connection();
    let stream = stream();
    let mut segments = vec![c.syn()];
    let mut data = c.split(0, &stream, 30);
    data.reverse();
    segments.extend(data.iter().cloned());
    // Retransmissions of everything, and overlapping re-segmentations of the middle.
    segments.extend(data.iter().cloned());
    segments.push(c.data(10, &stream[10..95]));
    segments.push(c.data(50, &stream[50..160]));
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [GET, POST, CHUNKED, GET]);
    assert_eq!(captured.metrics.dropped_total(), 0);
}

#[test]
fn a_missing_segment_in_a_body_costs_only_that_request() {
    let c = connection();
    let stream = stream();
    let post_body = GET.len() + POST.len() - 26;
    let segments = vec![
        c.syn(),
        c.data(0, &stream[..post_body + 5]),
        // Ten bytes of POST's body never reach the capture.
        c.data(post_body + 15, &stream[post_body + 15..]),
    ];
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [GET, CHUNKED, GET]);
    assert_eq!(captured.dropped(DropReason::CaptureGap), 1);
}

#[test]
fn a_missing_segment_in_a_head_resynchronises_at_the_next_request() {
    let c = connection();
    let stream = stream();
    let chunked_start = GET.len() + POST.len();
    let segments = vec![
        c.syn(),
        c.data(0, &stream[..chunked_start + 4]),
        c.data(chunked_start + 20, &stream[chunked_start + 20..]),
    ];
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [GET, POST, GET]);
    assert_eq!(captured.dropped(DropReason::CaptureGap), 1);
}

#[test]
fn a_connection_open_before_capture_is_picked_up_at_the_next_request() {
    let c = connection();
    let stream = stream();
    // No SYN: capture starts in the middle of POST's body, where production answers an
    // earlier request; its ACK says where the client's stream stands.
    let start = GET.len() + POST.len() - 10;
    let answer = Segment {
        ack: Some(c.data(start, b"").seq),
        ..c.response(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    };
    let segments = [vec![answer], c.split(start, &stream[start..], 1448)].concat();
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [CHUNKED, GET]);
    assert_eq!(captured.metrics.dropped_total(), 0);
}

#[test]
fn a_one_mebibyte_post_in_mtu_sized_segments_is_reassembled() {
    let c = connection();
    let body: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: prod\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let request = [head.as_bytes(), &body].concat();
    let stream = [request.as_slice(), GET].concat();
    let mut segments = vec![c.syn()];
    segments.extend(c.split(0, &stream, 1448));
    // Two segments swapped, as a real network sometimes does.
    segments.swap(100, 101);
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [request.as_slice(), GET]);
}

#[test]
fn vlan_ipv6_and_cooked_captures_decode_the_same() {
    for link in [
        FixtureLink::Ethernet,
        FixtureLink::EthernetVlan(42),
        FixtureLink::LinuxSll,
        FixtureLink::LinuxSll2,
    ] {
        for (client, server) in [
            ("192.0.2.1:40000", "192.0.2.2:8080"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:8080"),
        ] {
            let c = Connection::new(client, server, 7);
            let mut segments = vec![c.syn()];
            segments.extend(c.split(0, &stream(), 64));
            let captured = capture(link, &segments);
            assert_eq!(
                captured.requests(),
                [GET, POST, CHUNKED, GET],
                "{link:?} {client}"
            );
            assert_eq!(captured.records[0].client, c.client, "{link:?}");
        }
    }
}

#[test]
fn sequence_numbers_wrapping_mid_request_are_handled() {
    let c = Connection::new("10.1.0.1:50000", "10.1.0.2:8080", u32::MAX - 40);
    let mut segments = vec![c.syn()];
    segments.extend(c.split(0, &stream(), 25));
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [GET, POST, CHUNKED, GET]);
}

#[test]
fn websocket_upgrade_records_the_request_and_skips_the_frames() {
    let c = connection();
    let upgrade: &[u8] = b"GET /chat HTTP/1.1\r\nHost: prod\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let frames: &[u8] =
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58 GET /not-a-request HTTP/1.1\r\n\r\n";
    let stream = [upgrade, frames].concat();
    let mut segments = vec![c.syn()];
    segments.extend(c.split(0, &stream, 50));
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [upgrade]);
    assert_eq!(captured.metrics.switched(ProtocolSwitch::Upgrade).get(), 1);
    assert_eq!(captured.metrics.dropped_total(), 0);
}

#[test]
fn a_non_http_connection_is_counted_and_its_neighbours_flow_on() {
    let tls = Connection::new("10.1.0.9:50001", "10.1.0.2:8080", 5);
    let http = connection();
    let mut segments = vec![tls.syn(), http.syn()];
    segments.push(tls.data(
        0,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
    ));
    segments.extend(http.split(0, &stream(), 100));
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [GET, POST, CHUNKED, GET]);
    assert_eq!(captured.dropped(DropReason::MalformedHttp), 1);
}

#[test]
fn traffic_to_other_ports_is_filtered_out() {
    let other = Connection::new("10.1.0.1:50002", "10.1.0.2:9090", 5);
    let mut segments = vec![other.syn()];
    segments.extend(other.split(0, &stream(), 100));
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert!(captured.records.is_empty());
    assert_eq!(captured.metrics.packets_captured.get(), 0);
}

#[test]
fn a_reset_still_yields_what_arrived_and_ends_the_flow() {
    let c = connection();
    let stream = stream();
    let segments = vec![
        c.syn(),
        c.data(0, &stream[..GET.len()]),
        // A hole inside POST, then the rest of POST, a complete CHUNKED, and a reset.
        c.data(
            GET.len() + 5,
            &stream[GET.len() + 5..GET.len() + POST.len()],
        ),
        c.data(GET.len() + POST.len(), CHUNKED),
        c.rst(GET.len() + POST.len() + CHUNKED.len()),
    ];
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [GET, CHUNKED]);
    assert_eq!(captured.dropped(DropReason::CaptureGap), 1);
    assert_eq!(captured.metrics.flows_active.get(), 0);
}

#[test]
fn responses_are_paired_with_their_requests_and_timed() {
    let c = connection();
    let head: &[u8] = b"HEAD /one HTTP/1.1\r\nHost: prod\r\n\r\n";
    let expect_head: &[u8] =
        b"POST /two HTTP/1.1\r\nHost: prod\r\nExpect: 100-continue\r\nContent-Length: 26\r\n\r\n";
    let expect_body: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    // A HEAD response announces a length but carries no body.
    let head_ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let proceed: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let created: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let chunked_ok: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let mut sent = 0;
    let mut answered = 0;
    let mut client = |payload: &[u8]| {
        let segment = c.data(sent, payload);
        sent += payload.len();
        segment
    };
    let mut server = |payload: &[u8]| {
        let segment = c.response(answered, payload);
        answered += payload.len();
        segment
    };
    let segments = vec![
        c.syn(),
        c.syn_ack(),
        client(GET),
        server(ok),
        // Pipelined: two requests, then both responses in one segment.
        client(&[head, GET].concat()),
        server(&[head_ok, chunked_ok].concat()),
        client(expect_head),
        server(proceed),
        client(expect_body),
        server(created),
    ];
    let captured = capture_with(FixtureLink::Ethernet, &segments, true);
    assert_eq!(
        captured.requests(),
        [GET, head, GET, &[expect_head, expect_body].concat()]
    );
    let responses: Vec<&[u8]> = captured
        .responses
        .iter()
        .map(|r| r.response.as_ref())
        .collect();
    assert_eq!(responses, [ok, head_ok, chunked_ok, created]);
    let ids: Vec<u64> = captured.records.iter().map(|r| r.id).collect();
    let paired: Vec<u64> = captured.responses.iter().map(|r| r.request_id).collect();
    assert_eq!(paired, ids);
    // Segments are written 1 ms apart: GET at 2 ms, its response complete at 3 ms; the POST's
    // head at 6 ms, its final response at 9 ms.
    assert_eq!(captured.responses[0].latency_ns, 1_000_000);
    assert_eq!(captured.responses[3].latency_ns, 3_000_000);
    assert_eq!(captured.metrics.responses_dropped_total(), 0);
}

#[test]
fn a_close_delimited_response_ends_with_the_server_fin() {
    let c = connection();
    let request: &[u8] = b"GET /old HTTP/1.0\r\n\r\n";
    let response: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
    let segments = vec![
        c.syn(),
        c.syn_ack(),
        c.data(0, request),
        c.response(0, response),
        c.server_fin(response.len()),
        c.fin(request.len()),
    ];
    let captured = capture_with(FixtureLink::Ethernet, &segments, true);
    assert_eq!(captured.requests(), [request]);
    assert_eq!(captured.responses.len(), 1);
    assert_eq!(captured.responses[0].response.as_ref(), response);
    assert_eq!(captured.metrics.flows_active.get(), 0);
}

#[test]
fn without_tracking_responses_server_segments_serve_only_for_their_acks() {
    let c = connection();
    let segments = vec![
        c.syn(),
        c.syn_ack(),
        c.data(0, GET),
        c.response(0, b"HTTP/1.1 204 No Content\r\n\r\n"),
    ];
    let captured = capture(FixtureLink::Ethernet, &segments);
    assert_eq!(captured.requests(), [GET]);
    assert!(captured.responses.is_empty());
    assert_eq!(captured.metrics.responses_dropped_total(), 0);
    assert_eq!(
        captured.metrics.packets_captured.get(),
        5,
        "both directions are captured (with the server's bare ACK of the request)"
    );
}
