//! Header differences between two responses, as [`Difference`]s at `headers.<name>` (lower
//! case): a header only one response has, or another value. Headers that differ on every
//! response whatever the build (`Date`, `Server`, request ids...) are ignored, by default and
//! as configured; `Set-Cookie` is compared by cookie names only (values are per session);
//! framing headers are left to the body comparison, which sees decoded bodies.

use std::collections::BTreeMap;

use super::json::{Difference, DifferenceKind};

/// Ignored unless configured otherwise: they differ between any two responses.
pub const DEFAULT_IGNORED: [&str; 8] = [
    "date",
    "server",
    "x-request-id",
    "x-trace-id",
    "age",
    "expires",
    "last-modified",
    "etag",
];

/// Never compared as headers: how the body was framed, not what it says.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "connection"];

/// Which headers are compared.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    /// Lower case.
    ignored: Vec<String>,
}

impl Default for HeaderRules {
    fn default() -> Self {
        HeaderRules::new(DEFAULT_IGNORED.iter().copied())
    }
}

impl HeaderRules {
    /// Compares every header but `ignored` (any case) and the framing ones.
    pub fn new<'a>(ignored: impl IntoIterator<Item = &'a str>) -> HeaderRules {
        HeaderRules {
            ignored: ignored.into_iter().map(str::to_ascii_lowercase).collect(),
        }
    }

    /// The differences from `expected`'s headers to `actual`'s, by name in order.
    pub fn differences(
        &self,
        expected: &[(&str, &[u8])],
        actual: &[(&str, &[u8])],
    ) -> Vec<Difference> {
        let expected = self.compared(expected);
        let actual = self.compared(actual);
        let mut found = Vec::new();
        for (name, expected_values) in &expected {
            let kind = match actual.get(name) {
                None => DifferenceKind::Removed,
                Some(actual_values) if actual_values != expected_values => {
                    DifferenceKind::ValueChanged
                }
                Some(_) => continue,
            };
            found.push(Difference {
                path: format!("headers.{name}"),
                kind,
            });
        }
        for name in actual.keys().filter(|name| !expected.contains_key(*name)) {
            found.push(Difference {
                path: format!("headers.{name}"),
                kind: DifferenceKind::Added,
            });
        }
        found.sort();
        found
    }

    /// Whether header `name` (any case) is compared.
    pub fn is_compared(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        !self.ignored.contains(&name) && !FRAMING.contains(&name.as_str())
    }

    /// The compared headers by lower-case name, each with its values in order (cookie names
    /// only, sorted, for `Set-Cookie`).
    fn compared<'a>(&self, headers: &[(&'a str, &'a [u8])]) -> BTreeMap<String, Vec<Vec<u8>>> {
        let mut by_name: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (name, value) in headers {
            if !self.is_compared(name) {
                continue;
            }
            let name = name.to_ascii_lowercase();
            let value = match name.as_str() {
                "set-cookie" => cookie_name(value).to_vec(),
                _ => value.trim_ascii().to_vec(),
            };
            by_name.entry(name).or_default().push(value);
        }
        if let Some(cookies) = by_name.get_mut("set-cookie") {
            cookies.sort();
        }
        by_name
    }
}

/// `name` of a `Set-Cookie: name=value; attributes` value.
fn cookie_name(value: &[u8]) -> &[u8] {
    let end = value
        .iter()
        .position(|&byte| byte == b'=')
        .unwrap_or(value.len());
    value[..end].trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(expected: &[(&str, &[u8])], actual: &[(&str, &[u8])]) -> Vec<(String, &'static str)> {
        HeaderRules::default()
            .differences(expected, actual)
            .into_iter()
            .map(|difference| (difference.path, difference.kind.as_str()))
            .collect()
    }

    #[test]
    fn volatile_and_framing_headers_and_cookie_values_are_not_differences() {
        let expected: [(&str, &[u8]); 5] = [
            ("Date", b"Mon, 30 Nov 2026 10:00:00 GMT"),
            ("Content-Length", b"10"),
            ("Set-Cookie", b"session=abc; Path=/"),
            ("Content-Type", b"application/json"),
            ("X-Request-Id", b"1"),
        ];
        let actual: [(&str, &[u8]); 5] = [
            ("content-type", b" application/json "),
            ("date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
            ("Transfer-Encoding", b"chunked"),
            ("set-cookie", b"session=xyz; Path=/; Secure"),
            ("x-request-id", b"2"),
        ];
        assert!(paths(&expected, &actual).is_empty());
    }

    #[test]
    fn a_header_added_removed_or_changed_is_named() {
        let expected: [(&str, &[u8]); 3] = [
            ("Content-Type", b"application/json"),
            ("Cache-Control", b"no-store"),
            ("Set-Cookie", b"a=1"),
        ];
        let actual: [(&str, &[u8]); 3] = [
            ("Content-Type", b"text/html"),
            ("Set-Cookie", b"b=1"),
            ("X-New", b"1"),
        ];
        assert_eq!(
            paths(&expected, &actual),
            [
                ("headers.cache-control".to_owned(), "removed"),
                ("headers.content-type".to_owned(), "changed_value"),
                ("headers.set-cookie".to_owned(), "changed_value"),
                ("headers.x-new".to_owned(), "added"),
            ]
        );
    }

    #[test]
    fn ignoring_is_configurable() {
        let rules = HeaderRules::new(["X-Build"]);
        let expected: [(&str, &[u8]); 2] = [("x-build", b"1"), ("Date", b"a")];
        let actual: [(&str, &[u8]); 2] = [("X-Build", b"2"), ("Date", b"b")];
        let found = rules.differences(&expected, &actual);
        assert_eq!(
            found.len(),
            1,
            "the list replaces the defaults: Date is compared: {found:?}"
        );
        assert_eq!(found[0].path, "headers.date");
    }
}
