//! Redacting captured messages before they leave the host: named headers and JSON body fields.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::http1::{self, BodyFraming, HttpError, MAX_HEADERS, MessageHead, REDACTED};

/// Which parts of a captured HTTP/1 message (request or response, whole bytes: head and body)
/// to redact before it leaves the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redaction {
    /// Header names, lowercase.
    headers: Vec<String>,
    /// JSON object member names, matched exactly (case-sensitive) at any depth.
    json_fields: Vec<String>,
}

/// Why a message cannot be redacted; the caller drops it rather than send it unredacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(
        "JSON body has a content or transfer coding (compressed?), so its fields cannot be found"
    )]
    EncodedBody,
    #[error("body declared as JSON is not valid JSON (byte {offset} of the body)")]
    InvalidJson { offset: usize },
    #[error("bytes follow the end of the message body")]
    TrailingBytes,
}

impl Redaction {
    pub fn new(headers: &[String], json_fields: &[String]) -> Self {
        Redaction {
            headers: headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            json_fields: json_fields.to_vec(),
        }
    }

    /// Nothing to redact: [`Redaction::apply`] returns every message as it is.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.json_fields.is_empty()
    }

    /// The message with the named headers' values and the named JSON fields' values replaced
    /// by [`REDACTED`] (a JSON string, whatever the value was), everything else kept byte for
    /// byte. JSON fields are looked for only in bodies whose Content-Type is `application/json`
    /// or `application/*+json`.
    ///
    /// Header fields are redacted wherever they are: in the head and in a chunked body's
    /// trailer section. A Content-Length body keeps its framing with the length updated. A
    /// chunked JSON body is re-emitted as one chunk followed by its (redacted) trailers under
    /// the same head, so the head needs no surgery and the replayer still sends it chunked, as
    /// production did.
    ///
    /// Err if the message cannot be parsed, or its body is declared JSON but is not valid JSON
    /// or is compressed: the caller then drops it rather than send it unredacted.
    pub fn apply(&self, message: &Bytes) -> Result<Bytes, RedactError> {
        let message = if self.headers.is_empty() {
            message.clone()
        } else {
            http1::redact_headers(message, &self.headers)?
        };
        if self.json_fields.is_empty() {
            return Ok(message);
        }
        redact_json_body(&message, &self.json_fields)
    }
}

/// `message` with the values of the JSON members named in `fields` redacted, if its body is
/// JSON; as it is otherwise.
fn redact_json_body(message: &Bytes, fields: &[String]) -> Result<Bytes, RedactError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = MessageHead::parse(message, &mut slots)?;
    let rest = message.slice(head.len..);
    // No bytes after the head: a bodiless message, or a response to HEAD.
    if rest.is_empty() || !declares_json(head.headers) {
        return Ok(message.clone());
    }
    if is_encoded(head.headers) {
        return Err(RedactError::EncodedBody);
    }
    let framing = head.framing()?;
    let decoded = http1::decode_body(&rest, framing)?;
    if decoded.consumed < rest.len() {
        return Err(RedactError::TrailingBytes);
    }
    let trailers = decoded.trailers;
    let json = decoded.body;
    let spans =
        redacted_spans(&json, fields).map_err(|offset| RedactError::InvalidJson { offset })?;
    if spans.is_empty() {
        return Ok(message.clone());
    }
    let json = replace_spans(&json, &spans);
    let rewritten = match framing {
        BodyFraming::Length(_) => {
            let length = json.len().to_string();
            head.rewrite(
                message,
                |name| {
                    name.eq_ignore_ascii_case("content-length")
                        .then_some(length.as_bytes())
                },
                &json,
            )?
        }
        BodyFraming::Chunked => {
            let mut body = BytesMut::with_capacity(json.len() + 32);
            body.extend_from_slice(format!("{:x}\r\n", json.len()).as_bytes());
            body.extend_from_slice(&json);
            body.extend_from_slice(b"\r\n0\r\n");
            body.extend_from_slice(&trailers);
            head.rewrite(message, |_| None, &body)?
        }
        BodyFraming::Empty | BodyFraming::UntilClose => head.rewrite(message, |_| None, &json)?,
    };
    Ok(rewritten)
}

/// Whether a Content-Type header says JSON: `application/json` or `application/<type>+json`,
/// parameters aside, in any case.
fn declares_json(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-type"))
        .any(|h| {
            let media_type = h.value.split(|&b| b == b';').next().unwrap_or_default();
            let media_type = media_type.trim_ascii();
            let Some((kind, subtype)) = media_type.split_at_checked(b"application/".len()) else {
                return false;
            };
            let structured = subtype.len() > b"+json".len()
                && subtype[subtype.len() - b"+json".len()..].eq_ignore_ascii_case(b"+json");
            kind.eq_ignore_ascii_case(b"application/")
                && (subtype.eq_ignore_ascii_case(b"json") || structured)
        })
}

/// Whether the body carries a coding beyond chunked (gzip, br...), which hides its JSON.
fn is_encoded(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| {
        let plain: &[&[u8]] = if h.name.eq_ignore_ascii_case("content-encoding") {
            &[b"identity"]
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            &[b"identity", b"chunked"]
        } else {
            return false;
        };
        h.value
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|coding| {
                !coding.is_empty() && !plain.iter().any(|p| coding.eq_ignore_ascii_case(p))
            })
    })
}

/// `json` with each span replaced by the JSON string `"REDACTED"`.
fn replace_spans(json: &[u8], spans: &[Range<usize>]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + spans.len() * (REDACTED.len() + 2));
    let mut copied = 0;
    for span in spans {
        out.extend_from_slice(&json[copied..span.start]);
        out.extend_from_slice(b"\"");
        out.extend_from_slice(REDACTED.as_bytes());
        out.extend_from_slice(b"\"");
        copied = span.end;
    }
    out.extend_from_slice(&json[copied..]);
    out.freeze()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

/// The byte ranges, in order, of the values of the object members named in `fields`, at any
/// depth; a named member inside one already found is part of its span. Err is the offset at
/// which `json` stops being one valid JSON text (RFC 8259).
fn redacted_spans(json: &[u8], fields: &[String]) -> Result<Vec<Range<usize>>, usize> {
    let text = std::str::from_utf8(json).map_err(|error| error.valid_up_to())?;
    let mut cursor = Cursor { text, pos: 0 };
    // Containers open around the cursor, outermost first. On the heap, so that deep nesting in
    // captured bytes cannot overflow the stack.
    let mut open: Vec<Container> = Vec::new();
    let mut spans = Vec::new();
    // The value being redacted: where it starts, and how many containers are open around it.
    let mut redacting: Option<(usize, usize)> = None;
    cursor.skip_whitespace();
    loop {
        // A value starts at the cursor.
        match cursor.peek() {
            Some(b'{') => {
                cursor.pos += 1;
                cursor.skip_whitespace();
                if !cursor.eat(b'}') {
                    open.push(Container::Object);
                    let name = cursor.member_name()?;
                    if redacting.is_none() && is_field(name, fields) {
                        redacting = Some((cursor.pos, open.len()));
                    }
                    continue;
                }
            }
            Some(b'[') => {
                cursor.pos += 1;
                cursor.skip_whitespace();
                if !cursor.eat(b']') {
                    open.push(Container::Array);
                    continue;
                }
            }
            Some(b'"') => {
                cursor.string()?;
            }
            Some(b'-' | b'0'..=b'9') => cursor.number()?,
            Some(b't') => cursor.literal("true")?,
            Some(b'f') => cursor.literal("false")?,
            Some(b'n') => cursor.literal("null")?,
            _ => return Err(cursor.pos),
        }
        // A value ended: close what it ends, up to where the next value starts.
        loop {
            if let Some((start, depth)) = redacting
                && depth == open.len()
            {
                spans.push(start..cursor.pos);
                redacting = None;
            }
            cursor.skip_whitespace();
            match open.last() {
                None if cursor.pos == json.len() => return Ok(spans),
                None => return Err(cursor.pos),
                Some(Container::Object) if cursor.eat(b',') => {
                    cursor.skip_whitespace();
                    let name = cursor.member_name()?;
                    if redacting.is_none() && is_field(name, fields) {
                        redacting = Some((cursor.pos, open.len()));
                    }
                    break;
                }
                Some(Container::Array) if cursor.eat(b',') => {
                    cursor.skip_whitespace();
                    break;
                }
                Some(Container::Object) if cursor.eat(b'}') => {
                    open.pop();
                }
                Some(Container::Array) if cursor.eat(b']') => {
                    open.pop();
                }
                Some(_) => return Err(cursor.pos),
            }
        }
    }
}

/// Whether a member name, as written between its quotes, is one of `fields` once unescaped.
fn is_field(name: &str, fields: &[String]) -> bool {
    if !name.contains('\\') {
        return fields.iter().any(|field| field == name);
    }
    let name = unescape(name);
    fields.contains(&name)
}

/// The text of a JSON string's contents, already checked to be valid; a `\u` escape that is
/// half a surrogate pair on its own becomes U+FFFD.
fn unescape(escaped: &str) -> String {
    fn flush(units: &mut Vec<u16>, text: &mut String) {
        text.extend(
            char::decode_utf16(units.drain(..)).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)),
        );
    }
    let mut text = String::with_capacity(escaped.len());
    let mut units = Vec::new();
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut units, &mut text);
            text.push(c);
            continue;
        }
        let escape = chars.next().unwrap_or('\\');
        if escape == 'u' {
            let hex: String = chars.by_ref().take(4).collect();
            units.push(u16::from_str_radix(&hex, 16).unwrap_or(0xFFFD));
            continue;
        }
        flush(&mut units, &mut text);
        text.push(match escape {
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            other => other,
        });
    }
    flush(&mut units, &mut text);
    text
}

/// A position in a JSON text; each method passes over one token or reports where it is wrong.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        if matched {
            self.pos += 1;
        }
        matched
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Passes over `"name"`, the colon and the whitespace around it; returns the name as
    /// written, escapes included.
    fn member_name(&mut self) -> Result<&'a str, usize> {
        let name = self.string()?;
        self.skip_whitespace();
        if !self.eat(b':') {
            return Err(self.pos);
        }
        self.skip_whitespace();
        Ok(name)
    }

    /// Passes over a string; returns its contents as written, escapes included.
    fn string(&mut self) -> Result<&'a str, usize> {
        if !self.eat(b'"') {
            return Err(self.pos);
        }
        let start = self.pos;
        let bytes = self.text.as_bytes();
        loop {
            let Some(special) = bytes[self.pos..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            else {
                return Err(bytes.len());
            };
            self.pos += special;
            match bytes[self.pos] {
                b'"' => {
                    self.pos += 1;
                    // Quotes are ASCII, so both ends are character boundaries.
                    return Ok(&self.text[start..self.pos - 1]);
                }
                b'\\' => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1;
                        }
                        Some(b'u')
                            if bytes
                                .get(self.pos + 1..self.pos + 5)
                                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) =>
                        {
                            self.pos += 5;
                        }
                        _ => return Err(self.pos),
                    }
                }
                // A control character, which must be escaped.
                _ => return Err(self.pos),
            }
        }
    }

    /// Passes over `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<(), usize> {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.pos),
        }
        if self.eat(b'.') {
            self.at_least_one_digit()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.at_least_one_digit()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Result<(), usize> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.pos);
        }
        self.digits();
        Ok(())
    }

    fn literal(&mut self, word: &str) -> Result<(), usize> {
        if !self.text[self.pos..].starts_with(word) {
            return Err(self.pos);
        }
        self.pos += word.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(names: &[&str]) -> Redaction {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        Redaction::new(&[], &names)
    }

    /// A request carrying `body` as `application/json` with its Content-Length.
    fn json_request(body: &str) -> Bytes {
        Bytes::from(format!(
            "POST /api HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// The body of `fields(names).apply(json_request(body))`.
    fn redacted_body(names: &[&str], body: &str) -> String {
        let redacted = fields(names).apply(&json_request(body)).unwrap();
        let text = String::from_utf8(redacted.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.ends_with(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        body.to_owned()
    }

    #[test]
    fn nested_fields_are_redacted_at_any_depth() {
        assert_eq!(
            redacted_body(
                &["password"],
                r#"{"user": {"name": "ann", "auth": {"password": "hunter2"}}, "password": "x"}"#
            ),
            r#"{"user": {"name": "ann", "auth": {"password": "REDACTED"}}, "password": "REDACTED"}"#
        );
    }

    #[test]
    fn fields_in_arrays_of_objects_are_redacted() {
        assert_eq!(
            redacted_body(
                &["token"],
                r#"[{"token":"a","id":1},{"id":2,"token":"b"},[{"token":3}]]"#
            ),
            r#"[{"token":"REDACTED","id":1},{"id":2,"token":"REDACTED"},[{"token":"REDACTED"}]]"#
        );
    }

    #[test]
    fn field_name_as_a_string_value_is_not_redacted() {
        let body = r#"{"kind": "password", "list": ["password", {"x": "password"}]}"#;
        assert_eq!(redacted_body(&["password"], body), body);
    }

    #[test]
    fn escaped_quotes_in_strings_do_not_confuse_the_scanner() {
        assert_eq!(
            redacted_body(
                &["secret"],
                r#"{"note": "say \"secret\": \\", "secret": "a \"quoted\" \\ value", "after": "\"}"}"#
            ),
            r#"{"note": "say \"secret\": \\", "secret": "REDACTED", "after": "\"}"}"#
        );
    }

    #[test]
    fn escaped_member_names_are_matched_unescaped() {
        assert_eq!(
            redacted_body(&["password"], r#"{"pass\u0077ord": 1, "Password": 2}"#),
            r#"{"pass\u0077ord": "REDACTED", "Password": 2}"#
        );
    }

    #[test]
    fn any_value_type_becomes_the_redacted_string() {
        assert_eq!(
            redacted_body(
                &["v"],
                r#"[{"v": -1.5e+3}, {"v": {"v": [1, {"v": 2}], "w": {}}}, {"v": [1, [2]]}, {"v": null}, {"v": true}, {"v": {}}, {"v": []}]"#
            ),
            r#"[{"v": "REDACTED"}, {"v": "REDACTED"}, {"v": "REDACTED"}, {"v": "REDACTED"}, {"v": "REDACTED"}, {"v": "REDACTED"}, {"v": "REDACTED"}]"#
        );
    }

    #[test]
    fn formatting_outside_redacted_values_is_kept() {
        let body = "{\n  \"a\" : [ 1 ,2 ],\n\t\"key\"  :\n  \"v\" ,\"é\": \"ü\"\n}\n";
        assert_eq!(
            redacted_body(&["key"], body),
            "{\n  \"a\" : [ 1 ,2 ],\n\t\"key\"  :\n  \"REDACTED\" ,\"é\": \"ü\"\n}\n"
        );
    }

    #[test]
    fn content_length_is_updated_and_the_rest_of_the_head_kept() {
        let raw = Bytes::from_static(
            b"PUT /u HTTP/1.1\r\ncontent-type:Application/JSON; charset=utf-8\r\nX-A:  1\r\ncontent-length:  12\r\n\r\n{\"pin\":1234}",
        );
        assert_eq!(
            fields(&["pin"]).apply(&raw).unwrap(),
            "PUT /u HTTP/1.1\r\ncontent-type:Application/JSON; charset=utf-8\r\nX-A:  1\r\ncontent-length:  18\r\n\r\n{\"pin\":\"REDACTED\"}"
        );
    }

    #[test]
    fn chunked_body_is_reemitted_as_one_chunk_with_its_trailers() {
        let raw = Bytes::from_static(
            b"POST /c HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"pin\"\r\n3;ext=1\r\n:12\r\n2\r\n3}\r\n0\r\nX-Trailer: t\r\n\r\n",
        );
        let redacted = fields(&["pin"]).apply(&raw).unwrap();
        assert_eq!(
            redacted,
            "POST /c HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n12\r\n{\"pin\":\"REDACTED\"}\r\n0\r\nX-Trailer: t\r\n\r\n"
        );
        let layout = http1::request_layout(&redacted).unwrap();
        assert_eq!(layout.framing, BodyFraming::Chunked);
        let body = http1::decode_body(&redacted.slice(layout.body.start..), layout.framing);
        assert_eq!(body.unwrap().body, "{\"pin\":\"REDACTED\"}");
    }

    #[test]
    fn chunked_body_without_named_fields_is_kept_as_captured() {
        let raw = Bytes::from_static(
            b"POST /c HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        );
        assert_eq!(fields(&["pin"]).apply(&raw).unwrap(), raw);
    }

    #[test]
    fn truncated_chunked_body_is_refused() {
        let raw = Bytes::from_static(
            b"POST /c HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"pin\":1}\r\n",
        );
        assert_eq!(
            fields(&["pin"]).apply(&raw),
            Err(RedactError::Http(HttpError::Truncated))
        );
    }

    #[test]
    fn responses_are_redacted_sized_or_until_close() {
        let sized = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.api+json\r\nContent-Length: 16\r\n\r\n{\"token\":\"abc\"}\n",
        );
        assert_eq!(
            fields(&["token"]).apply(&sized).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.api+json\r\nContent-Length: 21\r\n\r\n{\"token\":\"REDACTED\"}\n"
        );
        let until_close = Bytes::from_static(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"token\":[1,2]}",
        );
        assert_eq!(
            fields(&["token"]).apply(&until_close).unwrap(),
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"token\":\"REDACTED\"}"
        );
    }

    #[test]
    fn response_to_head_has_no_body_to_redact() {
        let raw = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n",
        );
        assert_eq!(fields(&["token"]).apply(&raw).unwrap(), raw);
    }

    #[test]
    fn non_json_bodies_are_untouched() {
        let redaction = fields(&["token"]);
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/+json",
            "text/json",
        ] {
            let raw = Bytes::from(format!(
                "POST / HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: 15\r\n\r\n{{\"token\":\"abc\"}}"
            ));
            assert_eq!(redaction.apply(&raw).unwrap(), raw, "{content_type}");
        }
        let no_content_type =
            Bytes::from_static(b"POST / HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"token\":\"abc\"}");
        assert_eq!(redaction.apply(&no_content_type).unwrap(), no_content_type);
    }

    #[test]
    fn invalid_json_is_refused() {
        let redaction = fields(&["token"]);
        for (body, offset) in [
            (r#"{"token": "abc"#, 14),
            (r#"{"token": 01}"#, 11),
            (r#"{"a": 1,}"#, 8),
            (r#"{"a" 1}"#, 5),
            (r#"[1, 2] 3"#, 7),
            (r#"{"a": tru}"#, 6),
            (r#"{"a": "\x"}"#, 8),
            ("{\"a\": \"tab\there\"}", 10),
            ("  ", 2),
            (r#"{"token": 1.}"#, 12),
        ] {
            assert_eq!(
                redaction.apply(&json_request(body)),
                Err(RedactError::InvalidJson { offset }),
                "{body}"
            );
        }
        let latin1 = Bytes::from_static(
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\":\"\xe9\"}",
        );
        assert_eq!(
            redaction.apply(&latin1),
            Err(RedactError::InvalidJson { offset: 6 })
        );
    }

    #[test]
    fn compressed_json_is_refused() {
        let raw = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00",
        );
        assert_eq!(
            fields(&["token"]).apply(&raw),
            Err(RedactError::EncodedBody)
        );
    }

    #[test]
    fn bytes_after_the_body_are_refused() {
        let raw = Bytes::from_static(
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}{\"token\":1}",
        );
        assert_eq!(
            fields(&["token"]).apply(&raw),
            Err(RedactError::TrailingBytes)
        );
    }

    #[test]
    fn headers_and_fields_are_redacted_together() {
        let redaction = Redaction::new(&["Authorization".to_owned()], &["password".to_owned()]);
        let raw = Bytes::from_static(
            b"POST /login HTTP/1.1\r\nAuthorization: Bearer abc\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"password\":\"pw123\"}",
        );
        assert_eq!(
            redaction.apply(&raw).unwrap(),
            "POST /login HTTP/1.1\r\nAuthorization: REDACTED\r\nContent-Type: application/json\r\nContent-Length: 23\r\n\r\n{\"password\":\"REDACTED\"}"
        );
    }

    #[test]
    fn no_redaction_returns_the_message_as_is() {
        let redaction = Redaction::new(&[], &[]);
        assert!(redaction.is_empty());
        let garbage = Bytes::from_static(b"\x16\x03\x01 not http");
        assert_eq!(redaction.apply(&garbage).unwrap(), garbage);
        assert!(!fields(&["x"]).is_empty());
    }

    #[test]
    fn unparseable_message_is_refused() {
        assert!(matches!(
            fields(&["x"]).apply(&Bytes::from_static(b"\x16\x03\x01 not http\r\n\r\n")),
            Err(RedactError::Http(HttpError::MalformedHead(_)))
        ));
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let depth = 100_000;
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(redacted_body(&["x"], &body), body);
    }
}
