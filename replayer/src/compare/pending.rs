//! Each request's responses gathered until every compared role has answered ([`PendingSet`]):
//! the candidate, its reference (the baseline, or production) and the second baseline when
//! there is one. A set that never completes (a target failed, filtered or sampled the request
//! out, a response was too large to keep) expires and is counted as not compared. Memory is
//! bounded by the bytes held: past the budget a request is remembered without its responses and
//! counted `pending_full`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Role;

/// Response bytes held, waiting for the other roles, at most.
pub const PENDING_BYTES: usize = 256 << 20;

/// The request a set of responses answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    /// As sent: `/users/42?x=1`.
    pub path_and_query: String,
}

/// One role's response.
#[derive(Debug, Clone)]
pub struct Response {
    /// As received, framing included; `None` when it was too large to keep.
    pub raw: Option<Bytes>,
    pub latency: Option<Duration>,
}

/// Every compared role's response to one request.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request's `.gor` id.
    pub id: String,
    pub request: Option<RequestLine>,
    responses: [Option<Response>; 4],
}

impl Exchange {
    fn new(id: String) -> Self {
        Exchange {
            id,
            request: None,
            responses: Default::default(),
        }
    }

    pub fn response(&self, role: Role) -> Option<&Response> {
        self.responses[role as usize].as_ref()
    }

    fn held_bytes(&self) -> usize {
        self.responses
            .iter()
            .flatten()
            .filter_map(|response| response.raw.as_ref())
            .map(Bytes::len)
            .sum()
    }
}

/// Why a request's responses are not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    /// A compared target did not answer it (failed, timed out, dropped, filtered or sampled
    /// out), or production's response never came.
    MissingResponse,
    /// A compared target's exchange failed (counted by the target under its drop reason).
    TargetFailed,
    /// Too many responses were waiting for the other roles.
    PendingFull,
}

impl Incomplete {
    pub fn as_str(self) -> &'static str {
        match self {
            Incomplete::MissingResponse => "missing_response",
            Incomplete::TargetFailed => "target_failed",
            Incomplete::PendingFull => "pending_full",
        }
    }
}

struct Pending {
    exchange: Exchange,
    /// Roles that answered (a bit per role).
    answered: u8,
    /// Set when a role failed, or memory ran out: the set is dropped once complete or expired.
    incomplete: Option<Incomplete>,
}

/// What one response did to its request's set.
#[derive(Debug)]
pub enum Gathered {
    /// Still waiting for other roles.
    Waiting,
    /// Every role answered: compare these.
    Complete(Box<Exchange>),
    /// Every role is accounted for but the set cannot be compared.
    NotCompared(Incomplete),
}

/// Responses by request id, until their set is complete.
pub struct PendingSet {
    /// The roles every set needs (a bit per role).
    expected: u8,
    /// How long a set may wait for its last response.
    expiry: Duration,
    pending: HashMap<String, Pending>,
    /// Ids by arrival, for expiry (an id already gone is skipped).
    arrivals: VecDeque<(Instant, String)>,
    held_bytes: usize,
}

impl PendingSet {
    pub fn new(expected: &[Role], expiry: Duration) -> Self {
        PendingSet {
            expected: expected.iter().fold(0, |mask, role| mask | bit(*role)),
            expiry,
            pending: HashMap::new(),
            arrivals: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// Whether responses of `role` are compared.
    pub fn expects(&self, role: Role) -> bool {
        self.expected & bit(role) != 0
    }

    /// Sets waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The request `id` names, when it comes apart from the responses (a file's type 1 record).
    pub fn request(&mut self, id: String, request: RequestLine, now: Instant) {
        match self.pending.get_mut(&id) {
            Some(entry) => {
                entry.exchange.request.get_or_insert(request);
            }
            None => {
                self.arrivals.push_back((now, id.clone()));
                let mut exchange = Exchange::new(id.clone());
                exchange.request = Some(request);
                self.pending.insert(
                    id,
                    Pending {
                        exchange,
                        answered: 0,
                        incomplete: None,
                    },
                );
            }
        }
    }

    /// Adds `role`'s answer to request `id` (`None`: its exchange failed).
    pub fn add(
        &mut self,
        role: Role,
        id: String,
        request: Option<RequestLine>,
        response: Option<Response>,
        now: Instant,
    ) -> Gathered {
        if !self.expects(role) {
            return Gathered::Waiting;
        }
        let over_budget = self.held_bytes >= PENDING_BYTES;
        let entry = match self.pending.get_mut(&id) {
            Some(entry) => entry,
            None => {
                self.arrivals.push_back((now, id.clone()));
                self.pending.entry(id.clone()).or_insert(Pending {
                    exchange: Exchange::new(id.clone()),
                    answered: 0,
                    incomplete: None,
                })
            }
        };
        if entry.answered & bit(role) != 0 {
            // A second answer from one role (a resent copy): the first stands.
            return Gathered::Waiting;
        }
        entry.answered |= bit(role);
        if entry.exchange.request.is_none() {
            entry.exchange.request = request;
        }
        match response {
            None => {
                entry.incomplete = Some(Incomplete::TargetFailed);
            }
            Some(_) if over_budget && entry.incomplete.is_none() => {
                self.held_bytes -= entry.exchange.held_bytes();
                entry.exchange.responses = Default::default();
                entry.incomplete = Some(Incomplete::PendingFull);
            }
            Some(_) if entry.incomplete.is_some() => {}
            Some(response) => {
                self.held_bytes += response.raw.as_ref().map_or(0, Bytes::len);
                entry.exchange.responses[role as usize] = Some(response);
            }
        }
        if entry.answered != self.expected {
            return Gathered::Waiting;
        }
        let done = self.pending.remove(&id).expect("the entry just updated");
        self.held_bytes -= done.exchange.held_bytes();
        match done.incomplete {
            Some(reason) => Gathered::NotCompared(reason),
            None => Gathered::Complete(Box::new(done.exchange)),
        }
    }

    /// Sets that waited longer than the expiry (all of them with `everything`), each with why
    /// it is not compared.
    pub fn expire(&mut self, now: Instant, everything: bool) -> Vec<Incomplete> {
        let mut expired = Vec::new();
        while let Some((arrived, _)) = self.arrivals.front() {
            if !everything && now.saturating_duration_since(*arrived) < self.expiry {
                break;
            }
            let (_, id) = self.arrivals.pop_front().expect("front exists");
            if let Some(entry) = self.pending.remove(&id) {
                self.held_bytes -= entry.exchange.held_bytes();
                expired.push(entry.incomplete.unwrap_or(Incomplete::MissingResponse));
            }
        }
        expired
    }
}

fn bit(role: Role) -> u8 {
    1 << role as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: &'static [u8]) -> Option<Response> {
        Some(Response {
            raw: Some(Bytes::from_static(bytes)),
            latency: None,
        })
    }

    fn line() -> Option<RequestLine> {
        Some(RequestLine {
            method: "GET".into(),
            path_and_query: "/a".into(),
        })
    }

    #[test]
    fn a_set_completes_when_every_expected_role_has_answered_in_any_order() {
        let now = Instant::now();
        let mut set = PendingSet::new(&[Role::Candidate, Role::Production], Duration::from_secs(5));
        assert!(matches!(
            set.add(Role::Production, "1".into(), None, answer(b"p"), now),
            Gathered::Waiting
        ));
        // Roles not compared are ignored.
        assert!(matches!(
            set.add(Role::Baseline2, "1".into(), line(), answer(b"x"), now),
            Gathered::Waiting
        ));
        let Gathered::Complete(exchange) =
            set.add(Role::Candidate, "1".into(), line(), answer(b"c"), now)
        else {
            panic!("not complete");
        };
        assert_eq!(exchange.request, line());
        assert_eq!(
            exchange.response(Role::Production).unwrap().raw.as_deref(),
            Some(&b"p"[..])
        );
        assert!(exchange.response(Role::Baseline2).is_none());
        assert!(set.is_empty());
        assert_eq!(set.held_bytes, 0);
    }

    #[test]
    fn a_failed_role_makes_the_set_not_compared_and_late_sets_expire() {
        let now = Instant::now();
        let mut set = PendingSet::new(&[Role::Candidate, Role::Baseline], Duration::from_secs(5));
        set.add(Role::Candidate, "1".into(), line(), None, now);
        assert!(matches!(
            set.add(Role::Baseline, "1".into(), line(), answer(b"b"), now),
            Gathered::NotCompared(Incomplete::TargetFailed)
        ));
        set.add(Role::Candidate, "2".into(), line(), answer(b"c"), now);
        assert!(set.expire(now + Duration::from_secs(4), false).is_empty());
        assert_eq!(
            set.expire(now + Duration::from_secs(5), false),
            [Incomplete::MissingResponse]
        );
        set.add(Role::Candidate, "3".into(), line(), answer(b"c"), now);
        assert_eq!(set.expire(now, true), [Incomplete::MissingResponse]);
        assert_eq!(set.held_bytes, 0);
    }
}
