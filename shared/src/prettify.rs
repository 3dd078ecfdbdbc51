//! Messages made readable for display (`--prettify`): the chunked coding removed and gzip or
//! deflate bodies inflated, with `Content-Length` set to what is shown. For eyes only: what is
//! replayed or recorded is never prettified.

use std::io::Read;

use bytes::{Bytes, BytesMut};

use crate::http1::{self, MAX_HEADERS, MessageHead};

/// Most bytes a body may inflate to for display; a larger one is shown as it was.
const MAX_INFLATED_BYTES: u64 = 64 << 20;

/// `message` (a complete request or response) with its body decoded for display; as it is when
/// it has nothing to decode or cannot be decoded.
pub fn prettify(message: &Bytes) -> Bytes {
    try_prettify(message).unwrap_or_else(|| message.clone())
}

fn try_prettify(message: &Bytes) -> Option<Bytes> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = MessageHead::parse(message, &mut slots).ok()?;
    let value_of = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let chunked = value_of("transfer-encoding").is_some();
    let coding = value_of("content-encoding");
    if !chunked && coding.is_none() {
        return None;
    }
    let rest = message.slice(head.len..);
    let mut body = http1::decode_body(&rest, head.framing().ok()?).ok()?.body;
    if let Some(coding) = &coding {
        body = inflate(&body, coding)?;
    }
    let mut out = BytesMut::with_capacity(head.len + body.len());
    let start_line_end = message.iter().position(|&b| b == b'\n')? + 1;
    out.extend_from_slice(&message[..start_line_end]);
    for header in head.headers.iter() {
        let dropped = ["transfer-encoding", "content-encoding", "content-length"]
            .iter()
            .any(|name| header.name.eq_ignore_ascii_case(name));
        if !dropped {
            out.extend_from_slice(header.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(header.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    Some(out.freeze())
}

/// The body decoded from `coding` (`gzip`, `x-gzip`, `deflate`); `None` for any other coding
/// or a body that does not decode.
fn inflate(body: &[u8], coding: &str) -> Option<Bytes> {
    let mut inflated = Vec::new();
    let read = match coding {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(MAX_INFLATED_BYTES)
            .read_to_end(&mut inflated),
        // "deflate" is zlib-wrapped by the standard, raw by some servers.
        "deflate" => flate2::read::ZlibDecoder::new(body)
            .take(MAX_INFLATED_BYTES)
            .read_to_end(&mut inflated)
            .or_else(|_| {
                inflated.clear();
                flate2::read::DeflateDecoder::new(body)
                    .take(MAX_INFLATED_BYTES)
                    .read_to_end(&mut inflated)
            }),
        _ => return None,
    };
    read.ok()?;
    Some(inflated.into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_chunked_gzip_response_is_shown_decoded() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hello, readable world").unwrap();
        let compressed = gz.finish().unwrap();
        let mut message = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n{:x}\r\n",
            compressed.len()
        )
        .into_bytes();
        message.extend_from_slice(&compressed);
        message.extend_from_slice(b"\r\n0\r\n\r\n");
        let shown = prettify(&Bytes::from(message));
        assert_eq!(
            shown,
            Bytes::from_static(
                b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 21\r\n\r\nhello, readable world"
            )
        );
    }

    #[test]
    fn a_plain_or_undecodable_message_is_shown_as_it_is() {
        let plain = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(prettify(&plain), plain);
        let broken = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(prettify(&broken), broken);
    }
}
