//! Each request's responses gathered until every compared role has answered ([`PendingSet`]):
//! the candidate, its reference (the baseline, or production) and the second baseline when
//! there is one. A role that failed or did not send the request settles the set at once; a set
//! that never completes (production's response never came, a target answered after the expiry)
//! expires; either way it is counted once as not compared. Settled ids are remembered for a
//! while, so a late or repeated answer (a listener's resent batch) opens no second set. Memory
//! is bounded by the bytes held: past the budget a request is remembered without its responses
//! and counted `pending_full`. Ids are kept as 64-bit hashes ([`IdKey`]): a collision among
//! the million ids remembered at most has odds of about 1 in 30 million.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Role;

/// Response bytes held, waiting for the other roles, at most.
pub const PENDING_BYTES: usize = 256 << 20;
/// Settled ids remembered at most (about 40 bytes each).
const SETTLED_IDS: usize = 1 << 20;

/// A request id as the set keeps it: 8 bytes, however long the id (a listener's are 24
/// characters, a file's may be anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct IdKey(u64);

impl IdKey {
    fn of(id: &str) -> Self {
        IdKey(xxhash_rust::xxh3::xxh3_64(id.as_bytes()))
    }
}

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

    /// Response bytes it holds.
    pub fn held_bytes(&self) -> usize {
        self.responses
            .iter()
            .flatten()
            .filter_map(|response| response.raw.as_ref())
            .map(Bytes::len)
            .sum()
    }
}

/// What a role did with a request.
#[derive(Debug, Clone)]
pub enum Answer {
    Response(Response),
    /// Its exchange failed (counted by the target under its drop reason).
    Failed,
    /// The target did not send it: filtered, sampled out, over its rate or shed (counted by
    /// the target).
    NotSent,
}

/// Why a request's responses are not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    /// A compared role did not answer in time (production's response never came, or a
    /// target answered after the expiry).
    MissingResponse,
    /// A compared target's exchange failed.
    TargetFailed,
    /// A compared target did not send the request.
    NotSent,
    /// Too many responses were waiting for the other roles.
    PendingFull,
}

impl Incomplete {
    pub fn as_str(self) -> &'static str {
        match self {
            Incomplete::MissingResponse => "missing_response",
            Incomplete::TargetFailed => "target_failed",
            Incomplete::NotSent => "not_sent",
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
    pending: HashMap<IdKey, Pending>,
    /// Ids by arrival, for expiry (an id already gone is skipped).
    arrivals: VecDeque<(Instant, IdKey)>,
    /// Ids already counted (compared or not), by when: answers for them are ignored.
    settled: HashSet<IdKey>,
    settled_order: VecDeque<(Instant, IdKey)>,
    held_bytes: usize,
}

impl PendingSet {
    pub fn new(expected: &[Role], expiry: Duration) -> Self {
        PendingSet {
            expected: expected.iter().fold(0, |mask, role| mask | bit(*role)),
            expiry,
            pending: HashMap::new(),
            arrivals: VecDeque::new(),
            settled: HashSet::new(),
            settled_order: VecDeque::new(),
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
        let key = IdKey::of(&id);
        if self.settled.contains(&key) {
            return;
        }
        match self.pending.get_mut(&key) {
            Some(entry) => {
                entry.exchange.request.get_or_insert(request);
            }
            None => {
                self.arrivals.push_back((now, key));
                let mut exchange = Exchange::new(id);
                exchange.request = Some(request);
                self.pending.insert(
                    key,
                    Pending {
                        exchange,
                        answered: 0,
                        incomplete: None,
                    },
                );
            }
        }
    }

    /// Adds what `role` did with request `id`.
    pub fn add(
        &mut self,
        role: Role,
        id: String,
        request: Option<RequestLine>,
        answer: Answer,
        now: Instant,
    ) -> Gathered {
        let key = IdKey::of(&id);
        if !self.expects(role) || self.settled.contains(&key) {
            return Gathered::Waiting;
        }
        let over_budget = self.held_bytes >= PENDING_BYTES;
        let entry = match self.pending.get_mut(&key) {
            Some(entry) => entry,
            None => {
                self.arrivals.push_back((now, key));
                self.pending.entry(key).or_insert(Pending {
                    exchange: Exchange::new(id),
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
        let incomplete = match answer {
            Answer::Failed => Some(Incomplete::TargetFailed),
            Answer::NotSent => Some(Incomplete::NotSent),
            Answer::Response(_) if over_budget => Some(Incomplete::PendingFull),
            Answer::Response(response) => {
                if entry.incomplete.is_none() {
                    self.held_bytes += response.raw.as_ref().map_or(0, Bytes::len);
                    entry.exchange.responses[role as usize] = Some(response);
                }
                None
            }
        };
        if let Some(reason) = incomplete
            && entry.incomplete.is_none()
        {
            // Nothing of this set will be compared: its bytes go now.
            self.held_bytes -= entry.exchange.held_bytes();
            entry.exchange.responses = Default::default();
            entry.incomplete = Some(reason);
        }
        if entry.answered != self.expected {
            return Gathered::Waiting;
        }
        let done = self.pending.remove(&key).expect("the entry just updated");
        self.held_bytes -= done.exchange.held_bytes();
        self.settle(key, now);
        match done.incomplete {
            Some(reason) => Gathered::NotCompared(reason),
            None => Gathered::Complete(Box::new(done.exchange)),
        }
    }

    /// Remembers `id` as counted, for twice the expiry (and at most [`SETTLED_IDS`] ids).
    fn settle(&mut self, key: IdKey, now: Instant) {
        while let Some((at, _)) = self.settled_order.front() {
            if self.settled_order.len() < SETTLED_IDS
                && now.saturating_duration_since(*at) < self.expiry * 2
            {
                break;
            }
            let (_, old) = self.settled_order.pop_front().expect("front exists");
            self.settled.remove(&old);
        }
        self.settled.insert(key);
        self.settled_order.push_back((now, key));
    }

    /// Sets that waited longer than the expiry (all of them with `everything`), each with why
    /// it is not compared.
    pub fn expire(&mut self, now: Instant, everything: bool) -> Vec<Incomplete> {
        let mut expired = Vec::new();
        while let Some((arrived, _)) = self.arrivals.front() {
            if !everything && now.saturating_duration_since(*arrived) < self.expiry {
                break;
            }
            let (_, key) = self.arrivals.pop_front().expect("front exists");
            if let Some(entry) = self.pending.remove(&key) {
                self.held_bytes -= entry.exchange.held_bytes();
                expired.push(entry.incomplete.unwrap_or(Incomplete::MissingResponse));
                self.settle(key, now);
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

    fn answer(bytes: &'static [u8]) -> Answer {
        Answer::Response(Response {
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
        set.add(Role::Candidate, "1".into(), line(), Answer::Failed, now);
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

    #[test]
    fn answers_for_a_settled_request_open_no_second_set() {
        let now = Instant::now();
        let expiry = Duration::from_secs(5);
        let mut set = PendingSet::new(&[Role::Candidate, Role::Production], expiry);
        set.add(Role::Production, "1".into(), None, answer(b"p"), now);
        assert!(matches!(
            set.add(Role::Candidate, "1".into(), line(), answer(b"c"), now),
            Gathered::Complete(_)
        ));
        // A resent batch's copy of production's response.
        set.add(Role::Production, "1".into(), None, answer(b"p"), now);
        // A candidate that answers after its set expired.
        set.add(Role::Production, "2".into(), None, answer(b"p"), now);
        assert_eq!(
            set.expire(now + expiry, false),
            [Incomplete::MissingResponse]
        );
        set.add(
            Role::Candidate,
            "2".into(),
            line(),
            answer(b"c"),
            now + expiry,
        );
        assert!(set.is_empty(), "no set opened again");
        assert!(set.expire(now + expiry * 10, true).is_empty());
        // Forgotten after twice the expiry: a new id of the same name is a new request.
        set.add(
            Role::Production,
            "3".into(),
            None,
            answer(b"p"),
            now + expiry * 3,
        );
        assert_eq!(set.expire(now + expiry * 4, false).len(), 1);
        assert!(!set.settled.contains(&IdKey::of("1")) && set.settled.contains(&IdKey::of("3")));
    }

    #[test]
    fn a_target_that_did_not_send_settles_the_set_at_once_and_frees_its_bytes() {
        let now = Instant::now();
        let mut set = PendingSet::new(&[Role::Candidate, Role::Baseline], Duration::from_secs(5));
        set.add(Role::Baseline, "1".into(), line(), answer(b"bbbb"), now);
        assert_eq!(set.held_bytes, 4);
        assert!(matches!(
            set.add(Role::Candidate, "1".into(), line(), Answer::NotSent, now),
            Gathered::NotCompared(Incomplete::NotSent)
        ));
        assert_eq!(set.held_bytes, 0);
        assert!(set.is_empty());
    }
}
