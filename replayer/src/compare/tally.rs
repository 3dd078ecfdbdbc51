//! What the comparisons found so far, counted: per compared role its responses, status mix and
//! latencies; per endpoint and field path how often the candidate differed from its reference
//! and how often the noise pair differed from each other; a few examples per endpoint. Memory
//! is bounded however many requests, endpoints or paths: past [`MAX_ENDPOINTS`] endpoints (or
//! [`MAX_PATHS`] paths at one endpoint) the rest are counted together, and examples stop at
//! [`EXAMPLE_BYTES`] in all. [`Tally::summary`] turns it into the report's [`Summary`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::json::Difference;
use super::noise::{PathCounts, Thresholds};
use super::summary::{
    EndpointSummary, Example, LatencySummary, PathSummary, Summary, TargetSummary,
};
use crate::config::Role;
use crate::latency::LatencyBuckets;

/// Endpoints counted each on their own; the rest share one entry.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Field paths counted each on their own at one endpoint (an array of objects with random ids
/// has a path per element and field); the rest share one entry.
pub const MAX_PATHS: usize = 1_000;
/// Field paths counted on their own over all endpoints; beyond, new ones share their
/// endpoint's `(other paths)` entry.
pub const MAX_PATHS_IN_ALL: usize = 200_000;
/// Examples kept per endpoint.
pub const EXAMPLES_PER_ENDPOINT: usize = 2;
/// Bytes of examples kept in all (every summary line of the diff log carries them).
pub const EXAMPLE_BYTES: usize = 4 << 20;
/// Endpoints a summary lists at most (the most differing first).
pub const REPORTED_ENDPOINTS: usize = 1_000;
/// Where endpoints beyond [`MAX_ENDPOINTS`] are counted.
pub const OTHER_ENDPOINTS: &str = "(other endpoints)";
/// Where paths beyond [`MAX_PATHS`] are counted.
pub const OTHER_PATHS: &str = "(other paths)";

/// The roles compared and how.
#[derive(Debug, Clone)]
pub struct Roles {
    /// Every compared role and its name (a target's URL, or `production`), candidate first.
    pub targets: Vec<(Role, String)>,
    /// The role the candidate is compared with.
    pub reference: Role,
    /// The two roles whose differences are noise.
    pub noise_pair: Option<(Role, Role)>,
}

#[derive(Default)]
struct RoleStats {
    responses: u64,
    /// By status class (2 for 2xx...): named only in the summary, not per response.
    statuses: BTreeMap<u16, u64>,
    latency: LatencyBuckets,
    slowest: Duration,
}

#[derive(Default)]
struct PathTally {
    kinds: BTreeMap<&'static str, u64>,
    counts: PathCounts,
}

#[derive(Default)]
struct EndpointTally {
    compared: u64,
    paths: HashMap<String, PathTally>,
    examples: Vec<Example>,
}

/// Everything counted so far.
pub struct Tally {
    roles: Roles,
    thresholds: Thresholds,
    stats: [RoleStats; 4],
    compared: u64,
    not_compared: BTreeMap<String, u64>,
    endpoints: HashMap<String, EndpointTally>,
    /// Paths counted on their own, over all endpoints.
    paths_in_all: usize,
    folded: bool,
    example_bytes: usize,
}

impl Tally {
    pub fn new(roles: Roles, thresholds: Thresholds) -> Self {
        Tally {
            roles,
            thresholds,
            stats: Default::default(),
            compared: 0,
            not_compared: BTreeMap::new(),
            endpoints: HashMap::new(),
            paths_in_all: 0,
            folded: false,
            example_bytes: 0,
        }
    }

    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    pub fn not_compared(&mut self, reason: &str) {
        match self.not_compared.get_mut(reason) {
            Some(count) => *count += 1,
            None => {
                self.not_compared.insert(reason.to_owned(), 1);
            }
        }
    }

    /// One compared role's response.
    pub fn response(&mut self, role: Role, status: u16, latency: Option<Duration>) {
        let stats = &mut self.stats[role as usize];
        stats.responses += 1;
        *stats.statuses.entry(status / 100).or_default() += 1;
        if let Some(latency) = latency {
            stats.latency.record(latency.as_secs_f64());
            stats.slowest = stats.slowest.max(latency);
        }
    }

    /// Counts one compared request at `endpoint`: where the candidate differed from its
    /// reference, and where the noise pair differed. Returns, for each of the candidate's
    /// differences, whether its path is signal by the counts so far.
    pub fn compared(
        &mut self,
        endpoint: &str,
        candidate: &[Difference],
        noise: &[Difference],
    ) -> Vec<bool> {
        self.compared += 1;
        let thresholds = self.thresholds;
        let room_in_all = MAX_PATHS_IN_ALL.saturating_sub(self.paths_in_all);
        let tally = self.endpoint(endpoint);
        tally.compared += 1;
        let paths_before = tally.paths.len();
        let mut room = MAX_PATHS.saturating_sub(paths_before).min(room_in_all);
        // A request counts once per path (as counted: paths beyond the limits as one), however
        // many kinds it shows there.
        let mut counted: Vec<String> = Vec::new();
        for difference in candidate {
            let key = counted_as(&mut tally.paths, &difference.path, &mut room);
            let path = tally.paths.get_mut(&key).expect("just counted");
            *path.kinds.entry(difference.kind.as_str()).or_default() += 1;
            if !counted.contains(&key) {
                path.counts.candidate += 1;
                counted.push(key);
            }
        }
        counted.clear();
        for difference in noise {
            let key = counted_as(&mut tally.paths, &difference.path, &mut room);
            if !counted.contains(&key) {
                tally
                    .paths
                    .get_mut(&key)
                    .expect("just counted")
                    .counts
                    .noise += 1;
                counted.push(key);
            }
        }
        let new_paths = tally.paths.len() - paths_before;
        // Every path at the endpoint shares its compared count.
        let compared = tally.compared;
        let signal = candidate
            .iter()
            .map(|difference| {
                let path = tally
                    .paths
                    .get(&difference.path)
                    .or_else(|| tally.paths.get(OTHER_PATHS))
                    .map(|path| path.counts)
                    .unwrap_or_default();
                PathCounts { compared, ..path }.is_signal(thresholds)
            })
            .collect();
        self.paths_in_all += new_paths;
        signal
    }

    /// Whether an example of `endpoint` would be kept: there is room, or one of its examples
    /// no longer shows a signal path (signal is judged as counts grow: the first examples may
    /// have been taken on too few requests).
    pub fn wants_example(&self, endpoint: &str) -> bool {
        self.example_bytes < EXAMPLE_BYTES
            && self.endpoints.get(endpoint).is_some_and(|tally| {
                tally.examples.len() < EXAMPLES_PER_ENDPOINT || self.stale_example(tally).is_some()
            })
    }

    pub fn add_example(&mut self, endpoint: &str, example: Example) {
        if !self.wants_example(endpoint) {
            return;
        }
        let Some(tally) = self.endpoints.get(endpoint) else {
            return;
        };
        let replaced = match tally.examples.len() < EXAMPLES_PER_ENDPOINT {
            true => None,
            false => self.stale_example(tally),
        };
        self.example_bytes += example_size(&example);
        let tally = self.endpoints.get_mut(endpoint).expect("checked above");
        match replaced {
            Some(index) => {
                let old = std::mem::replace(&mut tally.examples[index], example);
                self.example_bytes -= example_size(&old);
            }
            None => tally.examples.push(example),
        }
    }

    /// An example of the endpoint none of whose differences is at a signal path now.
    fn stale_example(&self, tally: &EndpointTally) -> Option<usize> {
        let signal = |path: &str| {
            tally.paths.get(path).is_some_and(|counts| {
                PathCounts {
                    compared: tally.compared,
                    ..counts.counts
                }
                .is_signal(self.thresholds)
            })
        };
        tally.examples.iter().position(|example| {
            !example.differences.iter().any(|difference| {
                let path = difference
                    .rsplit_once(' ')
                    .map_or(difference.as_str(), |(p, _)| p);
                signal(path)
            })
        })
    }

    /// The tally so far, as the report shows it.
    pub fn summary(&self, source: &str) -> Summary {
        let mut endpoints: Vec<EndpointSummary> = self
            .endpoints
            .iter()
            .map(|(name, tally)| self.endpoint_summary(name, tally))
            .collect();
        endpoints.sort_by(|a, b| {
            b.difference_rate
                .total_cmp(&a.difference_rate)
                .then(b.compared.cmp(&a.compared))
                .then_with(|| a.name.cmp(&b.name))
        });
        let left_out = endpoints.len() > REPORTED_ENDPOINTS;
        endpoints.truncate(REPORTED_ENDPOINTS);
        Summary {
            source: source.to_owned(),
            generated_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis() as u64),
            reference: self.roles.reference.as_str().to_owned(),
            noise_pair: self
                .roles
                .noise_pair
                .map(|(a, b)| (a.as_str().to_owned(), b.as_str().to_owned())),
            relative_threshold: self.thresholds.relative,
            absolute_threshold: self.thresholds.absolute,
            compared: self.compared,
            not_compared: self.not_compared.clone(),
            targets: self.targets_shown(),
            endpoints,
            endpoints_folded: self.folded || left_out,
        }
    }

    /// The compared roles, and production when its responses were counted without being
    /// compared (tracked while the baselines are the reference).
    fn targets_shown(&self) -> Vec<TargetSummary> {
        let mut shown: Vec<TargetSummary> = self
            .roles
            .targets
            .iter()
            .map(|(role, name)| target_summary(*role, name, &self.stats[*role as usize]))
            .collect();
        let production = &self.stats[Role::Production as usize];
        if production.responses > 0 && !shown.iter().any(|t| t.role == "production") {
            shown.push(target_summary(Role::Production, "production", production));
        }
        shown
    }

    fn endpoint(&mut self, name: &str) -> &mut EndpointTally {
        if !self.endpoints.contains_key(name) {
            let name = if self.endpoints.len() < MAX_ENDPOINTS {
                name
            } else {
                self.folded = true;
                OTHER_ENDPOINTS
            };
            return self.endpoints.entry(name.to_owned()).or_default();
        }
        self.endpoints.get_mut(name).expect("checked above")
    }

    fn endpoint_summary(&self, name: &str, tally: &EndpointTally) -> EndpointSummary {
        let mut paths: Vec<PathSummary> = tally
            .paths
            .iter()
            .map(|(path, counts)| {
                let counts_here = PathCounts {
                    compared: tally.compared,
                    ..counts.counts
                };
                PathSummary {
                    path: path.clone(),
                    kinds: counts
                        .kinds
                        .iter()
                        .map(|(kind, count)| ((*kind).to_owned(), *count))
                        .collect(),
                    candidate: counts.counts.candidate,
                    noise: counts.counts.noise,
                    signal: counts_here.is_signal(self.thresholds),
                }
            })
            .collect();
        paths.sort_by(|a, b| {
            b.signal
                .cmp(&a.signal)
                .then(b.candidate.cmp(&a.candidate))
                .then_with(|| a.path.cmp(&b.path))
        });
        let difference_rate = paths
            .iter()
            .filter(|path| path.signal)
            .map(|path| path.candidate.saturating_sub(path.noise) as f64 / tally.compared as f64)
            .fold(0.0, f64::max);
        EndpointSummary {
            name: name.to_owned(),
            compared: tally.compared,
            difference_rate,
            paths,
            examples: tally.examples.clone(),
        }
    }
}

/// The key `path` is counted under at one endpoint, its entry made if it is new: the path
/// itself while there is `room`, else [`OTHER_PATHS`].
fn counted_as(paths: &mut HashMap<String, PathTally>, path: &str, room: &mut usize) -> String {
    if paths.contains_key(path) {
        return path.to_owned();
    }
    let key = if *room > 0 {
        *room -= 1;
        path
    } else {
        OTHER_PATHS
    };
    paths.entry(key.to_owned()).or_default();
    key.to_owned()
}

fn target_summary(role: Role, name: &str, stats: &RoleStats) -> TargetSummary {
    let snapshot = stats.latency.snapshot();
    let ms = |q: f64| {
        snapshot
            .quantile(q)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    TargetSummary {
        role: role.as_str().to_owned(),
        name: name.to_owned(),
        responses: stats.responses,
        statuses: stats
            .statuses
            .iter()
            .map(|(class, count)| (format!("{class}xx"), *count))
            .collect(),
        latency: LatencySummary {
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            max_ms: stats.slowest.as_secs_f64() * 1000.0,
            histogram: snapshot
                .histogram()
                .into_iter()
                .map(|(upper, count)| (upper * 1000.0, count))
                .collect(),
        },
    }
}

fn example_size(example: &Example) -> usize {
    let side = |side: &super::summary::ExampleSide| {
        side.body.len()
            + side
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    };
    example.request_line.len()
        + example.differences.iter().map(String::len).sum::<usize>()
        + side(&example.reference)
        + side(&example.candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::json::DifferenceKind;

    fn changed(path: &str) -> Difference {
        Difference {
            path: path.to_owned(),
            kind: DifferenceKind::ValueChanged,
        }
    }

    fn tally() -> Tally {
        Tally::new(
            Roles {
                targets: vec![
                    (Role::Candidate, "http://c:80".into()),
                    (Role::Baseline, "http://b:80".into()),
                    (Role::Baseline2, "http://b2:80".into()),
                ],
                reference: Role::Baseline,
                noise_pair: Some((Role::Baseline, Role::Baseline2)),
            },
            Thresholds::default(),
        )
    }

    #[test]
    fn paths_that_differ_between_the_baselines_as_often_are_noise() {
        let mut tally = tally();
        for n in 0..100 {
            let mut candidate = vec![changed("$.id")];
            if n % 4 == 0 {
                candidate.push(changed("$.price"));
            }
            tally.compared("GET /a/{n}", &candidate, &[changed("$.id")]);
            tally.compared("GET /b", &[changed("$.id")], &[changed("$.id")]);
        }
        let summary = tally.summary("test");
        assert_eq!(summary.compared, 200);
        let [a, b] = &summary.endpoints[..] else {
            panic!("{:?}", summary.endpoints)
        };
        assert_eq!(a.name, "GET /a/{n}");
        assert_eq!(a.difference_rate, 0.25);
        assert_eq!(
            a.paths
                .iter()
                .map(|p| (p.path.as_str(), p.candidate, p.noise, p.signal))
                .collect::<Vec<_>>(),
            [("$.price", 25, 0, true), ("$.id", 100, 100, false)]
        );
        assert_eq!(b.difference_rate, 0.0);
        assert_eq!(a.paths[0].kinds["changed_value"], 25);
    }

    #[test]
    fn endpoints_and_paths_beyond_the_limits_are_counted_together() {
        let mut tally = tally();
        for n in 0..MAX_ENDPOINTS + 5 {
            tally.compared(&format!("GET /e{n}x"), &[], &[]);
        }
        let many: Vec<Difference> = (0..MAX_PATHS + 5)
            .map(|n| changed(&format!("$.f{n}")))
            .collect();
        tally.compared("GET /e0x", &many, &[]);
        assert_eq!(tally.endpoints.len(), MAX_ENDPOINTS + 1);
        assert_eq!(tally.endpoints[OTHER_ENDPOINTS].compared, 5);
        let paths = &tally.endpoints["GET /e0x"].paths;
        assert_eq!(paths.len(), MAX_PATHS + 1);
        assert_eq!(paths[OTHER_PATHS].counts.candidate, 1, "one request");
        let summary = tally.summary("test");
        assert!(summary.endpoints_folded);
        assert_eq!(summary.endpoints.len(), REPORTED_ENDPOINTS);
        assert_eq!(
            summary.endpoints[0].name, "GET /e0x",
            "the differing one first"
        );
    }

    #[test]
    fn latencies_and_statuses_are_summarised_per_role() {
        let mut tally = tally();
        for ms in 1..=100 {
            tally.response(Role::Candidate, 200, Some(Duration::from_millis(ms)));
        }
        tally.response(Role::Candidate, 503, None);
        let summary = tally.summary("test");
        let candidate = &summary.targets[0];
        assert_eq!(candidate.role, "candidate");
        assert_eq!(candidate.responses, 101);
        assert_eq!(candidate.statuses["2xx"], 100);
        assert_eq!(candidate.statuses["5xx"], 1);
        assert!(
            (candidate.latency.p50_ms - 50.0).abs() < 3.0,
            "{candidate:?}"
        );
        assert_eq!(candidate.latency.max_ms, 100.0);
        let total: u64 = candidate.latency.histogram.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 100);
        assert_eq!(summary.targets[1].responses, 0);
    }
}
