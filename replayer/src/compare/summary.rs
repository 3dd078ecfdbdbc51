//! What a comparison found, as one serialisable value: what the HTML report shows
//! ([`super::report`]), what the diff log's `summary` lines hold, and what `tapwire-replayer
//! report` reads back from them. Bounded by construction: counts per target, endpoint and
//! field path, and a few examples per endpoint.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything the report shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Where the responses came from: `live replay`, or the file's name.
    pub source: String,
    /// When this summary was taken, in milliseconds since the Unix epoch.
    pub generated_at_ms: u64,
    /// The role the candidate is compared with: `baseline`, or `production`.
    pub reference: String,
    /// The two roles whose differences are noise (`baseline` and `baseline2`, or `baseline`
    /// and `production`); `None` when there is no second reference and nothing is cancelled.
    pub noise_pair: Option<(String, String)>,
    /// Noise thresholds, as fractions (0.2 = 20%).
    pub relative_threshold: f64,
    pub absolute_threshold: f64,
    /// Requests whose responses were compared.
    pub compared: u64,
    /// Requests not compared, by reason (`queue_full`, `missing_response`, `too_large`...).
    pub not_compared: BTreeMap<String, u64>,
    /// Per role, in the order candidate, baseline, baseline2, production.
    pub targets: Vec<TargetSummary>,
    /// Every endpoint with compared requests, most differing first (see
    /// [`EndpointSummary::difference_rate`]).
    pub endpoints: Vec<EndpointSummary>,
    /// Endpoints beyond the tracked limit were counted under one `(other endpoints)` entry.
    pub endpoints_folded: bool,
}

/// One target's answers to the compared requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetSummary {
    /// `candidate`, `baseline`, `baseline2` or `production`.
    pub role: String,
    /// The target's URL (`production` for production's own responses).
    pub name: String,
    /// Responses received from it.
    pub responses: u64,
    /// Responses by status class: `2xx`, `3xx`, `4xx`, `5xx` (`1xx` never ends an exchange).
    pub statuses: BTreeMap<String, u64>,
    pub latency: LatencySummary,
}

/// Response times of one target, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// `(upper bound in ms, responses)` per non-empty bucket, ascending: the histogram the
    /// page draws. Buckets are log-scale, so the chart's x axis is too.
    pub histogram: Vec<(f64, u64)>,
}

/// One endpoint: method and normalised path (`GET /users/{n}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointSummary {
    pub name: String,
    /// Requests at this endpoint whose responses were compared.
    pub compared: u64,
    /// The rate of its most frequent difference beyond the noise (signal paths only): 0.0 to
    /// 1.0. Endpoints are ranked by it.
    pub difference_rate: f64,
    /// Every field path where the candidate or the noise pair differed, signal first, then by
    /// count.
    pub paths: Vec<PathSummary>,
    /// A few requests where the candidate differed, with both responses side by side.
    pub examples: Vec<Example>,
}

/// One field path at one endpoint (`$.items[3].price`, `status`, `headers.content-type`,
/// `body` for binary bodies, `lines[12]` for text bodies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathSummary {
    pub path: String,
    /// The kinds seen there and how often: `added`, `removed`, `changed_value`, `changed_type`.
    pub kinds: BTreeMap<String, u64>,
    /// Compared requests where the candidate differed from the reference here.
    pub candidate: u64,
    /// Compared requests where the noise pair differed here.
    pub noise: u64,
    /// Beyond the noise by both thresholds: reported against the candidate.
    pub signal: bool,
}

/// One request where the candidate differed, both responses side by side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The request's `.gor` id.
    pub id: String,
    /// `GET /users/42?x=1` as sent.
    pub request_line: String,
    /// The paths that differed (kind after a space: `$.price changed_value`).
    pub differences: Vec<String>,
    pub reference: ExampleSide,
    pub candidate: ExampleSide,
}

/// One side of an example: the response, decoded, cut to a few KiB.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleSide {
    pub role: String,
    pub status: u16,
    /// Compared headers only (ignored ones left out), in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body as text (JSON pretty-printed; binary as `N bytes, xxh3 HASH`).
    pub body: String,
    /// The body was cut to fit.
    pub truncated: bool,
    pub latency_ms: f64,
}
