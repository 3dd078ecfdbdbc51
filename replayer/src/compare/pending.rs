//! Each replayed request's responses gathered until every compared role has answered
//! ([`PendingSet`]): the candidate, its reference (the baseline, or production) and the second
//! baseline when there is one. A request is registered when it is replayed and from then on
//! counted once: compared, or not compared by reason (a role failed or did not send it, a
//! response never came before the expiry, the replay ended). Answers only join registered sets,
//! so a late one, or one for a request never replayed, is ignored; counted ids are remembered
//! for a while, so a listener's resent batch is not counted again. Memory is bounded by the
//! bytes held: past the budget a request is remembered without its responses and counted
//! `pending_full`. Ids are kept as 64-bit hashes ([`IdKey`]): a collision among the million
//! ids remembered at most has odds of about 1 in 30 million.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Role;

/// Response bytes held, waiting for the other roles, at most.
pub const PENDING_BYTES: usize = 256 << 20;
/// Sets waiting at most (about 400 bytes each, their responses aside): past it, the oldest
/// goes, counted `pending_full` (say, production as the reference while the listeners do not
/// track responses: every set would wait for the expiry).
pub const PENDING_SETS: usize = 100_000;
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
    /// The replay ended (its drain timeout passed) before a compared target answered.
    ShuttingDown,
}

impl Incomplete {
    pub fn as_str(self) -> &'static str {
        match self {
            Incomplete::MissingResponse => "missing_response",
            Incomplete::TargetFailed => "target_failed",
            Incomplete::NotSent => "not_sent",
            Incomplete::PendingFull => "pending_full",
            Incomplete::ShuttingDown => "shutting_down",
        }
    }
}

struct Pending {
    exchange: Exchange,
    /// Its expiry runs from here: its arrival, or when a compared target took it off a long
    /// queue.
    since: Instant,
    /// Whether the request was replayed (registered): only then is the set counted.
    requested: bool,
    /// Roles that answered (a bit per role).
    answered: u8,
    /// Set when a role failed, or memory ran out: the set is dropped once complete or expired.
    incomplete: Option<Incomplete>,
}

/// What one request or response did to its request's set.
#[derive(Debug)]
pub enum Gathered {
    /// Still waiting for other roles (or ignored: an answer for a request already counted).
    Waiting,
    /// Every role answered: compare these.
    Complete(Box<Exchange>),
    /// Every role is accounted for but the set cannot be compared.
    NotCompared(Incomplete),
}

/// A set that waited past the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A replayed request, not compared for this reason.
    Counted(Incomplete),
    /// Answers to a request that was never replayed (one the fan-out or the middleware
    /// dropped, or a file's response without its request): not a request, not counted.
    Unrequested,
}

/// Responses by request id, until their set is complete.
///
/// A set is counted once its request is registered ([`PendingSet::request`], when it is
/// replayed): compared, or not compared by reason, once. Answers only join sets: one for an
/// unknown id is late (its request was counted and forgotten, or was never replayed) and is
/// ignored, except from the roles that may answer before the request is registered (production
/// behind a middleware, every role in a file), which open a set that waits for it.
pub struct PendingSet {
    /// The roles every set needs (a bit per role).
    expected: u8,
    /// The roles whose answers may come before their request is registered (a bit per role).
    early: u8,
    /// How long a set may wait for its last response.
    expiry: Duration,
    pending: HashMap<IdKey, Pending>,
    /// Ids by arrival, for expiry (an id already gone is skipped).
    arrivals: VecDeque<(Instant, IdKey)>,
    /// Ids already counted (compared or not), by when: answers for them are ignored.
    settled: HashSet<IdKey>,
    settled_order: VecDeque<(Instant, IdKey)>,
    held_bytes: usize,
    /// The replay is over: every set was counted, nothing more is taken.
    closed: bool,
    /// Replayed requests whose sets were dropped to make room (by their own reason, else
    /// `pending_full`), handed out with the next expired ones.
    dropped: Vec<Expired>,
}

impl PendingSet {
    /// `early`: the roles whose answers may come before their request is registered.
    pub fn new(expected: &[Role], early: &[Role], expiry: Duration) -> Self {
        PendingSet {
            expected: mask(expected),
            early: mask(early),
            expiry,
            pending: HashMap::new(),
            arrivals: VecDeque::new(),
            settled: HashSet::new(),
            settled_order: VecDeque::new(),
            held_bytes: 0,
            closed: false,
            dropped: Vec::new(),
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

    /// Registers request `id` as replayed, with its line; from now on it is counted once. A
    /// request registered again (a listener's resent batch) is not counted twice.
    pub fn request(&mut self, id: String, request: RequestLine, now: Instant) -> Gathered {
        if self.closed {
            return Gathered::NotCompared(Incomplete::ShuttingDown);
        }
        let key = IdKey::of(&id);
        if self.settled.contains(&key) {
            return Gathered::Waiting;
        }
        let full = self.pending.len() >= PENDING_SETS;
        match self.pending.get_mut(&key) {
            Some(entry) if entry.requested => return Gathered::Waiting,
            Some(entry) => {
                entry.requested = true;
                entry.exchange.request = Some(request);
            }
            None => {
                if full {
                    self.drop_oldest(now);
                }
                self.arrivals.push_back((now, key));
                let mut exchange = Exchange::new(id);
                exchange.request = Some(request);
                self.pending.insert(
                    key,
                    Pending {
                        exchange,
                        since: now,
                        requested: true,
                        answered: 0,
                        incomplete: None,
                    },
                );
            }
        }
        self.settle_if_done(key, now)
    }

    /// Adds what `role` did with request `id`.
    pub fn add(&mut self, role: Role, id: String, answer: Answer, now: Instant) -> Gathered {
        let key = IdKey::of(&id);
        if self.closed || !self.expects(role) || self.settled.contains(&key) {
            return Gathered::Waiting;
        }
        let over_budget = self.held_bytes >= PENDING_BYTES;
        let full = self.pending.len() >= PENDING_SETS;
        let entry = match self.pending.get_mut(&key) {
            Some(entry) => entry,
            None if self.early & bit(role) != 0 && !full => {
                self.arrivals.push_back((now, key));
                self.pending.entry(key).or_insert(Pending {
                    exchange: Exchange::new(id),
                    since: now,
                    requested: false,
                    answered: 0,
                    incomplete: None,
                })
            }
            // Late: its request was counted (and forgotten), or never replayed.
            None => return Gathered::Waiting,
        };
        if entry.answered & bit(role) != 0 {
            // A second answer from one role (a resent copy): the first stands.
            return Gathered::Waiting;
        }
        entry.answered |= bit(role);
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
        self.settle_if_done(key, now)
    }

    /// Takes the set out once it is registered and every role answered.
    fn settle_if_done(&mut self, key: IdKey, now: Instant) -> Gathered {
        let entry = &self.pending[&key];
        if !entry.requested || entry.answered != self.expected {
            return Gathered::Waiting;
        }
        let done = self.pending.remove(&key).expect("the entry just looked at");
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

    /// A compared target takes request `id` off its queue after a long wait: the set's
    /// expiry runs from now, so that a backlogged target's answers are still compared.
    pub fn started(&mut self, id: &str, now: Instant) {
        let key = IdKey::of(id);
        if let Some(entry) = self.pending.get_mut(&key) {
            entry.since = now;
            self.arrivals.push_back((now, key));
        }
    }

    /// Makes room for one more set: the oldest goes, counted `pending_full` when its request
    /// was replayed.
    fn drop_oldest(&mut self, now: Instant) {
        while let Some((arrived, key)) = self.arrivals.pop_front() {
            // A set restarted since has a later entry: the oldest is further on.
            if self
                .pending
                .get(&key)
                .is_some_and(|entry| entry.since != arrived)
            {
                continue;
            }
            if let Some(entry) = self.pending.remove(&key) {
                self.held_bytes -= entry.exchange.held_bytes();
                if entry.requested {
                    self.settle(key, now);
                    let reason = entry.incomplete.unwrap_or(Incomplete::PendingFull);
                    self.dropped.push(Expired::Counted(reason));
                }
                return;
            }
        }
    }

    /// Sets that waited longer than the expiry, and those dropped to make room since last
    /// asked, each with why it is not compared.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let mut expired = std::mem::take(&mut self.dropped);
        while let Some((arrived, _)) = self.arrivals.front() {
            if now.saturating_duration_since(*arrived) < self.expiry {
                break;
            }
            let (_, key) = self.arrivals.pop_front().expect("front exists");
            // A set restarted later has a later entry: it waits for that one.
            if self
                .pending
                .get(&key)
                .is_some_and(|entry| now.saturating_duration_since(entry.since) < self.expiry)
            {
                continue;
            }
            if let Some(entry) = self.pending.remove(&key) {
                self.held_bytes -= entry.exchange.held_bytes();
                expired.push(if entry.requested {
                    // Not remembered unless counted: a request registered later still counts.
                    self.settle(key, now);
                    Expired::Counted(entry.incomplete.unwrap_or(Incomplete::MissingResponse))
                } else {
                    Expired::Unrequested
                });
            }
        }
        expired
    }

    /// The replay is over: every set still waiting is counted now (`shutting_down` when a
    /// target had not answered, `missing_response` when only production's response is
    /// missing), with those dropped to make room not yet handed out; nothing more is taken.
    pub fn close(&mut self) -> Vec<Expired> {
        self.closed = true;
        self.arrivals.clear();
        self.held_bytes = 0;
        let targets = self.expected & !bit(Role::Production);
        let waiting = self
            .pending
            .drain()
            .map(|(_, entry)| match entry.incomplete {
                _ if !entry.requested => Expired::Unrequested,
                Some(reason) => Expired::Counted(reason),
                None if entry.answered & targets != targets => {
                    Expired::Counted(Incomplete::ShuttingDown)
                }
                None => Expired::Counted(Incomplete::MissingResponse),
            });
        std::mem::take(&mut self.dropped)
            .into_iter()
            .chain(waiting)
            .collect()
    }
}

fn mask(roles: &[Role]) -> u8 {
    roles.iter().fold(0, |mask, role| mask | bit(*role))
}

fn bit(role: Role) -> u8 {
    1 << role as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: Duration = Duration::from_secs(5);

    fn answer(bytes: &'static [u8]) -> Answer {
        Answer::Response(Response {
            raw: Some(Bytes::from_static(bytes)),
            latency: None,
        })
    }

    fn line() -> RequestLine {
        RequestLine {
            method: "GET".into(),
            path_and_query: "/a".into(),
        }
    }

    /// Live, without a middleware: every answer comes after its request is registered.
    fn live(expected: &[Role]) -> PendingSet {
        PendingSet::new(expected, &[], EXPIRY)
    }

    fn counted(expired: Vec<Expired>) -> Vec<Incomplete> {
        expired
            .into_iter()
            .filter_map(|expired| match expired {
                Expired::Counted(reason) => Some(reason),
                Expired::Unrequested => None,
            })
            .collect()
    }

    #[test]
    fn a_registered_set_completes_when_every_expected_role_has_answered_in_any_order() {
        let now = Instant::now();
        let mut set = live(&[Role::Candidate, Role::Production]);
        assert!(matches!(
            set.request("1".into(), line(), now),
            Gathered::Waiting
        ));
        assert!(matches!(
            set.add(Role::Production, "1".into(), answer(b"p"), now),
            Gathered::Waiting
        ));
        // Roles not compared are ignored.
        assert!(matches!(
            set.add(Role::Baseline2, "1".into(), answer(b"x"), now),
            Gathered::Waiting
        ));
        let Gathered::Complete(exchange) = set.add(Role::Candidate, "1".into(), answer(b"c"), now)
        else {
            panic!("not complete");
        };
        assert_eq!(exchange.request, Some(line()));
        assert_eq!(
            exchange.response(Role::Production).unwrap().raw.as_deref(),
            Some(&b"p"[..])
        );
        assert!(exchange.response(Role::Baseline2).is_none());
        assert!(set.is_empty());
        assert_eq!(set.held_bytes, 0);
    }

    #[test]
    fn a_failed_role_makes_the_set_not_compared_and_unanswered_requests_expire() {
        let now = Instant::now();
        let mut set = live(&[Role::Candidate, Role::Baseline]);
        set.request("1".into(), line(), now);
        set.add(Role::Candidate, "1".into(), Answer::Failed, now);
        assert!(matches!(
            set.add(Role::Baseline, "1".into(), answer(b"b"), now),
            Gathered::NotCompared(Incomplete::TargetFailed)
        ));
        // Registered, never answered by anyone: still counted, once.
        set.request("2".into(), line(), now);
        assert!(set.expire(now + EXPIRY / 2).is_empty());
        assert_eq!(
            set.expire(now + EXPIRY),
            [Expired::Counted(Incomplete::MissingResponse)]
        );
        assert_eq!(set.held_bytes, 0);
    }

    #[test]
    fn late_answers_and_resent_requests_are_never_counted_twice() {
        let now = Instant::now();
        let mut set = live(&[Role::Candidate, Role::Production]);
        set.request("1".into(), line(), now);
        set.add(Role::Production, "1".into(), answer(b"p"), now);
        assert!(matches!(
            set.add(Role::Candidate, "1".into(), answer(b"c"), now),
            Gathered::Complete(_)
        ));
        // A resent batch's copies of the request and production's response.
        set.request("1".into(), line(), now);
        set.add(Role::Production, "1".into(), answer(b"p"), now);
        assert!(set.is_empty());
        // A candidate that answers after its set expired, and long after it was forgotten.
        set.request("2".into(), line(), now);
        set.add(Role::Production, "2".into(), answer(b"p"), now);
        assert_eq!(
            counted(set.expire(now + EXPIRY)),
            [Incomplete::MissingResponse]
        );
        for late in [EXPIRY * 2, EXPIRY * 100] {
            set.request("3".into(), line(), now + late);
            set.add(Role::Candidate, "2".into(), answer(b"c"), now + late);
            set.add(Role::Production, "2".into(), answer(b"p"), now + late);
        }
        assert_eq!(set.len(), 1, "only request 3 waits");
        assert_eq!(
            counted(set.expire(now + EXPIRY * 200)),
            [Incomplete::MissingResponse]
        );
    }

    #[test]
    fn answers_to_requests_never_replayed_are_not_counted() {
        let now = Instant::now();
        // Behind a middleware, production's response may come before the request is replayed.
        let mut set = PendingSet::new(
            &[Role::Candidate, Role::Production],
            &[Role::Production],
            EXPIRY,
        );
        set.add(Role::Production, "dropped".into(), answer(b"p"), now);
        set.add(Role::Production, "slow".into(), answer(b"p"), now);
        set.request("slow".into(), line(), now);
        assert!(matches!(
            set.add(Role::Candidate, "slow".into(), answer(b"c"), now),
            Gathered::Complete(_)
        ));
        assert_eq!(set.expire(now + EXPIRY), [Expired::Unrequested]);
        // Without a middleware an unknown id is late: no set, no bytes held.
        let mut set = live(&[Role::Candidate, Role::Production]);
        set.add(Role::Production, "filtered".into(), answer(b"pppp"), now);
        assert!(set.is_empty());
        assert_eq!(set.held_bytes, 0);
    }

    #[test]
    fn a_target_that_did_not_send_settles_the_set_at_once_and_frees_its_bytes() {
        let now = Instant::now();
        let mut set = live(&[Role::Candidate, Role::Baseline]);
        set.request("1".into(), line(), now);
        set.add(Role::Baseline, "1".into(), answer(b"bbbb"), now);
        assert_eq!(set.held_bytes, 4);
        assert!(matches!(
            set.add(Role::Candidate, "1".into(), Answer::NotSent, now),
            Gathered::NotCompared(Incomplete::NotSent)
        ));
        assert_eq!(set.held_bytes, 0);
        assert!(set.is_empty());
    }

    #[test]
    fn closing_counts_every_registered_set_and_then_takes_nothing() {
        let now = Instant::now();
        let mut set = live(&[Role::Candidate, Role::Production]);
        set.request("no target answered".into(), line(), now);
        set.request("production missing".into(), line(), now);
        set.add(
            Role::Candidate,
            "production missing".into(),
            answer(b"c"),
            now,
        );
        let mut closed = counted(set.close());
        closed.sort_by_key(|reason| reason.as_str());
        assert_eq!(
            closed,
            [Incomplete::MissingResponse, Incomplete::ShuttingDown]
        );
        assert!(matches!(
            set.request("after".into(), line(), now),
            Gathered::NotCompared(Incomplete::ShuttingDown)
        ));
        set.add(Role::Candidate, "after".into(), answer(b"c"), now);
        assert!(set.is_empty());
    }

    #[test]
    fn past_the_sets_budget_the_oldest_set_makes_room() {
        let now = Instant::now();
        let mut set = live(&[Role::Candidate, Role::Production]);
        for id in 0..PENDING_SETS {
            set.request(id.to_string(), line(), now);
        }
        set.request("newest".into(), line(), now);
        assert_eq!(set.len(), PENDING_SETS);
        assert_eq!(set.expire(now), [Expired::Counted(Incomplete::PendingFull)]);
        assert!(set.expire(now).is_empty());
        // The oldest was counted: its answers are ignored; the newest completes.
        set.add(Role::Candidate, "0".into(), answer(b"c"), now);
        set.add(Role::Production, "newest".into(), answer(b"p"), now);
        assert!(matches!(
            set.add(Role::Candidate, "newest".into(), answer(b"c"), now),
            Gathered::Complete(_)
        ));
        assert_eq!(set.len(), PENDING_SETS - 1);
    }

    #[test]
    fn a_set_started_late_by_a_backlogged_target_waits_again() {
        let now = Instant::now();
        let mut set = live(&[Role::Candidate, Role::Baseline]);
        set.request("1".into(), line(), now);
        set.add(Role::Baseline, "1".into(), answer(b"b"), now);
        // The candidate takes it off its queue just before the expiry.
        set.started("1", now + EXPIRY - Duration::from_millis(1));
        assert!(set.expire(now + EXPIRY).is_empty());
        assert!(matches!(
            set.add(
                Role::Candidate,
                "1".into(),
                answer(b"c"),
                now + EXPIRY * 3 / 2
            ),
            Gathered::Complete(_)
        ));
        let mut set = live(&[Role::Candidate, Role::Baseline]);
        set.request("2".into(), line(), now);
        set.started("2", now + EXPIRY / 2);
        assert!(set.expire(now + EXPIRY).is_empty());
        assert_eq!(
            set.expire(now + EXPIRY * 3 / 2),
            [Expired::Counted(Incomplete::MissingResponse)]
        );
    }

    #[test]
    fn making_room_passes_over_a_set_restarted_since() {
        let now = Instant::now();
        let mut set = live(&[Role::Candidate, Role::Baseline]);
        set.request("a".into(), line(), now);
        set.add(Role::Baseline, "a".into(), Answer::NotSent, now);
        for id in 1..PENDING_SETS {
            set.request(id.to_string(), line(), now + Duration::from_millis(1));
        }
        set.started("a", now + Duration::from_millis(2));
        set.request("newest".into(), line(), now + Duration::from_millis(3));
        // Set 1 goes, not `a`: `a` started again after it.
        assert_eq!(set.expire(now), [Expired::Counted(Incomplete::PendingFull)]);
        assert!(matches!(
            set.add(Role::Candidate, "a".into(), answer(b"c"), now),
            Gathered::NotCompared(Incomplete::NotSent)
        ));
        // The next oldest, 2, goes by its own reason.
        set.add(Role::Baseline, "2".into(), Answer::NotSent, now);
        set.request("newer".into(), line(), now + Duration::from_millis(4));
        set.request("newest yet".into(), line(), now + Duration::from_millis(4));
        assert_eq!(set.expire(now), [Expired::Counted(Incomplete::NotSent)]);
    }
}
