//! The replayer's gRPC port faces whatever connects to it. These tests run the real replayer
//! binary and hit its port with what no listener should send (undecodable messages, messages
//! over the size limit, a gzip batch that inflates past it, bytes that are not HTTP/2, a message
//! cut short) and with listeners that send slowly or never read their acknowledgements. Each
//! abusive stream ends on its own with a gRPC error status and holds back nobody else: the
//! well-behaved listeners alongside get every record acknowledged and replayed exactly once,
//! and the replayer still stops cleanly.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use h2::RecvStream;
use h2::client::{ResponseFuture, SendRequest};
use prost::Message;
use tapwire_shared::proto::{self, replay_client::ReplayClient};
use tapwire_testkit::feed::{feed_as, named_path, named_record};
use tapwire_testkit::pipeline::Replayer;
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::servers::RecordingServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

/// Bound on every wait: a feed, a stream or a shutdown that takes longer is hung.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The replayer's limit on one gRPC message (`MAX_MESSAGE_BYTES` in replayer/src/lib.rs).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
const STREAM_PATH: &str = "/tapwire.v1.Replay/Stream";
const RECEIVED: &str = "tapwire_replayer_records_received_total";

/// The real replayer, replaying to one recording target.
async fn start_replayer(target: &RecordingServer) -> anyhow::Result<Replayer> {
    // Room for every record: a queue-full drop would hide what these tests count.
    Replayer::start(&target.url(), &["--target-queue".into(), "100000".into()]).await
}

async fn records_received(replayer: &Replayer) -> anyhow::Result<u64> {
    Ok(scrape(replayer.metrics).await?.sum(RECEIVED, &[]))
}

/// Fails if the process has exited.
fn ensure_running(replayer: &mut Replayer) -> anyhow::Result<()> {
    if let Some(status) = replayer.process.exit_status()? {
        bail!(
            "the replayer exited with {status}; log:\n{}",
            replayer.process.log()
        );
    }
    Ok(())
}

/// A raw HTTP/2 connection to the replayer's gRPC port, for streams no gRPC client would send.
#[derive(Clone)]
struct RawLink {
    grpc: SocketAddr,
    requests: SendRequest<Bytes>,
}

impl RawLink {
    /// `ack_window`: the flow-control window granted to each response (h2's default if None).
    async fn connect(grpc: SocketAddr, ack_window: Option<u32>) -> anyhow::Result<RawLink> {
        let tcp = TcpStream::connect(grpc).await?;
        tcp.set_nodelay(true)?;
        let mut builder = h2::client::Builder::new();
        if let Some(window) = ack_window {
            builder.initial_window_size(window);
        }
        let (requests, connection) = builder.handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(RawLink { grpc, requests })
    }

    /// Opens a `Replay.Stream` call and waits for the replayer to answer it with headers.
    async fn open(&self) -> anyhow::Result<RawStream> {
        let (response, body) = self.start_call().await?;
        let response = timeout(TIMEOUT, response)
            .await
            .context("no response headers")??;
        ensure!(
            response.status() == http::StatusCode::OK,
            "HTTP status {}",
            response.status()
        );
        ensure!(
            Status::from_header_map(response.headers()).is_none(),
            "the call ended before anything was sent: {:?}",
            response.headers()
        );
        Ok(RawStream {
            body,
            acks: response.into_body(),
        })
    }

    async fn start_call(&self) -> anyhow::Result<(ResponseFuture, h2::SendStream<Bytes>)> {
        let request = http::Request::post(format!("http://{}{STREAM_PATH}", self.grpc))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())?;
        let mut requests = self.requests.clone().ready().await?;
        Ok(requests.send_request(request, false)?)
    }
}

/// One open `Replay.Stream` call: the request body we write and the acknowledgements we read.
struct RawStream {
    body: h2::SendStream<Bytes>,
    acks: RecvStream,
}

impl RawStream {
    /// Sends `bytes` as the replayer's flow control allows; fails once the replayer has ended
    /// the call.
    async fn send(body: &mut h2::SendStream<Bytes>, mut bytes: Bytes) -> anyhow::Result<()> {
        while !bytes.is_empty() {
            body.reserve_capacity(bytes.len());
            match poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(granted)) => {
                    let chunk = bytes.split_to(granted.min(bytes.len()));
                    body.send_data(chunk, false)?;
                }
                Some(Err(error)) => return Err(error.into()),
                None => bail!("the replayer ended the call"),
            }
        }
        Ok(())
    }

    /// Ends the request body: no more messages.
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(self.body.send_data(Bytes::new(), true)?)
    }

    /// Reads to the end of the call and returns its gRPC status, without ending the request
    /// body: the replayer must end the call on its own.
    async fn status(&mut self) -> anyhow::Result<Status> {
        call_status(&mut self.acks).await
    }
}

async fn call_status(acks: &mut RecvStream) -> anyhow::Result<Status> {
    while let Some(chunk) = acks.data().await {
        let chunk = chunk.context("the call was reset instead of ended with a status")?;
        acks.flow_control().release_capacity(chunk.len())?;
    }
    let trailers = acks
        .trailers()
        .await?
        .context("the call ended without trailers")?;
    Status::from_header_map(&trailers).context("trailers without grpc-status")
}

/// A gRPC message frame: uncompressed, `claimed_len` in the length prefix, then `message`.
fn grpc_frame(claimed_len: u32, message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(claimed_len);
    frame.put_slice(message);
    frame.freeze()
}

fn exact_frame(message: &[u8]) -> Bytes {
    grpc_frame(message.len() as u32, message)
}

/// Bytes that are no protobuf message: they open with field 0 of wire type 7, neither of which
/// exists.
fn undecodable(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    bytes[0] = 0x07;
    bytes
}

fn batch(listener: &str, sequence: u64, ids: std::ops::Range<u64>) -> proto::RecordBatch {
    proto::RecordBatch {
        sequence,
        listener_id: listener.into(),
        listener_instance: 1,
        records: ids.map(|id| named_record(listener, id, 0)).collect(),
        responses: Vec::new(),
    }
}

/// Undecodable messages, each on a call of its own, several calls at once per connection,
/// round after round until `done` (at most `max_rounds`).
async fn send_undecodable(
    grpc: SocketAddr,
    mut done: watch::Receiver<bool>,
    max_rounds: u64,
) -> anyhow::Result<Vec<Status>> {
    let link = RawLink::connect(grpc, None).await?;
    let mut statuses = Vec::new();
    for round in 0..max_rounds {
        if round > 0 && *done.borrow_and_update() {
            break;
        }
        let mut calls = JoinSet::new();
        for (i, len) in [1, 100, 64 << 10].into_iter().enumerate() {
            let link = link.clone();
            calls.spawn(async move {
                let mut stream = link.open().await?;
                let garbage = undecodable(len, round * 3 + i as u64);
                RawStream::send(&mut stream.body, exact_frame(&garbage)).await?;
                // The request body stays open: ending the call is the replayer's job.
                timeout(TIMEOUT, stream.status())
                    .await
                    .context("an undecodable message's call was not ended")?
            });
        }
        while let Some(status) = calls.join_next().await {
            statuses.push(status??);
        }
    }
    Ok(statuses)
}

/// Length prefixes over the limit: one claiming 4 GiB, one claiming a byte over 64 MiB, and a
/// real 65 MiB batch sent in full, as far as the replayer lets it in.
async fn send_oversized(grpc: SocketAddr) -> anyhow::Result<(Vec<Status>, u64)> {
    let link = RawLink::connect(grpc, None).await?;
    let mut statuses = Vec::new();
    for claimed in [u32::MAX, MAX_MESSAGE_BYTES as u32 + 1] {
        let mut stream = link.open().await?;
        RawStream::send(&mut stream.body, grpc_frame(claimed, &[0x0a, 0x00])).await?;
        statuses.push(
            timeout(TIMEOUT, stream.status())
                .await
                .context("an oversized claim's call was not ended")??,
        );
    }

    // Building it takes a while: off the runtime, which serves the other abusers.
    let frame = tokio::task::spawn_blocking(oversized_batch_frame).await??;
    let RawStream { mut body, mut acks } = link.open().await?;
    let (let_in, status) = timeout(TIMEOUT, async {
        tokio::join!(send_until_refused(&mut body, frame), call_status(&mut acks))
    })
    .await
    .context("the oversized batch's call was not ended")?;
    statuses.push(status?);
    Ok((statuses, let_in))
}

/// A real batch framed for gRPC: one record whose request carries a 65 MiB body.
fn oversized_batch_frame() -> anyhow::Result<Bytes> {
    let body_len = 65 << 20;
    let mut request = BytesMut::with_capacity(body_len + 100);
    request.put_slice(
        format!("POST /huge HTTP/1.1\r\nHost: bench\r\nContent-Length: {body_len}\r\n\r\n")
            .as_bytes(),
    );
    request.put_bytes(b'x', body_len);
    let mut huge = batch("oversized", 1, 0..1);
    huge.records[0].request = request.freeze();
    let len = huge.encoded_len();
    ensure!(len > MAX_MESSAGE_BYTES);
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(len.try_into()?);
    huge.encode(&mut frame)?;
    Ok(frame.freeze())
}

/// Sends `bytes` as flow control allows until the replayer refuses more; returns how many
/// bytes it let in.
async fn send_until_refused(body: &mut h2::SendStream<Bytes>, mut bytes: Bytes) -> u64 {
    let mut let_in = 0;
    while !bytes.is_empty() {
        body.reserve_capacity(bytes.len());
        let Some(Ok(granted)) = poll_fn(|cx| body.poll_capacity(cx)).await else {
            break;
        };
        let chunk = bytes.split_to(granted.min(bytes.len()));
        let_in += chunk.len() as u64;
        if body.send_data(chunk, false).is_err() {
            break;
        }
    }
    let_in
}

/// Connections whose first bytes are not an HTTP/2 connection preface, or a preface followed by
/// bytes that are no HTTP/2 frames; the replayer must close each. Round after round until
/// `done` (at most `max_rounds`).
async fn send_garbage_connections(
    grpc: SocketAddr,
    mut done: watch::Receiver<bool>,
    max_rounds: u64,
) -> anyhow::Result<u64> {
    let noise = undecodable(4096, 7);
    let mut preface_then_noise = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface_then_noise.extend_from_slice(&noise);
    let openings: [&[u8]; 3] = [
        b"POST /tapwire.v1.Replay/Stream HTTP/1.1\r\nHost: replayer\r\nContent-Length: 5\r\n\r\nhello",
        &noise,
        &preface_then_noise,
    ];
    let mut closed = 0;
    for round in 0..max_rounds {
        if round > 0 && *done.borrow_and_update() {
            break;
        }
        for opening in openings {
            let mut tcp = TcpStream::connect(grpc).await?;
            tcp.write_all(opening).await?;
            // Read whatever the replayer answers (a GOAWAY, say) until it closes the connection.
            let mut answer = Vec::new();
            match timeout(TIMEOUT, tcp.read_to_end(&mut answer)).await {
                Err(_) => bail!("the replayer kept a garbage connection open for {TIMEOUT:?}"),
                Ok(Ok(_)) => {}
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
                Ok(Err(error)) => return Err(error.into()),
            }
            closed += 1;
        }
    }
    Ok(closed)
}

/// Every request the target received, counted by path.
fn served_paths(target: &RecordingServer) -> HashMap<String, u64> {
    let mut paths = HashMap::new();
    for request in target.received().into_values().flatten() {
        *paths.entry(request.path_and_query).or_insert(0) += 1;
    }
    paths
}

/// Records of feed `listener` with ids `0..count` that did not arrive exactly once, with how
/// many times each did.
fn not_exactly_once(paths: &HashMap<String, u64>, listener: &str, count: u64) -> Vec<(u64, u64)> {
    (0..count)
        .map(|id| {
            (
                id,
                paths.get(&named_path(listener, id)).copied().unwrap_or(0),
            )
        })
        .filter(|&(_, times)| times != 1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_replayer_keeps_serving_well_behaved_listeners_under_malformed_and_oversized_streams() {
    let target = RecordingServer::start(true).await.unwrap();
    let mut replayer = start_replayer(&target).await.unwrap();
    let grpc = replayer.grpc;

    // Two calls that send the start of a message and then nothing: one is ended by its client
    // after the feeds, one is left open through the replayer's shutdown.
    let stall_link = RawLink::connect(grpc, None).await.unwrap();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = stall_link.open().await.unwrap();
        let start = grpc_frame(1000, &batch("stalled", 1, 0..1).encode_to_vec()[..10]);
        RawStream::send(&mut stream.body, start).await.unwrap();
        stalled.push(stream);
    }

    // Abusers go round after round until the feeds are done, so they overlap the whole run.
    let (feeds_done, done) = watch::channel(false);
    let max_rounds = 50;
    let undecodable = tokio::spawn(send_undecodable(grpc, done.clone(), max_rounds));
    let garbage = tokio::spawn(send_garbage_connections(grpc, done.clone(), max_rounds));
    let oversized = tokio::spawn(send_oversized(grpc));

    // Paced, so each feed streams for about half a second while the abuse goes on.
    let (feeds, per_feed) = (4, 2000);
    let started = Instant::now();
    let running: Vec<_> = (0..feeds)
        .map(|i| {
            tokio::spawn(async move {
                feed_as(grpc, &format!("good-{i}"), per_feed, Some(4000.0)).await
            })
        })
        .collect();
    for feed in running {
        let elapsed = timeout(TIMEOUT, feed)
            .await
            .expect("a well-behaved feed hung")
            .unwrap()
            .expect("a well-behaved feed was not fully acknowledged");
        assert!(elapsed < TIMEOUT, "a well-behaved feed took {elapsed:?}");
    }
    let feeds_took = started.elapsed();
    feeds_done.send_replace(true);

    let undecodable = timeout(TIMEOUT, undecodable)
        .await
        .expect("undecodable calls hung")
        .unwrap()
        .unwrap();
    let garbage_closed = timeout(TIMEOUT, garbage)
        .await
        .expect("garbage connections hung")
        .unwrap()
        .unwrap();
    let (oversized, oversized_let_in) = timeout(TIMEOUT, oversized)
        .await
        .expect("oversized calls hung")
        .unwrap()
        .unwrap();
    println!(
        "{feeds} feeds took {feeds_took:?} alongside {} undecodable calls, {} oversized calls \
         (the replayer let in {oversized_let_in} bytes of the real 65 MiB batch) and \
         {garbage_closed} garbage connections",
        undecodable.len(),
        oversized.len()
    );
    assert!(undecodable.len() >= 3);
    for status in &undecodable {
        assert_eq!(status.code(), Code::Internal, "undecodable: {status:?}");
    }
    assert_eq!(oversized.len(), 3);
    for status in &oversized {
        assert_eq!(status.code(), Code::OutOfRange, "oversized: {status:?}");
    }
    // Refused at its length prefix: the batch is not read to its end first.
    assert!(oversized_let_in < MAX_MESSAGE_BYTES as u64);
    assert!(garbage_closed >= 3);

    // The first stalled call is ended by its client: a message cut short is an error.
    let mut cut_short = stalled.remove(0);
    cut_short.finish().unwrap();
    let status = timeout(TIMEOUT, cut_short.status())
        .await
        .expect("a message cut short left its call open")
        .unwrap();
    assert_eq!(
        status.code(),
        Code::Internal,
        "message cut short: {status:?}"
    );

    // Every well-behaved record reached the target exactly once, and nothing else did.
    let total = feeds * per_feed;
    assert_eq!(target.wait_for_served(total, TIMEOUT).await, total);
    let paths = served_paths(&target);
    for i in 0..feeds {
        let missed = not_exactly_once(&paths, &format!("good-{i}"), per_feed);
        assert!(missed.is_empty(), "good-{i}: (id, times) {missed:?}");
    }
    assert_eq!(
        paths.values().sum::<u64>(),
        total,
        "unexpected requests: {paths:?}"
    );

    ensure_running(&mut replayer).unwrap();
    assert_eq!(records_received(&replayer).await.unwrap(), total);

    // The other stalled call is still open; shutting down ends it rather than waiting on it.
    let mut still_stalled = stalled.remove(0);
    let stopping = Instant::now();
    let summary = replayer.stop().await.unwrap();
    println!("the replayer stopped in {:?}", stopping.elapsed());
    let status = timeout(TIMEOUT, still_stalled.status())
        .await
        .expect("shutdown left a stalled call open")
        .unwrap();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "stalled call at shutdown: {status:?}"
    );
    assert_eq!(summary.get("received"), total);
    assert_eq!(target.served(), total);
}

/// A listener that sends one small batch per `every`, reading its acknowledgements, until told
/// to stop; then it ends its stream and waits for every acknowledgement. Returns the batches
/// sent, all acknowledged. `first_ack` fires once the replayer has acknowledged one.
async fn trickle(
    grpc: SocketAddr,
    listener: &'static str,
    per_batch: u64,
    every: Duration,
    max_batches: u64,
    first_ack: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut client = ReplayClient::connect(format!("http://{grpc}")).await?;
    let (batches, outgoing) = mpsc::channel(4);
    let mut acks = client
        .stream(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let mut first_ack = Some(first_ack);
    let mut ticks = tokio::time::interval(every);
    let mut sent = 0;
    let mut acknowledged = 0;
    while sent < max_batches && !*stop.borrow_and_update() {
        tokio::select! {
            _ = ticks.tick() => {
                let ids = sent * per_batch..(sent + 1) * per_batch;
                batches.send(batch(listener, sent + 1, ids)).await?;
                sent += 1;
            }
            ack = acks.next() => {
                let ack = ack.context("the replayer ended the trickle's stream")??;
                ensure!(ack.sequence == acknowledged + 1, "ack {} after {acknowledged}", ack.sequence);
                acknowledged = ack.sequence;
                if let Some(first_ack) = first_ack.take() {
                    let _ = first_ack.send(());
                }
            }
            _ = stop.changed() => {}
        }
    }
    drop(batches);
    while acknowledged < sent {
        let ack = acks
            .next()
            .await
            .context("the replayer ended the trickle's stream early")??;
        acknowledged = ack.sequence;
    }
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_slow_listener_does_not_starve_the_others() {
    let target = RecordingServer::start(true).await.unwrap();
    let mut replayer = start_replayer(&target).await.unwrap();
    let grpc = replayer.grpc;

    // The deaf listener grants its acknowledgements no flow-control window at all, as if it
    // never read them, and sends batches as fast as the replayer's window takes them. Its
    // stream fills its ack queue and then must stall: that stream only.
    let (deaf_batches, per_deaf_batch) = (400, 16);
    let deaf_link = RawLink::connect(grpc, Some(0)).await.unwrap();
    let mut deaf = deaf_link.open().await.unwrap();
    let mut deaf_messages = BytesMut::new();
    for sequence in 1..=deaf_batches {
        let ids = (sequence - 1) * per_deaf_batch..sequence * per_deaf_batch;
        deaf_messages.put(exact_frame(&batch("deaf", sequence, ids).encode_to_vec()));
    }
    // Well inside the replayer's 8 MiB stream window: all of it is let in.
    assert!(deaf_messages.len() < 4 << 20);
    timeout(
        TIMEOUT,
        RawStream::send(&mut deaf.body, deaf_messages.freeze()),
    )
    .await
    .expect("the replayer's window did not take the deaf listener's batches")
    .unwrap();
    // An ack queue's worth (64 batches) replayed with no ack delivered: the stream is about to
    // stall, if it has not already (the end checks it took far from all).
    let deaf_stalled_at = 64 * per_deaf_batch;
    assert!(
        target.wait_for_served(deaf_stalled_at, TIMEOUT).await >= deaf_stalled_at,
        "the replayer did not take the deaf listener's first batches"
    );

    // A listener sending a small batch every 100 ms, until the others are done.
    let (first_ack, trickle_acked) = oneshot::channel();
    let (stop_trickle, stop) = watch::channel(false);
    let per_trickle_batch = 8;
    let trickling = tokio::spawn(trickle(
        grpc,
        "trickle",
        per_trickle_batch,
        Duration::from_millis(100),
        600,
        first_ack,
        stop,
    ));
    timeout(TIMEOUT, trickle_acked)
        .await
        .expect("the trickle's first batch was not acknowledged")
        .unwrap();

    let (feeds, per_feed) = (6, 2000);
    let started = Instant::now();
    let running: Vec<_> = (0..feeds)
        .map(|i| {
            tokio::spawn(async move { feed_as(grpc, &format!("normal-{i}"), per_feed, None).await })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for feed in running {
        let elapsed = timeout(TIMEOUT, feed)
            .await
            .expect("a normal feed was starved")
            .unwrap()
            .expect("a normal feed was not fully acknowledged");
        slowest = slowest.max(elapsed);
    }
    let feeds_took = started.elapsed();
    assert!(feeds_took < TIMEOUT, "the normal feeds took {feeds_took:?}");
    stop_trickle.send_replace(true);
    let trickle_batches = timeout(TIMEOUT, trickling)
        .await
        .expect("the trickle hung")
        .unwrap()
        .unwrap();
    println!(
        "{feeds} normal feeds took {feeds_took:?} (slowest {slowest:?}) beside a deaf listener and a trickle of {trickle_batches} batches"
    );

    let normal = feeds * per_feed;
    let trickled = trickle_batches * per_trickle_batch;
    let least = normal + trickled + deaf_stalled_at;
    assert!(target.wait_for_served(least, TIMEOUT).await >= least);
    ensure_running(&mut replayer).unwrap();
    let received_live = records_received(&replayer).await.unwrap();

    // The deaf listener is still connected, its stream stalled: shutdown must not wait on it.
    let stopping = Instant::now();
    let summary = replayer.stop().await.unwrap();
    let paths = served_paths(&target);
    for i in 0..feeds {
        let missed = not_exactly_once(&paths, &format!("normal-{i}"), per_feed);
        assert!(missed.is_empty(), "normal-{i}: (id, times) {missed:?}");
    }
    let missed = not_exactly_once(&paths, "trickle", trickled);
    assert!(missed.is_empty(), "trickle: (id, times) {missed:?}");
    // The deaf listener's records that were taken in arrived once each, in id order; the rest
    // waited behind its unread acknowledgements.
    let deaf_taken = paths
        .keys()
        .filter(|p| p.starts_with("/bench/deaf/"))
        .count() as u64;
    assert!(not_exactly_once(&paths, "deaf", deaf_taken).is_empty());
    assert!(
        (deaf_stalled_at..deaf_batches * per_deaf_batch).contains(&deaf_taken),
        "the replayer took {deaf_taken} records from a listener that reads no acknowledgements"
    );
    println!(
        "the replayer took {deaf_taken} of the deaf listener's {} records and stopped in {:?}",
        deaf_batches * per_deaf_batch,
        stopping.elapsed()
    );
    // The deaf listener's connection held no fan-out handle, so the targets drained at once.
    assert!(
        !replayer.process.log().contains("drain timeout passed"),
        "{}",
        replayer.process.log()
    );
    let total = normal + trickled + deaf_taken;
    assert_eq!(
        paths.values().sum::<u64>(),
        total,
        "unexpected requests: {paths:?}"
    );
    assert_eq!(summary.get("received"), total);
    assert_eq!(received_live, total);
    assert_eq!(target.served(), total);
    drop(deaf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_batch_that_inflates_past_the_limit_is_refused() {
    tapwire_testkit::pipeline::require_root().unwrap();
    let target = RecordingServer::start(true).await.unwrap();
    let mut replayer = start_replayer(&target).await.unwrap();

    // 65 MiB of one byte: a few hundred KiB gzipped, over the limit once inflated.
    let mut bomb = batch("bomb", 1, 0..1);
    let mut request =
        BytesMut::from(&b"POST /bomb HTTP/1.1\r\nHost: b\r\nContent-Length: 68157440\r\n\r\n"[..]);
    request.put_bytes(b'x', 65 << 20);
    bomb.records[0].request = request.freeze();
    let mut client = ReplayClient::connect(format!("http://{}", replayer.grpc))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_encoding_message_size(usize::MAX);
    let (batches, outgoing) = mpsc::channel(1);
    batches.send(bomb).await.unwrap();
    let status = match timeout(TIMEOUT, client.stream(ReceiverStream::new(outgoing))).await {
        Ok(Ok(response)) => {
            let mut acks = response.into_inner();
            match timeout(TIMEOUT, acks.next())
                .await
                .expect("the bomb's call hung")
            {
                Some(Err(status)) => status,
                other => panic!("the bomb was not refused: {other:?}"),
            }
        }
        Ok(Err(status)) => status,
        Err(_) => panic!("the bomb's call hung"),
    };
    drop(batches);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Nothing of it was replayed, and a well-behaved listener is served as before.
    feed_as(replayer.grpc, "after-bomb", 500, None)
        .await
        .unwrap();
    assert_eq!(target.wait_for_served(500, TIMEOUT).await, 500);
    ensure_running(&mut replayer).unwrap();
    assert_eq!(records_received(&replayer).await.unwrap(), 500);
    let totals = replayer.stop().await.unwrap();
    assert_eq!(totals.get("received"), 500);
}
