//! The replayed request: a captured record checked and located once into what any target can
//! be sent ([`ReplayRequest`]), with the [`BatchDone`] guard that tells its source when every
//! target is done with it, and the [`Origin`] it came from. Every stage after the source works
//! on these types.
//!
//! A request keeps its captured bytes: each header line as captured (name case, order,
//! duplicates, whitespace), the version and line ending of its request line, and its body with
//! its framing (a chunked body stays chunked, trailers included). Filters read the same lines
//! ([`ReplayRequest::header`]); rewrites replace whole lines ([`HeaderField`]); what a target
//! finally receives is written by [`ReplayRequest::write_head`]:
//!
//! - the request line is `METHOD SP path-and-query` then the captured rest of the line: an
//!   absolute-form target (`GET http://host/p`) becomes origin-form (`/p`);
//! - `Host` lines get the target's host (see the target's Host rule), in place, name as
//!   captured; a request without one gets none unless a Host rewrite is configured;
//! - `Proxy-Authorization` and `Proxy-Connection` are removed: they were meant for a proxy in
//!   front of production, not for the server. Every other header is kept as captured, hop-by-hop
//!   ones (`Connection`, `Keep-Alive`, `TE`, `Trailer`, `Upgrade`) included: they describe a
//!   connection like the one the target gets, and the sender honours them (`Connection: close`
//!   and HTTP/1.0 without keep-alive make it reconnect for the next request).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::Method;
use http::uri::PathAndQuery;
use tapwire_shared::RequestRecord;
use tapwire_shared::http1::{FieldLayout, request_layout};
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
    /// The path and query sent (origin-form): what URL filters and rewrites see.
    pub path_and_query: PathAndQuery,
    /// The request line after the target, as captured: ` HTTP/1.x` and its line ending.
    pub line_tail: Bytes,
    /// Every header line as captured, in order, but for the ones only a proxy should see.
    pub fields: Vec<HeaderField>,
    /// The blank line that ends the head, as captured.
    pub head_end: Bytes,
    /// The body as captured, framing included: chunked stays chunked, trailers and all.
    pub body: Bytes,
    /// The client kept its connection open after this request: without that, the target
    /// closes the connection after answering (HTTP/1.0, `Connection: close`).
    pub persists: bool,
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
    pub host_override: Option<Bytes>,
    /// When the fan-out took it: how long it then waited in a target's queue.
    pub replayed_at: std::time::Instant,
    /// Held until every target is done with the request: the batch it came in is
    /// acknowledged once all its requests have let go.
    pub batch: Option<Arc<BatchDone>>,
}

impl ReplayRequest {
    /// Its id in `.gor` files and middleware messages, shared with its responses.
    pub fn message_id(&self) -> String {
        tapwire_shared::gor::message_id(self.instance, self.record_id)
    }

    /// The first value of header `name` (any case).
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |field| field.is(name))
            .map(HeaderField::value)
    }

    /// Writes the request head to `out` with `path_and_query` and `fields` (the request's own,
    /// or a target's rewrite of them) and `host` applied to its Host lines: the one writer of
    /// what a target receives. The body follows as captured ([`Self::body`]).
    pub fn write_head(
        &self,
        out: &mut impl BufMut,
        path_and_query: &PathAndQuery,
        fields: &[HeaderField],
        host: HostRule<'_>,
    ) {
        out.put_slice(self.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(path_and_query.as_str().as_bytes());
        out.put_slice(&self.line_tail);
        let mut host_written = false;
        for field in fields {
            match host {
                HostRule::Replace(host) | HostRule::Set(host) if field.is("host") => {
                    field.write_with_value(out, host);
                    host_written = true;
                }
                _ => out.put_slice(&field.line),
            }
        }
        if let (HostRule::Set(host), false) = (host, host_written) {
            HeaderField::write_new(out, "Host", host);
        }
        out.put_slice(&self.head_end);
    }
}

/// What a target's Host lines say.
#[derive(Debug, Clone, Copy)]
pub enum HostRule<'a> {
    /// As captured (`--keep-host`).
    Keep,
    /// The captured Host lines get this value; a request without one gets none.
    Replace(&'a [u8]),
    /// This value, added if the request has no Host (a Host rewrite).
    Set(&'a [u8]),
}

/// One header line, as captured or as a rewrite built it: written to the target as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// Name, colon, whitespace, value and line ending.
    line: Bytes,
    name_len: usize,
    value: std::ops::Range<usize>,
}

impl HeaderField {
    /// `name: value` with a CRLF: a line a rewrite adds.
    pub fn new(name: &str, value: &[u8]) -> HeaderField {
        let mut line = BytesMut::with_capacity(name.len() + value.len() + 4);
        HeaderField::write_new(&mut line, name, value);
        HeaderField {
            line: line.freeze(),
            name_len: name.len(),
            value: name.len() + 2..name.len() + 2 + value.len(),
        }
    }

    fn captured(raw: &Bytes, layout: &FieldLayout) -> HeaderField {
        let start = layout.line.start;
        HeaderField {
            line: raw.slice(layout.line.clone()),
            name_len: layout.name.len(),
            value: layout.value.start - start..layout.value.end - start,
        }
    }

    /// This line with another value, the name as it was.
    pub fn with_value(&self, value: &[u8]) -> HeaderField {
        let mut line = BytesMut::with_capacity(self.name_len + value.len() + 4);
        self.write_with_value(&mut line, value);
        HeaderField {
            line: line.freeze(),
            name_len: self.name_len,
            value: self.name_len + 2..self.name_len + 2 + value.len(),
        }
    }

    /// The name as written (its case kept).
    pub fn name(&self) -> &[u8] {
        &self.line[..self.name_len]
    }

    pub fn value(&self) -> &[u8] {
        &self.line[self.value.clone()]
    }

    /// Whether this is header `name`, in any case.
    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name.as_bytes())
    }

    fn write_with_value(&self, out: &mut impl BufMut, value: &[u8]) {
        out.put_slice(&self.line[..self.value.start]);
        out.put_slice(value);
        out.put_slice(&self.line[self.value.end..]);
    }

    fn write_new(out: &mut impl BufMut, name: &str, value: &[u8]) {
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
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

/// Headers meant for a proxy in front of production: never sent to a target.
const FOR_PROXIES: [&str; 2] = ["proxy-authorization", "proxy-connection"];

impl ReplayRequest {
    pub fn from_record(record: &RequestRecord, origin: &Origin) -> Result<Self, RejectReason> {
        let listener_id = &origin.listener_id;
        let raw = &record.request;
        let layout = request_layout(raw).map_err(|_| RejectReason::MalformedHttp)?;
        let method = Method::from_bytes(&raw[layout.method.clone()])
            .map_err(|_| RejectReason::MalformedHttp)?;
        let target = std::str::from_utf8(&raw[layout.target.clone()])
            .map_err(|_| RejectReason::UnreplayableTarget)?;
        // Only the path and query travel: the destination is always a configured target.
        let path_and_query = if target.starts_with('/') {
            target.parse::<PathAndQuery>().ok()
        } else {
            // Absolute form (`GET http://host/path`), as sent to proxies.
            target
                .parse::<http::Uri>()
                .ok()
                .filter(|uri| uri.scheme().is_some())
                .and_then(|uri| uri.path_and_query().cloned())
        }
        .ok_or(RejectReason::UnreplayableTarget)?;
        let fields = layout
            .fields
            .iter()
            .map(|field| HeaderField::captured(raw, field))
            .filter(|field| !FOR_PROXIES.iter().any(|name| field.is(name)))
            .collect();
        let head_end = raw.slice(
            layout
                .fields
                .last()
                .map_or(layout.line_tail.end, |field| field.line.end)
                ..layout.body.start,
        );
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
            method,
            path_and_query,
            line_tail: raw.slice(layout.line_tail),
            fields,
            head_end,
            body: raw.slice(layout.body),
            persists: layout.persists,
            session,
            identity_hash,
            captured_at_ns: record.captured_at_ns,
            instance: origin.instance,
            record_id: record.id,
            host_override: None,
            replayed_at: std::time::Instant::now(),
            batch: None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request as the fan-out would build it from a capture.
    pub(crate) fn request(raw: &str) -> ReplayRequest {
        try_request(raw).unwrap()
    }

    fn try_request(raw: &str) -> Result<ReplayRequest, RejectReason> {
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
        ReplayRequest::from_record(&record, &origin)
    }

    #[test]
    fn a_record_framed_ambiguously_is_refused_not_guessed() {
        // The target could read such a body by another rule than the replayer, and take its
        // tail for the next request on the connection.
        for raw in [
            "POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
        ] {
            assert_eq!(
                try_request(raw).err(),
                Some(RejectReason::MalformedHttp),
                "{raw:?}"
            );
        }
    }

    /// What a target is sent for `replay` under `host`: head and body.
    pub(crate) fn wire(replay: &ReplayRequest, host: HostRule<'_>) -> String {
        let mut out = Vec::new();
        replay.write_head(&mut out, &replay.path_and_query, &replay.fields, host);
        out.extend_from_slice(&replay.body);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_is_written_as_captured_but_for_its_host() {
        let captured = "POST /upload?x=1 HTTP/1.0\r\nHOST: prod\r\nUser-Agent:  curl/8\r\n\
            X-Dup: 1\r\nx-dup: 2\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc";
        let replay = request(captured);
        assert_eq!(
            wire(&replay, HostRule::Replace(b"staging:80")),
            captured.replace("HOST: prod", "HOST: staging:80")
        );
        assert_eq!(wire(&replay, HostRule::Keep), captured);
        assert!(replay.persists, "HTTP/1.0 with keep-alive");
    }

    #[test]
    fn a_chunked_body_stays_chunked_with_its_trailers() {
        let captured = "PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;ext=1\r\nabc\r\n0\r\nX-Checksum: 9\r\n\r\n";
        let replay = request(captured);
        assert_eq!(wire(&replay, HostRule::Keep), captured);
    }

    #[test]
    fn proxy_headers_are_removed_and_hop_by_hop_ones_kept() {
        let replay = request(
            "GET /x HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic eA==\r\n\
             Proxy-Connection: keep-alive\r\nConnection: close\r\nTE: trailers\r\n\r\n",
        );
        assert_eq!(
            wire(&replay, HostRule::Keep),
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTE: trailers\r\n\r\n"
        );
        assert!(!replay.persists);
    }

    #[test]
    fn a_host_rewrite_adds_host_only_when_set() {
        let replay = request("GET / HTTP/1.0\r\nAccept: */*\r\n\r\n");
        assert_eq!(
            wire(&replay, HostRule::Replace(b"t:80")),
            "GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"
        );
        assert_eq!(
            wire(&replay, HostRule::Set(b"t:80")),
            "GET / HTTP/1.0\r\nAccept: */*\r\nHost: t:80\r\n\r\n"
        );
        assert!(!replay.persists, "HTTP/1.0 without keep-alive");
    }

    #[test]
    fn empty_header_values_are_located() {
        let captured = "GET / HTTP/1.1\r\nX-Empty:\r\nX-Blank:   \r\nHost: a\r\n\r\n";
        let replay = request(captured);
        assert_eq!(replay.header("x-empty"), Some(&b""[..]));
        assert_eq!(
            wire(&replay, HostRule::Replace(b"b")),
            captured.replace("Host: a", "Host: b")
        );
    }

    #[test]
    fn absolute_form_targets_keep_only_path_and_query() {
        let replay =
            request("GET http://evil.example/steal?x=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n");
        assert_eq!(replay.path_and_query.as_str(), "/steal?x=1");
        assert_eq!(
            wire(&replay, HostRule::Replace(b"t:80")),
            "GET /steal?x=1 HTTP/1.1\r\nHost: t:80\r\n\r\n"
        );
    }

    #[test]
    fn requests_of_one_connection_share_a_session() {
        let a = request("GET /a HTTP/1.1\r\n\r\n");
        let b = request("GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(a.session, b.session);
    }
}
