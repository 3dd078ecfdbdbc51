//! One staging target: its rate limiter, its bounded queue, and the workers that send each
//! request with a pooled hyper client under a concurrency limit and a timeout. Each target owns
//! all of these, so a dead or slow target fills only its own queue and never delays the others.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::fanout::ReplayRequest;
use crate::metrics::{ReplayerMetrics, TargetDropReason, TargetMetrics};

/// How one target is reached and paced.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// `http://host:port`: where requests go, whatever their captured Host header said.
    pub url: Uri,
    /// Most requests per second sent to this target; `None` sends as fast as they come.
    pub rate: Option<NonZeroU32>,
    /// Most requests in flight to this target at once.
    pub concurrency: usize,
    /// Longest wait for a complete response.
    pub timeout: Duration,
    /// Requests waiting for a free connection slot; past it they are dropped and counted.
    pub queue_capacity: usize,
    /// Send the captured Host header instead of the target's authority.
    pub keep_host: bool,
}

impl TargetConfig {
    /// `http://host:port`, as used in metric labels and logs.
    pub fn name(&self) -> String {
        let scheme = self.url.scheme_str().unwrap_or("http");
        let authority = self.url.authority().map_or("", |a| a.as_str());
        format!("{scheme}://{authority}")
    }
}

/// The handle the fan-out offers requests to.
pub struct Target {
    queue: mpsc::Sender<Arc<ReplayRequest>>,
    limiter: Option<DefaultDirectRateLimiter>,
    metrics: TargetMetrics,
}

impl Target {
    /// Starts the target's workers; the returned task ends once the target's queue is closed
    /// and every request in flight has finished.
    pub fn start(config: &TargetConfig, metrics: &ReplayerMetrics) -> (Target, JoinHandle<()>) {
        let metrics = metrics.target(&config.name());
        let (queue, requests) = mpsc::channel(config.queue_capacity);
        let sender = Arc::new(RequestSender::new(config, metrics.clone()));
        let workers = tokio::spawn(deliver_all(sender, requests, config.concurrency));
        let limiter = config
            .rate
            .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
        (
            Target {
                queue,
                limiter,
                metrics,
            },
            workers,
        )
    }

    /// Never waits: over-rate and over-capacity requests are dropped and counted.
    pub fn offer(&self, request: &Arc<ReplayRequest>) {
        if let Some(limiter) = &self.limiter
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
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some(request) = requests.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let sender = Arc::clone(&sender);
        tokio::spawn(async move {
            sender.send(&request).await;
            drop(slot);
        });
    }
    // Every slot back means every request in flight has finished.
    let _ = slots.acquire_many(concurrency as u32).await;
}

struct RequestSender {
    client: Client<HttpConnector, Full<Bytes>>,
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    keep_host: bool,
    timeout: Duration,
    metrics: TargetMetrics,
}

impl RequestSender {
    fn new(config: &TargetConfig, metrics: TargetMetrics) -> Self {
        let authority = config
            .url
            .authority()
            .cloned()
            .expect("target URLs are validated to have an authority");
        let host_header = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.concurrency)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        RequestSender {
            client,
            scheme: config.url.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority,
            host_header,
            keep_host: config.keep_host,
            timeout: config.timeout,
            metrics,
        }
    }

    async fn send(&self, replay: &ReplayRequest) {
        let request = match self.build(replay) {
            Ok(request) => request,
            Err(error) => {
                // Validated at parse time, so this means a bug rather than bad traffic.
                tracing::error!(%error, "cannot build request for target");
                self.metrics.dropped(TargetDropReason::HttpError).inc();
                return;
            }
        };
        self.metrics.sent.inc();
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let mut body = response.into_body();
            // Read the whole body so the connection goes back to the pool.
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<_, ExchangeError>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) => {
                self.metrics
                    .latency
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.response(status).inc();
            }
            Ok(Err(error)) => {
                let reason = match &error {
                    ExchangeError::Client(error) if error.is_connect() => {
                        TargetDropReason::ConnectError
                    }
                    _ => TargetDropReason::HttpError,
                };
                tracing::debug!(%error, reason = reason.as_str(), "request to target failed");
                self.metrics.dropped(reason).inc();
            }
            Err(_) => {
                self.metrics.dropped(TargetDropReason::Timeout).inc();
            }
        }
    }

    fn build(&self, replay: &ReplayRequest) -> Result<Request<Full<Bytes>>, http::Error> {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(replay.path_and_query.clone())
            .build()?;
        let mut request = Request::new(Full::new(replay.body.clone()));
        *request.method_mut() = replay.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = replay.headers.clone();
        if !self.keep_host || !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, self.host_header.clone());
        }
        Ok(request)
    }
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
    #[error("reading response body: {0}")]
    Body(#[from] hyper::Error),
}
