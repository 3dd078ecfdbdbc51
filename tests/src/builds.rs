//! Builds of one small API that differ on purpose, for testing and measuring response
//! comparison: [`BuildServer`] serves one [`Build`] over HTTP/1.1 on loopback.
//!
//! Every build is non-deterministic where real services are: each JSON answer carries a random
//! `request_id` and a `generated_at` timestamp of now (microseconds), each response a random
//! `X-Request-Id` header and hyper's `Date`, and `/catalog/{n}` a random `$.session.token`.
//! Two baselines therefore differ at exactly [`NOISE_PATHS`] (and the headers in
//! [`NOISE_HEADERS`]); the candidate differs from them, beyond that, at exactly
//! [`CANDIDATE_CHANGES`] and answers [`SLOW_ENDPOINT`] [`CANDIDATE_DELAY`] later.
//!
//! The endpoints ([`ENDPOINTS`], named as the replayer names endpoints):
//! - `GET /users/{n}`: `{"id":n,"name":"user-n","plan":"pro"|"free",...}` (`pro` when
//!   n % 3 == 0). The candidate answers the same.
//! - `GET /orders/{n}`: `{"order":n,"items":[{"sku":"A-1","price":10.5},{"sku":"B-2",
//!   "price":3.25}],"total":13.75,...}`. The candidate's second price is 3.5, its total 14.0.
//! - `GET /catalog/{n}`: gzip-encoded (`Content-Encoding: gzip`) `{"sku":"SKU-n",
//!   "currency":"EUR","price":n.99,"session":{"token":random},...}`. The candidate's currency
//!   is the number 978 when n % 4 == 0: a changed type at a rate of 25%.
//! - `GET /search?q=Q`: `{"query":Q,"results":[{"rank":1,"title":"Q 1"},{"rank":2,...}],...}`.
//!   The candidate answers the same, [`CANDIDATE_DELAY`] later.
//! - `GET /health`: `ok\n` as text/plain, chunked. The same in every build.
//! - `POST /cart` with `{"items":[...]}`: `{"items":COUNT,...}` (400 if the body is not such an
//!   object). The candidate adds the header `X-Cart-Version: 2`.
//! - `GET /api/...` (any deeper path, e.g. `/api/e17x/items`): `{"path":PATH,...}`, the same in
//!   every build: the benchmark's many distinct endpoints.
//!
//! Anything else is a 404 with `not found\n`, in every build. [`mix_request`] visits the six
//! named endpoints in turn; [`send_mix`] sends such a mix.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which build a server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The build live in production: answers as [`Build::Baseline`] does.
    Production,
    /// The current build, deployed to staging.
    Baseline,
    /// The baseline plus [`CANDIDATE_CHANGES`] and [`CANDIDATE_DELAY`] on [`SLOW_ENDPOINT`].
    Candidate,
}

/// The six named endpoints, in the order [`mix_request`] visits them.
pub const ENDPOINTS: [&str; 6] = [
    "GET /users/{n}",
    "GET /orders/{n}",
    "GET /catalog/{n}",
    "GET /search",
    "GET /health",
    "POST /cart",
];

/// One deliberate difference of the candidate from the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CandidateChange {
    pub endpoint: &'static str,
    /// The field path as the comparison names it (`$.total`, `headers.x-cart-version`).
    pub path: &'static str,
    /// `changed_value`, `changed_type`, `added` or `removed`.
    pub kind: &'static str,
    /// The share of the endpoint's requests that differ there (for the mix's request numbers:
    /// exact over any multiple of 4 requests to the endpoint).
    pub rate: f64,
}

/// Every difference of the candidate from the baseline beyond the noise and the delay.
pub const CANDIDATE_CHANGES: [CandidateChange; 4] = [
    CandidateChange {
        endpoint: "GET /orders/{n}",
        path: "$.items[1].price",
        kind: "changed_value",
        rate: 1.0,
    },
    CandidateChange {
        endpoint: "GET /orders/{n}",
        path: "$.total",
        kind: "changed_value",
        rate: 1.0,
    },
    CandidateChange {
        endpoint: "GET /catalog/{n}",
        path: "$.currency",
        kind: "changed_type",
        rate: 0.25,
    },
    CandidateChange {
        endpoint: "POST /cart",
        path: "headers.x-cart-version",
        kind: "added",
        rate: 1.0,
    },
];

/// The body paths that differ between any two answers, whatever the builds.
/// `$.session.token` only on `GET /catalog/{n}`; none on `GET /health` (text).
pub const NOISE_PATHS: [&str; 3] = ["$.request_id", "$.generated_at", "$.session.token"];

/// The headers that differ between any two answers (both ignored by the comparison by default).
pub const NOISE_HEADERS: [&str; 2] = ["x-request-id", "date"];

/// The endpoint the candidate answers late, and how much later.
pub const SLOW_ENDPOINT: &str = "GET /search";
pub const CANDIDATE_DELAY: Duration = Duration::from_millis(50);

/// A running build on a free loopback port. Dropping it stops the server and its connections.
pub struct BuildServer {
    addr: SocketAddr,
    build: Build,
    /// Requests answered so far.
    served: watch::Sender<u64>,
    /// Dropped with the server: every task serving it sees the channel close and ends.
    _stop: watch::Sender<()>,
}

impl BuildServer {
    /// Binds a free loopback port and serves `build` on it in the background; the port
    /// accepts connections when this returns.
    pub async fn start(build: Build) -> anyhow::Result<BuildServer> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let served = watch::Sender::new(0);
        let (stop, stopped) = watch::channel(());
        tokio::spawn(accept(listener, build, served.clone(), stopped));
        Ok(BuildServer {
            addr,
            build,
            served,
            _stop: stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn build(&self) -> Build {
        self.build
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        *self.served.borrow()
    }

    /// Waits until at least `count` requests were answered, or `timeout` passes; returns the
    /// count reached.
    pub async fn wait_for_served(&self, count: u64, timeout: Duration) -> u64 {
        let mut served = self.served.subscribe();
        let _ = tokio::time::timeout(timeout, served.wait_for(|&n| n >= count)).await;
        self.served()
    }
}

async fn accept(
    listener: TcpListener,
    build: Build,
    served: watch::Sender<u64>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            biased;
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let served = served.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let served = served.clone();
                async move {
                    let response = answer(build, request).await;
                    served.send_modify(|n| *n += 1);
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                biased;
                _ = stopped.changed() => {}
                _ = connection => {}
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// What `build` answers to one request.
async fn answer(build: Build, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let candidate = build == Build::Candidate;
    let segments: Vec<&str> = parts.uri.path().split('/').skip(1).collect();
    let number = |segment: &str| segment.parse::<u64>().ok();
    let mut response = match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["users", n]) if number(n).is_some() => {
            let n = number(n).unwrap_or_default();
            let plan = if n.is_multiple_of(3) { "pro" } else { "free" };
            json_answer(json!({"id": n, "name": format!("user-{n}"), "plan": plan}))
        }
        (&Method::GET, ["orders", n]) if number(n).is_some() => {
            let second_price = if candidate { 3.5 } else { 3.25 };
            json_answer(json!({
                "order": number(n),
                "items": [{"sku": "A-1", "price": 10.5}, {"sku": "B-2", "price": second_price}],
                "total": 10.5 + second_price,
            }))
        }
        (&Method::GET, ["catalog", n]) if number(n).is_some() => {
            let n = number(n).unwrap_or_default();
            let currency = if candidate && n.is_multiple_of(4) {
                json!(978)
            } else {
                json!("EUR")
            };
            let document = with_noise(json!({
                "sku": format!("SKU-{n}"),
                "currency": currency,
                "price": n as f64 + 0.99,
                "session": {"token": random_token()},
            }));
            let mut response = Response::new(full(gzip(document.to_string().as_bytes())));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            response
        }
        (&Method::GET, ["search"]) => {
            if candidate {
                tokio::time::sleep(CANDIDATE_DELAY).await;
            }
            let query = query_param(parts.uri.query().unwrap_or_default(), "q");
            json_answer(json!({
                "query": query,
                "results": [
                    {"rank": 1, "title": format!("{query} 1")},
                    {"rank": 2, "title": format!("{query} 2")},
                ],
            }))
        }
        (&Method::GET, ["health"]) => {
            // No length known to hyper: it frames the body with chunked transfer coding.
            let chunks = [Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                b"ok\n",
            )))];
            let mut response = Response::new(StreamBody::new(tokio_stream::iter(chunks)).boxed());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        (&Method::POST, ["cart"]) => {
            let items = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|cart| Some(cart.get("items")?.as_array()?.len()));
            match items {
                Some(items) => {
                    let mut response = json_answer(json!({"items": items}));
                    if candidate {
                        response
                            .headers_mut()
                            .insert("x-cart-version", HeaderValue::from_static("2"));
                    }
                    response
                }
                None => {
                    let mut response = json_answer(json!({"error": "expected {\"items\":[...]}"}));
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    response
                }
            }
        }
        (&Method::GET, ["api", _, ..]) => json_answer(json!({"path": parts.uri.path()})),
        _ => {
            let mut response = Response::new(full(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    };
    let request_id = HeaderValue::from_str(&random_uuid()).expect("hex and dashes");
    response.headers_mut().insert("x-request-id", request_id);
    response
}

const JSON: &str = "application/json";

/// A JSON document with the per-answer noise added: `request_id` and `generated_at`.
fn with_noise(mut document: Value) -> Value {
    if let Some(object) = document.as_object_mut() {
        object.insert("request_id".into(), Value::String(random_uuid()));
        object.insert("generated_at".into(), Value::String(timestamp_now()));
    }
    document
}

fn json_answer(document: Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(with_noise(document).to_string())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// The raw value of `name` in a query string (not percent-decoded: the mix sends plain words).
fn query_param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_default()
}

/// A random version-4 UUID, as services generate request ids.
fn random_uuid() -> String {
    let bits: u128 = rand::random();
    // Version 4, variant 10.
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Now as RFC 3339 in UTC with microseconds: `2026-12-01T04:05:06.789012Z`.
///
/// Not milliseconds: two baselines answering one replayed request stamped the same millisecond
/// a quarter of the time (measured on loopback), while the candidate, 50 ms late on
/// `/search`, never did; the noise then fell 15 to 25% short of the candidate's count there,
/// around the 20% threshold, and the timestamp could read as the candidate's change.
fn timestamp_now() -> String {
    rfc3339_micros(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn rfc3339_micros(since_epoch: Duration) -> String {
    let seconds = since_epoch.as_secs();
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_micros()
    )
}

/// One request of the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixRequest {
    pub method: Method,
    pub path_and_query: String,
    /// A JSON body, for `POST /cart`.
    pub body: Option<Bytes>,
}

impl MixRequest {
    /// Its endpoint, one of [`ENDPOINTS`].
    pub fn endpoint(sequence: u64) -> &'static str {
        ENDPOINTS[(sequence % ENDPOINTS.len() as u64) as usize]
    }
}

/// Request number `sequence` of a mix that visits [`ENDPOINTS`] in turn; the `k`th visit to an
/// endpoint uses `n = k` (so over `4 * m` visits to `GET /catalog/{n}`, exactly `m` have
/// `n % 4 == 0`).
pub fn mix_request(sequence: u64) -> MixRequest {
    let n = sequence / ENDPOINTS.len() as u64;
    let get = |path: String| MixRequest {
        method: Method::GET,
        path_and_query: path,
        body: None,
    };
    match sequence % ENDPOINTS.len() as u64 {
        0 => get(format!("/users/{n}")),
        1 => get(format!("/orders/{n}")),
        2 => get(format!("/catalog/{n}")),
        3 => get(format!("/search?q=term{n}")),
        4 => get("/health".to_owned()),
        _ => {
            let items: Vec<Value> = (0..=n % 3)
                .map(|i| json!({"sku": format!("A-{i}"), "quantity": 1}))
                .collect();
            MixRequest {
                method: Method::POST,
                path_and_query: "/cart".to_owned(),
                body: Some(Bytes::from(json!({ "items": items }).to_string())),
            }
        }
    }
}

/// A response as a client read it, the body decoded from gzip if it was encoded.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).context("body is not JSON")
    }
}

/// A keep-alive HTTP/1.1 connection to a build.
pub struct Client {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Client { addr, sender })
    }

    /// Sends one request and reads its whole response.
    pub async fn send(&mut self, request: &MixRequest) -> anyhow::Result<Answer> {
        let mut builder = Request::builder()
            .method(request.method.clone())
            .uri(&request.path_and_query)
            .header(header::HOST, self.addr.to_string())
            .header(header::ACCEPT_ENCODING, "gzip");
        if request.body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, JSON);
        }
        let body = full(request.body.clone().unwrap_or_default());
        self.sender.ready().await?;
        let response = self.sender.send_request(builder.body(body)?).await?;
        let (parts, body) = response.into_parts();
        let mut body = body.collect().await?.to_bytes();
        if parts.headers.get(header::CONTENT_ENCODING) == Some(&HeaderValue::from_static("gzip")) {
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(1 << 20)
                .read_to_end(&mut decoded)
                .context("gzip body")?;
            body = decoded.into();
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Sends requests `0..total` of the mix to `addr` over `connections` keep-alive connections
/// (connection `c` sends the requests whose number is `c` modulo `connections`, in order);
/// fails unless every one is answered 200.
pub async fn send_mix(addr: SocketAddr, total: u64, connections: u64) -> anyhow::Result<()> {
    let workers: Vec<_> = (0..connections.max(1))
        .map(|worker| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await?;
                for sequence in (worker..total).step_by(connections.max(1) as usize) {
                    let request = mix_request(sequence);
                    let answer = client.send(&request).await?;
                    ensure!(
                        answer.status == StatusCode::OK,
                        "{} {} answered {}",
                        request.method,
                        request.path_and_query,
                        answer.status
                    );
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use super::*;

    /// The JSON paths where `a` and `b` differ, named as the comparison names them, with the
    /// kind (`changed_value`, `changed_type`, `added`, `removed`).
    fn differing_paths(a: &Value, b: &Value, path: &str, found: &mut BTreeSet<(String, String)>) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (key, value) in a {
                    let child = format!("{path}.{key}");
                    match b.get(key) {
                        Some(other) => differing_paths(value, other, &child, found),
                        None => {
                            found.insert((child, "removed".into()));
                        }
                    }
                }
                for key in b.keys().filter(|key| !a.contains_key(*key)) {
                    found.insert((format!("{path}.{key}"), "added".into()));
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (a, b)) in a.iter().zip(b).enumerate() {
                    differing_paths(a, b, &format!("{path}[{i}]"), found);
                }
            }
            _ if std::mem::discriminant(a) != std::mem::discriminant(b) => {
                found.insert((path.to_owned(), "changed_type".into()));
            }
            _ if a != b => {
                found.insert((path.to_owned(), "changed_value".into()));
            }
            _ => {}
        }
    }

    /// Every difference between two answers: body paths (JSON, else the whole `body`) and
    /// header names but framing ones.
    fn differences(a: &Answer, b: &Answer) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        if a.status != b.status {
            found.insert(("status".into(), "changed_value".into()));
        }
        match (a.json(), b.json()) {
            (Ok(a), Ok(b)) => differing_paths(&a, &b, "$", &mut found),
            _ if a.body != b.body => {
                found.insert(("body".into(), "changed_value".into()));
            }
            _ => {}
        }
        let framing = ["content-length", "transfer-encoding"];
        let names: BTreeSet<&str> = a
            .headers
            .keys()
            .chain(b.headers.keys())
            .map(|name| name.as_str())
            .collect();
        for name in names.into_iter().filter(|name| !framing.contains(name)) {
            let kind = match (a.headers.get(name), b.headers.get(name)) {
                (Some(x), Some(y)) if x == y => continue,
                (Some(_), Some(_)) => "changed_value",
                (Some(_), None) => "removed",
                _ => "added",
            };
            found.insert((format!("headers.{name}"), kind.into()));
        }
        found
    }

    fn noise(endpoint: &str) -> BTreeSet<(String, String)> {
        let mut expected = BTreeSet::new();
        if endpoint != "GET /health" {
            expected.insert(("$.request_id".into(), "changed_value".into()));
            expected.insert(("$.generated_at".into(), "changed_value".into()));
        }
        if endpoint == "GET /catalog/{n}" {
            expected.insert(("$.session.token".into(), "changed_value".into()));
        }
        for header in NOISE_HEADERS {
            expected.insert((format!("headers.{header}"), "changed_value".into()));
        }
        expected
    }

    /// Eight visits to each endpoint: a multiple of 4, so the catalog's rate is exact.
    const REQUESTS: u64 = 48;

    /// The answers of `server` to the first [`REQUESTS`] mix requests, on one connection.
    async fn answers(server: &BuildServer) -> Vec<Answer> {
        let mut client = Client::connect(server.addr()).await.unwrap();
        let mut answers = Vec::new();
        for sequence in 0..REQUESTS {
            answers.push(client.send(&mix_request(sequence)).await.unwrap());
        }
        answers
    }

    /// The differences but `Date`, which hyper stamps to the second: two answers may or may
    /// not differ there.
    fn differences_but_date(a: &Answer, b: &Answer) -> BTreeSet<(String, String)> {
        assert!(a.headers.contains_key(header::DATE) && b.headers.contains_key(header::DATE));
        let mut found = differences(a, b);
        found.remove(&("headers.date".to_owned(), "changed_value".to_owned()));
        found
    }

    fn noise_but_date(endpoint: &str) -> BTreeSet<(String, String)> {
        let mut expected = noise(endpoint);
        expected.remove(&("headers.date".to_owned(), "changed_value".to_owned()));
        expected
    }

    #[tokio::test]
    async fn baselines_and_production_differ_only_in_the_random_fields() {
        let baseline = BuildServer::start(Build::Baseline).await.unwrap();
        let baseline2 = BuildServer::start(Build::Baseline).await.unwrap();
        let production = BuildServer::start(Build::Production).await.unwrap();
        let (first, second, live) = (
            answers(&baseline).await,
            answers(&baseline2).await,
            answers(&production).await,
        );
        for sequence in 0..REQUESTS {
            let index = sequence as usize;
            let endpoint = MixRequest::endpoint(sequence);
            let expected = noise_but_date(endpoint);
            assert_eq!(first[index].status, StatusCode::OK, "{endpoint}");
            assert_eq!(
                differences_but_date(&first[index], &second[index]),
                expected,
                "{endpoint}"
            );
            assert_eq!(
                differences_but_date(&first[index], &live[index]),
                expected,
                "{endpoint}"
            );
        }
        assert_eq!(baseline.served(), REQUESTS);
        assert_eq!(production.served(), REQUESTS);
    }

    #[tokio::test]
    async fn the_candidate_differs_exactly_as_documented() {
        let baseline = BuildServer::start(Build::Baseline).await.unwrap();
        let candidate = BuildServer::start(Build::Candidate).await.unwrap();
        let (reference, changed) = (answers(&baseline).await, answers(&candidate).await);
        let mut differing = std::collections::BTreeMap::<(&str, String, String), u64>::new();
        for sequence in 0..REQUESTS {
            let index = sequence as usize;
            let endpoint = MixRequest::endpoint(sequence);
            let noise = noise_but_date(endpoint);
            for (path, kind) in differences_but_date(&reference[index], &changed[index]) {
                if !noise.contains(&(path.clone(), kind.clone())) {
                    *differing.entry((endpoint, path, kind)).or_default() += 1;
                }
            }
        }
        let visits = REQUESTS / ENDPOINTS.len() as u64;
        let expected: std::collections::BTreeMap<_, _> = CANDIDATE_CHANGES
            .iter()
            .map(|change| {
                let count = (change.rate * visits as f64) as u64;
                (
                    (
                        change.endpoint,
                        change.path.to_owned(),
                        change.kind.to_owned(),
                    ),
                    count,
                )
            })
            .collect();
        assert_eq!(differing, expected);
    }

    #[tokio::test]
    async fn the_candidate_answers_search_late_and_only_search() {
        let baseline = BuildServer::start(Build::Baseline).await.unwrap();
        let candidate = BuildServer::start(Build::Candidate).await.unwrap();
        for (server, slow) in [(&baseline, false), (&candidate, true)] {
            let mut client = Client::connect(server.addr()).await.unwrap();
            for sequence in 0..ENDPOINTS.len() as u64 {
                let started = Instant::now();
                client.send(&mix_request(sequence)).await.unwrap();
                let took = started.elapsed();
                let late = slow && MixRequest::endpoint(sequence) == SLOW_ENDPOINT;
                assert_eq!(took >= CANDIDATE_DELAY, late, "{sequence}: {took:?}");
            }
        }
    }

    #[tokio::test]
    async fn catalog_is_gzipped_and_health_is_chunked_text() {
        let server = BuildServer::start(Build::Baseline).await.unwrap();
        let mut client = Client::connect(server.addr()).await.unwrap();
        let catalog = client.send(&mix_request(2)).await.unwrap();
        assert_eq!(catalog.headers[header::CONTENT_ENCODING], "gzip");
        assert_eq!(catalog.json().unwrap()["currency"], "EUR");
        let token = catalog.json().unwrap()["session"]["token"].clone();
        assert_eq!(token.as_str().map(str::len), Some(32), "{token}");
        let health = client.send(&mix_request(4)).await.unwrap();
        assert_eq!(health.headers[header::TRANSFER_ENCODING], "chunked");
        assert_eq!(health.headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(&health.body[..], b"ok\n");
        let user = client.send(&mix_request(0)).await.unwrap().json().unwrap();
        let id = user["request_id"].as_str().unwrap().to_owned();
        assert_eq!(
            id.split('-').map(str::len).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        let generated_at = user["generated_at"].as_str().unwrap();
        assert_eq!(
            generated_at.len(),
            "2026-12-01T04:05:06.789012Z".len(),
            "{generated_at}"
        );
    }

    #[tokio::test]
    async fn a_cart_that_is_not_an_items_object_is_refused() {
        let server = BuildServer::start(Build::Candidate).await.unwrap();
        let mut client = Client::connect(server.addr()).await.unwrap();
        let mut request = mix_request(5);
        let answer = client.send(&request).await.unwrap();
        assert_eq!(answer.json().unwrap()["items"], 1);
        request.body = Some(Bytes::from_static(b"[1,2]"));
        let answer = client.send(&request).await.unwrap();
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |seconds: u64, micros: u64| {
            rfc3339_micros(Duration::from_secs(seconds) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_796_097_906, 789_012), "2026-12-01T04:05:06.789012Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }

    #[tokio::test]
    async fn dropping_the_server_stops_it() {
        let server = BuildServer::start(Build::Baseline).await.unwrap();
        let addr = server.addr();
        let mut client = Client::connect(addr).await.unwrap();
        client.send(&mix_request(0)).await.unwrap();
        drop(server);
        // The open connection is closed, and the port soon refuses new ones.
        assert!(client.send(&mix_request(0)).await.is_err());
        let refused = async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .expect("the port still accepts connections");
    }
}
