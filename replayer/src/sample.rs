//! Sampling: [`Sampler`] keeps a share of requests, consistently by a key when one is
//! configured (a header, a cookie or a query parameter), so that one user's requests are all
//! replayed or none.

use http::header;
use tapwire_shared::config::ConfigError;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::parse_percent;
use crate::request::ReplayRequest;

/// Where the sampling key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SampleKey {
    /// Each request on its own (its record identity).
    Request,
    Header(header::HeaderName),
    Cookie(String),
    Param(String),
}

/// Keeps `percent` of requests; with a key, the same key is always kept or always dropped.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Kept when the key's hash, modulo one million, is below this.
    threshold: u64,
    key: SampleKey,
}

const SAMPLE_SCALE: u64 = 1_000_000;

impl Sampler {
    /// `None` when nothing is configured (everything kept).
    pub fn compile(
        sample: Option<&str>,
        key: Option<&str>,
        field: &str,
    ) -> Result<Option<Sampler>, ConfigError> {
        let Some(sample) = sample else {
            if key.is_some() {
                return Err(ConfigError::new(
                    format!("{field}.sample_key"),
                    "needs sample = \"N%\" too",
                ));
            }
            return Ok(None);
        };
        let percent = parse_percent(sample)
            .map_err(|problem| ConfigError::new(format!("{field}.sample"), problem))?;
        let key = match key {
            None => SampleKey::Request,
            Some(spec) => {
                let key_field = format!("{field}.sample_key");
                let (kind, name) = spec.split_once(':').ok_or_else(|| {
                    ConfigError::new(
                        &key_field,
                        format!("{spec:?} is not header:NAME, cookie:NAME or param:NAME"),
                    )
                })?;
                match kind {
                    "header" => SampleKey::Header(
                        header::HeaderName::from_bytes(name.as_bytes())
                            .map_err(|error| ConfigError::new(&key_field, error))?,
                    ),
                    "cookie" => SampleKey::Cookie(name.to_owned()),
                    "param" => SampleKey::Param(name.to_owned()),
                    other => {
                        return Err(ConfigError::new(
                            &key_field,
                            format!("unknown key kind {other:?}"),
                        ));
                    }
                }
            }
        };
        Ok(Some(Sampler {
            threshold: (percent / 100.0 * SAMPLE_SCALE as f64).round() as u64,
            key,
        }))
    }

    pub fn keeps(&self, request: &ReplayRequest) -> bool {
        let hash = match &self.key {
            SampleKey::Request => request.identity_hash,
            SampleKey::Header(name) => request
                .header(name.as_str())
                .map_or(request.identity_hash, xxh3_64),
            SampleKey::Cookie(name) => cookie(request, name).map_or(request.identity_hash, xxh3_64),
            SampleKey::Param(name) => {
                query_param(request, name).map_or(request.identity_hash, xxh3_64)
            }
        };
        hash % SAMPLE_SCALE < self.threshold
    }
}

fn cookie<'a>(request: &'a ReplayRequest, name: &str) -> Option<&'a [u8]> {
    request
        .header_values("cookie")
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value.as_bytes())
        })
}

fn query_param<'a>(request: &'a ReplayRequest, name: &str) -> Option<&'a [u8]> {
    request.path_and_query.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::tests::request;

    #[test]
    fn sampling_keeps_about_the_share_asked_for() {
        let sampler = Sampler::compile(Some("10%"), None, "t").unwrap().unwrap();
        let kept = (0..20_000u64)
            .filter(|i| {
                let mut r = request("GET / HTTP/1.1\r\n\r\n");
                r.identity_hash = xxh3_64(&i.to_le_bytes());
                sampler.keeps(&r)
            })
            .count();
        assert!(
            (1_800..2_200).contains(&kept),
            "kept {kept} of 20000 at 10%"
        );
    }

    #[test]
    fn sampling_by_key_keeps_all_or_none_of_one_user() {
        for key in ["header:X-User-Id", "cookie:session", "param:user"] {
            let sampler = Sampler::compile(Some("50%"), Some(key), "t")
                .unwrap()
                .unwrap();
            let mut decisions_per_user = std::collections::HashMap::new();
            for user in 0..200 {
                for request_number in 0..5u64 {
                    let mut r = request(&format!(
                        "GET /p?user=u{user}&n={request_number} HTTP/1.1\r\nX-User-Id: u{user}\r\nCookie: theme=dark; session=s{user}\r\n\r\n"
                    ));
                    r.identity_hash = xxh3_64(&(user * 10 + request_number).to_le_bytes());
                    decisions_per_user
                        .entry(user)
                        .or_insert_with(Vec::new)
                        .push(sampler.keeps(&r));
                }
            }
            let kept_users = decisions_per_user.values().filter(|d| d[0]).count();
            assert!(
                decisions_per_user
                    .values()
                    .all(|d| d.iter().all(|&k| k == d[0])),
                "{key}"
            );
            assert!(
                (60..140).contains(&kept_users),
                "{key}: kept {kept_users} of 200 users"
            );
        }
    }

    #[test]
    fn sample_key_without_a_share_is_refused() {
        assert!(Sampler::compile(None, Some("header:X"), "target[0]").is_err());
        assert!(Sampler::compile(Some("5%"), Some("body:x"), "target[0]").is_err());
    }
}
