//! Filters: which requests are replayed. Compiled once from [`FilterSettings`]; every refusal
//! names the [`FilterRule`] that made it, so each filtered request is counted by rule.

use base64::Engine;
use http::HeaderName;
use regex::Regex;

use tapwire_shared::config::ConfigError;

use crate::config::FilterSettings;
use crate::outcome::FilterRule;
use crate::request::ReplayRequest;

/// Compiled filter rules; all must pass.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    allow_methods: Vec<http::Method>,
    allow_url: Vec<Regex>,
    deny_url: Vec<Regex>,
    allow_host: Vec<Regex>,
    deny_host: Vec<Regex>,
    allow_header: Vec<(HeaderName, Regex)>,
    deny_header: Vec<(HeaderName, Regex)>,
    basic_auth: Option<Regex>,
}

fn regex(field: &str, pattern: &str) -> Result<Regex, ConfigError> {
    Regex::new(pattern).map_err(|error| ConfigError::new(field, error))
}

fn regexes(field: &str, patterns: &[String]) -> Result<Vec<Regex>, ConfigError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, pattern)| regex(&format!("{field}[{i}]"), pattern))
        .collect()
}

/// `"Name: regex"` into a header name and a value regex.
fn header_rules(field: &str, specs: &[String]) -> Result<Vec<(HeaderName, Regex)>, ConfigError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let field = format!("{field}[{i}]");
            let (name, pattern) = spec.split_once(':').ok_or_else(|| {
                ConfigError::new(&field, format!("{spec:?} is not `Name: regex`"))
            })?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|error| ConfigError::new(&field, error))?;
            Ok((name, regex(&field, pattern.trim())?))
        })
        .collect()
}

impl Filters {
    /// Compiles `settings`; `field` prefixes error messages (e.g. `target[0].filters`).
    pub fn compile(settings: &FilterSettings, field: &str) -> Result<Filters, ConfigError> {
        Ok(Filters {
            allow_methods: settings
                .allow_methods
                .iter()
                .enumerate()
                .map(|(i, method)| {
                    http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(
                        |error| ConfigError::new(format!("{field}.allow_methods[{i}]"), error),
                    )
                })
                .collect::<Result<_, _>>()?,
            allow_url: regexes(&format!("{field}.allow_url"), &settings.allow_url)?,
            deny_url: regexes(&format!("{field}.deny_url"), &settings.deny_url)?,
            allow_host: regexes(&format!("{field}.allow_host"), &settings.allow_host)?,
            deny_host: regexes(&format!("{field}.deny_host"), &settings.deny_host)?,
            allow_header: header_rules(&format!("{field}.allow_header"), &settings.allow_header)?,
            deny_header: header_rules(&format!("{field}.deny_header"), &settings.deny_header)?,
            basic_auth: settings
                .basic_auth
                .as_deref()
                .map(|pattern| regex(&format!("{field}.basic_auth"), pattern))
                .transpose()?,
        })
    }

    /// `Err(rule)` names the first rule that refuses the request.
    pub fn check(&self, request: &ReplayRequest) -> Result<(), FilterRule> {
        if !self.allow_methods.is_empty() && !self.allow_methods.contains(&request.method) {
            return Err(FilterRule::AllowMethods);
        }
        let url = request.path_and_query.as_str();
        if !self.allow_url.is_empty() && !self.allow_url.iter().any(|r| r.is_match(url)) {
            return Err(FilterRule::AllowUrl);
        }
        if self.deny_url.iter().any(|r| r.is_match(url)) {
            return Err(FilterRule::DenyUrl);
        }
        let host = request
            .header("host")
            .and_then(|value| std::str::from_utf8(value).ok())
            .unwrap_or_default();
        if !self.allow_host.is_empty() && !self.allow_host.iter().any(|r| r.is_match(host)) {
            return Err(FilterRule::AllowHost);
        }
        if self.deny_host.iter().any(|r| r.is_match(host)) {
            return Err(FilterRule::DenyHost);
        }
        let header_matches = |(name, value): &(HeaderName, Regex)| {
            request
                .header_values(name.as_str())
                .any(|v| std::str::from_utf8(v).is_ok_and(|v| value.is_match(v)))
        };
        if !self.allow_header.iter().all(header_matches) {
            return Err(FilterRule::AllowHeader);
        }
        if self.deny_header.iter().any(header_matches) {
            return Err(FilterRule::DenyHeader);
        }
        if let Some(pattern) = &self.basic_auth
            && !basic_credentials(request).is_some_and(|credentials| pattern.is_match(&credentials))
        {
            return Err(FilterRule::BasicAuth);
        }
        Ok(())
    }
}

/// The decoded `user:password` of a Basic Authorization header.
fn basic_credentials(request: &ReplayRequest) -> Option<String> {
    let value = std::str::from_utf8(request.header("authorization")?).ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::tests::request;

    fn filters(settings: FilterSettings) -> Filters {
        Filters::compile(&settings, "filters").unwrap()
    }

    #[test]
    fn each_rule_refuses_by_name() {
        let get =
            request("GET /api/users?id=1 HTTP/1.1\r\nHost: shop.example\r\nX-Env: prod\r\n\r\n");
        let cases = [
            (
                FilterSettings {
                    allow_methods: vec!["post".into()],
                    ..Default::default()
                },
                Err(FilterRule::AllowMethods),
            ),
            (
                FilterSettings {
                    allow_methods: vec!["get".into()],
                    ..Default::default()
                },
                Ok(()),
            ),
            (
                FilterSettings {
                    allow_url: vec!["^/admin".into()],
                    ..Default::default()
                },
                Err(FilterRule::AllowUrl),
            ),
            (
                FilterSettings {
                    allow_url: vec!["^/api/".into()],
                    ..Default::default()
                },
                Ok(()),
            ),
            (
                FilterSettings {
                    deny_url: vec!["id=1$".into()],
                    ..Default::default()
                },
                Err(FilterRule::DenyUrl),
            ),
            (
                FilterSettings {
                    allow_host: vec!["^api\\.".into()],
                    ..Default::default()
                },
                Err(FilterRule::AllowHost),
            ),
            (
                FilterSettings {
                    deny_host: vec!["shop".into()],
                    ..Default::default()
                },
                Err(FilterRule::DenyHost),
            ),
            (
                FilterSettings {
                    allow_header: vec!["X-Env: ^staging$".into()],
                    ..Default::default()
                },
                Err(FilterRule::AllowHeader),
            ),
            (
                FilterSettings {
                    allow_header: vec!["x-env: prod".into()],
                    ..Default::default()
                },
                Ok(()),
            ),
            (
                FilterSettings {
                    deny_header: vec!["X-Env: prod".into()],
                    ..Default::default()
                },
                Err(FilterRule::DenyHeader),
            ),
            (
                FilterSettings {
                    basic_auth: Some("^admin:".into()),
                    ..Default::default()
                },
                Err(FilterRule::BasicAuth),
            ),
        ];
        for (settings, expected) in cases {
            assert_eq!(
                filters(settings.clone()).check(&get),
                expected,
                "{settings:?}"
            );
        }
    }

    #[test]
    fn basic_auth_matches_decoded_credentials() {
        // "admin:secret"
        let with_auth = request("GET / HTTP/1.1\r\nAuthorization: Basic YWRtaW46c2VjcmV0\r\n\r\n");
        let admin_only = filters(FilterSettings {
            basic_auth: Some("^admin:".into()),
            ..Default::default()
        });
        assert_eq!(admin_only.check(&with_auth), Ok(()));
    }

    #[test]
    fn bad_regex_is_reported_with_its_field() {
        let settings = FilterSettings {
            deny_url: vec!["ok".into(), "(unclosed".into()],
            ..Default::default()
        };
        let error = Filters::compile(&settings, "target[2].filters").unwrap_err();
        assert_eq!(error.field, "target[2].filters.deny_url[1]");
    }
}
