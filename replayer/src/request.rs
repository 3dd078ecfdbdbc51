//! The replayed request: a captured record checked and parsed once into what any target can be
//! sent ([`ReplayRequest`]), with the [`BatchDone`] guard that tells its source when every target
//! is done with it, and the [`Origin`] it came from. Every stage after the source works on
//! these types.

use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, header};
use tapwire_shared::RequestRecord;
use tapwire_shared::http1::{BodyFraming, ParsedRequest};
use tokio::sync::oneshot;
use xxhash_rust::xxh3::Xxh3;

use crate::outcome::RejectReason;

/// Who sent a record: one listener process, or one pass over recorded files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The listener's name, as it reports it (`file` for recorded files).
    pub listener_id: String,
    /// Its process (or file pass): record ids restart with each.
    pub instance: u64,
}

/// A captured request, ready to send to any target.
#[derive(Debug)]
pub struct ReplayRequest {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// Captured headers minus the hop-by-hop ones, which described the production connection.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Identifies the captured client connection (listener, client and server addresses).
    pub session: u64,
    /// Identifies the record; random sampling hashes it.
    pub identity_hash: u64,
    /// When production received it: rates count captured time.
    pub captured_at_ns: u64,
    /// Its origin's instance and its id there: what its `.gor` message id is made of.
    pub instance: u64,
    pub record_id: u64,
    /// Host set by a global rewrite; a target's own rewrite wins over it.
    pub host_override: Option<HeaderValue>,
    /// Held until every target is done with the request: the batch it came in is
    /// acknowledged once all its requests have let go.
    pub batch: Option<Arc<BatchDone>>,
}

impl ReplayRequest {
    /// Its id in `.gor` files and middleware messages, shared with its responses.
    pub fn message_id(&self) -> String {
        tapwire_shared::gor::message_id(self.instance, self.record_id)
    }
}

/// Fires when every request of a batch is finished with by every target (answered, failed or
/// dropped, and counted either way): only then may the replayer acknowledge the batch, so a
/// replayer that dies with requests still queued has not acknowledged them and the listener
/// sends them again.
#[derive(Debug)]
pub struct BatchDone(Option<oneshot::Sender<()>>);

impl BatchDone {
    pub fn new() -> (Arc<BatchDone>, oneshot::Receiver<()>) {
        let (done, finished) = oneshot::channel();
        (Arc::new(BatchDone(Some(done))), finished)
    }
}

impl Drop for BatchDone {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            let _ = done.send(());
        }
    }
}

/// The one way a received record goes on: the fan-out, or the middleware in front of it.
pub trait Dispatch: Send + Sync {
    /// Hands a record on; `batch` is held until everything downstream is done with it.
    fn dispatch(&self, record: RequestRecord, origin: &Origin, batch: &Arc<BatchDone>);
}

/// Headers that belong to one connection (RFC 9110 section 7.6.1), not to the request.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

impl ReplayRequest {
    pub fn from_record(record: &RequestRecord, origin: &Origin) -> Result<Self, RejectReason> {
        let listener_id = &origin.listener_id;
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
        let mut identity = Xxh3::new();
        identity.update(listener_id.as_bytes());
        identity.update(&origin.instance.to_le_bytes());
        identity.update(&record.id.to_le_bytes());
        let identity_hash = identity.digest();
        // Recorded files do not say which connection a request came on: each is its own.
        let session = if record.client.port() == 0 {
            identity_hash
        } else {
            let mut session = Xxh3::new();
            session.update(listener_id.as_bytes());
            for address in [record.client, record.server] {
                match address.ip() {
                    std::net::IpAddr::V4(ip) => session.update(&ip.octets()),
                    std::net::IpAddr::V6(ip) => session.update(&ip.octets()),
                }
                session.update(&address.port().to_le_bytes());
            }
            session.digest()
        };
        Ok(ReplayRequest {
            method: parsed.method,
            path_and_query,
            headers,
            body: parsed.body,
            session,
            identity_hash,
            captured_at_ns: record.captured_at_ns,
            instance: origin.instance,
            record_id: record.id,
            host_override: None,
            batch: None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request as the fan-out would build it from a capture.
    pub(crate) fn request(raw: &str) -> ReplayRequest {
        let record = RequestRecord {
            id: 1,
            captured_at_ns: 0,
            client: "10.0.0.1:4000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
            request: Bytes::copy_from_slice(raw.as_bytes()),
        };
        let origin = Origin {
            listener_id: "test".into(),
            instance: 1,
        };
        ReplayRequest::from_record(&record, &origin).unwrap()
    }

    #[test]
    fn hop_by_hop_headers_are_not_replayed() {
        let replay = request(
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Trace\r\nKeep-Alive: 5\r\nX-Kept: 1\r\n\r\n",
        );
        assert!(!replay.headers.contains_key("connection"));
        assert!(!replay.headers.contains_key("keep-alive"));
        assert_eq!(replay.headers["x-kept"], "1");
    }

    #[test]
    fn absolute_form_targets_keep_only_path_and_query() {
        let replay =
            request("GET http://evil.example/steal?x=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n");
        assert_eq!(replay.path_and_query.as_str(), "/steal?x=1");
    }

    #[test]
    fn requests_of_one_connection_share_a_session() {
        let a = request("GET /a HTTP/1.1\r\n\r\n");
        let b = request("GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(a.session, b.session);
    }
}
