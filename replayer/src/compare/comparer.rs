//! Compares one request's responses ([`Comparer::compare`]): each decoded ([`super::decode`]),
//! the candidate against its reference and the noise pair against each other (status, headers
//! by [`HeaderRules`], bodies by [`super::body`]), then counted in the [`Tally`], the metrics and
//! the diff log. Used by the live stage's thread and by the offline `.gor` report alike.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::body::{self, Body, IgnoredPaths};
use super::decode::{self, DecodedResponse};
use super::diff_log::{DiffLog, DifferenceLine, PathLine};
use super::endpoint::EndpointNames;
use super::headers::{DEFAULT_IGNORED, HeaderRules};
use super::json::{Difference, DifferenceKind};
use super::noise::Thresholds;
use super::pending::{Exchange, RequestLine};
use super::summary::{Example, ExampleSide, Summary};
use super::tally::{Roles, Tally};
use crate::config::{CompareSettings, Role, parse_percent};
use tapwire_runtime::lock;
use tapwire_shared::config::ConfigError;

/// Differences found between two responses at most (a response that differs everywhere costs a
/// bounded amount).
/// High enough that the noise of a long document (random ids in every element of an array)
/// cannot crowd out a change near its end.
const DIFFERENCES_PER_PAIR: usize = 1_000;
/// Characters of a body kept in an example.
const EXAMPLE_BODY_CHARS: usize = 2_000;
/// Characters of an endpoint name or a field path kept: both come from traffic and responses,
/// and are counted and reported.
pub(super) const NAME_CHARS: usize = 200;
/// Headers whose values an example never shows: credentials of real users (production's
/// responses are compared too). `Set-Cookie` shows its cookie's name only.
const SECRET_HEADERS: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "www-authenticate",
    "x-api-key",
    "x-auth-token",
    "x-subject-token",
    "x-csrf-token",
    "x-xsrf-token",
];
/// Query parameters whose values a request line in the diff log or an example never shows
/// (`?access_token=REDACTED`): names containing one of these.
const SECRET_PARAMETER_WORDS: [&str; 7] =
    ["token", "key", "secret", "pass", "sig", "auth", "session"];

/// How responses are compared.
pub struct Rules {
    pub endpoints: EndpointNames,
    pub headers: HeaderRules,
    pub ignored_paths: IgnoredPaths,
    /// Largest decoded body compared.
    pub body_limit: usize,
}

impl Rules {
    /// The rules `settings` describe, checked.
    pub fn compile(settings: &CompareSettings) -> Result<Rules, ConfigError> {
        let patterns = settings
            .endpoint_patterns
            .iter()
            .map(|spec| {
                spec.split_once('=')
                    .map(|(placeholder, regex)| (regex.to_owned(), placeholder.to_owned()))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "compare.endpoint_patterns",
                            format!(
                                "{spec:?} is not PLACEHOLDER=REGEX, e.g. '{{sku}}=[A-Z]+-[0-9]+'"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let endpoints = EndpointNames::new(&patterns)
            .map_err(|error| ConfigError::new("compare.endpoint_patterns", error.to_string()))?;
        let ignored_headers = DEFAULT_IGNORED
            .iter()
            .copied()
            .chain(settings.ignore_headers.iter().map(String::as_str));
        let ignored_paths = IgnoredPaths::new(&settings.ignore_paths)
            .map_err(|error| ConfigError::new("compare.ignore_paths", error.to_string()))?;
        Ok(Rules {
            endpoints,
            headers: HeaderRules::new(ignored_headers),
            ignored_paths,
            body_limit: settings.body_limit.get() as usize,
        })
    }

    /// The noise thresholds `settings` give.
    pub fn thresholds(settings: &CompareSettings) -> Result<Thresholds, ConfigError> {
        let fraction = |text: &str, field: &str| {
            parse_percent(text)
                .map(|percent| percent / 100.0)
                .map_err(|problem| ConfigError::new(field, problem))
        };
        Ok(Thresholds {
            relative: fraction(&settings.noise_relative, "compare.noise_relative")?,
            absolute: fraction(&settings.noise_absolute, "compare.noise_absolute")?,
        })
    }
}

/// The comparison's metrics (`tapwire_replayer_compared_total`...), registered whether or not
/// targets have roles, so that dashboards find them.
#[derive(Clone, Default)]
pub struct CompareMetrics {
    pub compared: Counter,
    pub not_compared: Family<ReasonLabel, Counter>,
    /// Requests where the candidate differed beyond the noise, by what differed.
    pub diffs: Family<KindLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

impl CompareMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = CompareMetrics::default();
        let registry = registry.sub_registry_with_prefix("tapwire_replayer");
        registry.register(
            "compared",
            "Requests whose responses (candidate, reference, second baseline) were compared",
            metrics.compared.clone(),
        );
        registry.register(
            "not_compared",
            "Requests whose responses were not compared, by reason",
            metrics.not_compared.clone(),
        );
        registry.register(
            "diffs",
            "Compared requests where the candidate differed beyond the noise, by what differed \
             (status, header, body)",
            metrics.diffs.clone(),
        );
        metrics
    }
}

/// Compares requests' responses and counts what it finds.
pub struct Comparer {
    rules: Rules,
    /// The tally's roles, read once.
    roles: Roles,
    tally: Arc<Mutex<Tally>>,
    log: Option<DiffLog>,
    metrics: CompareMetrics,
}

/// One role's response, decoded; its body classified (JSON parsed...) only when it is needed:
/// most bodies are byte for byte those of the other roles.
struct Side {
    role: Role,
    response: DecodedResponse,
    body: std::cell::OnceCell<Body>,
    latency: Option<std::time::Duration>,
}

impl Side {
    fn body(&self) -> &Body {
        self.body.get_or_init(|| body::classify(&self.response))
    }
}

impl Comparer {
    pub fn new(
        rules: Rules,
        tally: Arc<Mutex<Tally>>,
        log: Option<DiffLog>,
        metrics: CompareMetrics,
    ) -> Self {
        let roles = lock(&tally).roles().clone();
        Comparer {
            rules,
            roles,
            tally,
            log,
            metrics,
        }
    }

    pub fn tally(&self) -> &Arc<Mutex<Tally>> {
        &self.tally
    }

    /// Counts a request that could not be compared.
    pub fn not_compared(&self, reason: &str) {
        count_not_compared(&self.metrics, &self.tally, reason);
    }

    /// Compares one request's responses (every compared role's is there).
    pub fn compare(&mut self, exchange: &Exchange) {
        let Some(request) = &exchange.request else {
            return self.not_compared("no_request");
        };
        let roles = &self.roles;
        let mut sides = Vec::with_capacity(roles.targets.len());
        for (role, _) in &roles.targets {
            match self.decode(*role, exchange, request) {
                Ok(side) => sides.push(side),
                Err(reason) => return self.not_compared(reason),
            }
        }
        let side = |role: Role| sides.iter().find(|side| side.role == role);
        let (Some(candidate), Some(reference)) = (side(Role::Candidate), side(roles.reference))
        else {
            return self.not_compared("missing_response");
        };
        let candidate_differences = self.differences(reference, candidate);
        let noise_differences = match roles.noise_pair.and_then(|(a, b)| side(a).zip(side(b))) {
            Some((a, b)) => self.differences(a, b),
            None => Vec::new(),
        };
        let mut endpoint = self
            .rules
            .endpoints
            .name(&request.method, &request.path_and_query);
        clip(&mut endpoint);
        let signal = {
            let mut tally = lock(&self.tally);
            for side in &sides {
                tally.response(side.role, side.response.status, side.latency);
            }
            let signal = tally.compared(&endpoint, &candidate_differences, &noise_differences);
            if signal.contains(&true) && tally.wants_example(&endpoint) {
                let example = self.example(
                    exchange,
                    request,
                    reference,
                    candidate,
                    &candidate_differences,
                );
                tally.add_example(&endpoint, example);
            }
            signal
        };
        self.metrics.compared.inc();
        let mut kinds: Vec<&'static str> = candidate_differences
            .iter()
            .zip(&signal)
            .filter(|(_, signal)| **signal)
            .map(|(difference, _)| difference_kind(&difference.path))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        for kind in kinds {
            self.metrics.diffs.get_or_create(&KindLabel { kind }).inc();
        }
        if candidate_differences.is_empty() {
            return;
        }
        if let Some(log) = &mut self.log {
            let line = DifferenceLine {
                id: &exchange.id,
                endpoint: &endpoint,
                request: shown_request(request),
                reference: roles.reference.as_str(),
                candidate_status: candidate.response.status,
                reference_status: reference.response.status,
                differences: candidate_differences
                    .iter()
                    .zip(&signal)
                    .map(|(difference, signal)| PathLine {
                        path: &difference.path,
                        kind: difference.kind.as_str(),
                        signal: *signal,
                    })
                    .collect(),
            };
            if let Err(error) = log.difference(&line) {
                tracing::warn!(%error, "cannot write the diff log; it stops here");
                self.log = None;
            }
        }
    }

    /// Writes `summary` to the diff log (if any).
    pub fn log_summary(&mut self, summary: &Summary) {
        let Some(log) = &mut self.log else { return };
        if let Err(error) = log.summary(summary) {
            tracing::warn!(%error, "cannot write the diff log; it stops here");
            self.log = None;
        }
    }

    fn decode(
        &self,
        role: Role,
        exchange: &Exchange,
        request: &RequestLine,
    ) -> Result<Side, &'static str> {
        let answer = exchange.response(role).ok_or("missing_response")?;
        let raw = answer.raw.as_ref().ok_or("too_large")?;
        let response = decode::decode(raw, request.method == "HEAD", self.rules.body_limit)
            .map_err(|error| error.reason())?;
        Ok(Side {
            role,
            response,
            body: std::cell::OnceCell::new(),
            latency: answer.latency,
        })
    }

    /// How `actual` differs from `expected`: status, compared headers, body.
    fn differences(&self, expected: &Side, actual: &Side) -> Vec<Difference> {
        let mut found = Vec::new();
        if expected.response.status != actual.response.status {
            found.push(Difference {
                path: "status".to_owned(),
                kind: DifferenceKind::ValueChanged,
            });
        }
        found.extend(self.rules.headers.differences(
            &expected.response.header_pairs(),
            &actual.response.header_pairs(),
        ));
        if expected.response.body != actual.response.body {
            let room = DIFFERENCES_PER_PAIR.saturating_sub(found.len());
            found.extend(body::differences(
                expected.body(),
                actual.body(),
                &self.rules.ignored_paths,
                room,
            ));
        }
        found.retain(|difference| !self.rules.ignored_paths.matches(&difference.path));
        for difference in &mut found {
            clip(&mut difference.path);
        }
        found
    }

    fn example(
        &self,
        exchange: &Exchange,
        request: &RequestLine,
        reference: &Side,
        candidate: &Side,
        differences: &[Difference],
    ) -> Example {
        Example {
            id: exchange.id.clone(),
            request_line: shown_request(request),
            differences: differences
                .iter()
                .map(|difference| format!("{} {}", difference.path, difference.kind.as_str()))
                .collect(),
            reference: self.example_side(reference),
            candidate: self.example_side(candidate),
        }
    }

    fn example_side(&self, side: &Side) -> ExampleSide {
        let (body, truncated) = body::render(side.body(), EXAMPLE_BODY_CHARS);
        ExampleSide {
            role: side.role.as_str().to_owned(),
            status: side.response.status,
            headers: side
                .response
                .headers
                .iter()
                .filter(|(name, _)| self.rules.headers.is_compared(name))
                .map(|(name, value)| (name.clone(), shown_value(name, value)))
                .collect(),
            body,
            truncated,
            latency_ms: side
                .latency
                .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0),
        }
    }
}

/// A request line as the diff log and examples show it: credentials in the query redacted.
fn shown_request(request: &RequestLine) -> String {
    let Some((path, query)) = request.path_and_query.split_once('?') else {
        return format!("{} {}", request.method, request.path_and_query);
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _))
                if SECRET_PARAMETER_WORDS
                    .iter()
                    .any(|word| name.to_ascii_lowercase().contains(word)) =>
            {
                format!("{name}=REDACTED")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{} {path}?{}", request.method, query.join("&"))
}

/// A header's value as an example shows it: credentials redacted, cookies by name.
fn shown_value(name: &str, value: &[u8]) -> String {
    let lower = name.to_ascii_lowercase();
    if SECRET_HEADERS.contains(&lower.as_str()) {
        return "REDACTED".to_owned();
    }
    let value = String::from_utf8_lossy(value);
    if lower == "set-cookie" {
        let name = value.split('=').next().unwrap_or_default().trim();
        return format!("{name}=REDACTED");
    }
    value.into_owned()
}

/// `text` cut to [`NAME_CHARS`] characters, the cut marked; `None` when it is no longer.
/// Copies only what is kept: a name or path may be megabytes long.
pub(super) fn clipped(text: &str) -> Option<String> {
    let (cut, _) = text.char_indices().nth(NAME_CHARS)?;
    Some(format!("{}…", &text[..cut]))
}

/// [`clipped`], in place.
fn clip(text: &mut String) {
    if let Some(kept) = clipped(text) {
        *text = kept;
    }
}

/// What a difference's path is about, for `tapwire_replayer_diffs_total{kind}`.
fn difference_kind(path: &str) -> &'static str {
    if path == "status" {
        "status"
    } else if path.starts_with("headers.") {
        "header"
    } else {
        "body"
    }
}

/// Counts a request not compared, for `reason`: in the metrics and the tally.
pub(super) fn count_not_compared(metrics: &CompareMetrics, tally: &Mutex<Tally>, reason: &str) {
    metrics
        .not_compared
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
    lock(tally).not_compared(reason);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;

    #[test]
    fn request_lines_shown_hide_credentials_in_the_query() {
        let line = |path_and_query: &str| RequestLine {
            method: "GET".into(),
            path_and_query: path_and_query.into(),
        };
        assert_eq!(
            shown_request(&line("/a?access_token=s3cr3t&page=2&API_KEY=x&flag")),
            "GET /a?access_token=REDACTED&page=2&API_KEY=REDACTED&flag"
        );
        assert_eq!(shown_request(&line("/a/b")), "GET /a/b");
        assert_eq!(shown_value("X-Auth-Token", b"t"), "REDACTED");
    }
    use crate::compare::pending::{Answer, Gathered, PendingSet, Response};

    const ROLES: [Role; 3] = [Role::Candidate, Role::Baseline, Role::Baseline2];

    fn comparer() -> Comparer {
        let roles = Roles {
            targets: ROLES.map(|role| (role, role.as_str().to_owned())).to_vec(),
            reference: Role::Baseline,
            noise_pair: Some((Role::Baseline, Role::Baseline2)),
        };
        let settings = CompareSettings::default();
        let tally = Tally::new(roles, Rules::thresholds(&settings).unwrap());
        Comparer::new(
            Rules::compile(&settings).unwrap(),
            Arc::new(Mutex::new(tally)),
            None,
            CompareMetrics::default(),
        )
    }

    fn response(body: &str, headers: &str) -> Answer {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Answer::Response(Response {
            raw: Some(Bytes::from(raw)),
            latency: Some(Duration::from_millis(1)),
        })
    }

    /// Feeds one request's three responses through a pending set into the comparer.
    fn compare(comparer: &mut Comparer, id: u64, bodies: [(String, &str); 3]) {
        let mut pending = PendingSet::new(&ROLES, &[], Duration::from_secs(5));
        let request = RequestLine {
            method: "GET".into(),
            path_and_query: format!("/orders/{id}"),
        };
        pending.request(id.to_string(), request, Instant::now());
        for (role, (body, headers)) in ROLES.into_iter().zip(bodies) {
            let gathered = pending.add(
                role,
                id.to_string(),
                response(&body, headers),
                Instant::now(),
            );
            if let Gathered::Complete(exchange) = gathered {
                comparer.compare(&exchange);
            }
        }
    }

    /// An order with `items` elements, each with a random-looking id, and its total.
    fn order(seed: u64, items: u64, total: u64) -> String {
        let items: Vec<String> = (0..items)
            .map(|n| format!("{{\"id\":\"{:x}\",\"at\":{}}}", seed * 1_000 + n, seed + n))
            .collect();
        format!("{{\"items\":[{}],\"total\":{total}}}", items.join(","))
    }

    #[test]
    fn a_change_after_many_noisy_fields_is_still_reported() {
        let mut comparer = comparer();
        for request in 0..50 {
            let seed = request * 3;
            compare(
                &mut comparer,
                request,
                [
                    (order(seed, 60, 13), ""),
                    (order(seed + 1, 60, 12), ""),
                    (order(seed + 2, 60, 12), ""),
                ],
            );
        }
        let summary = lock(comparer.tally()).summary("test");
        let endpoint = &summary.endpoints[0];
        let total = endpoint.paths.iter().find(|p| p.path == "$.total");
        assert!(
            total.is_some_and(|p| p.signal && p.candidate == 50 && p.noise == 0),
            "{:?}",
            endpoint
                .paths
                .iter()
                .filter(|p| p.signal)
                .collect::<Vec<_>>()
        );
        assert_eq!(endpoint.difference_rate, 1.0);
        assert!(
            endpoint
                .paths
                .iter()
                .all(|p| p.path == "$.total" || !p.signal)
        );
    }

    #[test]
    fn examples_hide_credentials_and_cookie_values() {
        let mut comparer = comparer();
        let secret = "Set-Cookie: session=s3cr3t; Path=/\r\nWWW-Authenticate: Basic realm=x\r\n";
        compare(
            &mut comparer,
            1,
            [
                ("{\"a\":2}".into(), secret),
                ("{\"a\":1}".into(), secret),
                ("{\"a\":1}".into(), secret),
            ],
        );
        let summary = lock(comparer.tally()).summary("test");
        let example = &summary.endpoints[0].examples[0];
        let shown = format!("{example:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("realm"),
            "{shown}"
        );
        assert!(shown.contains("session=REDACTED"), "{shown}");
    }
}
