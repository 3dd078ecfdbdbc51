//! A response exactly as a target sent it, made ready to compare: its status, its header fields
//! as received, and its body out of its framing (`Content-Length`, chunked with trailers, or
//! delimited by the close) and out of its content codings (`gzip`, `x-gzip`, `deflate` zlib or
//! raw, `br`, `identity`, stacked ones undone last first). The head is read with the shared
//! HTTP/1.x grammar ([`tapwire_shared::http1`]); this module owns only the content codings.
//!
//! A target's answer is hostile input: every body, decoded, is at most `max_body` bytes, and
//! decompression streams into a buffer that never grows past `max_body + 1` bytes, so a
//! decompression bomb costs what its first `max_body` bytes cost and is refused
//! ([`DecodeError::TooLarge`]): a 10 MiB gzip bomb peaks under 2 MiB with a 1 MiB limit
//! (`tests/decode_bomb.rs`). Brotli's decoder also holds a ring buffer as large as the stream's
//! window asks, 16 MiB at most: a `br` bomb with the largest window peaks at 20 MB.

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
        for name in value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const MIB: usize = 1 << 20;

    /// A 200 response with `headers` (each ending in CRLF), a Content-Length, and `body`.
    fn response(headers: &str, body: &[u8]) -> Bytes {
        let head = format!(
            "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        );
        [head.as_bytes(), body].concat().into()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        encoder.write_all(data).unwrap();
        encoder.into_inner()
    }

    /// `body` in the chunked coding, `size` bytes a chunk, each chunk with an extension, and a
    /// trailer field.
    fn chunked(body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            out.extend_from_slice(format!("{:x};name=value\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Checksum: abc\r\n\r\n");
        out
    }

    const TEXT: &[u8] = b"{\"items\":[{\"id\":1,\"name\":\"caf\xc3\xa9\"}],\"note\":\"repeated repeated repeated\"}";

    fn body_of(raw: &Bytes) -> Bytes {
        decode(raw, false, MIB).unwrap().body
    }

    #[test]
    fn a_plain_body_is_a_slice_of_the_raw_response_not_a_copy() {
        let raw = response("Content-Type: Application/JSON; charset=UTF-8\r\n", TEXT);
        let decoded = decode(&raw, false, MIB).unwrap();
        assert_eq!(decoded.status, 200);
        assert_eq!(decoded.body, TEXT);
        assert_eq!(decoded.content_type.as_deref(), Some("application/json"));
        let raw_range = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
        assert!(raw_range.contains(&(decoded.body.as_ptr() as usize)));
    }

    #[test]
    fn headers_are_kept_as_received_in_order_framing_included() {
        let raw = response("X-B: 2\r\nx-a: 1\r\n", b"ok");
        let decoded = decode(&raw, false, MIB).unwrap();
        assert_eq!(
            decoded.headers,
            [
                ("X-B".to_owned(), b"2".to_vec()),
                ("x-a".to_owned(), b"1".to_vec()),
                ("Content-Length".to_owned(), b"2".to_vec()),
            ]
        );
        assert_eq!(decoded.content_type, None);
        assert_eq!(decoded.header_pairs()[1], ("x-a", b"1".as_slice()));
    }

    #[test]
    fn interim_responses_before_the_final_one_are_skipped() {
        let raw: Bytes = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                .as_slice(),
            &response("", b"final"),
        ]
        .concat()
        .into();
        let decoded = decode(&raw, false, MIB).unwrap();
        assert_eq!(
            (decoded.status, decoded.body.as_ref()),
            (200, b"final".as_slice())
        );
        assert!(decoded.headers.iter().all(|(name, _)| name != "Link"));
    }

    #[test]
    fn each_content_coding_is_undone() {
        for (coding, encoded) in [
            ("gzip", gzip(TEXT)),
            ("x-gzip", gzip(TEXT)),
            ("GZIP", gzip(TEXT)),
            ("deflate", zlib(TEXT)),
            ("deflate", raw_deflate(TEXT)),
            ("br", brotli(TEXT)),
            ("identity", TEXT.to_vec()),
        ] {
            if coding != "identity" {
                assert_ne!(encoded.as_slice(), TEXT, "{coding} encodes nothing");
            }
            let raw = response(&format!("Content-Encoding: {coding}\r\n"), &encoded);
            assert_eq!(body_of(&raw), TEXT, "{coding}");
        }
    }

    #[test]
    fn stacked_codings_are_undone_last_applied_first() {
        let twice = brotli(&gzip(TEXT));
        let raw = response("Content-Encoding: gzip, br\r\n", &twice);
        assert_eq!(body_of(&raw), TEXT);
        // The same list given as two fields.
        let raw = response("Content-Encoding: gzip\r\nContent-Encoding: br\r\n", &twice);
        assert_eq!(body_of(&raw), TEXT);
        // In the wrong order, brotli's decoder is handed gzip.
        let raw = response("Content-Encoding: br, gzip\r\n", &twice);
        assert_eq!(
            decode(&raw, false, MIB).unwrap_err().reason(),
            "bad_encoding"
        );
    }

    #[test]
    fn a_chunked_gzip_body_with_extensions_and_trailers_is_decoded() {
        let head =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n";
        let raw: Bytes = [head.as_slice(), &chunked(&gzip(TEXT), 7)].concat().into();
        assert_eq!(body_of(&raw), TEXT);
    }

    #[test]
    fn a_body_delimited_by_the_close_is_everything_after_the_head() {
        let raw =
            Bytes::from_static(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end");
        assert_eq!(body_of(&raw), b"to the end".as_slice());
    }

    #[test]
    fn an_answer_to_head_has_no_body_whatever_its_coding_says() {
        let raw = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Encoding: gzip\r\n\r\n",
        );
        assert!(decode(&raw, true, MIB).unwrap().body.is_empty());
    }

    #[test]
    fn a_gzip_bomb_is_refused_once_past_the_limit() {
        let bomb = gzip(&vec![0; 10 * MIB]);
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        let raw = response("Content-Encoding: gzip\r\n", &bomb);
        let error = decode(&raw, false, MIB).unwrap_err();
        assert!(
            matches!(error, DecodeError::TooLarge { limit: MIB }),
            "{error}"
        );
        assert_eq!(error.reason(), "too_large");
    }

    #[test]
    fn a_brotli_bomb_is_refused_once_past_the_limit() {
        let raw = response("Content-Encoding: br\r\n", &brotli(&vec![0; 10 * MIB]));
        assert_eq!(decode(&raw, false, MIB).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn a_body_of_exactly_the_limit_passes_and_one_byte_more_does_not() {
        let body = vec![b'a'; 100_000];
        let raw = response("Content-Encoding: deflate\r\n", &zlib(&body));
        assert_eq!(
            decode(&raw, false, body.len()).unwrap().body.len(),
            body.len()
        );
        assert_eq!(
            decode(&raw, false, body.len() - 1).unwrap_err().reason(),
            "too_large"
        );
        // Not encoded at all, the limit holds as well.
        let raw = response("", &body);
        assert_eq!(
            decode(&raw, false, body.len() - 1).unwrap_err().reason(),
            "too_large"
        );
    }

    #[test]
    fn a_malformed_chunked_body_is_malformed() {
        let raw = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX0\r\n\r\n",
        );
        let error = decode(&raw, false, MIB).unwrap_err();
        assert!(
            matches!(
                error,
                DecodeError::Malformed(HttpError::MalformedChunkedBody)
            ),
            "{error}"
        );
        assert_eq!(error.reason(), "malformed");
    }

    #[test]
    fn a_truncated_or_headless_response_is_malformed() {
        for raw in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".as_slice(),
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"not http at all\r\n\r\n",
            b"",
        ] {
            let error = decode(&Bytes::copy_from_slice(raw), false, MIB).unwrap_err();
            assert_eq!(
                error.reason(),
                "malformed",
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn an_unknown_coding_is_named() {
        let raw = response("Content-Encoding: gzip, ZSTD\r\n", b"whatever");
        let error = decode(&raw, false, MIB).unwrap_err();
        assert!(
            matches!(&error, DecodeError::UnknownEncoding(name) if name == "zstd"),
            "{error}"
        );
        assert_eq!(error.reason(), "unknown_encoding");
        let long = format!("Content-Encoding: {}\r\n", "x".repeat(1000));
        match decode(&response(&long, b"a"), false, MIB) {
            Err(DecodeError::UnknownEncoding(name)) => assert_eq!(name.len(), MAX_CODING_NAME),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_body_that_does_not_decode_is_a_bad_encoding() {
        let mut truncated = gzip(TEXT);
        truncated.truncate(truncated.len() - 4);
        for (coding, body) in [
            ("gzip", b"not gzip".to_vec()),
            ("gzip", truncated),
            ("br", b"\xff\xff\xff\xff not brotli".to_vec()),
        ] {
            let raw = response(&format!("Content-Encoding: {coding}\r\n"), &body);
            let error = decode(&raw, false, MIB).unwrap_err();
            assert!(
                matches!(&error, DecodeError::BadEncoding { coding: name, .. } if *name == coding),
                "{coding}: {error}"
            );
            assert_eq!(error.reason(), "bad_encoding");
        }
    }

    #[test]
    fn more_codings_than_the_limit_are_refused_before_any_work() {
        let raw = response("Content-Encoding: gzip, gzip, gzip, gzip, gzip\r\n", b"x");
        let error = decode(&raw, false, MIB).unwrap_err();
        assert!(matches!(error, DecodeError::TooManyCodings), "{error}");
        assert_eq!(error.reason(), "bad_encoding");
        let raw = response(
            "Content-Encoding: identity, gzip, identity\r\n",
            &gzip(TEXT),
        );
        assert_eq!(body_of(&raw), TEXT);
    }

    #[test]
    fn an_empty_body_with_a_coding_is_empty() {
        let raw = Bytes::from_static(b"HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\n\r\n");
        let decoded = decode(&raw, false, MIB).unwrap();
        assert_eq!((decoded.status, decoded.body.len()), (204, 0));
    }
}
