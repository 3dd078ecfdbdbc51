//! The HTTP endpoint that serves a Prometheus registry at `/metrics`. Which metrics exist is
//! each side's business, not this module's.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Serves `registry` as Prometheus text at `http://ADDR/metrics` until the process exits.
/// Returns the bound address, so `127.0.0.1:0` picks a free port.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "metrics endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let registry = Arc::clone(&registry);
                    async move { Ok::<_, std::convert::Infallible>(respond(&request, &registry)) }
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

fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"try /metrics\n")))
            .expect("static response is valid");
    }
    let mut text = String::new();
    match prometheus_text::encode(&mut text, registry) {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)
            .body(Full::new(Bytes::from(text)))
            .expect("static headers are valid"),
        Err(error) => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Full::new(Bytes::from(format!(
                "cannot encode metrics: {error}\n"
            ))))
            .expect("static headers are valid"),
    }
}
