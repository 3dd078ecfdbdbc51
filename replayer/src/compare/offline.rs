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
use tapwire_runtime::lock;
use tapwire_shared::gor::{GorMessage, GorReader, PayloadType};

use super::comparer::{CompareMetrics, Comparer, Rules};
use super::pending::{Answer, Expired, Gathered, PENDING_SETS, PendingSet, RequestLine, Response};
use super::summary::Summary;
use super::tally::{Roles, Tally};
use crate::config::{CompareSettings, Role};

/// How a gzip stream begins.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// How many messages further on a request's responses are waited for. A file's timestamps are
/// no clock for this: type 3 records carry when they were replayed, maybe days after the
/// capture their type 1 and 2 records carry. No more sets than this can wait at once, so the
/// pending sets' own limit never drops one early.
const WINDOW_MESSAGES: u32 = PENDING_SETS as u32;
/// The pending set's clock advances this much per message, so that its expiry is the window.
const PER_MESSAGE: Duration = Duration::from_micros(1);

/// What comparing the files' replayed responses with production's finds (by `settings`, as a
/// live replay would), the files read one after the other.
pub fn summarise_gor(paths: &[PathBuf], settings: &CompareSettings) -> anyhow::Result<Summary> {
    let roles = Roles {
        targets: vec![
            (Role::Candidate, "replayed (type 3)".to_owned()),
            (Role::Production, "production (type 2)".to_owned()),
        ],
        reference: Role::Production,
        noise_pair: None,
    };
    let tally = Arc::new(Mutex::new(Tally::new(roles, Rules::thresholds(settings)?)));
    let mut comparer = Comparer::new(
        Rules::compile(settings)?,
        Arc::clone(&tally),
        None,
        CompareMetrics::default(),
    );
    let roles = [Role::Candidate, Role::Production];
    // In a file either response may come before its request.
    let mut pending = PendingSet::new(&roles, &roles, PER_MESSAGE * WINDOW_MESSAGES);
    let started = Instant::now();
    let mut position = Duration::ZERO;
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
            position += PER_MESSAGE;
            let now = started + position;
            count_expired(&mut comparer, pending.expire(now));
            match gather(&mut pending, message, now) {
                Gathered::Waiting => {}
                Gathered::Complete(exchange) => comparer.compare(&exchange),
                Gathered::NotCompared(reason) => comparer.not_compared(reason.as_str()),
            }
        }
    }
    // The files' end: whatever still waits will not complete.
    let end = started + position + PER_MESSAGE * WINDOW_MESSAGES;
    count_expired(&mut comparer, pending.expire(end));
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
    let summary = lock(&tally).summary(&source);
    Ok(summary)
}

/// Counts the sets that will not complete: responses whose request is not in the files as
/// `no_request`, the rest by their reason.
fn count_expired(comparer: &mut Comparer, expired: Vec<Expired>) {
    for expired in expired {
        comparer.not_compared(match expired {
            Expired::Counted(reason) => reason.as_str(),
            Expired::Unrequested => "no_request",
        });
    }
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
        PayloadType::Request => match response.raw.as_deref().and_then(request_line) {
            Some(request) => pending.request(id, request, now),
            None => Gathered::Waiting,
        },
        PayloadType::Response => pending.add(Role::Production, id, Answer::Response(response), now),
        PayloadType::ReplayedResponse => {
            pending.add(Role::Candidate, id, Answer::Response(response), now)
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tapwire_shared::gor::GorHeader;

    use super::*;

    fn message(payload_type: PayloadType, id: u64, at_ns: u64, payload: &str) -> GorMessage {
        GorMessage {
            header: GorHeader {
                payload_type,
                id: format!("{id:024x}"),
                timestamp_ns: at_ns,
                latency_ns: Some(1_000_000),
            },
            payload: Bytes::from(payload.to_owned()),
        }
    }

    /// A recording of a file replayed a day after its capture: type 3 records carry the
    /// replay's time, type 1 and 2 the capture's. Request 0's replayed `$.a` differs; a fourth
    /// type 3 has no request.
    fn recording(dir: &Path) -> PathBuf {
        const DAY_NS: u64 = 86_400_000_000_000;
        let captured = 1_700_000_000_000_000_000;
        let mut out = Vec::new();
        for id in 0..3 {
            let at = captured + id * 1_000;
            message(PayloadType::Request, id, at, "GET /a/1 HTTP/1.1\r\n\r\n").encode(&mut out);
            let production = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
            message(PayloadType::Response, id, at, production).encode(&mut out);
        }
        for id in 0..4 {
            let body = if id == 0 { "{\"a\":2}" } else { "{\"a\":1}" };
            let replayed = format!("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{body}");
            message(
                PayloadType::ReplayedResponse,
                id,
                captured + DAY_NS,
                &replayed,
            )
            .encode(&mut out);
        }
        let path = dir.join("recorded.gor");
        std::fs::write(&path, out).unwrap();
        path
    }

    fn paths(summary: &Summary) -> Vec<(String, u64)> {
        summary.endpoints[0]
            .paths
            .iter()
            .map(|path| (path.path.clone(), path.candidate))
            .collect()
    }

    #[test]
    fn responses_replayed_long_after_the_capture_are_compared() {
        let dir = tempfile::tempdir().unwrap();
        let file = recording(dir.path());
        let summary = summarise_gor(&[file], &CompareSettings::default()).unwrap();
        assert_eq!(summary.compared, 3);
        assert_eq!(
            summary.not_compared,
            [("no_request".to_owned(), 1)].into_iter().collect()
        );
        assert_eq!(summary.endpoints[0].compared, 3);
        assert_eq!(paths(&summary), [("$.a".to_owned(), 1)]);
    }

    #[test]
    fn the_live_runs_settings_apply() {
        let dir = tempfile::tempdir().unwrap();
        let file = recording(dir.path());
        let settings = CompareSettings {
            ignore_paths: vec!["$.a".into()],
            ..CompareSettings::default()
        };
        let summary = summarise_gor(&[file], &settings).unwrap();
        assert_eq!(summary.compared, 3);
        assert_eq!(paths(&summary), []);
    }
}
