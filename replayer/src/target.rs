//! One staging target: its filters, sampler and rate limiter, its bounded queue, and the
//! workers that send each request under a concurrency limit and a timeout. Each target owns all
//! of these, so a dead or slow target fills only its own queue and never delays the others.
//! With `--preserve-connections`, each captured client connection gets a session: its requests
//! go in order over one dedicated upstream connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::DefaultDirectRateLimiter;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::config::WhenLimited;
use crate::fanout::ReplayRequest;
use crate::filter::Filters;
use crate::metrics::{ReplayerMetrics, TargetDropReason, TargetMetrics};
use crate::plan::TargetPlan;
use crate::rate::Sampler;
use crate::rewrite::Rewrites;

/// Requests queued per preserved session.
const SESSION_QUEUE: usize = 256;
/// A preserved session with no requests for this long closes, freeing its slot.
const SESSION_IDLE: Duration = Duration::from_secs(1);

/// The handle the fan-out offers requests to.
pub struct Target {
    queue: mpsc::Sender<Arc<ReplayRequest>>,
    filters: Filters,
    sampler: Option<Sampler>,
    /// Checked at offer time when over-rate requests are dropped.
    drop_limiter: Option<DefaultDirectRateLimiter>,
    metrics: TargetMetrics,
}

impl Target {
    /// Starts the target's workers; the returned task ends once the target's queue is closed
    /// and every request in flight has finished.
    pub fn start(
        plan: TargetPlan,
        metrics: &ReplayerMetrics,
        preserve_connections: bool,
    ) -> (Target, JoinHandle<()>) {
        let metrics = metrics.target(&plan.name);
        let (queue, requests) = mpsc::channel(plan.queue);
        let sender = Arc::new(RequestSender::new(&plan, metrics.clone()));
        let (drop_limiter, queue_limiter) = match plan.when_limited {
            WhenLimited::Drop => (plan.limiter, None),
            WhenLimited::Queue => (None, plan.limiter),
        };
        let workers = tokio::spawn(deliver_all(
            sender,
            requests,
            plan.concurrency,
            queue_limiter,
            preserve_connections,
        ));
        let target = Target {
            queue,
            filters: plan.filters,
            sampler: plan.sampler,
            drop_limiter,
            metrics,
        };
        (target, workers)
    }

    /// Never waits: filtered, sampled-out, over-rate and over-capacity requests are counted.
    pub fn offer(&self, request: &Arc<ReplayRequest>) {
        if let Err(rule) = self.filters.check(request) {
            self.metrics.filtered(rule).inc();
            return;
        }
        if self.sampler.as_ref().is_some_and(|s| !s.keeps(request)) {
            self.metrics.filtered("sample").inc();
            return;
        }
        if let Some(limiter) = &self.drop_limiter
            && limiter.check().is_err()
        {
            self.metrics.dropped(TargetDropReason::RateLimited).inc();
            return;
        }
        if self.queue.try_send(Arc::clone(request)).is_err() {
            self.metrics
                .dropped(TargetDropReason::TargetQueueFull)
                .inc();
        }
    }
}

async fn deliver_all(
    sender: Arc<RequestSender>,
    mut requests: mpsc::Receiver<Arc<ReplayRequest>>,
    concurrency: usize,
    queue_limiter: Option<DefaultDirectRateLimiter>,
    preserve_connections: bool,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut sessions: HashMap<u64, mpsc::Sender<Arc<ReplayRequest>>> = HashMap::new();
    while let Some(request) = requests.recv().await {
        // Held requests wait here, in the bounded queue, until the rate allows them.
        if let Some(limiter) = &queue_limiter {
            limiter.until_ready().await;
        }
        if preserve_connections {
            route_to_session(&sender, &slots, &mut sessions, request).await;
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let sender = Arc::clone(&sender);
        tokio::spawn(async move {
            sender.send_pooled(&request).await;
            drop(slot);
        });
    }
    drop(sessions);
    // Every slot back means every request in flight has finished.
    let _ = slots.acquire_many(concurrency as u32).await;
}

/// Hands a request to its connection's session, starting one (in a free slot) if needed.
async fn route_to_session(
    sender: &Arc<RequestSender>,
    slots: &Arc<Semaphore>,
    sessions: &mut HashMap<u64, mpsc::Sender<Arc<ReplayRequest>>>,
    request: Arc<ReplayRequest>,
) {
    let key = request.session;
    let request = match sessions.get(&key) {
        Some(session) => match session.send(request).await {
            Ok(()) => return,
            // The session closed (idle); start a new one.
            Err(mpsc::error::SendError(request)) => request,
        },
        None => request,
    };
    sessions.retain(|_, session| !session.is_closed());
    let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
        return;
    };
    let (session, queued) = mpsc::channel(SESSION_QUEUE);
    tokio::spawn(run_session(Arc::clone(sender), queued, slot));
    if session.send(request).await.is_ok() {
        sessions.insert(key, session);
    }
}

/// One captured client connection replayed in order over one upstream connection.
async fn run_session(
    sender: Arc<RequestSender>,
    mut requests: mpsc::Receiver<Arc<ReplayRequest>>,
    _slot: OwnedSemaphorePermit,
) {
    let mut connection: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while let Ok(Some(request)) = tokio::time::timeout(SESSION_IDLE, requests.recv()).await {
        let send = async {
            if connection.as_ref().is_none_or(|c| c.is_closed()) {
                connection = Some(sender.connect().await?);
            }
            let upstream = connection.as_mut().expect("connected above");
            upstream.ready().await.map_err(ExchangeError::Http)?;
            let response = upstream
                .send_request(sender.build(&request, UriForm::Origin))
                .await
                .map_err(ExchangeError::Http)?;
            read_response(response).await
        };
        if !sender.account(send).await {
            // A failed exchange may leave the connection unusable; the next request reconnects.
            connection = None;
        }
    }
}

async fn read_response(response: http::Response<Incoming>) -> Result<StatusCode, ExchangeError> {
    let status = response.status();
    let mut body = response.into_body();
    // Read the whole body so the connection can carry the next request.
    while let Some(frame) = body.frame().await {
        frame.map_err(ExchangeError::Http)?;
    }
    Ok(status)
}

/// Builds and sends requests to one target, and counts what happened.
struct RequestSender {
    client: Client<HttpConnector, Full<Bytes>>,
    scheme: Scheme,
    authority: Authority,
    authority_host: HeaderValue,
    keep_host: bool,
    rewrites: Rewrites,
    timeout: Duration,
    metrics: TargetMetrics,
}

impl RequestSender {
    fn new(plan: &TargetPlan, metrics: TargetMetrics) -> Self {
        let authority = plan
            .url
            .authority()
            .cloned()
            .expect("target URLs are validated to have an authority");
        let authority_host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(plan.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(plan.concurrency)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        RequestSender {
            client,
            scheme: plan.url.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority,
            authority_host,
            keep_host: plan.keep_host,
            rewrites: plan.rewrites.clone(),
            timeout: plan.timeout,
            metrics,
        }
    }

    async fn send_pooled(&self, replay: &ReplayRequest) {
        let exchange = async {
            let response = self
                .client
                .request(self.build(replay, UriForm::Absolute))
                .await
                .map_err(ExchangeError::Client)?;
            read_response(response).await
        };
        self.account(exchange).await;
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ExchangeError> {
        let stream = TcpStream::connect(self.authority.as_str())
            .await
            .map_err(ExchangeError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ExchangeError::Http)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Runs one exchange under the timeout and counts its outcome; true if a response came.
    async fn account(
        &self,
        exchange: impl Future<Output = Result<StatusCode, ExchangeError>>,
    ) -> bool {
        self.metrics.sent.inc();
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) => {
                self.metrics
                    .latency
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.response(status).inc();
                true
            }
            Ok(Err(error)) => {
                let reason = error.reason();
                tracing::debug!(%error, reason = reason.as_str(), "request to target failed");
                self.metrics.dropped(reason).inc();
                false
            }
            Err(_) => {
                self.metrics.dropped(TargetDropReason::Timeout).inc();
                false
            }
        }
    }

    /// The request for this target: the target's rewrites applied, sent to the target's
    /// authority whatever Host the capture carried.
    fn build(&self, replay: &ReplayRequest, form: UriForm) -> Request<Full<Bytes>> {
        let mut path_and_query = replay.path_and_query.clone();
        let mut headers = replay.headers.clone();
        if !self.rewrites.is_empty() {
            self.rewrites.apply(&mut path_and_query, &mut headers);
        }
        let host = self
            .rewrites
            .host()
            .or(replay.host_override.as_ref())
            .cloned()
            .or_else(|| {
                self.keep_host
                    .then(|| headers.get(header::HOST).cloned())
                    .flatten()
            })
            .unwrap_or_else(|| self.authority_host.clone());
        headers.insert(header::HOST, host);
        let mut parts = http::uri::Parts::default();
        if form == UriForm::Absolute {
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
        }
        parts.path_and_query = Some(path_and_query);
        let uri = Uri::from_parts(parts).expect("scheme, authority and path make a valid URI");
        let mut request = Request::new(Full::new(replay.body.clone()));
        *request.method_mut() = replay.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        request
    }
}

/// How the request URI is written: the pooled client needs it absolute to pick a connection; a
/// dedicated connection writes it as is, so it must be origin-form there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UriForm {
    Absolute,
    Origin,
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error(transparent)]
    Client(hyper_util::client::legacy::Error),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Http(hyper::Error),
}

impl ExchangeError {
    fn reason(&self) -> TargetDropReason {
        match self {
            ExchangeError::Client(error) if error.is_connect() => TargetDropReason::ConnectError,
            ExchangeError::Connect(_) => TargetDropReason::ConnectError,
            _ => TargetDropReason::HttpError,
        }
    }
}
