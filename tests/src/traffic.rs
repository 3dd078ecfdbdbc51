//! Client traffic against a server on loopback, sent with hyper's HTTP/1.1 client.
//!
//! - [`send_mix`]: a deterministic mix for correctness: GETs and POSTs on keep-alive
//!   connections, requests on fresh connections, chunked bodies, and large multi-segment bodies.
//!   Every request carries its sequence number in [`SEQUENCE_HEADER`].
//! - [`fixed_rate`]: paced load for benchmarks.
//! - [`write_gor_file`]: requests as a capture would have recorded them, for file replay.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use crate::servers::SEQUENCE_HEADER;

/// Every mix request names its user, one of [`USERS`], for session sampling.
pub const USER_HEADER: &str = "x-user-id";
pub const USERS: u64 = 20;

type Body = BoxBody<Bytes, Infallible>;

/// The kinds of request in the mix, chosen by sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestShape {
    KeepAliveGet,
    KeepAlivePost,
    /// One request on its own connection, with `Connection: close`.
    FreshGet,
    FreshPost,
    /// Body sent with chunked transfer coding, in several chunks.
    ChunkedPost,
    /// A body of 64 KiB to 1 MiB: many TCP segments even on loopback.
    LargePost,
}

impl RequestShape {
    pub fn of(sequence: u64) -> RequestShape {
        match sequence % 10 {
            0 | 1 | 2 | 8 => RequestShape::KeepAliveGet,
            3 | 4 => RequestShape::KeepAlivePost,
            5 => RequestShape::FreshGet,
            6 => RequestShape::FreshPost,
            7 => RequestShape::ChunkedPost,
            _ if sequence % 50 == 9 => RequestShape::LargePost,
            _ => RequestShape::KeepAlivePost,
        }
    }

    fn fresh_connection(self) -> bool {
        matches!(self, RequestShape::FreshGet | RequestShape::FreshPost)
    }
}

/// Deterministic body bytes for a request, so copies can be checked byte for byte.
pub fn body_for(sequence: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| ((sequence as usize * 31 + i * 7) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Builds request number `sequence` of the mix.
pub fn mix_request(addr: SocketAddr, sequence: u64) -> Request<Body> {
    let shape = RequestShape::of(sequence);
    let (method, body): (Method, Body) = match shape {
        RequestShape::KeepAliveGet | RequestShape::FreshGet => (Method::GET, empty()),
        RequestShape::KeepAlivePost => (
            Method::POST,
            full(body_for(sequence, 100 + (sequence as usize * 13) % 2000)),
        ),
        RequestShape::FreshPost => (
            Method::PUT,
            full(body_for(sequence, 10 + (sequence as usize) % 500)),
        ),
        RequestShape::LargePost => (
            Method::POST,
            full(body_for(sequence, large_body_len(sequence))),
        ),
        RequestShape::ChunkedPost => {
            let body = body_for(sequence, 3000);
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = [0..1000, 1000..1001, 1001..3000]
                .into_iter()
                .map(|range| Ok(Frame::data(body.slice(range))))
                .collect();
            (
                Method::POST,
                StreamBody::new(tokio_stream::iter(chunks)).boxed(),
            )
        }
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("/mix/{shape:?}/{sequence}?seq={sequence}&q=a%20b"))
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "tapwire-testkit")
        .header(SEQUENCE_HEADER, sequence)
        .header("x-dup", "first")
        .header("x-dup", "second")
        .header(USER_HEADER, format!("user-{}", sequence % USERS));
    if sequence.is_multiple_of(3) {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer secret-{sequence}"));
    }
    if method_has_body(shape) {
        builder = builder.header(header::CONTENT_TYPE, "application/octet-stream");
    }
    if shape.fresh_connection() {
        builder = builder.header(header::CONNECTION, "close");
    }
    builder.body(body).expect("mix requests are valid")
}

/// Between 64 KiB and 1 MiB, varying with the sequence number.
fn large_body_len(sequence: u64) -> usize {
    (64 << 10) + (sequence as usize * 7919) % (960 << 10)
}

fn method_has_body(shape: RequestShape) -> bool {
    !matches!(shape, RequestShape::KeepAliveGet | RequestShape::FreshGet)
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed()
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Body>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends one request and reads the whole response; returns its status.
async fn exchange(sender: &mut SendRequest<Body>, request: Request<Body>) -> anyhow::Result<u16> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// What a client run achieved.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOutcome {
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests that failed or got another status.
    pub failed: u64,
    pub elapsed: Duration,
}

/// Sends requests `0..total` of the mix over `connections` concurrent clients.
pub async fn send_mix(addr: SocketAddr, total: u64, connections: usize) -> LoadOutcome {
    send_mix_range(addr, 0..total, connections).await
}

/// Sends the requests of the mix numbered `sequences` over `connections` concurrent clients.
pub async fn send_mix_range(
    addr: SocketAddr,
    sequences: std::ops::Range<u64>,
    connections: usize,
) -> LoadOutcome {
    let started = Instant::now();
    let workers: Vec<_> = (0..connections as u64)
        .map(|worker| {
            let sequences = sequences.clone();
            tokio::spawn(async move {
                let mut outcome = LoadOutcome::default();
                let mut keep_alive: Option<SendRequest<Body>> = None;
                let first = sequences.start + worker;
                for sequence in (first..sequences.end).step_by(connections) {
                    let request = mix_request(addr, sequence);
                    let result = if RequestShape::of(sequence).fresh_connection() {
                        match connect(addr).await {
                            Ok(mut sender) => exchange(&mut sender, request).await,
                            Err(error) => Err(error),
                        }
                    } else {
                        let sender = match keep_alive.as_mut() {
                            Some(sender) => sender,
                            None => match connect(addr).await {
                                Ok(sender) => keep_alive.insert(sender),
                                Err(_) => {
                                    outcome.failed += 1;
                                    continue;
                                }
                            },
                        };
                        let result = exchange(sender, request).await;
                        if result.is_err() {
                            keep_alive = None;
                        }
                        result
                    };
                    match result {
                        Ok(200) => outcome.ok += 1,
                        _ => outcome.failed += 1,
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total_outcome = LoadOutcome::default();
    for worker in workers {
        if let Ok(outcome) = worker.await {
            total_outcome.ok += outcome.ok;
            total_outcome.failed += outcome.failed;
        }
    }
    total_outcome.elapsed = started.elapsed();
    total_outcome
}

/// Paced load for benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct FixedRate {
    /// Requests per second across all connections; `None` sends as fast as responses allow.
    pub rate: Option<f64>,
    pub total: u64,
    pub connections: usize,
    /// 0 sends GETs; otherwise POSTs with a body of this size.
    pub body_bytes: usize,
}

/// Sends `total` requests on keep-alive connections, paced to `rate`.
pub async fn fixed_rate(addr: SocketAddr, load: FixedRate) -> LoadOutcome {
    let started = Instant::now();
    let connections = load.connections.max(1) as u64;
    let body = body_for(0, load.body_bytes);
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            let body = body.clone();
            // Spread the remainder over the first workers.
            let count = load.total / connections + u64::from(worker < load.total % connections);
            let interval = load
                .rate
                .map(|rate| Duration::from_secs_f64(connections as f64 / rate));
            tokio::spawn(async move {
                let mut outcome = LoadOutcome::default();
                let mut sender = None;
                // Stagger workers so the aggregate stream is smooth, not bursty.
                let first_due = interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / connections as f64)
                });
                for n in 0..count {
                    if let Some(interval) = interval {
                        let due = started + first_due + interval.mul_f64(n as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    if sender.is_none() {
                        match connect(addr).await {
                            Ok(connected) => sender = Some(connected),
                            Err(_) => {
                                outcome.failed += 1;
                                continue;
                            }
                        }
                    }
                    let Some(connection) = sender.as_mut() else {
                        continue;
                    };
                    let request = paced_request(addr, worker * 1_000_000_000 + n, &body);
                    match exchange(connection, request).await {
                        Ok(200) => outcome.ok += 1,
                        Ok(_) => outcome.failed += 1,
                        Err(_) => {
                            outcome.failed += 1;
                            sender = None;
                        }
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total = LoadOutcome::default();
    for worker in workers {
        if let Ok(outcome) = worker.await {
            total.ok += outcome.ok;
            total.failed += outcome.failed;
        }
    }
    total.elapsed = started.elapsed();
    total
}

fn paced_request(addr: SocketAddr, sequence: u64, body: &Bytes) -> Request<Body> {
    let builder = Request::builder()
        .uri(format!("/load/{sequence}"))
        .header(header::HOST, addr.to_string())
        .header(SEQUENCE_HEADER, sequence);
    if body.is_empty() {
        builder.method(Method::GET).body(empty())
    } else {
        builder.method(Method::POST).body(full(body.clone()))
    }
    .expect("load requests are valid")
}

/// Writes a `.gor` file of `requests` requests (`request(n)` is the n-th one's bytes), `spacing`
/// apart as captured, with ids a listener could have given them.
pub fn write_gor_file(
    path: &std::path::Path,
    requests: u64,
    spacing: Duration,
    request: impl Fn(u64) -> String,
) -> anyhow::Result<()> {
    use tapwire_shared::gor::{GorHeader, GorMessage, PayloadType};
    let mut out = Vec::with_capacity(requests as usize * 160);
    for n in 0..requests {
        GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Request,
                id: format!("{n:024x}"),
                timestamp_ns: 1_700_000_000_000_000_000 + n * spacing.as_nanos() as u64,
                latency_ns: None,
            },
            payload: Bytes::from(request(n)),
        }
        .encode(&mut out);
    }
    std::fs::write(path, out)
        .map_err(|error| anyhow::anyhow!("writing {}: {error}", path.display()))
}
