//! The HTTP endpoint of `--metrics-listen`: a Prometheus registry at `/metrics`, liveness at
//! `/healthz` and readiness at `/readyz` (as [`crate::health`] decides them). Which metrics,
//! loops and conditions exist is each side's business, not this module's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::health::Health;

/// How often the runtime's heartbeat beats: a runtime too busy to run it for
/// [`crate::health::STALL_LIMIT`] makes `/healthz` fail.
const RUNTIME_BEAT: Duration = Duration::from_secs(1);

/// Serves `registry` as Prometheus text at `http://ADDR/metrics`, and `health` at `/healthz`
/// and `/readyz`, until the process exits; registers the runtime's own heartbeat with
/// `health`. Returns the bound address, so `127.0.0.1:0` picks a free port.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "metrics endpoint listening");
    let runtime = health.heartbeat("runtime");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RUNTIME_BEAT);
        loop {
            tick.tick().await;
            runtime.beat();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (registry, health) = (Arc::clone(&registry), health.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = respond(&request, &registry, &health);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                // A scraper hanging up mid-response is its business, not an error of ours.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn respond(
    request: &Request<Incoming>,
    registry: &Registry,
    health: &Health,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => metrics(registry),
        "/healthz" => verdict(health.liveness(), "ok\n"),
        "/readyz" => verdict(health.readiness(), "ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut text = String::new();
    match prometheus_text::encode(&mut text, registry) {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)
            .body(Full::new(Bytes::from(text)))
            .expect("static headers are valid"),
        Err(error) => self::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}

/// 200 with `ok_body`, or 503 with one line per problem.
fn verdict(result: Result<(), Vec<String>>, ok_body: &'static str) -> Response<Full<Bytes>> {
    match result {
        Ok(()) => text(StatusCode::OK, ok_body.into()),
        Err(problems) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            problems.iter().map(|line| format!("{line}\n")).collect(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}
