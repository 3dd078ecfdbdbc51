//! Only what production accepted is replayed, and every request is accounted for: live capture
//! on loopback with real connections to a real server, plus crafted segments sent on `lo` that
//! production's kernel never accepted. Needs root (capture and sending on `lo`) and the
//! binaries built (`make test` does both).

use std::net::SocketAddr;
use std::time::Duration;

use tapwire_testkit::pcap_fixture::{Segment, inject_on_loopback};
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, Report};
use tapwire_testkit::traffic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
const INJECTED: &[u8] = b"GET /INJECTED HTTP/1.1\r\nHost: prod\r\n\r\n";

async fn one_target() -> Pipeline {
    Pipeline::start(PipelineOptions {
        targets: 1,
        ..PipelineOptions::default()
    })
    .await
    .unwrap()
}

/// A segment from `client` to `server` carrying `payload` at `seq`, with an ACK as a client's
/// data segment has.
fn crafted(client: SocketAddr, server: SocketAddr, seq: u32, payload: &[u8]) -> Segment {
    Segment {
        client,
        server,
        from_server: false,
        seq,
        syn: false,
        fin: false,
        rst: false,
        ack: Some(seq ^ 0x1357_9bdf),
        payload: payload.to_vec(),
    }
}

/// Sends `total` numbered requests to production and waits until the target has them all:
/// everything captured before it has been decided.
async fn real_traffic_through(pipeline: &Pipeline, total: u64) {
    let load = traffic::send_mix(pipeline.production.addr(), total, 2).await;
    assert_eq!(load.ok, total, "{load:?}");
    assert!(pipeline.wait_for_targets(total, REPLAY_TIMEOUT).await);
}

/// What the listener captured was streamed: nothing is left in between.
fn assert_adds_up(report: &Report) {
    assert_eq!(report.captured, report.streamed, "{}", report.table());
    assert_eq!(
        report.received_by_replayer,
        report.streamed,
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_segment_without_handshake_never_reaches_staging() {
    let pipeline = one_target().await;
    let server = pipeline.production.addr();
    // No handshake, a random sequence number: production's kernel answers with a RST.
    let spoofed = crafted(
        "127.0.0.1:45123".parse().unwrap(),
        server,
        rand_seq(),
        INJECTED,
    );
    inject_on_loopback(&spoofed).unwrap();
    real_traffic_through(&pipeline, 20).await;
    let target = pipeline.targets[0].clone();
    let report = pipeline.finish(20).await.unwrap();
    assert_eq!(target.served(), 20, "{}", report.table());
    assert_eq!(report.captured, 20, "{}", report.table());
    assert_eq!(report.streamed, 20, "{}", report.table());
    assert_eq!(
        report.listener_dropped.get("unacknowledged_by_server"),
        Some(&1),
        "{}",
        report.table()
    );
    assert_adds_up(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_injected_far_outside_a_live_connections_window_is_never_replayed() {
    let pipeline = one_target().await;
    let server = pipeline.production.addr();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = socket.local_addr().unwrap();
    // Watch our own connection to learn where its client stream is.
    let mut watch = pcap::Capture::from_device("lo")
        .unwrap()
        .immediate_mode(true)
        .timeout(100)
        .open()
        .unwrap();
    watch
        .filter(
            &format!(
                "tcp and src port {} and dst port {}",
                client.port(),
                server.port()
            ),
            true,
        )
        .unwrap();
    let mut connection = socket.connect(server).await.unwrap();
    let first = numbered_get(0);
    exchange(&mut connection, &first).await;
    let next_seq = next_client_seq(&mut watch, first.len());
    // A hundred megabytes ahead of the stream: far outside any window.
    let injected = crafted(client, server, next_seq.wrapping_add(100_000_000), INJECTED);
    inject_on_loopback(&injected).unwrap();
    exchange(&mut connection, &numbered_get(1)).await;
    drop(connection);
    let target = pipeline.targets[0].clone();
    assert_eq!(target.wait_for_served(2, REPLAY_TIMEOUT).await, 2);
    let report = pipeline.finish(2).await.unwrap();
    assert_eq!(target.served(), 2, "{}", report.table());
    assert_eq!(report.streamed, 2, "{}", report.table());
    assert_eq!(
        report.listener_dropped.get("unacknowledged_by_server"),
        Some(&1),
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_short_by_fin_or_rst_are_counted_incomplete() {
    let pipeline = one_target().await;
    let server = pipeline.production.addr();
    let partial =
        b"POST /cut-short HTTP/1.1\r\nHost: prod\r\nContent-Length: 100\r\n\r\n0123456789";
    let per_ending = 10;
    for ending_in_rst in [false, true] {
        for _ in 0..per_ending {
            let mut connection = TcpStream::connect(server).await.unwrap();
            connection.write_all(partial).await.unwrap();
            if ending_in_rst {
                // Linger 0: close sends a RST instead of a FIN (and cannot block).
                #[allow(deprecated)]
                connection.set_linger(Some(Duration::ZERO)).unwrap();
            } else {
                connection.shutdown().await.unwrap();
                let mut rest = Vec::new();
                let _ = connection.read_to_end(&mut rest).await;
            }
            drop(connection);
        }
    }
    let complete = 30;
    real_traffic_through(&pipeline, complete).await;
    let target = pipeline.targets[0].clone();
    let report = pipeline.finish(complete).await.unwrap();
    assert_eq!(target.served(), complete, "{}", report.table());
    assert_eq!(
        report.listener_dropped.get("incomplete"),
        Some(&(2 * per_ending)),
        "{}",
        report.table()
    );
    assert_eq!(report.listener_dropped.len(), 1, "{}", report.table());
    // Every request production saw is replayed or counted under one reason.
    assert_eq!(
        complete + 2 * per_ending,
        report.streamed + report.listener_dropped.values().sum::<u64>(),
        "{}",
        report.table()
    );
    assert_adds_up(&report);
}

fn rand_seq() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos.wrapping_mul(2_654_435_761)
}

fn numbered_get(sequence: u64) -> Vec<u8> {
    format!(
        "GET /live/{sequence} HTTP/1.1\r\nHost: prod\r\n{}: {sequence}\r\n\r\n",
        tapwire_testkit::servers::SEQUENCE_HEADER
    )
    .into_bytes()
}

/// Sends one request and reads its (small, complete) response.
async fn exchange(connection: &mut TcpStream, request: &[u8]) {
    connection.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = connection.read(&mut buffer).await.unwrap();
        assert!(n > 0, "production closed the connection");
        response.extend_from_slice(&buffer[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
}

/// The sequence number after the client's first `len` bytes of data, from its captured segments.
fn next_client_seq(watch: &mut pcap::Capture<pcap::Active>, len: usize) -> u32 {
    loop {
        let frame = watch.next_packet().expect("our own segments are captured");
        let sliced = etherparse::SlicedPacket::from_ethernet(frame.data).unwrap();
        if let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport
            && !tcp.payload().is_empty()
        {
            assert_eq!(tcp.payload().len(), len);
            return tcp.sequence_number().wrapping_add(len as u32);
        }
    }
}
