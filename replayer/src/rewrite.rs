//! Rewrites: how a request is changed before a target gets it: the URL by regex with capture
//! groups, headers set, rewritten by regex, removed or redacted, query parameters set, the Host
//! overridden.
//! Compiled once from [`RewriteSettings`]. A header rewrite replaces whole lines
//! ([`HeaderField`]) and leaves every other line as captured: a set header takes the place of
//! the first line of that name (the others go), or comes last; a redacted one keeps its name
//! as captured.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue};
use regex::Regex;

use tapwire_shared::config::ConfigError;

use crate::config::RewriteSettings;
use crate::request::HeaderField;

/// What a redacted header's value becomes: the same marker the listener writes.
const REDACTED: &[u8] = tapwire_shared::http1::REDACTED.as_bytes();

/// Compiled rewrites, applied in a fixed order: URL, query, then headers.
#[derive(Debug, Clone, Default)]
pub struct Rewrites {
    url: Vec<(Regex, String)>,
    set_query: Vec<(String, String)>,
    /// Names as configured: a set header is written with this case.
    set_headers: Vec<(String, Bytes)>,
    remove_headers: Vec<String>,
    /// Header name, the regex on its value and the replacement.
    rewrite_headers: Vec<(String, regex::bytes::Regex, String)>,
    redact_headers: Vec<String>,
    host: Option<Bytes>,
}

/// `name`, checked to be a header name and trimmed, its case kept.
fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    let name = name.trim();
    HeaderName::from_bytes(name.as_bytes()).map_err(|error| ConfigError::new(field, error))?;
    Ok(name.to_owned())
}

impl Rewrites {
    /// Compiles `settings`; `field` prefixes error messages (e.g. `target[0].rewrites`).
    pub fn compile(settings: &RewriteSettings, field: &str) -> Result<Rewrites, ConfigError> {
        let url = settings
            .url
            .iter()
            .enumerate()
            .map(|(i, rewrite)| {
                let regex = Regex::new(&rewrite.from)
                    .map_err(|error| ConfigError::new(format!("{field}.url[{i}].from"), error))?;
                Ok((regex, rewrite.to.clone()))
            })
            .collect::<Result<_, ConfigError>>()?;
        // By name, the last value given winning: the same whether from flags or a file table.
        let by_name = |pairs: &[(String, String)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .cloned()
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect()
        };
        let set_headers = by_name(&settings.set_headers)
            .iter()
            .map(|(name, value)| {
                let field = format!("{field}.set_headers.{name}");
                HeaderValue::from_str(value).map_err(|error| ConfigError::new(&field, error))?;
                Ok((header_name(&field, name)?, Bytes::from(value.clone())))
            })
            .collect::<Result<_, ConfigError>>()?;
        let names = |list: &[String], name: &str| {
            list.iter()
                .enumerate()
                .map(|(i, header)| header_name(&format!("{field}.{name}[{i}]"), header))
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        let rewrite_headers = settings
            .rewrite_headers
            .iter()
            .enumerate()
            .map(|(i, rewrite)| {
                let field = format!("{field}.rewrite_headers[{i}]");
                let regex = regex::bytes::Regex::new(&rewrite.from)
                    .map_err(|error| ConfigError::new(format!("{field}.from"), error))?;
                let name = header_name(&format!("{field}.name"), &rewrite.name)?;
                Ok((name, regex, rewrite.to.clone()))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Rewrites {
            url,
            rewrite_headers,
            set_query: by_name(&settings.set_query),
            set_headers,
            remove_headers: names(&settings.remove_headers, "remove_headers")?,
            redact_headers: names(&settings.redact_headers, "redact_headers")?,
            host: settings
                .host
                .as_deref()
                .map(|host| {
                    HeaderValue::from_str(host)
                        .map(|_| Bytes::from(host.to_owned()))
                        .map_err(|error| ConfigError::new(format!("{field}.host"), error))
                })
                .transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.url.is_empty()
            && self.set_query.is_empty()
            && self.set_headers.is_empty()
            && self.remove_headers.is_empty()
            && self.rewrite_headers.is_empty()
            && self.redact_headers.is_empty()
            && self.host.is_none()
    }

    /// The Host to send for a request whose header lines (rewritten) are `fields`, if these
    /// rewrites decide it: `--host-override`, else, when a `--rewrite-header` applies to Host,
    /// the captured Host as rewritten (kept, as with `--keep-host`, so that a staging virtual
    /// host can be derived from production's). None leaves it to the target's Host rule.
    pub fn host_to_send(&self, fields: &[HeaderField]) -> Option<Bytes> {
        if let Some(host) = &self.host {
            return Some(host.clone());
        }
        if !self
            .rewrite_headers
            .iter()
            .any(|(name, ..)| name.eq_ignore_ascii_case("host"))
        {
            return None;
        }
        let host = fields.iter().find(|field| field.is("host"))?;
        Some(Bytes::copy_from_slice(host.value()))
    }

    /// Rewrites the URL and headers in place. A rewrite that would make the URL invalid leaves
    /// the URL as it was.
    pub fn apply(&self, path_and_query: &mut PathAndQuery, fields: &mut Vec<HeaderField>) {
        if !self.url.is_empty() || !self.set_query.is_empty() {
            let mut url = path_and_query.as_str().to_owned();
            for (regex, replacement) in &self.url {
                url = regex.replace_all(&url, replacement.as_str()).into_owned();
            }
            for (name, value) in &self.set_query {
                url = set_query_param(&url, name, value);
            }
            if let Ok(rewritten) = url.parse() {
                *path_and_query = rewritten;
            }
        }
        for name in &self.remove_headers {
            fields.retain(|field| !field.is(name));
        }
        for (name, regex, replacement) in &self.rewrite_headers {
            for field in fields.iter_mut().filter(|field| field.is(name)) {
                let value = regex.replace_all(field.value(), replacement.as_bytes());
                // Groups copy captured bytes, which a replacement could splice into CR or LF:
                // only a value that is still one valid header value is written.
                if value[..] != field.value()[..] && HeaderValue::from_bytes(&value).is_ok() {
                    *field = field.with_value(&value);
                }
            }
        }
        for (name, value) in &self.set_headers {
            let set = HeaderField::new(name, value);
            match fields.iter().position(|field| field.is(name)) {
                Some(first) => {
                    fields[first] = set;
                    let mut index = 0;
                    fields.retain(|field| {
                        index += 1;
                        index - 1 <= first || !field.is(name)
                    });
                }
                None => fields.push(set),
            }
        }
        for name in &self.redact_headers {
            for field in fields.iter_mut().filter(|field| field.is(name)) {
                *field = field.with_value(REDACTED);
            }
        }
    }
}

/// `url` with query parameter `name` set to `value` (replacing any existing values).
fn set_query_param(url: &str, name: &str, value: &str) -> String {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|param| !param.is_empty())
        .filter(|param| param.split('=').next() != Some(name))
        .map(str::to_owned)
        .collect();
    params.push(format!("{name}={value}"));
    format!("{path}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UrlRewrite;

    #[test]
    fn url_groups_query_and_headers_are_rewritten() {
        let settings = RewriteSettings {
            url: vec![UrlRewrite {
                from: "^/v1/user/([^/]+)/ping".into(),
                to: "/v2/user/$1/ping".into(),
            }],
            set_query: vec![("debug".to_owned(), "1".to_owned())],
            set_headers: vec![("X-Replayed-By".to_owned(), "tapwire".to_owned())],
            remove_headers: vec!["Cookie".into()],
            redact_headers: vec!["Authorization".into(), "X-Absent".into()],
            host: Some("staging.example".into()),
            ..Default::default()
        };
        let rewrites = Rewrites::compile(&settings, "rewrites").unwrap();
        let mut replay = crate::request::tests::request(
            "GET /v1/user/42/ping?debug=0&a=b HTTP/1.1\r\nHost: a\r\nCOOKIE: session=abc\r\n\
             x-replayed-by: 1\r\nAuthorization:  Bearer secret\r\nX-Replayed-By: 2\r\n\
             Accept: */*\r\n\r\n",
        );
        rewrites.apply(&mut replay.path_and_query, &mut replay.fields);
        assert_eq!(
            crate::request::tests::wire(&replay, crate::request::HostRule::Keep),
            "GET /v2/user/42/ping?a=b&debug=1 HTTP/1.1\r\nHost: a\r\n\
             X-Replayed-By: tapwire\r\nAuthorization:  REDACTED\r\nAccept: */*\r\n\r\n",
            "removed, set in place of the first, redacted in place; nothing added by redaction"
        );
        assert_eq!(
            &rewrites.host_to_send(&replay.fields).unwrap()[..],
            b"staging.example"
        );
    }

    #[test]
    fn a_header_rewrite_never_writes_a_line_break() {
        let rewrite = "X-Note: (.*),$1\r\nX-Injected: yes".parse().unwrap();
        let settings = RewriteSettings {
            rewrite_headers: vec![rewrite],
            ..Default::default()
        };
        let rewrites = Rewrites::compile(&settings, "rewrites").unwrap();
        let captured = "GET / HTTP/1.1\r\nX-Note: hello\r\n\r\n";
        let mut replay = crate::request::tests::request(captured);
        rewrites.apply(&mut replay.path_and_query, &mut replay.fields);
        assert_eq!(
            crate::request::tests::wire(&replay, crate::request::HostRule::Keep),
            captured,
            "a value that would not be one header value is left as captured"
        );
    }

    #[test]
    fn header_rewrites_parse_as_goreplay_writes_them() {
        let rewrite: crate::config::HeaderRewrite = "Host: (.*).example.com,$1.beta.example.com"
            .parse()
            .unwrap();
        assert_eq!(
            (
                rewrite.name.as_str(),
                rewrite.from.as_str(),
                rewrite.to.as_str()
            ),
            ("Host", "(.*).example.com", "$1.beta.example.com")
        );
        assert!(
            "Host (.*),x"
                .parse::<crate::config::HeaderRewrite>()
                .is_err()
        );
        assert!(
            "Host: no-comma"
                .parse::<crate::config::HeaderRewrite>()
                .is_err()
        );
    }

    #[test]
    fn bad_rewrite_is_reported_with_its_field() {
        let settings = RewriteSettings {
            url: vec![UrlRewrite {
                from: "([".into(),
                to: "/".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            Rewrites::compile(&settings, "target[1].rewrites")
                .unwrap_err()
                .field,
            "target[1].rewrites.url[0].from"
        );
    }
}
