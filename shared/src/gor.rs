//! GoReplay's `.gor` file format, read and written byte for byte as GoReplay does, so that its
//! recordings replay here and ours replay there.
//!
//! A file is a run of messages, nothing before, between or after them:
//!
//! ```text
//! <type> SP <id> SP <timestamp-ns> SP <latency-ns> LF      header line
//! <the raw HTTP message, byte for byte>                   payload
//! LF F0 9F 90 B5 F0 9F 99 88 F0 9F 99 89 LF                separator ("\n🐵🙈🙉\n")
//! ```
//!
//! `type` is `1` for a request, `2` for production's response to it, `3` for a replayed
//! (staging) response; a request and its responses share the `id` (GoReplay writes 24 lowercase
//! hex digits; older versions wrote 40). The timestamp is nanoseconds since the Unix epoch; the
//! latency (nanoseconds, `-1` when not applicable) is optional on input, since GoReplay 1.x
//! omitted it on requests. A message ends at the first line that is exactly the separator's
//! emoji: the format has no escaping, so a payload holding a whole separator line cannot be
//! represented (GoReplay splits it there too).
//!
//! [`GorReader`] reads messages from any byte stream, reporting each malformed one with its
//! byte offset and line and going on with the next; [`GorMessage::encode`] writes one.

use std::fmt;
use std::io::BufRead;

use bytes::{Bytes, BytesMut};

use crate::{RequestRecord, ResponseRecord};

/// What ends every message: a line feed, the three emoji, a line feed.
pub const SEPARATOR: &[u8] = b"\n\xF0\x9F\x90\xB5\xF0\x9F\x99\x88\xF0\x9F\x99\x89\n";
/// The separator as the reader meets it: a whole line of its own.
const SEPARATOR_LINE: &[u8] = b"\xF0\x9F\x90\xB5\xF0\x9F\x99\x88\xF0\x9F\x99\x89\n";
/// Largest message the reader keeps in memory; longer ones are skipped and reported.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadType {
    /// `1`: a request as production received it.
    Request,
    /// `2`: production's response to the request with the same id.
    Response,
    /// `3`: a replayed response, from a staging target.
    ReplayedResponse,
}

impl PayloadType {
    pub const ALL: [PayloadType; 3] = [
        PayloadType::Request,
        PayloadType::Response,
        PayloadType::ReplayedResponse,
    ];

    pub fn digit(self) -> char {
        match self {
            PayloadType::Request => '1',
            PayloadType::Response => '2',
            PayloadType::ReplayedResponse => '3',
        }
    }
}

/// The header line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GorHeader {
    pub payload_type: PayloadType,
    /// Shared by a request and its responses.
    pub id: String,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Nanoseconds; `None` is written as GoReplay's `-1`.
    pub latency_ns: Option<u64>,
}

/// One message: its header and its raw HTTP bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GorMessage {
    pub header: GorHeader,
    pub payload: Bytes,
}

impl fmt::Display for GorHeader {
    /// The header line without its line feed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} ",
            self.payload_type.digit(),
            self.id,
            self.timestamp_ns
        )?;
        match self.latency_ns {
            Some(latency) => write!(f, "{latency}"),
            None => f.write_str("-1"),
        }
    }
}

impl GorMessage {
    /// A captured request of the listener process `instance` (its latency is not captured).
    pub fn request(record: &RequestRecord, instance: u64) -> GorMessage {
        GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Request,
                id: message_id(instance, record.id),
                timestamp_ns: record.captured_at_ns,
                latency_ns: None,
            },
            payload: record.request.clone(),
        }
    }

    /// Production's response to a request of the listener process `instance`, with its
    /// latency.
    pub fn response(record: &ResponseRecord, instance: u64) -> GorMessage {
        GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Response,
                id: message_id(instance, record.request_id),
                timestamp_ns: record.captured_at_ns,
                latency_ns: Some(record.latency_ns),
            },
            payload: record.response.clone(),
        }
    }

    /// Appends the whole message as the file holds it: header line, payload, separator.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let _ = writeln!(out, "{}", self.header);
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(SEPARATOR);
    }

    /// The header line, a line feed and the payload: what GoReplay's middleware protocol
    /// hex-encodes.
    pub fn header_and_payload(&self) -> Vec<u8> {
        let mut out = format!("{}\n", self.header).into_bytes();
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses the header line and payload of one message (no separator), as the middleware
    /// protocol carries it.
    pub fn parse(raw: &[u8]) -> Result<GorMessage, String> {
        let newline = raw
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no line feed after the header")?;
        let header = parse_header(&raw[..newline])?;
        Ok(GorMessage {
            header,
            payload: Bytes::copy_from_slice(&raw[newline + 1..]),
        })
    }
}

/// `<type> <id> <timestamp>[ <latency>]`; fields after the fourth are ignored, as GoReplay does.
fn parse_header(line: &[u8]) -> Result<GorHeader, String> {
    let line = std::str::from_utf8(line).map_err(|_| "header line is not text".to_owned())?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields = line.split(' ');
    let payload_type = match fields.next() {
        Some("1") => PayloadType::Request,
        Some("2") => PayloadType::Response,
        Some("3") => PayloadType::ReplayedResponse,
        _ => {
            return Err(format!(
                "header {line:?} is not `<type> <id> <timestamp-ns>`: type must be 1, 2 or 3"
            ));
        }
    };
    let id = fields
        .next()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| format!("header {line:?} is not `<type> <id> <timestamp-ns>`: no id"))?;
    let timestamp_ns = fields
        .next()
        .and_then(|ts| ts.parse::<u64>().ok())
        .ok_or_else(|| {
            format!("header {line:?} is not `<type> <id> <timestamp-ns>`: bad timestamp")
        })?;
    // Anything after the timestamp is optional, as GoReplay reads it: a latency that is not a
    // number is no latency.
    let latency_ns = fields
        .next()
        .and_then(|latency| latency.parse::<i64>().ok())
        .and_then(|latency| u64::try_from(latency).ok());
    Ok(GorHeader {
        payload_type,
        id: id.to_owned(),
        timestamp_ns,
        latency_ns,
    })
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GorError {
    /// This message is skipped; reading goes on with the next.
    #[error("{source_name}: message at byte {offset} (line {line}): {problem}")]
    Malformed {
        source_name: String,
        offset: u64,
        line: u64,
        problem: String,
    },
    /// Reading cannot go on (an I/O error, a corrupt gzip stream).
    #[error("{source_name}: cannot read at byte {offset}: {source}")]
    Io {
        source_name: String,
        offset: u64,
        source: std::io::Error,
    },
}

impl GorError {
    /// Whether reading may go on after it.
    pub fn is_fatal(&self) -> bool {
        matches!(self, GorError::Io { .. })
    }
}

/// Reads the messages of one `.gor` stream in file order.
pub struct GorReader<R> {
    input: R,
    source_name: String,
    /// Bytes of the (decompressed) stream consumed so far.
    offset: u64,
    line: u64,
    finished: bool,
    /// The line being read, kept between messages to save an allocation per line.
    buffer: Vec<u8>,
}

impl<R: BufRead> GorReader<R> {
    /// `source_name` (a file's path) names the stream in errors.
    pub fn new(input: R, source_name: impl Into<String>) -> Self {
        GorReader {
            input,
            source_name: source_name.into(),
            offset: 0,
            line: 1,
            finished: false,
            buffer: Vec::with_capacity(256),
        }
    }

    /// Where the next message starts: its byte offset and line.
    pub fn position(&self) -> (u64, u64) {
        (self.offset, self.line)
    }

    fn malformed(&self, offset: u64, line: u64, problem: impl Into<String>) -> GorError {
        GorError::Malformed {
            source_name: self.source_name.clone(),
            offset,
            line,
            problem: problem.into(),
        }
    }

    /// The next message, or the error that made one unreadable; `None` at the end.
    pub fn next_message(&mut self) -> Option<Result<GorMessage, GorError>> {
        if self.finished {
            return None;
        }
        let mut line = std::mem::take(&mut self.buffer);
        let message = self.read_message(&mut line);
        self.buffer = line;
        message
    }

    fn read_message(&mut self, line: &mut Vec<u8>) -> Option<Result<GorMessage, GorError>> {
        let (start_offset, start_line) = (self.offset, self.line);
        let mut record = BytesMut::with_capacity(512);
        let mut oversized = false;
        loop {
            line.clear();
            let read = match read_line_capped(&mut self.input, line, MAX_MESSAGE_BYTES) {
                Ok(read) => read,
                Err(source) => {
                    self.finished = true;
                    return Some(Err(GorError::Io {
                        source_name: self.source_name.clone(),
                        offset: self.offset,
                        source,
                    }));
                }
            };
            if read == 0 {
                self.finished = true;
                if record.is_empty() && !oversized {
                    return None;
                }
                return Some(Err(self.malformed(
                    start_offset,
                    start_line,
                    "the file ends inside this message: no separator after it (truncated?)",
                )));
            }
            self.offset += read as u64;
            self.line += u64::from(line.ends_with(b"\n"));
            if line.as_slice() == SEPARATOR_LINE {
                break;
            }
            if line.len() > MAX_MESSAGE_BYTES || record.len() + line.len() > MAX_MESSAGE_BYTES {
                oversized = true;
                record.clear();
            } else if !oversized {
                record.extend_from_slice(line);
            }
        }
        if oversized {
            return Some(Err(self.malformed(
                start_offset,
                start_line,
                format!("longer than {MAX_MESSAGE_BYTES} bytes; skipped"),
            )));
        }
        // The line feed before the separator's emoji belongs to the separator.
        if record.last() != Some(&b'\n') {
            return Some(Err(self.malformed(
                start_offset,
                start_line,
                "no line feed before the separator",
            )));
        }
        record.truncate(record.len() - 1);
        let record = record.freeze();
        let Some(newline) = record.iter().position(|&b| b == b'\n') else {
            return Some(Err(self.malformed(
                start_offset,
                start_line,
                "a header line and nothing else",
            )));
        };
        match parse_header(&record[..newline]) {
            Ok(header) => Some(Ok(GorMessage {
                header,
                payload: record.slice(newline + 1..),
            })),
            Err(problem) => Some(Err(self.malformed(start_offset, start_line, problem))),
        }
    }
}

impl<R: BufRead> Iterator for GorReader<R> {
    type Item = Result<GorMessage, GorError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_message()
    }
}

/// Reads up to and including the next line feed; past `cap` bytes the rest of the line is read
/// and thrown away, keeping `cap + 1` bytes (so the caller sees it overflowed). Returns the
/// bytes consumed.
fn read_line_capped(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok(consumed);
        }
        let (part, done) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..=end], true),
            None => (available, false),
        };
        let taken = part.len();
        let room = (cap + 1).saturating_sub(line.len());
        line.extend_from_slice(&part[..taken.min(room)]);
        input.consume(taken);
        consumed += taken;
        if done {
            return Ok(consumed);
        }
    }
}

/// The id a message gets in a file: 24 lowercase hex digits, as GoReplay writes, made of a
/// 32-bit tag of the listener process and the record's 64-bit id, so ids from different
/// listener processes do not collide.
pub fn message_id(instance: u64, record_id: u64) -> String {
    format!(
        "{:08x}{record_id:016x}",
        (instance ^ (instance >> 32)) as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload_type: PayloadType, id: &str, payload: &[u8]) -> GorMessage {
        GorMessage {
            header: GorHeader {
                payload_type,
                id: id.into(),
                timestamp_ns: 1_700_000_000_123_456_789,
                latency_ns: None,
            },
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn read_all(bytes: &[u8]) -> Vec<Result<GorMessage, GorError>> {
        GorReader::new(bytes, "test.gor").collect()
    }

    #[test]
    fn a_request_is_written_exactly_as_goreplay_writes_it() {
        let request = message(
            PayloadType::Request,
            "a1b2c3d4e5f6a7b8c9d0e1f2",
            b"GET /ping HTTP/1.1\r\nHost: example.com\r\n\r\n",
        );
        let mut out = Vec::new();
        request.encode(&mut out);
        assert_eq!(
            out,
            b"1 a1b2c3d4e5f6a7b8c9d0e1f2 1700000000123456789 -1\nGET /ping HTTP/1.1\r\nHost: example.com\r\n\r\n\n\xF0\x9F\x90\xB5\xF0\x9F\x99\x88\xF0\x9F\x99\x89\n"
        );
    }

    #[test]
    fn messages_read_back_exactly_whatever_their_payload() {
        let payloads: [&[u8]; 5] = [
            b"POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\nline1\nline2",
            b"GET /bare-lf HTTP/1.1\nHost: x\n\n",
            // The separator's first bytes, but not alone on a line.
            b"POST /e HTTP/1.1\r\nContent-Length: 9\r\n\r\n\n\xF0\x9F\x90\xB5xyz",
            // Binary, ending in a line feed.
            b"POST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\n\x00\xff\n\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ];
        let mut file = Vec::new();
        let written: Vec<GorMessage> = payloads
            .iter()
            .enumerate()
            .map(|(i, payload)| {
                let kind = if i == 4 {
                    PayloadType::Response
                } else {
                    PayloadType::Request
                };
                let mut m = message(kind, &format!("{i:024x}"), payload);
                m.header.latency_ns = (i == 4).then_some(81_000);
                m
            })
            .collect();
        for m in &written {
            m.encode(&mut file);
        }
        let read: Vec<GorMessage> = read_all(&file).into_iter().map(Result::unwrap).collect();
        assert_eq!(read, written);
    }

    #[test]
    fn goreplay_1x_headers_without_latency_and_40_digit_ids_are_read() {
        let file = b"1 0123456789012345678901234567890123456789 1500000000000000000\nGET / HTTP/1.1\r\n\r\n\n\xF0\x9F\x90\xB5\xF0\x9F\x99\x88\xF0\x9F\x99\x89\n";
        let read = read_all(file);
        let m = read[0].as_ref().unwrap();
        assert_eq!(m.header.id.len(), 40);
        assert_eq!(m.header.latency_ns, None);
        assert_eq!(m.header.timestamp_ns, 1_500_000_000_000_000_000);
    }

    #[test]
    fn a_bad_header_is_reported_with_its_offset_and_the_rest_is_read() {
        let mut file = Vec::new();
        message(PayloadType::Request, "aa", b"GET /1 HTTP/1.1\r\n\r\n").encode(&mut file);
        let bad_at = file.len() as u64;
        file.extend_from_slice(b"request-without-header\nGET /x HTTP/1.1\r\n\r\n");
        file.extend_from_slice(SEPARATOR);
        message(PayloadType::Request, "bb", b"GET /3 HTTP/1.1\r\n\r\n").encode(&mut file);
        let read = read_all(&file);
        assert_eq!(read.len(), 3);
        match &read[1] {
            Err(GorError::Malformed { offset, line, .. }) => {
                assert_eq!(*offset, bad_at);
                assert_eq!(*line, 6);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read[2].as_ref().unwrap().header.id, "bb");
    }

    #[test]
    fn a_truncated_last_message_is_reported_not_dropped_silently() {
        let mut file = Vec::new();
        message(PayloadType::Request, "aa", b"GET /1 HTTP/1.1\r\n\r\n").encode(&mut file);
        file.extend_from_slice(b"1 bb 1700000000000000000 -1\nGET /2 HTT");
        let read = read_all(&file);
        assert_eq!(read.len(), 2);
        let error = read[1].as_ref().unwrap_err().to_string();
        assert!(
            error.contains("test.gor") && error.contains("ends inside"),
            "{error}"
        );
    }

    #[test]
    fn ids_are_24_hex_digits() {
        let id = message_id(0xdead_beef_0000_0001, 42);
        assert_eq!(id.len(), 24);
        assert!(id.ends_with("000000000000002a"));
    }
}
