//! Two decoded bodies compared: each is classified as JSON (compared by field path with
//! [`super::json`]), text (compared by lines, `lines[N]`) or binary (compared by length and
//! xxh3 hash, `body`); bodies of different kinds differ as one `body` type change. Paths a
//! user says to ignore ([`IgnoredPaths`]) are left out, and an ignored JSON field is not even
//! walked. [`render`] shows a body beside another in an example.
//!
//! # Ignore patterns
//!
//! A pattern is written like the paths it matches: `$.meta.generated_at`, `$.items[3]`,
//! `$["a.b"]`, `headers.x-request-id`, `lines[12]`, `status`, `body`. Besides:
//!
//! - `*` is any one key or index: `$.items[*].id`, `$.*.id`;
//! - `..` before a step matches it at any depth below: `$..request_id`, `$.data..id`;
//! - a header name may hold `*` anywhere, as in a file glob: `headers.x-*`;
//! - a pattern also ignores everything under what it matches: `$.meta` hides `$.meta.took`.
//!
//! Patterns are parsed once into steps, so matching a path costs no parsing of the patterns;
//! while two JSON bodies are walked, only fields holding fields and differing leaves are
//! matched, never equal leaves.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde_json::Value;
use similar::{Algorithm, DiffOp};

use super::decode::DecodedResponse;
use super::json::{self, Difference, DifferenceKind};

/// Most time a line diff of two texts may take; past it the diff is coarser (a changed block
/// instead of the exact lines), never slower: Myers' diff costs lines x differing lines, and one
/// hostile pair must not hold the comparison thread (15,000 comparisons a second share it).
/// Identical texts never get here.
const TEXT_DIFF_BUDGET: Duration = Duration::from_millis(5);

/// A body as it is compared.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(Value),
    Text(String),
    Binary { len: usize, hash: u64 },
}

/// JSON when the media type says so (`application/json`, `*/*+json`) and the body parses, or
/// when the body parses as a JSON object or array whatever its media type; else text when it is
/// UTF-8; else binary. serde_json refuses nesting deeper than 128, so parsing is bounded; a
/// body that does not parse is text.
pub fn classify(response: &DecodedResponse) -> Body {
    let body = &response.body;
    let declared_json = response.content_type.as_deref().is_some_and(is_json);
    if (declared_json || opens_container(body))
        && let Ok(value) = serde_json::from_slice::<Value>(body)
        && (declared_json || value.is_object() || value.is_array())
    {
        return Body::Json(value);
    }
    match std::str::from_utf8(body) {
        Ok(text) => Body::Text(text.to_owned()),
        Err(_) => Body::Binary {
            len: body.len(),
            hash: xxhash_rust::xxh3::xxh3_64(body),
        },
    }
}

fn is_json(media_type: &str) -> bool {
    matches!(media_type, "application/json" | "text/json") || media_type.ends_with("+json")
}

/// The first byte after any whitespace opens a JSON object or array.
fn opens_container(body: &[u8]) -> bool {
    matches!(body.trim_ascii_start().first(), Some(b'{' | b'['))
}

/// The differences from `expected` to `actual`, at most `limit` of those not ignored.
pub fn differences(
    expected: &Body,
    actual: &Body,
    ignored: &IgnoredPaths,
    limit: usize,
) -> Vec<Difference> {
    match (expected, actual) {
        (Body::Json(expected), Body::Json(actual)) => {
            if ignored.json.is_empty() {
                json::differences(expected, actual, limit)
            } else {
                json::differences_except(expected, actual, limit, &|path| ignored.matches(path))
            }
        }
        (Body::Text(expected), Body::Text(actual)) => {
            text_differences(expected, actual, ignored, limit)
        }
        (
            Body::Binary { len, hash },
            Body::Binary {
                len: actual_len,
                hash: actual_hash,
            },
        ) => {
            if (len, hash) == (actual_len, actual_hash) {
                Vec::new()
            } else {
                whole_body(DifferenceKind::ValueChanged, ignored, limit)
            }
        }
        _ => whole_body(DifferenceKind::TypeChanged, ignored, limit),
    }
}

fn whole_body(kind: DifferenceKind, ignored: &IgnoredPaths, limit: usize) -> Vec<Difference> {
    if limit == 0 || ignored.matches("body") {
        return Vec::new();
    }
    vec![Difference {
        path: "body".to_owned(),
        kind,
    }]
}

/// Line differences at `lines[N]`, N the 1-based line of `expected`: a removed or changed line
/// is named by itself, added lines by the expected line they follow (`lines[0]` before the
/// first), once per place lines were added. Texts that differ only in line endings or a final
/// newline differ as `body`.
fn text_differences(
    expected: &str,
    actual: &str,
    ignored: &IgnoredPaths,
    limit: usize,
) -> Vec<Difference> {
    if expected == actual {
        return Vec::new();
    }
    let old: Vec<&str> = expected.lines().collect();
    let new: Vec<&str> = actual.lines().collect();
    let deadline = Instant::now() + TEXT_DIFF_BUDGET;
    let ops = similar::capture_diff_slices_deadline(Algorithm::Myers, &old, &new, Some(deadline));
    let mut lines = LineDifferences {
        found: Vec::new(),
        ignored,
        limit,
        any: false,
    };
    for op in ops {
        match op {
            DiffOp::Equal { .. } => {}
            DiffOp::Delete {
                old_index, old_len, ..
            } => lines.each(old_index..old_index + old_len, DifferenceKind::Removed),
            DiffOp::Insert { old_index, .. } => lines.note(old_index, DifferenceKind::Added),
            DiffOp::Replace {
                old_index,
                old_len,
                new_len,
                ..
            } => {
                let changed = old_len.min(new_len);
                lines.each(old_index..old_index + changed, DifferenceKind::ValueChanged);
                lines.each(
                    old_index + changed..old_index + old_len,
                    DifferenceKind::Removed,
                );
                if new_len > old_len {
                    lines.note(old_index + old_len, DifferenceKind::Added);
                }
            }
        }
        if lines.found.len() >= limit {
            break;
        }
    }
    if lines.any {
        lines.found
    } else {
        whole_body(DifferenceKind::ValueChanged, ignored, limit)
    }
}

/// The line differences found so far.
struct LineDifferences<'a> {
    found: Vec<Difference>,
    ignored: &'a IgnoredPaths,
    limit: usize,
    /// Some line differs, ignored or not.
    any: bool,
}

impl LineDifferences<'_> {
    /// Each line in `indexes` (0-based lines of the expected text).
    fn each(&mut self, indexes: std::ops::Range<usize>, kind: DifferenceKind) {
        for index in indexes {
            self.note(index + 1, kind);
        }
    }

    /// `lines[line]`, 1-based.
    fn note(&mut self, line: usize, kind: DifferenceKind) {
        self.any = true;
        if self.found.len() >= self.limit {
            return;
        }
        let path = format!("lines[{line}]");
        if !self.ignored.matches(&path) {
            self.found.push(Difference { path, kind });
        }
    }
}

/// `body` for a side-by-side example: JSON pretty-printed, text as it is, binary as its length
/// and hash; at most `max_chars` characters, and whether it was cut.
pub fn render(body: &Body, max_chars: usize) -> (String, bool) {
    match body {
        Body::Json(value) => {
            // A character is at most 4 bytes: past that many, the text is cut anyway.
            let mut out = BoundedWriter {
                bytes: Vec::new(),
                room: max_chars.saturating_mul(4).saturating_add(4),
            };
            let _full = serde_json::to_writer_pretty(&mut out, value);
            let text = match std::str::from_utf8(&out.bytes) {
                Ok(text) => text,
                // Cut inside a character by the writer: keep the whole ones before it.
                Err(error) => std::str::from_utf8(&out.bytes[..error.valid_up_to()]).unwrap_or(""),
            };
            cut(text, max_chars)
        }
        Body::Text(text) => cut(text, max_chars),
        Body::Binary { len, hash } => cut(&format!("{len} bytes, xxh3 {hash:016x}"), max_chars),
    }
}

fn cut(text: &str, max_chars: usize) -> (String, bool) {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => (text[..end].to_owned(), true),
        None => (text.to_owned(), false),
    }
}

/// Takes bytes until it has `room` of them, then refuses: rendering a huge document stops
/// early instead of printing all of it to show the start.
struct BoundedWriter {
    bytes: Vec<u8>,
    room: usize,
}

impl std::io::Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let take = buf.len().min(self.room - self.bytes.len());
        if take == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("rendered body is long enough"));
        }
        self.bytes.extend_from_slice(&buf[..take]);
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why an ignore pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ignore pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

/// The paths a user says to ignore (see the module documentation for the patterns).
#[derive(Debug, Clone, Default)]
pub struct IgnoredPaths {
    /// Patterns starting at `$`.
    json: Vec<Vec<PatternStep>>,
    /// Patterns starting at `lines`.
    lines: Vec<Vec<PatternStep>>,
    /// Header name globs, lower case.
    headers: Vec<String>,
    status: bool,
    body: bool,
}

/// One step of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PatternStep {
    matcher: StepMatcher,
    /// Written after `..`: the step may come at any depth below.
    at_any_depth: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StepMatcher {
    Key(String),
    Index(usize),
    /// `*`: any one key or index.
    Any,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step<'a> {
    Key(Cow<'a, str>),
    Index(usize),
    /// `*` or `[*]` (patterns only).
    Any,
}

impl StepMatcher {
    fn accepts(&self, step: &Step<'_>) -> bool {
        match (self, step) {
            (StepMatcher::Any, _) => true,
            (StepMatcher::Key(key), Step::Key(step)) => key == step,
            (StepMatcher::Index(index), Step::Index(step)) => index == step,
            _ => false,
        }
    }
}

impl IgnoredPaths {
    pub fn new(patterns: &[String]) -> Result<IgnoredPaths, PatternError> {
        let mut ignored = IgnoredPaths::default();
        for pattern in patterns {
            let refuse = |reason| PatternError {
                pattern: pattern.clone(),
                reason,
            };
            let pattern = pattern.trim();
            if let Some(rest) = pattern.strip_prefix('$') {
                ignored.json.push(parse_pattern(rest).map_err(refuse)?);
            } else if let Some(rest) = pattern.strip_prefix("lines") {
                ignored.lines.push(parse_pattern(rest).map_err(refuse)?);
            } else if let Some(name) = pattern.strip_prefix("headers.") {
                if name.is_empty() {
                    return Err(refuse("no header name after headers."));
                }
                ignored.headers.push(name.to_ascii_lowercase());
            } else if pattern == "status" {
                ignored.status = true;
            } else if pattern == "body" {
                ignored.body = true;
            } else {
                return Err(refuse(
                    "a pattern starts with $, lines, headers., status or body",
                ));
            }
        }
        Ok(ignored)
    }

    /// Nothing is ignored.
    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
            && self.lines.is_empty()
            && self.headers.is_empty()
            && !self.status
            && !self.body
    }

    /// Whether `path` (as [`json`], [`super::headers`] and this module write paths) is ignored,
    /// or lies under an ignored path.
    pub fn matches(&self, path: &str) -> bool {
        if let Some(rest) = path.strip_prefix('$') {
            matches_any(&self.json, rest)
        } else if let Some(rest) = path.strip_prefix("lines") {
            matches_any(&self.lines, rest)
        } else if let Some(name) = path.strip_prefix("headers.") {
            self.headers.iter().any(|glob| glob_matches(glob, name))
        } else {
            match path {
                "status" => self.status,
                "body" => self.body,
                _ => false,
            }
        }
    }
}

fn matches_any(patterns: &[Vec<PatternStep>], path: &str) -> bool {
    if patterns.is_empty() {
        return false;
    }
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        match next_step(rest, false) {
            Ok((step, after)) => {
                steps.push(step);
                rest = after;
            }
            // Not a path this module's producers write: nothing ignores it.
            Err(_) => return false,
        }
    }
    patterns.iter().any(|pattern| matches_from(pattern, &steps))
}

/// `pattern` matches the start of `path` (so everything under a match matches too).
fn matches_from(pattern: &[PatternStep], path: &[Step<'_>]) -> bool {
    let Some((first, rest)) = pattern.split_first() else {
        return true;
    };
    if first.at_any_depth {
        path.iter()
            .enumerate()
            .any(|(at, step)| first.matcher.accepts(step) && matches_from(rest, &path[at + 1..]))
    } else {
        path.split_first()
            .is_some_and(|(step, below)| first.matcher.accepts(step) && matches_from(rest, below))
    }
}

fn parse_pattern(mut rest: &str) -> Result<Vec<PatternStep>, &'static str> {
    let mut steps = Vec::new();
    while !rest.is_empty() {
        // After `..` a step is written without its own dot: `..name`, `..*`, `..[0]`.
        let (at_any_depth, (step, after)) = match rest.strip_prefix("..") {
            Some(after) => match after.strip_prefix('[') {
                Some(inside) => (true, bracketed_step(inside, true)?),
                None => (true, key_step(after, true)?),
            },
            None => (false, next_step(rest, true)?),
        };
        let matcher = match step {
            Step::Key(key) => StepMatcher::Key(key.into_owned()),
            Step::Index(index) => StepMatcher::Index(index),
            Step::Any => StepMatcher::Any,
        };
        steps.push(PatternStep {
            matcher,
            at_any_depth,
        });
        rest = after;
    }
    Ok(steps)
}

/// The step at the start of `rest` (`.key`, `["key"]`, `[3]`, and in patterns `.*`, `[*]`),
/// and what follows it.
fn next_step(rest: &str, pattern: bool) -> Result<(Step<'_>, &str), &'static str> {
    if let Some(key) = rest.strip_prefix('.') {
        key_step(key, pattern)
    } else if let Some(inside) = rest.strip_prefix('[') {
        bracketed_step(inside, pattern)
    } else {
        Err("a step starts with . or [")
    }
}

/// A plain key (what follows its dot), up to the next step.
fn key_step(text: &str, pattern: bool) -> Result<(Step<'_>, &str), &'static str> {
    let end = text.find(['.', '[']).unwrap_or(text.len());
    let (key, after) = text.split_at(end);
    match key {
        "" => Err("an empty key"),
        "*" if pattern => Ok((Step::Any, after)),
        key => Ok((Step::Key(Cow::Borrowed(key)), after)),
    }
}

/// A step in brackets (what follows its `[`): an index, a quoted key, or `*` in a pattern.
fn bracketed_step(inside: &str, pattern: bool) -> Result<(Step<'_>, &str), &'static str> {
    if let Some(after) = inside.strip_prefix("*]") {
        return if pattern {
            Ok((Step::Any, after))
        } else {
            Err("[*] in a path")
        };
    }
    if inside.starts_with('"') {
        let end = quoted_end(inside).ok_or("an unterminated quoted key")?;
        let after = inside[end..]
            .strip_prefix(']')
            .ok_or("no ] after a quoted key")?;
        let quoted = &inside[..end];
        let key = if quoted.contains('\\') {
            Cow::Owned(serde_json::from_str::<String>(quoted).map_err(|_| "a bad quoted key")?)
        } else {
            Cow::Borrowed(&quoted[1..quoted.len() - 1])
        };
        return Ok((Step::Key(key), after));
    }
    let end = inside.find(']').ok_or("no ] after an index")?;
    let index = inside[..end]
        .parse()
        .map_err(|_| "an index is digits, * or a quoted key")?;
    Ok((Step::Index(index), &inside[end + 1..]))
}

/// Where the JSON string at the start of `text` ends (just past its closing quote).
fn quoted_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (at, byte) in text.bytes().enumerate().skip(1) {
        match byte {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(at + 1),
            _ => {}
        }
    }
    None
}

/// `name` matches `glob`, where `*` is any run of characters.
fn glob_matches(glob: &str, name: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    fn response(content_type: Option<&str>, body: &[u8]) -> DecodedResponse {
        DecodedResponse {
            status: 200,
            headers: Vec::new(),
            body: Bytes::copy_from_slice(body),
            content_type: content_type.map(str::to_owned),
        }
    }

    fn ignoring(patterns: &[&str]) -> IgnoredPaths {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        IgnoredPaths::new(&patterns).unwrap()
    }

    fn found(differences: Vec<Difference>) -> Vec<(String, &'static str)> {
        differences
            .into_iter()
            .map(|difference| (difference.path, difference.kind.as_str()))
            .collect()
    }

    fn diff(expected: &Body, actual: &Body, patterns: &[&str]) -> Vec<(String, &'static str)> {
        found(differences(expected, actual, &ignoring(patterns), 100))
    }

    fn text(text: &str) -> Body {
        Body::Text(text.to_owned())
    }

    fn owned(pairs: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
        pairs
            .iter()
            .map(|&(path, kind)| (path.to_owned(), kind))
            .collect()
    }

    #[test]
    fn bodies_are_classified_by_media_type_and_content() {
        let json_body = br#"{"a": [1, 2]}"#;
        let cases: [(Option<&str>, &[u8], Body); 9] = [
            (
                Some("application/json"),
                json_body,
                Body::Json(json!({"a": [1, 2]})),
            ),
            (
                Some("application/problem+json"),
                b"\"ok\"",
                Body::Json(json!("ok")),
            ),
            (Some("text/plain"), b" \n[1]", Body::Json(json!([1]))),
            (None, b"42", text("42")),
            (Some("application/json"), b"{\"cut\": ", text("{\"cut\": ")),
            (Some("application/json"), b"", text("")),
            (
                Some("text/html"),
                "<p>caf\u{e9}</p>".as_bytes(),
                text("<p>caf\u{e9}</p>"),
            ),
            (
                Some("image/png"),
                b"\x89PNG\xff",
                Body::Binary {
                    len: 5,
                    hash: xxhash_rust::xxh3::xxh3_64(b"\x89PNG\xff"),
                },
            ),
            (Some("text/plain"), b"latin-1 caf\xe9", {
                let hash = xxhash_rust::xxh3::xxh3_64(b"latin-1 caf\xe9");
                Body::Binary { len: 12, hash }
            }),
        ];
        for (content_type, body, expected) in cases {
            assert_eq!(
                classify(&response(content_type, body)),
                expected,
                "{content_type:?} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn json_nested_past_the_recursion_limit_is_text() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            classify(&response(Some("application/json"), deep.as_bytes())),
            Body::Text(_)
        ));
    }

    #[test]
    fn json_differences_leave_out_ignored_paths() {
        let expected = Body::Json(json!({
            "meta": {"generated_at": "10:00", "took": 3},
            "items": [{"id": "a1", "price": 1, "tags": {"request_id": "r1"}}, {"id": "b2", "price": 2}],
            "request_id": "r2",
            "a.b": 1
        }));
        let actual = Body::Json(json!({
            "meta": {"generated_at": "10:01", "took": 4},
            "items": [{"id": "c3", "price": 1, "tags": {"request_id": "r3"}}, {"id": "d4", "price": 3}],
            "request_id": "r4",
            "a.b": 2
        }));
        assert_eq!(
            diff(&expected, &actual, &[]),
            owned(&[
                (r#"$["a.b"]"#, "changed_value"),
                ("$.items[0].id", "changed_value"),
                ("$.items[0].tags.request_id", "changed_value"),
                ("$.items[1].id", "changed_value"),
                ("$.items[1].price", "changed_value"),
                ("$.meta.generated_at", "changed_value"),
                ("$.meta.took", "changed_value"),
                ("$.request_id", "changed_value"),
            ])
        );
        assert_eq!(
            diff(
                &expected,
                &actual,
                &[
                    "$.meta.generated_at",
                    "$.items[*].id",
                    "$..request_id",
                    r#"$["a.b"]"#
                ]
            ),
            owned(&[
                ("$.items[1].price", "changed_value"),
                ("$.meta.took", "changed_value"),
            ])
        );
        // `$.a.b` is the field b in the field a, not the key "a.b".
        assert_eq!(diff(&expected, &actual, &["$.a.b"]).len(), 8);
        // An ignored object hides all under it; a quoted key matches its plain spelling.
        assert_eq!(
            diff(
                &expected,
                &actual,
                &["$.meta", "$.items", r#"$["request_id"]"#]
            ),
            owned(&[(r#"$["a.b"]"#, "changed_value")])
        );
        assert!(diff(&expected, &actual, &["$"]).is_empty());
    }

    #[test]
    fn the_limit_counts_only_the_differences_kept() {
        let expected = Body::Json(json!({"noise": (0..50).collect::<Vec<_>>(), "x": 1, "y": 1}));
        let actual = Body::Json(json!({"noise": (1..51).collect::<Vec<_>>(), "x": 2, "y": 2}));
        let ignored = ignoring(&["$.noise[*]"]);
        assert_eq!(
            found(differences(&expected, &actual, &ignored, 2)),
            owned(&[("$.x", "changed_value"), ("$.y", "changed_value")])
        );
    }

    #[test]
    fn an_ignored_object_is_not_walked() {
        let expected = json!({"big": {"a": {"b": 1}, "same": 1}, "c": 1});
        let actual = json!({"big": {"a": {"b": 2}, "same": 1}, "c": 2});
        let asked = std::cell::RefCell::new(Vec::new());
        let kept = json::differences_except(&expected, &actual, 10, &|path| {
            asked.borrow_mut().push(path.to_owned());
            path == "$.big"
        });
        assert_eq!(found(kept), owned(&[("$.c", "changed_value")]));
        // Asked of the root, of fields holding fields, and of differing leaves only.
        assert_eq!(asked.into_inner(), ["$", "$.big", "$.c"]);
    }

    #[test]
    fn patterns_match_paths_and_what_lies_under_them() {
        let ignored = ignoring(&[
            "$.a[*].b",
            "$..id",
            "$.m.*",
            r#"$["x.y"][2]"#,
            "$..[0].z",
            "headers.x-*",
            "headers.set-cookie",
            "lines[3]",
            "status",
        ]);
        for path in [
            "$.a[0].b",
            "$.a[7].b.c",
            "$.id",
            "$.deep[3].er.id",
            "$.m.k",
            "$.m[4]",
            r#"$["x.y"][2]"#,
            r#"$["x.y"][2].q"#,
            "$.q[0].z",
            "headers.x-request-id",
            "headers.set-cookie",
            "lines[3]",
            "status",
        ] {
            assert!(ignored.matches(path), "{path} should be ignored");
        }
        for path in [
            "$",
            "$.a",
            "$.a[0].c",
            "$.ids",
            "$.m",
            r#"$["x.y"][1]"#,
            "$.q[1].z",
            "headers.y-x",
            "headers.set-cookie2",
            "lines[30]",
            "lines[2]",
            "body",
            "$.a[0",
        ] {
            assert!(!ignored.matches(path), "{path} should not be ignored");
        }
        assert!(!IgnoredPaths::default().matches("$.a"));
        assert!(IgnoredPaths::default().is_empty());
        assert!(!ignored.is_empty());
    }

    #[test]
    fn a_pattern_that_does_not_parse_is_refused_with_its_reason() {
        for pattern in [
            "meta.x", "$.a[", "$..", "$...a", "$.a[x]", r#"$["a]"#, "headers.", "$a",
        ] {
            let error = IgnoredPaths::new(&[pattern.to_owned()]).unwrap_err();
            assert_eq!(error.pattern, pattern);
            assert!(error.to_string().starts_with("ignore pattern"), "{error}");
        }
    }

    #[test]
    fn text_differences_are_named_by_the_expected_line() {
        let expected = text("a\nb\nc\nd\ne\n");
        // b changed, d removed, x added after e, y added before a.
        let actual = text("y\na\nB\nc\ne\nx\n");
        assert_eq!(
            diff(&expected, &actual, &[]),
            owned(&[
                ("lines[0]", "added"),
                ("lines[2]", "changed_value"),
                ("lines[4]", "removed"),
                ("lines[5]", "added"),
            ])
        );
        assert_eq!(
            diff(&expected, &actual, &["lines[2]", "lines[0]"]),
            owned(&[("lines[4]", "removed"), ("lines[5]", "added")])
        );
        assert!(diff(&expected, &actual, &["lines"]).is_empty());
    }

    #[test]
    fn texts_that_differ_only_in_line_endings_differ_as_a_whole() {
        assert_eq!(
            diff(&text("a\nb\n"), &text("a\r\nb"), &[]),
            owned(&[("body", "changed_value")])
        );
        assert!(diff(&text("a\nb\n"), &text("a\nb\n"), &[]).is_empty());
    }

    #[test]
    fn text_differences_stop_at_the_limit() {
        let expected = text(&(0..1000).map(|i| format!("{i}\n")).collect::<String>());
        let actual = text(&(0..1000).map(|i| format!("{i}!\n")).collect::<String>());
        let differences = differences(&expected, &actual, &IgnoredPaths::default(), 10);
        assert_eq!(differences.len(), 10);
        assert_eq!(differences[9].path, "lines[10]");
    }

    #[test]
    fn binary_bodies_differ_by_length_or_hash() {
        let body = |len, hash| Body::Binary { len, hash };
        assert!(diff(&body(3, 7), &body(3, 7), &[]).is_empty());
        assert_eq!(
            diff(&body(3, 7), &body(3, 8), &[]),
            owned(&[("body", "changed_value")])
        );
        assert_eq!(
            diff(&body(3, 7), &body(4, 7), &[]),
            owned(&[("body", "changed_value")])
        );
        assert!(diff(&body(3, 7), &body(4, 7), &["body"]).is_empty());
    }

    #[test]
    fn bodies_of_different_kinds_differ_once_in_type() {
        let kinds = [
            Body::Json(json!({"a": 1})),
            text("{\"a\": 1"),
            Body::Binary { len: 1, hash: 1 },
        ];
        for (i, expected) in kinds.iter().enumerate() {
            for (j, actual) in kinds.iter().enumerate() {
                let expect = if i == j {
                    vec![]
                } else {
                    owned(&[("body", "changed_type")])
                };
                assert_eq!(
                    diff(expected, actual, &[]),
                    expect,
                    "{expected:?} vs {actual:?}"
                );
            }
        }
        assert!(differences(&kinds[0], &kinds[1], &IgnoredPaths::default(), 0).is_empty());
    }

    #[test]
    fn render_shows_each_kind_and_cuts_on_a_character_boundary() {
        assert_eq!(
            render(&Body::Json(json!({"a": [1]})), 100),
            ("{\n  \"a\": [\n    1\n  ]\n}".to_owned(), false)
        );
        assert_eq!(render(&text("héllo"), 5), ("héllo".to_owned(), false));
        assert_eq!(render(&text("héllo"), 2), ("hé".to_owned(), true));
        assert_eq!(render(&text("€€€"), 0), (String::new(), true));
        assert_eq!(
            render(
                &Body::Binary {
                    len: 12,
                    hash: 0xab
                },
                100
            ),
            ("12 bytes, xxh3 00000000000000ab".to_owned(), false)
        );
        // Multi-byte characters in a long JSON string, cut inside the writer's bound.
        let long = Body::Json(json!({"k": "é€😀".repeat(10_000)}));
        let (shown, cut) = render(&long, 20);
        assert!(cut);
        assert_eq!(shown.chars().count(), 20);
        assert!(shown.starts_with("{\n  \"k\": \"é€😀"), "{shown}");
    }
}
