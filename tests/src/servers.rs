//! A small HTTP/1.1 server (hyper) that answers every request with 200 and can record what it
//! received, so tests can compare what production saw with what each target saw, and note when
//! each numbered request arrived, so benchmarks can time a request from production to a target.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The header every generated request carries: its sequence number in the run.
pub const SEQUENCE_HEADER: &str = "x-tapwire-seq";

/// One request as a server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the complete request had arrived.
    pub arrived_at: Instant,
    /// The client's address: requests on one connection share it.
    pub peer: SocketAddr,
}

impl ReceivedRequest {
    /// Its headers but those that legitimately differ between production and a target (Host,
    /// Connection), sorted: what must arrive unchanged.
    pub fn comparable_headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut headers: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::HOST && *name != http::header::CONNECTION)
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        headers.sort();
        headers
    }
}

/// The one copy of request `sequence` a target received, after checking that it came exactly
/// once and intact: the method, path and query, body and headers production received (Host
/// and Connection aside). Returned for the caller's own further checks.
pub fn replayed_once_intact<'a>(
    production: &HashMap<u64, Vec<ReceivedRequest>>,
    replayed: &'a HashMap<u64, Vec<ReceivedRequest>>,
    sequence: u64,
) -> &'a ReceivedRequest {
    let original = &production[&sequence][0];
    let copies = &replayed[&sequence];
    assert_eq!(
        copies.len(),
        1,
        "request {sequence} replayed {} times",
        copies.len()
    );
    let copy = &copies[0];
    assert_eq!(copy.method, original.method, "request {sequence}");
    assert_eq!(
        copy.path_and_query, original.path_and_query,
        "request {sequence}"
    );
    assert_eq!(copy.body, original.body, "request {sequence} body");
    assert_eq!(
        copy.comparable_headers(),
        original.comparable_headers(),
        "request {sequence} headers"
    );
    copy
}

struct State {
    served: AtomicU64,
    served_watch: watch::Sender<u64>,
    record: bool,
    /// How long each response is held back: a slow staging service.
    delay: Duration,
    /// Requests by their sequence header, every copy kept so duplicates are visible.
    received: Mutex<HashMap<u64, Vec<ReceivedRequest>>>,
    /// Off until [`RecordingServer::keep_arrivals`]: servers nobody times pay one atomic load.
    keep_arrivals: AtomicBool,
    /// When each numbered request first arrived.
    arrivals: Mutex<HashMap<u64, Instant>>,
}

/// A running server on 127.0.0.1; it stops when the runtime does.
#[derive(Clone)]
pub struct RecordingServer {
    addr: SocketAddr,
    state: Arc<State>,
}

impl RecordingServer {
    /// Starts a server on a free loopback port. With `record`, every request is kept in memory.
    pub async fn start(record: bool) -> anyhow::Result<Self> {
        Self::start_on(IpAddr::from([127, 0, 0, 1]), record).await
    }

    /// Starts a server on a free port of `ip` (an address of this host).
    pub async fn start_on(ip: IpAddr, record: bool) -> anyhow::Result<Self> {
        Self::start_slow(ip, record, Duration::ZERO).await
    }

    /// A server that holds every response back by `delay`.
    pub async fn start_slow(ip: IpAddr, record: bool, delay: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let (served_watch, _) = watch::channel(0);
        let state = Arc::new(State {
            served: AtomicU64::new(0),
            served_watch,
            record,
            delay,
            received: Mutex::new(HashMap::new()),
            keep_arrivals: AtomicBool::new(false),
            arrivals: Mutex::new(HashMap::new()),
        });
        let accept_state = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, peer, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(RecordingServer { addr, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` requests were served, or `timeout` passes; returns the
    /// count reached.
    pub async fn wait_for_served(&self, count: u64, timeout: std::time::Duration) -> u64 {
        let mut served = self.state.served_watch.subscribe();
        let _ = tokio::time::timeout(timeout, served.wait_for(|&n| n >= count)).await;
        self.served()
    }

    /// Every recorded request, by sequence number.
    pub fn received(&self) -> HashMap<u64, Vec<ReceivedRequest>> {
        self.state.received.lock().expect("recording lock").clone()
    }

    /// The requests among `sequences` that did not arrive exactly once, with how many times
    /// they did: empty when each arrived once.
    pub fn not_exactly_once(&self, sequences: impl IntoIterator<Item = u64>) -> Vec<(u64, usize)> {
        let received = self.state.received.lock().expect("recording lock");
        sequences
            .into_iter()
            .map(|sequence| (sequence, received.get(&sequence).map_or(0, Vec::len)))
            .filter(|&(_, copies)| copies != 1)
            .collect()
    }

    /// From now on, notes when each request carrying a [`SEQUENCE_HEADER`] first arrives,
    /// without recording the request itself; read them with [`RecordingServer::arrivals`].
    pub fn keep_arrivals(&self) {
        self.state.keep_arrivals.store(true, Ordering::Relaxed);
    }

    /// When each numbered request first arrived (complete), since [`keep_arrivals`]; later
    /// copies of a request are not counted.
    ///
    /// [`keep_arrivals`]: RecordingServer::keep_arrivals
    pub fn arrivals(&self) -> HashMap<u64, Instant> {
        self.state.arrivals.lock().expect("arrivals lock").clone()
    }
}

async fn handle(
    state: &State,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let keep_arrival = state.keep_arrivals.load(Ordering::Relaxed);
    let sequence: Option<u64> = if state.record || keep_arrival {
        parts
            .headers
            .get(SEQUENCE_HEADER)
            .and_then(|value| value.to_str().ok()?.parse().ok())
    } else {
        None
    };
    if let Some(sequence) = sequence {
        let arrived_at = Instant::now();
        if keep_arrival {
            let mut arrivals = state.arrivals.lock().expect("arrivals lock");
            arrivals.entry(sequence).or_insert(arrived_at);
        }
        if state.record {
            let received = ReceivedRequest {
                method: parts.method.clone(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |pq| pq.to_string()),
                headers: parts.headers.clone(),
                body,
                arrived_at,
                peer,
            };
            let mut map = state.received.lock().expect("recording lock");
            map.entry(sequence).or_default().push(received);
        }
    }
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let served = state.served.fetch_add(1, Ordering::Relaxed) + 1;
    state.served_watch.send_replace(served);
    Response::new(Full::new(Bytes::from_static(b"ok\n")))
}

/// A target that records exactly the bytes of each request it receives, to compare raw bytes
/// (not parsed headers) with what a client sent production. It finds where each request ends
/// with the shared grammar, answers it `200` with an empty body, and closes the connection
/// after a request that did not keep it open (HTTP/1.0, `Connection: close`), as servers do.
#[derive(Clone)]
pub struct RawServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    received: watch::Sender<usize>,
}

impl RawServer {
    /// Starts a raw server on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let server = RawServer::recording_at(listener.local_addr()?);
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(accepting.clone().serve(stream));
            }
        });
        Ok(server)
    }

    /// A raw server at `addr` with nothing received, for a listener that hands it its
    /// connections (the TLS one of [`crate::tls_server`]).
    pub(crate) fn recording_at(addr: SocketAddr) -> Self {
        RawServer {
            addr,
            requests: Arc::default(),
            received: watch::channel(0).0,
        }
    }

    /// Records and answers the requests of one connection, over TCP or TLS.
    pub(crate) async fn serve<S>(self, mut stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = Vec::new();
        loop {
            let layout = match tapwire_shared::http1::request_layout(&buffer) {
                Ok(layout) => layout,
                Err(tapwire_shared::http1::HttpError::Truncated) => {
                    let mut chunk = [0; 16 * 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                    }
                    continue;
                }
                Err(_) => {
                    // Not a request: keep what came, for the test to see, and hang up.
                    self.record(std::mem::take(&mut buffer));
                    return;
                }
            };
            let request: Vec<u8> = buffer.drain(..layout.body.end).collect();
            self.record(request);
            let answer: &[u8] = if layout.persists {
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            if stream.write_all(answer).await.is_err() || !layout.persists {
                return;
            }
        }
    }

    fn record(&self, request: Vec<u8>) {
        let mut requests = self.requests.lock().expect("raw requests lock");
        requests.push(request);
        self.received.send_replace(requests.len());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port`: the Host a target is sent.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Waits until `count` requests have arrived or `timeout` passes; every request received,
    /// byte for byte, in arrival order.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let mut received = self.received.subscribe();
        let _ = tokio::time::timeout(timeout, received.wait_for(|&n| n >= count)).await;
        self.requests.lock().expect("raw requests lock").clone()
    }
}
