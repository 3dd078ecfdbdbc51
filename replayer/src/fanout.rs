//! Fan-out: each received record is checked and parsed once into a [`ReplayRequest`], then
//! offered to every target. Parsing here (not per target) means a malformed capture is counted
//! once, and the body bytes are shared by all targets without copying.

use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, header};
use tapwire_shared::http1::{BodyFraming, ParsedRequest};
use tapwire_shared::{RequestRecord, proto};
use tokio::task::JoinHandle;

use crate::metrics::{RejectReason, ReplayerMetrics};
use crate::target::{Target, TargetConfig};

/// A captured request, ready to send to any target.
#[derive(Debug)]
pub struct ReplayRequest {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// Captured headers minus the hop-by-hop ones, which described the production connection.
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Headers that belong to one connection (RFC 9110 section 7.6.1), not to the request.
const HOP_BY_HOP: [header::HeaderName; 5] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

impl ReplayRequest {
    pub fn from_record(record: &RequestRecord) -> Result<Self, RejectReason> {
        let parsed =
            ParsedRequest::parse(&record.request).map_err(|_| RejectReason::MalformedHttp)?;
        // Only the path and query travel: the destination is always a configured target.
        let path_and_query = if parsed.target.starts_with('/') {
            parsed.target.parse::<PathAndQuery>().ok()
        } else {
            // Absolute form (`GET http://host/path`), as sent to proxies.
            parsed
                .target
                .parse::<http::Uri>()
                .ok()
                .filter(|uri| uri.scheme().is_some())
                .and_then(|uri| uri.path_and_query().cloned())
        }
        .ok_or(RejectReason::UnreplayableTarget)?;
        let mut headers = parsed.headers;
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        headers.remove("keep-alive");
        headers.remove("proxy-connection");
        match parsed.framing {
            // Keeping the header makes the client re-chunk the decoded body.
            BodyFraming::Chunked => {
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(
                    header::TRANSFER_ENCODING,
                    header::HeaderValue::from_static("chunked"),
                );
            }
            BodyFraming::Empty | BodyFraming::Length(_) | BodyFraming::UntilClose => {
                headers.remove(header::TRANSFER_ENCODING);
            }
        }
        Ok(ReplayRequest {
            method: parsed.method,
            path_and_query,
            headers,
            body: parsed.body,
        })
    }
}

/// Every configured target, fed from one place.
pub struct FanOut {
    targets: Vec<Target>,
    metrics: ReplayerMetrics,
}

impl FanOut {
    /// Starts every target; the handles finish once the fan-out is dropped and targets drain.
    pub fn start(
        targets: &[TargetConfig],
        metrics: &ReplayerMetrics,
    ) -> (FanOut, Vec<JoinHandle<()>>) {
        let (targets, workers) = targets
            .iter()
            .map(|config| Target::start(config, metrics))
            .unzip();
        (
            FanOut {
                targets,
                metrics: metrics.clone(),
            },
            workers,
        )
    }

    pub fn production_responses(&self, count: u64) {
        self.metrics.production_responses_received.inc_by(count);
    }

    /// Offers one received record to every target.
    pub fn dispatch(&self, wire: proto::RequestRecord) {
        self.metrics.records_received.inc();
        let request = RequestRecord::try_from(wire)
            .map_err(|error| {
                tracing::debug!(%error, "invalid record");
                RejectReason::InvalidRecord
            })
            .and_then(|record| ReplayRequest::from_record(&record));
        match request {
            Ok(request) => {
                let request = Arc::new(request);
                for target in &self.targets {
                    target.offer(&request);
                }
            }
            Err(reason) => {
                self.metrics.rejected(reason).inc();
            }
        }
    }
}
