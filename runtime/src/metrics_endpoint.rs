//! The HTTP endpoint of `--metrics-listen`: a Prometheus registry at `/metrics`, liveness at
//! `/healthz` and readiness at `/readyz` (as [`crate::health`] decides them), and any HTML
//! [`Page`] a side adds (the replayer's live comparison report). Which metrics, loops,
//! conditions and pages exist is each side's business, not this module's.
//!
//! The output is stable: families come in the order each side registers them (fixed in code),
//! and the series of a family in the order of their label values, the same on every scrape and
//! every run, so that two scrapes can be diffed.

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

/// An HTML page served at `path`, rendered on each request: off the runtime's threads (a page
/// may take a while), one rendering at a time (a flood of requests queues instead of taking
/// every core).
#[derive(Clone)]
pub struct Page {
    pub path: &'static str,
    pub render: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Serves `registry` as Prometheus text at `http://ADDR/metrics`, `health` at `/healthz`
/// and `/readyz`, and `pages`, until the process exits; registers the runtime's own heartbeat
/// with `health`. Returns the bound address, so `127.0.0.1:0` picks a free port.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
    pages: Vec<Page>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "metrics endpoint listening");
    let runtime = health.heartbeat("runtime");
    let endpoint = Arc::new(Endpoint {
        registry,
        health,
        pages,
        rendering: Arc::new(tokio::sync::Semaphore::new(1)),
    });
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
            let endpoint = Arc::clone(&endpoint);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let endpoint = Arc::clone(&endpoint);
                    async move { Ok::<_, std::convert::Infallible>(endpoint.respond(&request).await) }
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

/// What the metrics port serves.
struct Endpoint {
    registry: Arc<Registry>,
    health: Health,
    pages: Vec<Page>,
    /// One page rendering at a time.
    rendering: Arc<tokio::sync::Semaphore>,
}

impl Endpoint {
    async fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        match request.uri().path() {
            "/metrics" => metrics(&self.registry),
            "/healthz" => verdict(self.health.liveness(), "ok\n"),
            "/readyz" => verdict(self.health.readiness(), "ready\n"),
            path => match self.pages.iter().find(|page| page.path == path) {
                Some(page) => self.render(page).await,
                None => text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "try /metrics, /healthz or /readyz{}\n",
                        self.pages
                            .iter()
                            .map(|page| format!(" or {}", page.path))
                            .collect::<String>()
                    ),
                ),
            },
        }
    }

    async fn render(&self, page: &Page) -> Response<Full<Bytes>> {
        let turn = Arc::clone(&self.rendering)
            .acquire_owned()
            .await
            .expect("never closed");
        let render = Arc::clone(&page.render);
        // The turn goes with the rendering: a client that hangs up does not end it early.
        let rendered = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            render()
        });
        match rendered.await {
            Ok(html) => Response::builder()
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .body(Full::new(Bytes::from(html)))
                .expect("static headers are valid"),
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{} failed: {error}\n", page.path),
            ),
        }
    }
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut text = String::new();
    match prometheus_text::encode(&mut text, registry) {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)
            .body(Full::new(Bytes::from(in_stable_order(&text))))
            .expect("static headers are valid"),
        Err(error) => self::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}

/// `text` with each family's series sorted by their labels. The encoder lists them in its hash
/// map's order, which changes from run to run. The lines of one series (a histogram's sum,
/// count and buckets) stay together and in their order: they share their labels but `le`.
fn in_stable_order(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // The current family's series: (labels but `le`, lines), in the encoder's order.
    let mut series: Vec<(String, Vec<&str>)> = Vec::new();
    let flush = |series: &mut Vec<(String, Vec<&str>)>, out: &mut String| {
        series.sort_by(|a, b| a.0.cmp(&b.0));
        for line in series.drain(..).flat_map(|(_, lines)| lines) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            flush(&mut series, &mut out);
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let key = series_key(line);
        match series.last_mut() {
            Some((last, lines)) if *last == key => lines.push(line),
            _ => series.push((key, vec![line])),
        }
    }
    flush(&mut series, &mut out);
    out
}

/// A sample line's labels without `le`: `name{a="x",le="0.5"} 3` is `a="x"`.
fn series_key(line: &str) -> String {
    let Some((_, rest)) = line.split_once('{') else {
        return String::new();
    };
    let mut pairs = Vec::new();
    let (mut pair, mut quoted, mut escaped) = (String::new(), false, false);
    for c in rest.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' | '}' if !quoted => {
                pairs.push(std::mem::take(&mut pair));
                if c == '}' {
                    break;
                }
                continue;
            }
            _ => {}
        }
        pair.push(c);
    }
    pairs.retain(|pair| !pair.starts_with("le="));
    pairs.join(",")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_sorted_by_labels_and_histogram_lines_stay_together() {
        let scraped = "\
# HELP x_total X.
# TYPE x_total counter
x_total{target=\"b\",status=\"2xx\"} 1
x_total{target=\"a,}\\\"q\",status=\"5xx\"} 2
x_total{target=\"a\",status=\"2xx\"} 3
# HELP h H.
# TYPE h histogram
h_sum{target=\"b\"} 0.5
h_count{target=\"b\"} 1
h_bucket{target=\"b\",le=\"0.1\"} 0
h_bucket{target=\"b\",le=\"+Inf\"} 1
h_sum{target=\"a\"} 0.0
h_count{target=\"a\"} 0
h_bucket{target=\"a\",le=\"0.1\"} 0
h_bucket{target=\"a\",le=\"+Inf\"} 0
# EOF
";
        let expected = "\
# HELP x_total X.
# TYPE x_total counter
x_total{target=\"a\",status=\"2xx\"} 3
x_total{target=\"a,}\\\"q\",status=\"5xx\"} 2
x_total{target=\"b\",status=\"2xx\"} 1
# HELP h H.
# TYPE h histogram
h_sum{target=\"a\"} 0.0
h_count{target=\"a\"} 0
h_bucket{target=\"a\",le=\"0.1\"} 0
h_bucket{target=\"a\",le=\"+Inf\"} 0
h_sum{target=\"b\"} 0.5
h_count{target=\"b\"} 1
h_bucket{target=\"b\",le=\"0.1\"} 0
h_bucket{target=\"b\",le=\"+Inf\"} 1
# EOF
";
        assert_eq!(in_stable_order(scraped), expected);
    }
}
