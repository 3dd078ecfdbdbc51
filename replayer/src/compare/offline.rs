//! The comparison of a recorded `.gor` file (`tapwire-replayer report FILE.gor`): production's
//! response to each request (type 2) is the reference, the first replayed response (type 3)
//! the candidate, compared by the same [`Comparer`] as a live replay. Files do not say which
//! target a replayed response came from, so further ones for a request are not compared, and
//! there is no noise pair.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tapwire_shared::gor::{GorMessage, GorReader, PayloadType};

use super::comparer::{CompareMetrics, Comparer, Rules};
use super::pending::{Gathered, PendingSet, RequestLine, Response};
use super::report_command::open;
use super::summary::Summary;
use super::tally::{Roles, Tally};
use crate::config::{CompareSettings, Role};

/// How long (in the file's time) a request's responses are waited for.
const EXPIRY: Duration = Duration::from_secs(60);

/// What comparing the files' replayed responses with production's finds (with the default
/// comparison settings), the files read one after the other.
pub fn summarise_gor(paths: &[PathBuf]) -> anyhow::Result<Summary> {
    let settings = CompareSettings::default();
    let roles = Roles {
        targets: vec![
            (Role::Candidate, "replayed (type 3)".to_owned()),
            (Role::Production, "production (type 2)".to_owned()),
        ],
        reference: Role::Production,
        noise_pair: None,
    };
    let tally = Arc::new(Mutex::new(Tally::new(roles, Rules::thresholds(&settings)?)));
    let mut comparer = Comparer::new(
        Rules::compile(&settings)?,
        Arc::clone(&tally),
        None,
        CompareMetrics::default(),
    );
    let mut pending = PendingSet::new(&[Role::Candidate, Role::Production], EXPIRY);
    let started = Instant::now();
    let mut first_ns = None;
    let mut malformed = 0;
    for path in paths {
        let mut reader = GorReader::new(open(path)?, path.display().to_string());
        while let Some(read) = reader.next_message() {
            let message = match read {
                Ok(message) => message,
                Err(error) if error.is_fatal() => {
                    anyhow::bail!("{} cannot be read to its end: {error}", path.display())
                }
                Err(_) => {
                    malformed += 1;
                    continue;
                }
            };
            let first = *first_ns.get_or_insert(message.header.timestamp_ns);
            let now =
                started + Duration::from_nanos(message.header.timestamp_ns.saturating_sub(first));
            for reason in pending.expire(now, false) {
                comparer.not_compared(reason.as_str());
            }
            match gather(&mut pending, message, now) {
                Gathered::Waiting => {}
                Gathered::Complete(exchange) => comparer.compare(&exchange),
                Gathered::NotCompared(reason) => comparer.not_compared(reason.as_str()),
            }
        }
    }
    for reason in pending.expire(Instant::now(), true) {
        comparer.not_compared(reason.as_str());
    }
    for _ in 0..malformed {
        comparer.not_compared("malformed_record");
    }
    let source = paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let summary = tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .summary(&source);
    Ok(summary)
}

/// Adds one message to its request's set: a request's line, production's response, or the
/// first replayed one (the candidate).
fn gather(pending: &mut PendingSet, message: GorMessage, now: Instant) -> Gathered {
    let id = message.header.id;
    let response = Response {
        latency: message.header.latency_ns.map(Duration::from_nanos),
        raw: Some(message.payload),
    };
    match message.header.payload_type {
        PayloadType::Request => {
            if let Some(request) = response.raw.as_deref().and_then(request_line) {
                pending.request(id, request, now);
            }
            Gathered::Waiting
        }
        PayloadType::Response => pending.add(Role::Production, id, None, Some(response), now),
        PayloadType::ReplayedResponse => {
            pending.add(Role::Candidate, id, None, Some(response), now)
        }
    }
}

/// The method and target of a request's first line.
fn request_line(payload: &[u8]) -> Option<RequestLine> {
    let end = payload.iter().position(|&byte| byte == b'\n')?;
    let line = std::str::from_utf8(&payload[..end]).ok()?;
    let mut parts = line.trim_end().split(' ');
    let method = parts.next().filter(|m| !m.is_empty())?;
    let target = parts.next()?;
    // An absolute-form target names the same endpoint as its path.
    let path_and_query = match target.find("://") {
        Some(scheme_end) => {
            let rest = &target[scheme_end + 3..];
            rest.find('/').map_or("/", |slash| &rest[slash..])
        }
        None => target,
    };
    Some(RequestLine {
        method: method.to_owned(),
        path_and_query: path_and_query.to_owned(),
    })
}
