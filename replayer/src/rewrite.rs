//! Rewrites: how a request is changed before a target gets it: the URL by regex with capture
//! groups, headers set, removed or redacted, query parameters set, the Host overridden.
//! Compiled once from [`RewriteSettings`].

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

use tapwire_shared::config::ConfigError;

use crate::config::RewriteSettings;

/// What a redacted header's value becomes: the same marker the listener writes.
const REDACTED: HeaderValue = HeaderValue::from_static(tapwire_shared::http1::REDACTED);

/// Compiled rewrites, applied in a fixed order: URL, query, then headers.
#[derive(Debug, Clone, Default)]
pub struct Rewrites {
    url: Vec<(Regex, String)>,
    set_query: Vec<(String, String)>,
    set_headers: Vec<(HeaderName, HeaderValue)>,
    remove_headers: Vec<HeaderName>,
    redact_headers: Vec<HeaderName>,
    host: Option<HeaderValue>,
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.trim().as_bytes()).map_err(|error| ConfigError::new(field, error))
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
                let value = HeaderValue::from_str(value)
                    .map_err(|error| ConfigError::new(&field, error))?;
                Ok((header_name(&field, name)?, value))
            })
            .collect::<Result<_, ConfigError>>()?;
        let names = |list: &[String], name: &str| {
            list.iter()
                .enumerate()
                .map(|(i, header)| header_name(&format!("{field}.{name}[{i}]"), header))
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        Ok(Rewrites {
            url,
            set_query: by_name(&settings.set_query),
            set_headers,
            remove_headers: names(&settings.remove_headers, "remove_headers")?,
            redact_headers: names(&settings.redact_headers, "redact_headers")?,
            host: settings
                .host
                .as_deref()
                .map(|host| {
                    HeaderValue::from_str(host)
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
            && self.redact_headers.is_empty()
            && self.host.is_none()
    }

    /// The Host header to send, if overridden.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// Rewrites the URL and headers in place. A rewrite that would make the URL invalid leaves
    /// the URL as it was.
    pub fn apply(&self, path_and_query: &mut PathAndQuery, headers: &mut HeaderMap) {
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
            headers.remove(name);
        }
        for (name, value) in &self.set_headers {
            headers.insert(name.clone(), value.clone());
        }
        for name in &self.redact_headers {
            if headers.contains_key(name) {
                headers.insert(name.clone(), REDACTED);
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
        };
        let rewrites = Rewrites::compile(&settings, "rewrites").unwrap();
        let mut url: PathAndQuery = "/v1/user/42/ping?debug=0&a=b".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("session=abc"));
        headers.insert("authorization", HeaderValue::from_static("Bearer secret"));
        rewrites.apply(&mut url, &mut headers);
        assert_eq!(url.as_str(), "/v2/user/42/ping?a=b&debug=1");
        assert!(!headers.contains_key("cookie"));
        assert_eq!(headers["authorization"], "REDACTED");
        assert!(
            !headers.contains_key("x-absent"),
            "redaction never adds a header"
        );
        assert_eq!(headers["x-replayed-by"], "tapwire");
        assert_eq!(rewrites.host().unwrap(), "staging.example");
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
