//! HTTP/1.x request grammar: where a head ends, how the body is framed, how a chunked body is
//! walked, and what a complete request says. The listener's cutter uses the first three to find
//! request boundaries in a byte stream; the replayer uses [`request_layout`] to send a request
//! again byte for byte. Not having enough bytes yet is a normal outcome (`Ok(None)`), not an error.
//! Redaction ([`redact_headers`], [`crate::redact`]) rewrites captured messages through the same
//! grammar.
//!
//! # How strict the request grammar is
//!
//! A request is cut only where production's server would have cut it too: when tapwire and the
//! server disagree about where a request ends, the bytes after it (a "smuggled" request the
//! server never served) would reach staging. So [`parse_request_head`] refuses, with an error
//! that [`HttpError::is_ambiguous_framing`] names, every head whose framing RFC 9112 says a
//! server must reject or close on, and every head past the limits of a default nginx (checked
//! against nginx 1.22 over raw sockets: it answers 400, 414 or 501 and closes the connection):
//!
//! - both `Content-Length` and `Transfer-Encoding` (RFC 9112 section 6.1);
//! - `Transfer-Encoding` on an HTTP/1.0 request (section 6.1);
//! - `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked`, `chunked, chunked`,
//!   `identity`, empty): nginx answers 501, and a request body is never close-delimited;
//! - more than one `Content-Length` or `Transfer-Encoding` header, even if they agree;
//! - a `Content-Length` that is not plain decimal digits (`+5`, `-5`, `5, 5`, `1 2`, `0x5`,
//!   empty, or past 15 digits);
//! - a header section that breaks the field grammar: whitespace before the colon, obs-fold
//!   continuation lines, a bare CR, control bytes in a value (httparse refuses them);
//! - a request line longer than [`MAX_REQUEST_LINE_BYTES`] (nginx: 414), a header line longer
//!   than [`MAX_HEADER_LINE_BYTES`], or a head that does not fit nginx's default header buffers
//!   ([`fits_header_buffers`]), or more than [`MAX_HEADERS`] headers;
//! - in a chunked body, a chunk size that is not hex digits at the start of its line (`+3`,
//!   `0x3`, ` 3`) or too large, or chunk data not followed by CRLF.
//!
//! Bare LF line endings in the head are accepted, as nginx and httparse accept them. A head
//! whose request line itself does not parse is not HTTP/1.x at all (`MalformedHead`).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

/// Most headers a request may carry (the parser's slots); more is refused.
pub const MAX_HEADERS: usize = 128;
/// Longest request line, CRLF included: nginx's `large_client_header_buffers` size (8k); one
/// byte more and nginx answers 414 and closes. Apache's `LimitRequestLine` (8190 without CRLF)
/// is the same.
pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
/// Longest header line, CRLF included: one nginx large header buffer, as for the request line.
pub const MAX_HEADER_LINE_BYTES: usize = 8 * 1024;
/// nginx's default `client_header_buffer_size`: the first buffer a head is read into.
const FIRST_HEADER_BUFFER_BYTES: usize = 1024;
/// nginx's default number of `large_client_header_buffers`.
const LARGE_HEADER_BUFFERS: usize = 4;
/// Largest head any request can have: the first buffer and every large one full.
pub const MAX_HEAD_BYTES: usize =
    FIRST_HEADER_BUFFER_BYTES + LARGE_HEADER_BUFFERS * MAX_HEADER_LINE_BYTES;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;

/// Why bytes are not a well-formed HTTP/1.x request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request head: {0}")]
    MalformedHead(httparse::Error),
    /// The request line parsed, the header section after it did not.
    #[error("malformed header section: {0}")]
    MalformedHeaders(httparse::Error),
    #[error("request head does not fit the header buffers ({MAX_HEAD_BYTES} bytes at most)")]
    HeadTooLarge,
    #[error("request line longer than {MAX_REQUEST_LINE_BYTES} bytes")]
    RequestLineTooLong,
    #[error("header line longer than {MAX_HEADER_LINE_BYTES} bytes")]
    HeaderLineTooLong,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("invalid Content-Length header")]
    InvalidContentLength,
    #[error("Transfer-Encoding is not exactly chunked, so the body length is unknowable")]
    UnsupportedTransferEncoding,
    #[error("both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    #[error("Content-Length or Transfer-Encoding given more than once")]
    RepeatedFramingHeader,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    ChunkedHttp10,
    #[error("malformed chunked body")]
    MalformedChunkedBody,
    #[error("request ends before its body is complete")]
    Truncated,
}

impl HttpError {
    /// The bytes look like an HTTP/1.x request (its request line parsed) whose framing or size
    /// a server rejects and closes the connection on; anything else that fails is not HTTP/1.x.
    pub fn is_ambiguous_framing(&self) -> bool {
        !matches!(self, HttpError::MalformedHead(_) | HttpError::Truncated)
    }
}

/// How a request's body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding; ends with a zero-size chunk and optional trailers.
    Chunked,
    /// Responses only: the body runs until the server closes the connection.
    UntilClose,
}

/// What the cutter needs to know about a complete request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes from the start of the request line to the end of the blank line after the headers.
    pub len: usize,
    pub framing: BodyFraming,
    /// After this request the connection may stop being HTTP/1.x.
    pub switch: Option<ProtocolSwitch>,
}

/// Why a connection may leave HTTP/1.x after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolSwitch {
    /// `Upgrade:` header (websocket, h2c), once the server agreed (`101`).
    Upgrade,
    /// `CONNECT` method: the connection becomes a tunnel.
    Connect,
}

/// Parses a request head at the start of `buf`; `Ok(None)` means the head is not complete yet.
/// Refuses what a server would refuse (see the module documentation).
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, HttpError> {
    // Uninitialised slots: zeroing 128 headers cost more than parsing a typical GET.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let status = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(error) if request.version.is_some() => return Err(HttpError::MalformedHeaders(error)),
        // The error lies past the longest request line: had the bytes arrived in pieces, the
        // line would have been refused as too long first, and the verdict must not depend on
        // how the bytes were segmented.
        Err(_) if request_line_outgrows_limit(buf) => return Err(HttpError::RequestLineTooLong),
        Err(error) => return Err(HttpError::MalformedHead(error)),
    };
    let head_len = match status {
        httparse::Status::Partial => buf.len(),
        httparse::Status::Complete(len) => len,
    };
    fits_header_buffers(&buf[..head_len])?;
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    let switch = if request.method == Some("CONNECT") {
        Some(ProtocolSwitch::Connect)
    } else if request
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
    {
        Some(ProtocolSwitch::Upgrade)
    } else {
        None
    };
    Ok(Some(RequestHead {
        len,
        framing: request_framing(request.version == Some(0), request.headers)?,
        switch,
    }))
}

/// Whether the first [`MAX_REQUEST_LINE_BYTES`] + 1 bytes of `buf` are a request line still
/// unfinished and valid so far.
fn request_line_outgrows_limit(buf: &[u8]) -> bool {
    let Some(prefix) = buf.get(..=MAX_REQUEST_LINE_BYTES) else {
        return false;
    };
    let mut request = httparse::Request::new(&mut []);
    matches!(request.parse(prefix), Ok(httparse::Status::Partial))
}

/// Whether `head` (complete, or as much of it as has arrived) fits the header buffers of a
/// default nginx: the first 1 KiB buffer, then at most four 8 KiB ones, where a line that does
/// not fit in the current buffer moves whole to the next. So a head of five 4100-byte header
/// lines (20 KiB) is refused, one of four 8000-byte lines (32 KiB) accepted, as nginx does.
pub fn fits_header_buffers(head: &[u8]) -> Result<(), HttpError> {
    if head.len() <= FIRST_HEADER_BUFFER_BYTES {
        return Ok(());
    }
    let mut buffer_end = FIRST_HEADER_BUFFER_BYTES;
    let mut large_buffers = 0;
    let mut line_start = 0;
    while line_start < head.len() {
        let line_end = head[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |lf| line_start + lf + 1);
        if line_end > buffer_end {
            // nginx moves the line to a fresh large buffer, if one is left and it fits there.
            let too_long = if line_start == 0 {
                line_end > MAX_REQUEST_LINE_BYTES
            } else {
                line_end - line_start > MAX_HEADER_LINE_BYTES
            };
            if too_long && line_start == 0 {
                return Err(HttpError::RequestLineTooLong);
            }
            if too_long {
                return Err(HttpError::HeaderLineTooLong);
            }
            large_buffers += 1;
            if large_buffers > LARGE_HEADER_BUFFERS {
                return Err(HttpError::HeadTooLarge);
            }
            buffer_end = line_start + MAX_HEADER_LINE_BYTES;
        }
        line_start = line_end;
    }
    Ok(())
}

/// What the response cutter (and the replayer reading a target's answer) needs to know about
/// a complete response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub framing: BodyFraming,
    /// The server keeps the connection open after this response.
    pub persists: bool,
}

impl ResponseHead {
    /// 1xx other than 101: an interim response (e.g. `100 Continue`); the final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses a response head at the start of `buf`; `Ok(None)` means it is not complete yet.
/// `answers_head` says whether the request was HEAD, whose response never has a body.
pub fn parse_response_head(
    buf: &[u8],
    answers_head: bool,
) -> Result<Option<ResponseHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).map_err(HttpError::MalformedHead)? {
        httparse::Status::Partial if buf.len() > MAX_HEAD_BYTES => {
            return Err(HttpError::HeadTooLarge);
        }
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) if len > MAX_HEAD_BYTES => {
            return Err(HttpError::HeadTooLarge);
        }
        httparse::Status::Complete(len) => len,
    };
    let status = response.code.unwrap_or_default();
    let framing = response_framing(status, answers_head, response.headers)?;
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        // A body delimited by the close ends the connection; so does a switch of protocol.
        persists: framing != BodyFraming::UntilClose
            && status != 101
            && connection_persists(response.version.unwrap_or(1), response.headers),
    }))
}

fn response_framing(
    status: u16,
    answers_head: bool,
    headers: &[httparse::Header<'_>],
) -> Result<BodyFraming, HttpError> {
    // RFC 9112 section 6.3: these responses end at their head whatever their headers say.
    let bodiless = answers_head || (100..200).contains(&status) || status == 204 || status == 304;
    if bodiless {
        return Ok(BodyFraming::Empty);
    }
    match body_framing(headers) {
        Ok(BodyFraming::Empty) if !has_content_length(headers) => Ok(BodyFraming::UntilClose),
        // A transfer coding other than chunked is delimited by the close.
        Err(HttpError::UnsupportedTransferEncoding) => Ok(BodyFraming::UntilClose),
        other => other,
    }
}

fn has_content_length(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length"))
}

/// What a redacted header's value becomes.
pub const REDACTED: &str = "REDACTED";

/// `message` (a complete request or response) with the values of the header fields named in
/// `names` (lowercase) replaced by [`REDACTED`], in the head and in a chunked body's trailer
/// section alike; everything else is kept byte for byte. The message is returned as is when
/// no such field is present. Err when a chunked body cannot be walked to its trailers: the
/// caller then drops the message rather than send a trailer unredacted.
pub fn redact_headers(message: &Bytes, names: &[String]) -> Result<Bytes, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = MessageHead::parse(message, &mut slots)?;
    let mut trailer_slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let trailers = match head.framing() {
        Ok(BodyFraming::Chunked) => trailer_fields(message, head.len, &mut trailer_slots)?,
        _ => &[],
    };
    let redacted = |name: &str| names.iter().any(|n| n.eq_ignore_ascii_case(name));
    let mut values = head
        .headers
        .iter()
        .chain(trailers.iter())
        .filter(|field| redacted(field.name))
        .peekable();
    if values.peek().is_none() {
        return Ok(message.clone());
    }
    let mut out = BytesMut::with_capacity(message.len());
    let mut copied = 0;
    for field in values {
        // httparse hands out values as slices of the message (empty ones included).
        let span = span_in(message, field.value)
            .ok_or(HttpError::MalformedHead(httparse::Error::HeaderValue))?;
        out.extend_from_slice(&message[copied..span.start]);
        out.extend_from_slice(REDACTED.as_bytes());
        copied = span.end;
    }
    out.extend_from_slice(&message[copied..]);
    Ok(out.freeze())
}

/// The fields of the trailer section of the chunked body that starts at `body_start`.
fn trailer_fields<'b, 'h>(
    message: &'b [u8],
    body_start: usize,
    slots: &'h mut [httparse::Header<'b>],
) -> Result<&'h [httparse::Header<'b>], HttpError> {
    let body = &message[body_start..];
    let mut scanner = ChunkedScanner::default();
    let end = scanner.advance(body, |_| {})?.ok_or(HttpError::Truncated)?;
    let start = scanner.trailers_at().ok_or(HttpError::Truncated)?;
    match httparse::parse_headers(&body[start..end], slots) {
        Ok(httparse::Status::Complete((_, fields))) => Ok(fields),
        Ok(httparse::Status::Partial) => Err(HttpError::Truncated),
        Err(error) => Err(HttpError::MalformedHeaders(error)),
    }
}

/// The head of a complete captured message, request or response, taken apart for rewriting
/// the message: what redaction needs, where the cutters need [`RequestHead`] and
/// [`ResponseHead`].
pub(crate) struct MessageHead<'h, 'b> {
    /// Bytes from the start of the message to the end of the blank line after the headers.
    pub(crate) len: usize,
    pub(crate) headers: &'h [httparse::Header<'b>],
    /// A response's status code; `None` for a request.
    status: Option<u16>,
}

impl<'h, 'b> MessageHead<'h, 'b> {
    /// Parses the head of `message`, a request or a response as its start line says.
    pub(crate) fn parse(
        message: &'b [u8],
        slots: &'h mut [httparse::Header<'b>],
    ) -> Result<Self, HttpError> {
        let complete = |status: httparse::Result<usize>| match status {
            Ok(httparse::Status::Complete(len)) => Ok(len),
            Ok(httparse::Status::Partial) => Err(HttpError::Truncated),
            Err(error) => Err(HttpError::MalformedHead(error)),
        };
        if message.starts_with(b"HTTP/") {
            let mut response = httparse::Response::new(slots);
            let len = complete(response.parse(message))?;
            Ok(MessageHead {
                len,
                status: Some(response.code.unwrap_or_default()),
                headers: response.headers,
            })
        } else {
            let mut request = httparse::Request::new(slots);
            let len = complete(request.parse(message))?;
            Ok(MessageHead {
                len,
                status: None,
                headers: request.headers,
            })
        }
    }

    /// How the body is delimited. A response is taken to answer a request other than HEAD (a
    /// captured response to HEAD simply has no bytes after its head).
    pub(crate) fn framing(&self) -> Result<BodyFraming, HttpError> {
        match self.status {
            None => body_framing(self.headers),
            Some(status) => response_framing(status, false, self.headers),
        }
    }

    /// `message` (whose head this is) with each header value for which `new_value` returns
    /// bytes replaced by them, and `body` in place of everything after the head. The start
    /// line, header names, whitespace and line endings are kept byte for byte.
    pub(crate) fn rewrite<'v>(
        &self,
        message: &[u8],
        new_value: impl Fn(&str) -> Option<&'v [u8]>,
        body: &[u8],
    ) -> Result<Bytes, HttpError> {
        let mut out = BytesMut::with_capacity(self.len + body.len());
        let mut copied = 0;
        for header in self.headers {
            let Some(value) = new_value(header.name) else {
                continue;
            };
            // httparse hands out values as slices of the message (empty ones included).
            let span = span_in(&message[..self.len], header.value)
                .ok_or(HttpError::MalformedHead(httparse::Error::HeaderValue))?;
            out.extend_from_slice(&message[copied..span.start]);
            out.extend_from_slice(value);
            copied = span.end;
        }
        out.extend_from_slice(&message[copied..self.len]);
        out.extend_from_slice(body);
        Ok(out.freeze())
    }
}

/// Where `part`, a slice taken from `whole`, lies in it.
fn span_in(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// Methods a resynchronising cutter accepts as the start of a request line.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// Where a request line starts in bytes that began at an unknown point of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLineSearch {
    /// A request line starts at this offset.
    Found(usize),
    /// None yet; bytes before this offset can never start one and may be discarded.
    NotYet { discard: usize },
}

/// Finds the first request line (`METHOD target HTTP/1.x`) in bytes that began at an unknown
/// point of a stream, as after a gap or mid-connection. The request line may follow the previous
/// request's body on the same line (bodies rarely end in a newline), so a line qualifies by its
/// end: the HTTP version, one target, and a method token right before it.
pub fn find_request_line(buf: &[u8]) -> RequestLineSearch {
    let mut line_start = 0;
    while let Some(length) = buf[line_start..].iter().position(|&b| b == b'\n') {
        let line = &buf[line_start..line_start + length];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(offset) = request_line_offset(line) {
            return RequestLineSearch::Found(line_start + offset);
        }
        line_start += length + 1;
    }
    // The unfinished last line may still become a request line; it cannot be longer than this.
    let discard = line_start.max(buf.len().saturating_sub(MAX_REQUEST_LINE_BYTES));
    RequestLineSearch::NotYet { discard }
}

/// Where the request line inside `line` starts, if `line` ends with one.
fn request_line_offset(line: &[u8]) -> Option<usize> {
    let rest = line
        .strip_suffix(b" HTTP/1.1")
        .or_else(|| line.strip_suffix(b" HTTP/1.0"))?;
    let last_space = rest.iter().rposition(|&b| b == b' ')?;
    let target = &rest[last_space + 1..];
    if target.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let up_to_method = &rest[..=last_space];
    METHODS
        .iter()
        .find(|method| up_to_method.ends_with(method))
        .map(|method| up_to_method.len() - method.len())
}

/// A request's framing, strictly: see the module documentation for what is refused.
fn request_framing(
    http10: bool,
    headers: &[httparse::Header<'_>],
) -> Result<BodyFraming, HttpError> {
    let mut content_length = None;
    let mut transfer_encoding = None;
    for header in headers {
        let seen = if header.name.eq_ignore_ascii_case("transfer-encoding") {
            &mut transfer_encoding
        } else if header.name.eq_ignore_ascii_case("content-length") {
            &mut content_length
        } else {
            continue;
        };
        if seen.replace(header.value).is_some() {
            return Err(HttpError::RepeatedFramingHeader);
        }
    }
    match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => Err(HttpError::ConflictingFraming),
        (None, Some(_)) if http10 => Err(HttpError::ChunkedHttp10),
        (None, Some(coding)) if coding.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Ok(BodyFraming::Chunked)
        }
        (None, Some(_)) => Err(HttpError::UnsupportedTransferEncoding),
        (Some(length), None) => Ok(match parse_content_length(length)? {
            0 => BodyFraming::Empty,
            length => BodyFraming::Length(length),
        }),
        (None, None) => Ok(BodyFraming::Empty),
    }
}

/// A message's framing as RFC 9112 section 6.3 reads it, leniently: Transfer-Encoding
/// overrides Content-Length, agreeing Content-Lengths are one. For responses, and for taking
/// apart requests already cut by the strict [`request_framing`].
fn body_framing(headers: &[httparse::Header<'_>]) -> Result<BodyFraming, HttpError> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(header.value);
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(header.value)?;
            // Repeated Content-Length headers are allowed only if they agree.
            if content_length.is_some_and(|seen| seen != length) {
                return Err(HttpError::InvalidContentLength);
            }
            content_length = Some(length);
        }
    }
    if let Some(coding) = transfer_encoding {
        let last = coding.rsplit(|&b| b == b',').next().unwrap_or_default();
        return if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Ok(BodyFraming::Chunked)
        } else {
            Err(HttpError::UnsupportedTransferEncoding)
        };
    }
    Ok(match content_length {
        None | Some(0) => BodyFraming::Empty,
        Some(length) => BodyFraming::Length(length),
    })
}

/// Plain decimal digits (leading zeros allowed, as nginx allows them), at most 15 of them
/// after the zeros: far above any request limit, and no overflow to think about.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::InvalidContentLength);
    }
    let significant = &digits[digits.iter().take_while(|&&b| b == b'0').count()..];
    if significant.len() > 15 {
        return Err(HttpError::InvalidContentLength);
    }
    Ok(significant
        .iter()
        .fold(0, |length, digit| length * 10 + u64::from(digit - b'0')))
}

/// Walks a chunked body incrementally. It remembers how far it got, so bytes arriving in many
/// segments are each examined once; a body too large to hold can be walked while it streams
/// past ([`ChunkedScanner::forget_scanned`]), however large.
#[derive(Debug, Clone, Default)]
pub struct ChunkedScanner {
    /// Offset into the body of the first byte not yet examined.
    position: usize,
    state: ChunkState,
    /// Where the trailer section starts (right after the last chunk's size line), once seen.
    trailers_at: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default)]
enum ChunkState {
    #[default]
    SizeLine,
    Data {
        remaining: u64,
    },
    DataEnd,
    Trailers,
}

impl ChunkedScanner {
    /// Continues scanning `body` (all body bytes received so far, starting right after the head).
    /// Calls `on_data` with the range of each piece of chunk data. Returns the body's total
    /// length, trailers included, once the terminating chunk has been seen.
    pub fn advance(
        &mut self,
        body: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Option<usize>, HttpError> {
        loop {
            match self.state {
                ChunkState::SizeLine => {
                    let Some(line) = self.next_line(body)? else {
                        return Ok(None);
                    };
                    let size = parse_chunk_size(line)?;
                    self.position += line.len() + 2;
                    self.state = if size == 0 {
                        self.trailers_at = Some(self.position);
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data { remaining: size }
                    };
                }
                ChunkState::Data { remaining } => {
                    let available = (body.len() - self.position) as u64;
                    let take = available.min(remaining) as usize;
                    if take > 0 {
                        on_data(self.position..self.position + take);
                    }
                    self.position += take;
                    let remaining = remaining - take as u64;
                    if remaining > 0 {
                        self.state = ChunkState::Data { remaining };
                        return Ok(None);
                    }
                    self.state = ChunkState::DataEnd;
                }
                ChunkState::DataEnd => {
                    let Some(end) = body.get(self.position..self.position + 2) else {
                        return Ok(None);
                    };
                    if end != b"\r\n" {
                        return Err(HttpError::MalformedChunkedBody);
                    }
                    self.position += 2;
                    self.state = ChunkState::SizeLine;
                }
                ChunkState::Trailers => {
                    let Some(line) = self.next_line(body)? else {
                        return Ok(None);
                    };
                    self.position += line.len() + 2;
                    if line.is_empty() {
                        return Ok(Some(self.position));
                    }
                }
            }
        }
    }

    /// Where the trailer section starts in the body, once the last chunk has been seen.
    pub fn trailers_at(&self) -> Option<usize> {
        self.trailers_at
    }

    /// Forgets the bytes examined so far and returns how many: the caller discards that many
    /// from the front of the body and passes only the rest from now on. What is kept is at most
    /// an unfinished chunk-size or trailer line.
    pub fn forget_scanned(&mut self) -> usize {
        self.trailers_at = None;
        std::mem::take(&mut self.position)
    }

    /// `missing` body bytes right after those examined will never arrive. True if they all
    /// fall inside the current chunk's data, so the framing is still known and scanning goes
    /// on after them; false if the framing is lost.
    pub fn skip_missing(&mut self, missing: u64) -> bool {
        match self.state {
            ChunkState::Data { remaining } if missing <= remaining => {
                self.state = if missing == remaining {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data {
                        remaining: remaining - missing,
                    }
                };
                true
            }
            _ => false,
        }
    }

    /// The CRLF-terminated line at the current position, without its CRLF.
    fn next_line<'a>(&self, body: &'a [u8]) -> Result<Option<&'a [u8]>, HttpError> {
        let rest = &body[self.position..];
        match rest.windows(2).position(|pair| pair == b"\r\n") {
            Some(end) if end <= MAX_CHUNK_LINE_BYTES => Ok(Some(&rest[..end])),
            Some(_) => Err(HttpError::MalformedChunkedBody),
            None if rest.len() > MAX_CHUNK_LINE_BYTES => Err(HttpError::MalformedChunkedBody),
            None => Ok(None),
        }
    }
}

/// `chunk-size [ BWS ";" chunk-ext ]`: hex digits from the very start of the line (nginx
/// refuses ` 3`, `+3`, `0x3`), leading zeros allowed, at most 15 significant digits; spaces or
/// tabs may follow the digits, as nginx accepts. Extensions carry nothing we replay.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let after = line[digits..].trim_ascii_start();
    if digits == 0 || !(after.is_empty() || after[0] == b';') {
        return Err(HttpError::MalformedChunkedBody);
    }
    let zeros = line.iter().take_while(|&&b| b == b'0').count().min(digits);
    let significant = &line[zeros..digits];
    if significant.len() > 15 {
        return Err(HttpError::MalformedChunkedBody);
    }
    Ok(significant.iter().fold(0, |size, &digit| {
        // Hex digits only, checked above.
        size * 16 + u64::from(char::from(digit).to_digit(16).unwrap_or_default())
    }))
}

/// A message body with its transfer coding removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBody {
    pub body: Bytes,
    /// Bytes after the head that the body took, coding and trailers included; what follows
    /// is not part of this message.
    pub consumed: usize,
    /// A chunked body's trailer section as captured: its fields and the blank line that ends
    /// it (just CRLF when there are none). Empty for other framings.
    pub trailers: Bytes,
}

/// Decodes the body that `framing` delimits in `rest`, the bytes after a complete head: the
/// one place a body is taken out of its framing.
pub fn decode_body(rest: &Bytes, framing: BodyFraming) -> Result<DecodedBody, HttpError> {
    match framing {
        BodyFraming::Empty => Ok(DecodedBody {
            body: Bytes::new(),
            consumed: 0,
            trailers: Bytes::new(),
        }),
        BodyFraming::Length(length) => {
            let length = usize::try_from(length).map_err(|_| HttpError::Truncated)?;
            if rest.len() < length {
                return Err(HttpError::Truncated);
            }
            Ok(DecodedBody {
                body: rest.slice(..length),
                consumed: length,
                trailers: Bytes::new(),
            })
        }
        BodyFraming::UntilClose => Ok(DecodedBody {
            body: rest.clone(),
            consumed: rest.len(),
            trailers: Bytes::new(),
        }),
        BodyFraming::Chunked => {
            let mut decoded = BytesMut::with_capacity(rest.len());
            let mut scanner = ChunkedScanner::default();
            let consumed = scanner
                .advance(rest, |range| decoded.extend_from_slice(&rest[range]))?
                .ok_or(HttpError::Truncated)?;
            let trailers_at = scanner.trailers_at().unwrap_or(consumed);
            Ok(DecodedBody {
                body: decoded.freeze(),
                consumed,
                trailers: rest.slice(trailers_at..consumed),
            })
        }
    }
}

/// The header fields of the head at the start of `message` (a request or a response), names
/// as received and in order: what comparing two responses' headers reads.
pub fn header_fields(message: &[u8]) -> Result<Vec<(String, Vec<u8>)>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = MessageHead::parse(message, &mut slots)?;
    Ok(head
        .headers
        .iter()
        .map(|header| (header.name.to_owned(), header.value.to_vec()))
        .collect())
}

/// A complete captured request located in its own bytes, so that it can be sent again byte for
/// byte: every range indexes the captured message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLayout {
    pub method: std::ops::Range<usize>,
    /// The request-target as sent (origin-form, absolute-form, ...).
    pub target: std::ops::Range<usize>,
    /// From the space before the version to the end of the request line: ` HTTP/1.1\r\n`.
    pub line_tail: std::ops::Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Every header line, in order, duplicates kept.
    pub fields: Vec<FieldLayout>,
    /// The body as captured, its transfer coding (chunks, trailers) included.
    pub body: std::ops::Range<usize>,
    pub framing: BodyFraming,
    /// The client let the connection stay open after this request (RFC 9112 section 9.3).
    pub persists: bool,
}

/// One header line: its name and value, and the whole line with its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLayout {
    pub line: std::ops::Range<usize>,
    pub name: std::ops::Range<usize>,
    pub value: std::ops::Range<usize>,
}

/// Locates the parts of `raw`, which must hold one complete request (bytes after its body are
/// not part of it).
pub fn request_layout(raw: &[u8]) -> Result<RequestLayout, HttpError> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = request.parse_with_uninit_headers(raw, &mut slots);
    let head_len = match parsed.map_err(HttpError::MalformedHead)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Err(HttpError::Truncated),
    };
    let head = &raw[..head_len];
    let span =
        |part: &[u8]| span_in(head, part).ok_or(HttpError::MalformedHead(httparse::Error::Token));
    let method = span(request.method.unwrap_or_default().as_bytes())?;
    let target = span(request.path.unwrap_or_default().as_bytes())?;
    let request_line_end = line_end(head, target.end);
    let minor_version = request.version.unwrap_or(1);
    let mut fields = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = span(header.name.as_bytes())?;
        // An empty value is not always a slice of the message; it sits before the line end.
        let value = match span_in(head, header.value) {
            Some(value) if !header.value.is_empty() => value,
            _ => {
                let colon = name.end;
                let end = line_end(head, colon);
                let content_end = head[..end].trim_ascii_end().len().max(colon + 1);
                content_end..content_end
            }
        };
        fields.push(FieldLayout {
            line: name.start..line_end(head, value.end),
            name,
            value,
        });
    }
    // Strictly, as the listener cuts: a record framed otherwise (from a file, or a listener of
    // another kind) could be read one way by the replayer and another by the target.
    let framing = request_framing(minor_version == 0, request.headers)?;
    let body_len = match framing {
        BodyFraming::Empty => 0,
        BodyFraming::Length(length) => {
            let length = usize::try_from(length).map_err(|_| HttpError::Truncated)?;
            if raw.len() - head_len < length {
                return Err(HttpError::Truncated);
            }
            length
        }
        BodyFraming::Chunked => ChunkedScanner::default()
            .advance(&raw[head_len..], |_| {})?
            .ok_or(HttpError::Truncated)?,
        BodyFraming::UntilClose => raw.len() - head_len,
    };
    let persists = connection_persists(minor_version, request.headers);
    Ok(RequestLayout {
        line_tail: target.end..request_line_end,
        method,
        target,
        minor_version,
        fields,
        body: head_len..head_len + body_len,
        framing,
        persists,
    })
}

/// Where the line containing `from` ends, just after its `\n`.
fn line_end(head: &[u8], from: usize) -> usize {
    head[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |newline| from + newline + 1)
}

/// Whether a message's sender keeps the connection open after it: HTTP/1.1 unless
/// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive` (RFC 9112 section 9.3).
fn connection_persists(minor_version: u8, headers: &[httparse::Header<'_>]) -> bool {
    let has_option = |option: &[u8]| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(option))
    };
    if has_option(b"close") {
        return false;
    }
    minor_version >= 1 || has_option(b"keep-alive")
}

impl ChunkedScanner {
    /// Forgets the body bytes already examined and returns how many they were: the caller
    /// drops that many from the front of its buffer, so a long chunked body is walked in
    /// bounded memory.
    pub fn release_examined(&mut self) -> usize {
        std::mem::take(&mut self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_without_body_headers_has_empty_body() {
        let request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let head = parse_request_head(&[request.as_slice(), b"rest"].concat()).unwrap();
        assert_eq!(
            head,
            Some(RequestHead {
                len: request.len(),
                framing: BodyFraming::Empty,
                switch: None,
            })
        );
    }

    #[test]
    fn upgrade_and_connect_are_flagged() {
        let upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let connect = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n";
        let switch = |raw: &[u8]| parse_request_head(raw).unwrap().unwrap().switch;
        assert_eq!(switch(upgrade), Some(ProtocolSwitch::Upgrade));
        assert_eq!(switch(connect), Some(ProtocolSwitch::Connect));
    }

    #[test]
    fn request_line_is_found_after_arbitrary_bytes() {
        let stream = b"dy bytes\r\nmore\nPOST /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let post = stream.windows(4).position(|w| w == b"POST").unwrap();
        assert_eq!(find_request_line(stream), RequestLineSearch::Found(post));
        assert_eq!(
            find_request_line(b"GET /a HTTP/1.1\r\n"),
            RequestLineSearch::Found(0)
        );
        // The previous body did not end in a newline.
        assert_eq!(
            find_request_line(b"x\r\nhelloGET /a HTTP/1.1\r\n"),
            RequestLineSearch::Found(8)
        );
    }

    #[test]
    fn partial_request_line_is_kept_and_junk_discarded() {
        assert_eq!(
            find_request_line(b"junk\r\nPOS"),
            RequestLineSearch::NotYet { discard: 6 }
        );
        assert_eq!(
            find_request_line(b"junk\r\nGET /not-finished"),
            RequestLineSearch::NotYet { discard: 6 }
        );
        let not_a_request_line = b"body text GET / HTTP/1.1 in the middle\r\n";
        assert_eq!(
            find_request_line(&[not_a_request_line.as_slice(), b"xx"].concat()),
            RequestLineSearch::NotYet {
                discard: not_a_request_line.len()
            }
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing =
            |raw: &[u8], head: bool| parse_response_head(raw, head).unwrap().unwrap().framing;
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(framing(sized, false), BodyFraming::Length(5));
        assert_eq!(framing(sized, true), BodyFraming::Empty, "HEAD");
        assert_eq!(
            framing(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                false
            ),
            BodyFraming::Empty
        );
        assert_eq!(
            framing(b"HTTP/1.1 304 Not Modified\r\n\r\n", false),
            BodyFraming::Empty
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\n\r\n", false),
            BodyFraming::UntilClose
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            BodyFraming::Chunked
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            BodyFraming::Empty
        );
        let interim = parse_response_head(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(interim.is_interim());
        assert_eq!(interim.framing, BodyFraming::Empty);
    }

    #[test]
    fn redaction_replaces_only_the_named_values() {
        let raw = Bytes::from_static(
            b"POST /login HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer abc\r\nCookie: s=1\r\nContent-Length: 2\r\n\r\nok",
        );
        let names = ["authorization".to_owned(), "cookie".to_owned()];
        let redacted = redact_headers(&raw, &names).unwrap();
        assert_eq!(
            redacted,
            "POST /login HTTP/1.1\r\nHost: a\r\nAuthorization: REDACTED\r\nCookie: REDACTED\r\nContent-Length: 2\r\n\r\nok"
        );
        let response = Bytes::from_static(b"HTTP/1.1 200 OK\r\nSet-Cookie: s=2\r\n\r\n");
        assert_eq!(
            redact_headers(&response, &["set-cookie".to_owned()]).unwrap(),
            "HTTP/1.1 200 OK\r\nSet-Cookie: REDACTED\r\n\r\n"
        );
        let untouched = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(redact_headers(&untouched, &names).unwrap(), untouched);
    }

    #[test]
    fn redaction_keeps_the_rest_of_the_head_byte_for_byte() {
        let raw = Bytes::from_static(
            b"GET / HTTP/1.1\nX-Empty:\r\nauthorization:Bearer abc  \r\nHost:\ta\n\r\nbody",
        );
        assert_eq!(
            redact_headers(&raw, &["authorization".to_owned(), "x-empty".to_owned()]).unwrap(),
            "GET / HTTP/1.1\nX-Empty:REDACTED\r\nauthorization:REDACTED  \r\nHost:\ta\n\r\nbody"
        );
    }

    #[test]
    fn partial_head_is_incomplete_not_an_error() {
        assert_eq!(
            parse_request_head(b"POST /a HTTP/1.1\r\nHost: x\r\n"),
            Ok(None)
        );
        assert_eq!(parse_request_head(b""), Ok(None));
    }

    /// Each of these made nginx 1.22 answer 400, 414 or 501 and close the connection, so a
    /// request pipelined after it was never served.
    const SMUGGLING_SHAPES: &[(&str, &[u8], HttpError)] = &[
        (
            "CL and TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            HttpError::ConflictingFraming,
        ),
        (
            "HTTP/1.0 chunked",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            HttpError::ChunkedHttp10,
        ),
        (
            "gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            HttpError::UnsupportedTransferEncoding,
        ),
        (
            "chunked, chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            HttpError::UnsupportedTransferEncoding,
        ),
        (
            "identity",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            HttpError::UnsupportedTransferEncoding,
        ),
        (
            "two TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            HttpError::RepeatedFramingHeader,
        ),
        (
            "two identical CL",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            HttpError::RepeatedFramingHeader,
        ),
        (
            "CL list",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            HttpError::InvalidContentLength,
        ),
        (
            "CL sign",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            HttpError::InvalidContentLength,
        ),
        (
            "CL inner space",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n",
            HttpError::InvalidContentLength,
        ),
        (
            "CL too long",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            HttpError::InvalidContentLength,
        ),
        (
            "space before colon",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\n",
            HttpError::MalformedHeaders(httparse::Error::HeaderName),
        ),
        (
            "obs-fold",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
            HttpError::MalformedHeaders(httparse::Error::HeaderName),
        ),
        (
            "bare CR",
            b"POST / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n",
            HttpError::MalformedHeaders(httparse::Error::HeaderValue),
        ),
    ];

    #[test]
    fn smuggling_shapes_are_ambiguous_framing() {
        for (shape, head, expected) in SMUGGLING_SHAPES {
            let result = parse_request_head(head);
            assert_eq!(result, Err(*expected), "{shape}");
            assert!(expected.is_ambiguous_framing(), "{shape}");
        }
    }

    #[test]
    fn framing_nginx_accepts_is_accepted() {
        let framing = |raw: &[u8]| parse_request_head(raw).unwrap().unwrap().framing;
        for (head, expected) in [
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n".as_slice(),
                BodyFraming::Chunked,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding:  chunked \r\n\r\n",
                BodyFraming::Chunked,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 003\r\n\r\n",
                BodyFraming::Length(3),
            ),
            (
                b"POST / HTTP/1.0\r\nContent-Length: 3 \r\n\r\n",
                BodyFraming::Length(3),
            ),
            (
                b"POST / HTTP/1.1\nHost: a\nContent-Length: 3\n\n",
                BodyFraming::Length(3),
            ),
        ] {
            assert_eq!(framing(head), expected, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn request_line_and_header_lines_are_limited_like_nginx() {
        let with_line = |len: usize| {
            let pad = len - b"GET / HTTP/1.1\r\n".len();
            format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(pad))
        };
        assert!(parse_request_head(with_line(8192).as_bytes()).is_ok());
        let too_long = with_line(8193);
        assert_eq!(
            parse_request_head(too_long.as_bytes()),
            Err(HttpError::RequestLineTooLong)
        );
        // Refused as soon as the line is known to be too long, before its end arrives.
        assert_eq!(
            parse_request_head(&too_long.as_bytes()[..8200]),
            Err(HttpError::RequestLineTooLong)
        );
        let with_header = |len: usize| {
            let pad = len - b"X-Big: \r\n".len();
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
                "b".repeat(pad)
            )
        };
        assert!(parse_request_head(with_header(8192).as_bytes()).is_ok());
        assert_eq!(
            parse_request_head(with_header(8193).as_bytes()),
            Err(HttpError::HeaderLineTooLong)
        );
    }

    #[test]
    fn head_must_fit_nginx_header_buffers() {
        let head = |lines: usize, line_len: usize| {
            let mut head = "GET / HTTP/1.1\r\nHost: a\r\n".to_owned();
            for i in 0..lines {
                let name = format!("X-{i}: ");
                head.push_str(&name);
                head.push_str(&"c".repeat(line_len - name.len() - 2));
                head.push_str("\r\n");
            }
            head + "\r\n"
        };
        // Measured on nginx 1.22: accepted, accepted, refused (400).
        assert!(parse_request_head(head(4, 8000).as_bytes()).is_ok());
        assert!(parse_request_head(head(4, 4100).as_bytes()).is_ok());
        assert_eq!(
            parse_request_head(head(5, 4100).as_bytes()),
            Err(HttpError::HeadTooLarge)
        );
        assert!(HttpError::HeadTooLarge.is_ambiguous_framing());
    }

    #[test]
    fn chunk_sizes_are_read_like_nginx() {
        let size = |line: &[u8]| parse_chunk_size(line).ok();
        assert_eq!(size(b"1a"), Some(26));
        assert_eq!(size(b"3 "), Some(3));
        assert_eq!(size(b"3;ext=1"), Some(3));
        assert_eq!(size(b"3 ;ext"), Some(3));
        assert_eq!(size(b"00000000000000003"), Some(3));
        for refused in [
            b" 3".as_slice(),
            b"+3",
            b"0x3",
            b"",
            b"3 x",
            b"ffffffffffffffff",
        ] {
            assert_eq!(size(refused), None, "{}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn only_a_bad_request_line_is_not_http() {
        assert_eq!(
            parse_request_head(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HttpError::MalformedHead(httparse::Error::Version))
        );
        assert!(!HttpError::MalformedHead(httparse::Error::Token).is_ambiguous_framing());
        assert!(HttpError::MalformedChunkedBody.is_ambiguous_framing());
    }

    #[test]
    fn trailers_are_redacted_like_headers() {
        let raw = Bytes::from_static(
            b"POST /u HTTP/1.1\r\nAuthorization: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nauthorization:  Bearer t \r\nX-Keep: 1\r\n\r\n",
        );
        assert_eq!(
            redact_headers(&raw, &["authorization".to_owned()]).unwrap(),
            "POST /u HTTP/1.1\r\nAuthorization: REDACTED\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nauthorization:  REDACTED \r\nX-Keep: 1\r\n\r\n"
        );
        let response = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nSet-Cookie: s\r\n\r\n",
        );
        assert_eq!(
            redact_headers(&response, &["set-cookie".to_owned()]).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nSet-Cookie: REDACTED\r\n\r\n"
        );
        // A chunked body that cannot be walked to its trailers is refused, never sent as is.
        let broken =
            Bytes::from_static(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert!(redact_headers(&broken, &["authorization".to_owned()]).is_err());
    }

    #[test]
    fn chunked_body_can_be_walked_without_holding_it() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\nNEXT";
        let mut scanner = ChunkedScanner::default();
        let mut held: Vec<u8> = Vec::new();
        let mut walked = 0;
        let mut end = None;
        for &byte in body.iter() {
            held.push(byte);
            if let Some(len) = scanner.advance(&held, |_| {}).unwrap() {
                end = Some(walked + len);
                break;
            }
            let scanned = scanner.forget_scanned();
            held.drain(..scanned);
            walked += scanned;
            assert!(held.len() <= 6, "only an unfinished line is held");
        }
        assert_eq!(end, Some(body.len() - 4));
    }

    #[test]
    fn bytes_missing_inside_chunk_data_keep_the_framing() {
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.advance(b"a\r\n0123", |_| {}), Ok(None));
        scanner.forget_scanned();
        // Four of the six remaining data bytes never arrive.
        assert!(scanner.skip_missing(4));
        assert_eq!(scanner.advance(b"89\r\n0\r\n\r\n", |_| {}), Ok(Some(9)));
        let mut in_size_line = ChunkedScanner::default();
        assert_eq!(in_size_line.advance(b"a", |_| {}), Ok(None));
        assert!(!in_size_line.skip_missing(1));
    }

    #[test]
    fn non_numeric_content_length_is_rejected() {
        let result = parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        assert_eq!(result, Err(HttpError::InvalidContentLength));
    }

    #[test]
    fn binary_garbage_is_malformed() {
        let result = parse_request_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        assert!(
            matches!(result, Err(HttpError::MalformedHead(_))),
            "{result:?}"
        );
    }

    #[test]
    fn endless_head_is_refused() {
        let mut head = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
        head.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(parse_request_head(&head), Err(HttpError::HeaderLineTooLong));
        let many_lines = "GET / HTTP/1.1\r\n".to_owned() + &"X-A: b\r\n".repeat(5000);
        assert_eq!(
            parse_request_head(many_lines.as_bytes()),
            Err(HttpError::TooManyHeaders)
        );
    }

    #[test]
    fn chunked_body_scanned_byte_by_byte_ends_where_scanned_whole() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: yes\r\n\r\nNEXT";
        let whole = ChunkedScanner::default().advance(body, |_| {}).unwrap();
        assert_eq!(whole, Some(body.len() - 4));

        let mut scanner = ChunkedScanner::default();
        let mut data = Vec::new();
        let mut end = None;
        for received in 1..=body.len() {
            end = scanner
                .advance(&body[..received], |r| data.extend_from_slice(&body[r]))
                .unwrap();
            if end.is_some() {
                break;
            }
        }
        assert_eq!(end, whole);
        assert_eq!(data, b"Wikipedia");
    }

    #[test]
    fn chunk_without_crlf_after_data_is_malformed() {
        let result = ChunkedScanner::default().advance(b"3\r\nabcXX", |_| {});
        assert_eq!(result, Err(HttpError::MalformedChunkedBody));
    }

    #[test]
    fn chunk_size_that_is_not_hex_is_malformed() {
        let result = ChunkedScanner::default().advance(b"zz\r\n", |_| {});
        assert_eq!(result, Err(HttpError::MalformedChunkedBody));
    }

    #[test]
    fn a_request_with_a_short_body_is_truncated() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc";
        assert_eq!(request_layout(raw), Err(HttpError::Truncated));
    }

    #[test]
    fn header_fields_are_listed_as_received_in_order() {
        let response =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody";
        assert_eq!(
            header_fields(response).unwrap(),
            [
                ("Content-Type".to_owned(), b"text/plain".to_vec()),
                ("X-A".to_owned(), b"1".to_vec()),
                ("x-a".to_owned(), b"2".to_vec()),
            ]
        );
        assert_eq!(
            header_fields(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n"),
            Err(HttpError::Truncated)
        );
    }
}
