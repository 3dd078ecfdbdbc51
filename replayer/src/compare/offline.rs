//! The comparison of a recorded `.gor` file (`tapwire-replayer report FILE.gor`): production's
//! response to each request (type 2) is the reference, the first replayed response (type 3)
//! the candidate, compared by the same [`Comparer`] as a live replay. Files do not say which
//! target a replayed response came from, so further ones for a request are not compared, and
//! there is no noise pair.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tapwire_shared::gor::{GorMessage, GorReader, PayloadType};

use super::comparer::{CompareMetrics, Comparer, Rules};
use super::pending::{Answer, Gathered, PendingSet, RequestLine, Response};
use super::summary::Summary;
use super::tally::{Roles, Tally};
use crate::config::{CompareSettings, Role};

/// How a gzip stream begins.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
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
    if malformed > 0 {
        // Not requests: messages that could not be read, so they are not counted as such.
        tracing::warn!(
            malformed,
            "skipped messages that are not valid .gor records"
        );
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
        PayloadType::Response => {
            pending.add(Role::Production, id, None, Answer::Response(response), now)
        }
        PayloadType::ReplayedResponse => {
            pending.add(Role::Candidate, id, None, Answer::Response(response), now)
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

/// `path` for reading, through gzip when it starts like gzip.
pub fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut reader = BufReader::new(file);
    let gzipped = reader
        .fill_buf()
        .with_context(|| format!("{}: cannot read", path.display()))?
        .starts_with(&GZIP_MAGIC);
    Ok(if gzipped {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else {
        Box::new(reader)
    })
}
