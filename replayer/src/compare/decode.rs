//! A response exactly as a target sent it, made ready to compare: its status, its header fields
//! as received, and its body out of its framing (`Content-Length`, chunked with trailers, or
//! delimited by the close) and out of its content codings (`gzip`, `x-gzip`, `deflate` zlib or
//! raw, `br`, `identity`, stacked ones undone last first). The head is read with the shared
//! HTTP/1.x grammar ([`tapwire_shared::http1`]); this module owns only the content codings.
//!
//! A target's answer is hostile input: every body, decoded, is at most `max_body` bytes, and
//! decompression streams into a buffer that never grows past `max_body + 1` bytes, so a
//! decompression bomb costs what its first `max_body` bytes cost and is refused
//! ([`DecodeError::TooLarge`]). Brotli's own window adds at most 16 MiB (the format's largest)
//! while a `br` body is decoded.

use std::io::Read;

use bytes::Bytes;
use tapwire_shared::http1::{self, HttpError};

/// Most content codings a response may stack (`gzip, br` is two); each layer may cost up to
/// `max_body`, so a long list would multiply the work.
pub const MAX_CODINGS: usize = 4;

/// Longest coding name kept in [`DecodeError::UnknownEncoding`] (it comes from the target).
const MAX_CODING_NAME: usize = 32;

/// First size of a decompression buffer, as a multiple of the compressed size (JSON and HTML
/// compress about 4 to 10 times); it doubles from there up to the limit.
const EXPANSION_GUESS: usize = 4;
const MIN_BUFFER: usize = 8 * 1024;

/// Brotli's input buffer (the decompressor reads the compressed body through it).
const BROTLI_INPUT_BUFFER: usize = 4 * 1024;

/// A response ready to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedResponse {
    pub status: u16,
    /// Header fields as received (names in their case), in order, framing ones included.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Out of its framing and content codings.
    pub body: Bytes,
    /// The media type in lower case, without parameters (`application/json`).
    pub content_type: Option<String>,
}

impl DecodedResponse {
    /// The header fields as [`super::headers::HeaderRules::differences`] takes them.
    pub fn header_pairs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect()
    }
}

/// Why a response could not be made ready to compare.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed response: {0}")]
    Malformed(#[from] HttpError),
    #[error("body larger than {limit} bytes once decoded")]
    TooLarge { limit: usize },
    #[error("unknown content coding {0:?}")]
    UnknownEncoding(String),
    #[error("body is not valid {coding}: {cause}")]
    BadEncoding {
        coding: &'static str,
        cause: std::io::Error,
    },
    #[error("more than {MAX_CODINGS} content codings")]
    TooManyCodings,
}

impl DecodeError {
    /// The reason label a response that was not compared is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::UnknownEncoding(_) => "unknown_encoding",
            DecodeError::BadEncoding { .. } | DecodeError::TooManyCodings => "bad_encoding",
        }
    }
}

/// A content coding this module undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

impl Coding {
    /// `None` for `identity`, which changes nothing.
    fn parse(name: &str) -> Result<Option<Coding>, DecodeError> {
        let coding = match name.to_ascii_lowercase().as_str() {
            "identity" => return Ok(None),
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            "br" => Coding::Brotli,
            _ => {
                let name = name.chars().take(MAX_CODING_NAME).collect::<String>();
                return Err(DecodeError::UnknownEncoding(name.to_ascii_lowercase()));
            }
        };
        Ok(Some(coding))
    }

    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
        }
    }
}

/// Decodes `raw`, one response as received (any interim `1xx` responses before it are
/// skipped); `answers_head` when it answers a HEAD request (no body, whatever the head says).
/// The decoded body is at most `max_body` bytes, or [`DecodeError::TooLarge`]. A body that is
/// neither chunked nor encoded is a slice of `raw`, not a copy.
pub fn decode(
    raw: &Bytes,
    answers_head: bool,
    max_body: usize,
) -> Result<DecodedResponse, DecodeError> {
    let mut start = 0;
    let head = loop {
        let head =
            http1::parse_response_head(&raw[start..], answers_head)?.ok_or(HttpError::Truncated)?;
        if !head.is_interim() {
            break head;
        }
        start += head.len;
    };
    let message = raw.slice(start..);
    let headers = http1::header_fields(&message)?;
    let framed = http1::decode_body(&message.slice(head.len..), head.framing)?;
    let codings = codings(&headers)?;
    let body = decode_content(framed.body, &codings, max_body)?;
    let content_type = media_type(&headers);
    Ok(DecodedResponse {
        status: head.status,
        headers,
        body,
        content_type,
    })
}

/// The content codings applied to the body, in the order they were applied (`identity`
/// left out); unknown ones and too many are refused before any work is done.
fn codings(headers: &[(String, Vec<u8>)]) -> Result<Vec<Coding>, DecodeError> {
    let mut codings = Vec::new();
    let values = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-encoding"))
        .map(|(_, value)| value);
    for value in values {
        let value = String::from_utf8_lossy(value);
        for name in value.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            if let Some(coding) = Coding::parse(name)? {
                if codings.len() == MAX_CODINGS {
                    return Err(DecodeError::TooManyCodings);
                }
                codings.push(coding);
            }
        }
    }
    Ok(codings)
}

/// The first `Content-Type`'s media type, lower case, without parameters.
fn media_type(headers: &[(String, Vec<u8>)]) -> Option<String> {
    let (_, value) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))?;
    let value = std::str::from_utf8(value).ok()?;
    let media_type = value.split(';').next()?.trim();
    (!media_type.is_empty()).then(|| media_type.to_ascii_lowercase())
}

/// `body` with `codings` undone, last applied first.
fn decode_content(
    mut body: Bytes,
    codings: &[Coding],
    max_body: usize,
) -> Result<Bytes, DecodeError> {
    for &coding in codings.iter().rev() {
        // An empty body (a 204, or a HEAD's answer with the coding's header) has nothing to undo.
        if body.is_empty() {
            break;
        }
        body = decompress(coding, &body, max_body)?;
    }
    if body.len() > max_body {
        return Err(DecodeError::TooLarge { limit: max_body });
    }
    Ok(body)
}

fn decompress(coding: Coding, input: &[u8], max_body: usize) -> Result<Bytes, DecodeError> {
    match coding {
        Coding::Gzip => read_bounded(
            flate2::bufread::MultiGzDecoder::new(input),
            coding,
            input.len(),
            max_body,
        ),
        // RFC 9110 says zlib; some servers send raw deflate, which browsers accept too. A zlib
        // stream says so in its first two bytes (method 8, header checksum a multiple of 31).
        Coding::Deflate if is_zlib_header(input) => read_bounded(
            flate2::bufread::ZlibDecoder::new(input),
            coding,
            input.len(),
            max_body,
        ),
        Coding::Deflate => read_bounded(
            flate2::bufread::DeflateDecoder::new(input),
            coding,
            input.len(),
            max_body,
        ),
        Coding::Brotli => read_bounded(
            brotli_decompressor::Decompressor::new(input, BROTLI_INPUT_BUFFER),
            coding,
            input.len(),
            max_body,
        ),
    }
}

fn is_zlib_header(input: &[u8]) -> bool {
    match input {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// Everything `reader` yields, refused as soon as it passes `max_body` bytes: the buffer
/// starts at a guess from the compressed size and doubles, never past `max_body + 1`.
fn read_bounded(
    mut reader: impl Read,
    coding: Coding,
    compressed: usize,
    max_body: usize,
) -> Result<Bytes, DecodeError> {
    let limit = max_body.saturating_add(1);
    let first = compressed
        .saturating_mul(EXPANSION_GUESS)
        .max(MIN_BUFFER)
        .min(limit);
    let mut out = vec![0; first];
    let mut filled = 0;
    loop {
        if filled == out.len() {
            if filled == limit {
                return Err(DecodeError::TooLarge { limit: max_body });
            }
            out.resize(out.len().saturating_mul(2).min(limit), 0);
        }
        match reader.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(cause) if cause.kind() == std::io::ErrorKind::Interrupted => {}
            Err(cause) => {
                return Err(DecodeError::BadEncoding {
                    coding: coding.name(),
                    cause,
                });
            }
        }
    }
    out.truncate(filled);
    Ok(Bytes::from(out))
}
