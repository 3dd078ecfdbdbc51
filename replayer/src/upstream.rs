//! One HTTP/1 connection to a target (over TCP or TLS, the same code either way): a request goes out as the bytes the caller wrote (see
//! [`crate::request::ReplayRequest::write_head`]), and the response is read incrementally with
//! the shared grammar (`tapwire_shared::http1`): interim 1xx responses skipped, the body
//! delimited by Content-Length, chunks (trailers included) or the close, none for HEAD, 204 and
//! 304. Memory stays bounded whatever the target sends: the head by its 64 KiB limit, the body
//! read and let go as it arrives; only a response kept for the observers is held whole, up to
//! [`MAX_KEPT_RESPONSE`]. No timeout here: the caller runs each exchange under its own.

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};
use tapwire_shared::http1::{
    BodyFraming, ChunkedScanner, HttpError, ResponseHead, parse_response_head,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::connect::ConnectError;

/// Largest target response (head and body as received) kept for the observers (`--record`, the
/// middleware); a larger one is read to its end but not kept.
pub const MAX_KEPT_RESPONSE: usize = 16 << 20;
/// A body larger than this is written on its own instead of being copied after the head.
const COPIED_BODY: usize = 16 << 10;
/// Read buffer growth: one read takes at most this much.
const READ_CHUNK: usize = 16 << 10;
/// A connection idle for this long is checked for a close by the target before it is used:
/// servers close idle connections after seconds (nginx: 75 s), and checking costs a syscall.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A target's answer to one request.
#[derive(Debug)]
pub struct TargetResponse {
    pub status: StatusCode,
    /// The response as received (head and body, framing included), when asked for and small
    /// enough.
    pub raw: Option<Bytes>,
    /// Both sides let the connection carry another request.
    pub persists: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("invalid response: {0}")]
    InvalidResponse(HttpError),
    #[error("invalid response status {0}")]
    InvalidStatus(u16),
    #[error("the target closed the connection {}{}", if *.answered_nothing { "without answering" } else { "mid-response" }, .cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Closed {
        /// Not one byte of a response came: a connection the target closed while it was idle.
        answered_nothing: bool,
        cause: Option<std::io::Error>,
    },
}

/// An open connection to a target.
pub struct Upstream<S> {
    stream: S,
    /// Bytes received and not yet taken by a response.
    received: BytesMut,
    /// The request being sent; reused from one request to the next.
    outgoing: Vec<u8>,
    /// Responses read on it: a connection that carried one has been idle in between.
    exchanges: u64,
    /// When its last response ended.
    idle_since: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Upstream<S> {
    pub fn new(stream: S) -> Self {
        Upstream {
            stream,
            received: BytesMut::with_capacity(READ_CHUNK),
            outgoing: Vec::with_capacity(1024),
            exchanges: 0,
            idle_since: Instant::now(),
        }
    }

    /// Whether the target closed this connection (or sent something unasked) while it was
    /// idle long enough for that to be likely; checked without waiting.
    pub async fn went_away(&mut self) -> bool {
        if self.idle_since.elapsed() < IDLE_CHECK {
            return false;
        }
        let mut probe = [0u8; 1];
        let stream = &mut self.stream;
        std::future::poll_fn(|cx| {
            let mut probe = ReadBuf::new(&mut probe);
            match Pin::new(&mut *stream).poll_read(cx, &mut probe) {
                Poll::Pending => Poll::Ready(false),
                // The end of the stream, an error, or bytes no request asked for.
                Poll::Ready(_) => Poll::Ready(true),
            }
        })
        .await
    }

    /// Whether this connection has carried a request before (so may have gone stale).
    pub fn is_reused(&self) -> bool {
        self.exchanges > 0
    }

    /// The buffer to write the next request's head into, empty.
    pub fn request_head(&mut self) -> &mut Vec<u8> {
        self.outgoing.clear();
        &mut self.outgoing
    }

    /// Sends the head written into [`Self::request_head`] and `body`, then reads the response;
    /// `answers_head` for a HEAD request, `keep` to have the raw response back.
    pub async fn exchange(
        &mut self,
        body: &[u8],
        answers_head: bool,
        keep: bool,
    ) -> Result<TargetResponse, ExchangeError> {
        self.send(body)
            .await
            .map_err(|cause| ExchangeError::Closed {
                answered_nothing: true,
                cause: Some(cause),
            })?;
        let response = self.read_response(answers_head, keep).await?;
        self.exchanges += 1;
        self.idle_since = Instant::now();
        Ok(response)
    }

    async fn send(&mut self, body: &[u8]) -> std::io::Result<()> {
        if body.len() <= COPIED_BODY {
            // One write, so a small request leaves in one segment.
            self.outgoing.extend_from_slice(body);
            self.stream.write_all(&self.outgoing).await?;
        } else {
            self.stream.write_all(&self.outgoing).await?;
            self.stream.write_all(body).await?;
        }
        // TLS may hold the last records back until flushed (TCP holds nothing).
        self.stream.flush().await
    }

    /// Reads one final response (after any interim ones) and its body.
    async fn read_response(
        &mut self,
        answers_head: bool,
        keep: bool,
    ) -> Result<TargetResponse, ExchangeError> {
        let mut kept = Kept::new(keep);
        let mut answered = !self.received.is_empty();
        let head: ResponseHead = loop {
            match parse_response_head(&self.received, answers_head)
                .map_err(ExchangeError::InvalidResponse)?
            {
                Some(head) => {
                    self.take(head.len, &mut kept);
                    if !head.is_interim() {
                        break head;
                    }
                }
                None => {
                    self.fill(answered).await?;
                    answered = true;
                }
            }
        };
        // httparse takes any three digits; below 100 is no status at all.
        let status = StatusCode::from_u16(head.status)
            .ok()
            .filter(|status| status.as_u16() >= 100)
            .ok_or(ExchangeError::InvalidStatus(head.status))?;
        match head.framing {
            BodyFraming::Empty => {}
            BodyFraming::Length(length) => {
                let mut remaining = length;
                loop {
                    let take = remaining.min(self.received.len() as u64) as usize;
                    self.take(take, &mut kept);
                    remaining -= take as u64;
                    if remaining == 0 {
                        break;
                    }
                    self.fill(true).await?;
                }
            }
            BodyFraming::Chunked => {
                let mut scanner = ChunkedScanner::default();
                loop {
                    let end = scanner
                        .advance(&self.received, |_| {})
                        .map_err(ExchangeError::InvalidResponse)?;
                    if let Some(end) = end {
                        self.take(end, &mut kept);
                        break;
                    }
                    let examined = scanner.release_examined();
                    self.take(examined, &mut kept);
                    self.fill(true).await?;
                }
            }
            BodyFraming::UntilClose => loop {
                self.take(self.received.len(), &mut kept);
                match self.stream.read_buf(&mut self.received).await {
                    Ok(0) => break,
                    // TLS closed without close_notify: many servers end such a body that way.
                    Err(cause) if cause.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Ok(_) => {}
                    Err(cause) => {
                        return Err(ExchangeError::Closed {
                            answered_nothing: false,
                            cause: Some(cause),
                        });
                    }
                }
            },
        }
        Ok(TargetResponse {
            status,
            raw: kept.finish(),
            persists: head.persists,
        })
    }

    /// Moves the first `len` received bytes into `kept` (if it keeps them) and lets them go.
    fn take(&mut self, len: usize, kept: &mut Kept) {
        kept.extend(&self.received[..len]);
        self.received.advance(len);
    }

    /// Reads more bytes; the end of the stream is an error, since a response is incomplete.
    async fn fill(&mut self, answered: bool) -> Result<(), ExchangeError> {
        if self.received.capacity() - self.received.len() < READ_CHUNK / 4 {
            self.received.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.received).await {
            Ok(0) => Err(ExchangeError::Closed {
                answered_nothing: !answered,
                cause: None,
            }),
            Ok(_) => Ok(()),
            Err(cause) => Err(ExchangeError::Closed {
                answered_nothing: !answered,
                cause: Some(cause),
            }),
        }
    }
}

/// The response bytes kept for the observers, up to [`MAX_KEPT_RESPONSE`].
struct Kept(Option<BytesMut>);

impl Kept {
    fn new(keep: bool) -> Self {
        Kept(keep.then(BytesMut::new))
    }

    fn extend(&mut self, bytes: &[u8]) {
        if let Some(kept) = &mut self.0 {
            if kept.len() + bytes.len() > MAX_KEPT_RESPONSE {
                self.0 = None;
            } else {
                kept.extend_from_slice(bytes);
            }
        }
    }

    fn finish(self) -> Option<Bytes> {
        self.0.map(BytesMut::freeze)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `request` on a fresh upstream whose target answers with `pieces`, one write each
    /// (so the reader sees split reads), then closes if `close`. Returns the response and the
    /// bytes the target received.
    async fn exchange(
        request: &[u8],
        answers_head: bool,
        pieces: &[&[u8]],
        close: bool,
    ) -> (Result<TargetResponse, ExchangeError>, Vec<u8>) {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut upstream = Upstream::new(near);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let request_len = request.len();
        let target = tokio::spawn(async move {
            let mut received = vec![0; request_len];
            far.read_exact(&mut received).await.unwrap();
            for piece in pieces {
                far.write_all(&piece).await.unwrap();
                far.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            if !close {
                // Hold the connection open until the reader is done.
                let _ = far.read(&mut [0; 1]).await;
            }
            received
        });
        upstream.request_head().extend_from_slice(request);
        let response = upstream.exchange(&[], answers_head, true).await;
        drop(upstream);
        (response, target.await.unwrap())
    }

    fn ok(result: (Result<TargetResponse, ExchangeError>, Vec<u8>)) -> TargetResponse {
        result.0.unwrap()
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    #[tokio::test]
    async fn the_request_is_sent_as_written() {
        let (_, received) =
            exchange(GET, false, &[b"HTTP/1.1 204 No Content\r\n\r\n"], false).await;
        assert_eq!(received, GET);
    }

    #[tokio::test]
    async fn a_sized_body_split_across_reads_is_read_whole() {
        let response = ok(exchange(
            GET,
            false,
            &[
                b"HTTP/1.1 200 OK\r\nCont",
                b"ent-Length: 5\r\n\r\nhe",
                b"llo",
            ],
            false,
        )
        .await);
        assert_eq!(response.status, 200);
        assert!(response.persists);
        assert_eq!(
            response.raw.unwrap(),
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..]
        );
    }

    #[tokio::test]
    async fn a_chunked_body_with_trailers_is_read_to_its_end() {
        let whole = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n";
        let pieces: Vec<&[u8]> = whole.chunks(3).collect();
        let response = ok(exchange(GET, false, &pieces, false).await);
        assert!(response.persists);
        assert_eq!(response.raw.unwrap(), &whole[..], "kept as received");
    }

    #[tokio::test]
    async fn a_head_response_has_no_body_whatever_its_length_says() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        let response = ok(exchange(b"HEAD / HTTP/1.1\r\n\r\n", true, &[head], false).await);
        assert_eq!(response.raw.unwrap(), &head[..]);
        assert!(response.persists);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let response = ok(exchange(
            GET,
            false,
            &[
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            ],
            false,
        )
        .await);
        assert_eq!(response.status, 201);
    }

    #[tokio::test]
    async fn no_content_and_not_modified_end_at_their_head() {
        for status in ["204 No Content", "304 Not Modified"] {
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\n");
            let response = ok(exchange(GET, false, &[head.as_bytes()], false).await);
            assert_eq!(response.raw.unwrap(), head.as_bytes());
        }
    }

    #[tokio::test]
    async fn a_close_delimited_body_ends_the_connection() {
        let response = ok(exchange(
            GET,
            false,
            &[b"HTTP/1.0 200 OK\r\n\r\nall ", b"of this"],
            true,
        )
        .await);
        assert!(!response.persists);
        assert_eq!(
            response.raw.unwrap(),
            &b"HTTP/1.0 200 OK\r\n\r\nall of this"[..]
        );
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_do_not_persist() {
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(!ok(exchange(GET, false, &[close], false).await).persists);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!ok(exchange(GET, false, &[old], false).await).persists);
        let kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert!(ok(exchange(GET, false, &[kept], false).await).persists);
    }

    #[tokio::test]
    async fn a_response_cut_short_is_a_closed_connection() {
        let (result, _) = exchange(
            GET,
            false,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
            true,
        )
        .await;
        assert!(matches!(
            result,
            Err(ExchangeError::Closed {
                answered_nothing: false,
                ..
            })
        ));
        let (result, _) = exchange(GET, false, &[], true).await;
        assert!(matches!(
            result,
            Err(ExchangeError::Closed {
                answered_nothing: true,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_noticed() {
        let (near, far) = tokio::io::duplex(64);
        let mut upstream = Upstream::new(near);
        upstream.idle_since -= IDLE_CHECK;
        assert!(!upstream.went_away().await, "open and quiet");
        drop(far);
        assert!(upstream.went_away().await);
    }

    #[tokio::test]
    async fn garbage_is_an_invalid_response() {
        let (result, _) = exchange(GET, false, &[b"SSH-2.0-OpenSSH\r\n\r\n"], false).await;
        assert!(matches!(result, Err(ExchangeError::InvalidResponse(_))));
    }

    #[tokio::test]
    async fn a_response_too_large_to_keep_is_still_read_to_its_end() {
        let body = vec![b'x'; MAX_KEPT_RESPONSE + 1];
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let response = ok(exchange(GET, false, &[head.as_bytes(), &body], false).await);
        assert_eq!(response.status, 200);
        assert!(response.raw.is_none());
    }
}
