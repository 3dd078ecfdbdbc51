//! The replayer's configuration as data. Command-line flags ([`ReplayerArgs`]) and a TOML file
//! (`--config`) both become one [`ReplayerConfig`]; [`ReplayerConfig::validate`] checks every
//! field (URLs, regexes, percentages) before anything starts, naming the field at fault, and
//! `--check-config` prints the effective result.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use http::Uri;
use serde::{Deserialize, Serialize};

/// Receives captured HTTP requests from tapwire listeners over gRPC and replays them to staging
/// targets: filtered, rewritten, sampled and rate-limited per target, each target with its own
/// queue so a slow one never delays the others.
#[derive(Debug, Clone, Parser)]
#[command(name = "tapwire-replayer", version, max_term_width = 100)]
pub struct ReplayerArgs {
    /// Read the whole configuration from a TOML file (see README). Engine, target, filter and
    /// rewrite flags are then refused: one source of truth.
    #[arg(long, value_name = "FILE", help_heading = "Configuration")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print the effective settings as TOML, and exit.
    #[arg(long, help_heading = "Configuration")]
    pub check_config: bool,

    /// Address the gRPC server listens on for listener streams.
    #[arg(
        long,
        value_name = "ADDR",
        help_heading = "Listeners",
        conflicts_with = "config"
    )]
    pub grpc_listen: Option<SocketAddr>,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(
        long,
        value_name = "ADDR",
        help_heading = "Observability",
        conflicts_with = "config"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// Accept only listeners presenting the bearer token in this file (compared in constant
    /// time). Others are refused and counted.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Listeners",
        conflicts_with = "config"
    )]
    pub token_file: Option<PathBuf>,

    /// Serve the listener link over TLS with this certificate (PEM, chain first). Plaintext
    /// connections are then refused.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Listeners",
        requires = "tls_key",
        conflicts_with = "config"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Listeners",
        requires = "tls_cert",
        conflicts_with = "config"
    )]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: accept only listeners presenting a certificate signed by this CA (PEM).
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Listeners",
        requires = "tls_cert",
        conflicts_with = "config"
    )]
    pub tls_ca: Option<PathBuf>,

    /// On SIGTERM or Ctrl-C, how long targets may take to finish what is queued.
    #[arg(long, value_name = "DURATION", help_heading = "Engine", conflicts_with = "config",
          value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// Most records per second replayed in all, whatever the targets' own rates.
    #[arg(
        long,
        value_name = "PER_SECOND",
        help_heading = "Engine",
        conflicts_with = "config"
    )]
    pub global_rate: Option<u32>,

    /// What happens to requests over a rate: dropped and counted, or held in the (bounded)
    /// target queue until the rate allows them.
    #[arg(long, value_enum, help_heading = "Engine", conflicts_with = "config")]
    pub when_limited: Option<WhenLimited>,

    /// `asap` sends each request as soon as it arrives; `original` keeps the captured gaps
    /// between requests (scaled by --speed).
    #[arg(long, value_enum, help_heading = "Engine", conflicts_with = "config")]
    pub timing: Option<Timing>,

    /// With --timing original: 2.0 replays twice as fast as captured, 0.5 half as fast.
    #[arg(
        long,
        value_name = "FACTOR",
        help_heading = "Engine",
        conflicts_with = "config"
    )]
    pub speed: Option<f64>,

    /// Replay the requests of one captured client connection in order, over one connection
    /// to each target (logins before the requests that need their cookie).
    #[arg(long, help_heading = "Engine", conflicts_with = "config")]
    pub preserve_connections: bool,

    #[command(flatten)]
    pub target: TargetFlags,

    #[command(flatten)]
    pub filters: FilterFlags,

    #[command(flatten)]
    pub rewrites: RewriteFlags,
}

/// Per-target settings given as flags; they apply to every `--target`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Targets")]
pub struct TargetFlags {
    /// Staging target as http://host:port. Repeat to send every request to several targets.
    /// Requests only ever go to configured targets, never to a captured Host.
    #[arg(long = "target", value_name = "URL", conflicts_with = "config")]
    pub targets: Vec<String>,

    /// Most requests per second sent to each target.
    #[arg(long, value_name = "PER_SECOND", conflicts_with = "config")]
    pub rate: Option<u32>,

    /// Requests allowed above the rate in a burst (default: 30 ms worth of the rate, at least 1;
    /// records arrive in batches, so a smaller burst would admit less than the rate).
    #[arg(long, value_name = "REQUESTS", conflicts_with = "config")]
    pub burst: Option<u32>,

    /// Replay only this share of requests, e.g. `10%`.
    #[arg(long, value_name = "PERCENT", conflicts_with = "config")]
    pub sample: Option<String>,

    /// Sample consistently by a key, so a user's requests are all replayed or none:
    /// `header:X-User-Id`, `cookie:session` or `param:user_id`.
    #[arg(long, value_name = "KEY", conflicts_with = "config")]
    pub sample_key: Option<String>,

    /// Most requests in flight to each target at once.
    #[arg(long, value_name = "REQUESTS", conflicts_with = "config")]
    pub concurrency: Option<u32>,

    /// Longest wait for a target's complete response (connect included).
    #[arg(long, value_name = "DURATION", conflicts_with = "config",
          value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// Requests queued per target; when full, that target's new requests are dropped and
    /// counted (reason `target_queue_full`) while other targets go on.
    #[arg(
        long = "target-queue",
        value_name = "REQUESTS",
        conflicts_with = "config"
    )]
    pub queue: Option<u64>,

    /// Send the captured Host header instead of the target's host:port.
    #[arg(long, conflicts_with = "config")]
    pub keep_host: bool,
}

/// Filters given as flags (GoReplay's names in brackets); they apply to all targets.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Filters")]
pub struct FilterFlags {
    /// Replay only these methods (--http-allow-method). Repeatable.
    #[arg(
        long = "allow-method",
        value_name = "METHOD",
        conflicts_with = "config"
    )]
    pub allow_methods: Vec<String>,
    /// Replay only URLs (path and query) matching one of these regexes (--http-allow-url).
    #[arg(long, value_name = "REGEX", conflicts_with = "config")]
    pub allow_url: Vec<String>,
    /// Never replay URLs matching this regex (--http-disallow-url). Repeatable.
    #[arg(long, value_name = "REGEX", conflicts_with = "config")]
    pub deny_url: Vec<String>,
    /// Replay only requests whose Host matches one of these regexes.
    #[arg(long, value_name = "REGEX", conflicts_with = "config")]
    pub allow_host: Vec<String>,
    /// Never replay requests whose Host matches this regex.
    #[arg(long, value_name = "REGEX", conflicts_with = "config")]
    pub deny_host: Vec<String>,
    /// `Name: regex`; replay only requests with such a header (--http-allow-header).
    #[arg(long, value_name = "HEADER", conflicts_with = "config")]
    pub allow_header: Vec<String>,
    /// `Name: regex`; never replay requests with such a header (--http-disallow-header).
    #[arg(long, value_name = "HEADER", conflicts_with = "config")]
    pub deny_header: Vec<String>,
    /// Replay only requests whose Basic auth `user:password` matches (--http-basic-auth-filter).
    #[arg(long, value_name = "REGEX", conflicts_with = "config")]
    pub basic_auth: Option<String>,
}

/// Rewrites given as flags; they apply to all targets.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Rewrites")]
pub struct RewriteFlags {
    /// `REGEX:REPLACEMENT` on the path and query, with $1-style groups (--http-rewrite-url);
    /// split at the last `:`.
    #[arg(long, value_name = "REGEX:REPLACEMENT", conflicts_with = "config")]
    pub rewrite_url: Vec<String>,
    /// `Name: value`; set (or replace) a header.
    #[arg(long, value_name = "HEADER", conflicts_with = "config")]
    pub set_header: Vec<String>,
    /// Remove a header.
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub remove_header: Vec<String>,
    /// Replace a header's value with `REDACTED` (e.g. Authorization, Cookie).
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub redact_header: Vec<String>,
    /// `name=value`; set a query parameter.
    #[arg(long, value_name = "PARAM", conflicts_with = "config")]
    pub set_query: Vec<String>,
    /// Send this Host header.
    #[arg(long, value_name = "HOST", conflicts_with = "config")]
    pub host_override: Option<String>,
}

/// What happens to a request over a rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WhenLimited {
    #[default]
    Drop,
    Queue,
}

/// When requests are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    #[default]
    Asap,
    Original,
}

/// The whole replayer configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayerConfig {
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// File holding the bearer token listeners must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// TLS (and with `client_ca`, mutual TLS) on the listener link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rate: Option<u32>,
    #[serde(default)]
    pub when_limited: WhenLimited,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default = "default_speed")]
    pub speed: f64,
    #[serde(default)]
    pub preserve_connections: bool,
    #[serde(default)]
    pub filters: FilterSettings,
    #[serde(default)]
    pub rewrites: RewriteSettings,
    #[serde(rename = "target")]
    pub targets: Vec<TargetSettings>,
}

/// The replayer's TLS files, all PEM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Certificate chain presented to listeners.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, listeners must present a certificate signed by this CA (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// One staging target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    /// `http://host:port`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// A percentage, `"10%"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// `header:NAME`, `cookie:NAME` or `param:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_key: Option<String>,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_queue")]
    pub queue: u64,
    #[serde(default)]
    pub keep_host: bool,
    #[serde(default)]
    pub filters: FilterSettings,
    #[serde(default)]
    pub rewrites: RewriteSettings,
}

/// Which requests are replayed. Every list is optional; an empty allow-list allows all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_url: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_url: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_host: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_host: Vec<String>,
    /// `"Name: regex"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_header: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_header: Vec<String>,
    /// Regex on the decoded Basic credentials, `user:password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<String>,
}

/// How requests are changed before they are sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub url: Vec<UrlRewrite>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_query: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A regex replacement on the path and query, with `$1`-style groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    pub from: String,
    pub to: String,
}

fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7070))
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_speed() -> f64 {
    1.0
}
fn default_concurrency() -> u32 {
    64
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_queue() -> u64 {
    10_000
}

/// A configuration that cannot run, naming the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

impl ReplayerArgs {
    /// The configuration these flags describe (or the file they name).
    pub fn into_config(self) -> Result<ReplayerConfig, ConfigError> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|error| {
                ConfigError::new("--config", format!("{}: {error}", path.display()))
            })?;
            return toml::from_str(&text).map_err(|error| {
                ConfigError::new(path.display().to_string(), error.to_string().trim_end())
            });
        }
        if self.target.targets.is_empty() {
            return Err(ConfigError::new(
                "--target",
                "at least one target is required (or --config FILE)",
            ));
        }
        let target = &self.target;
        let targets = target
            .targets
            .iter()
            .map(|url| TargetSettings {
                url: url.clone(),
                rate: target.rate,
                burst: target.burst,
                sample: target.sample.clone(),
                sample_key: target.sample_key.clone(),
                concurrency: target.concurrency.unwrap_or_else(default_concurrency),
                timeout: target.timeout.unwrap_or_else(default_timeout),
                queue: target.queue.unwrap_or_else(default_queue),
                keep_host: target.keep_host,
                filters: FilterSettings::default(),
                rewrites: RewriteSettings::default(),
            })
            .collect();
        let filters = &self.filters;
        let rewrites = &self.rewrites;
        Ok(ReplayerConfig {
            grpc_listen: self.grpc_listen.unwrap_or_else(default_grpc_listen),
            metrics_listen: self.metrics_listen,
            token_file: self.token_file.clone(),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_ca.clone(),
                }),
                _ => None,
            },
            drain_timeout: self.drain_timeout.unwrap_or_else(default_drain_timeout),
            global_rate: self.global_rate,
            when_limited: self.when_limited.unwrap_or_default(),
            timing: self.timing.unwrap_or_default(),
            speed: self.speed.unwrap_or_else(default_speed),
            preserve_connections: self.preserve_connections,
            filters: FilterSettings {
                allow_methods: filters.allow_methods.clone(),
                allow_url: filters.allow_url.clone(),
                deny_url: filters.deny_url.clone(),
                allow_host: filters.allow_host.clone(),
                deny_host: filters.deny_host.clone(),
                allow_header: filters.allow_header.clone(),
                deny_header: filters.deny_header.clone(),
                basic_auth: filters.basic_auth.clone(),
            },
            rewrites: RewriteSettings {
                url: split_specs(
                    "--rewrite-url",
                    &rewrites.rewrite_url,
                    "REGEX:REPLACEMENT",
                    |spec| spec.rsplit_once(':'),
                )?
                .into_iter()
                .map(|(from, to)| UrlRewrite {
                    from: from.to_owned(),
                    to: to.to_owned(),
                })
                .collect(),
                set_headers: split_specs(
                    "--set-header",
                    &rewrites.set_header,
                    "`Name: value`",
                    |spec| spec.split_once(':'),
                )?
                .into_iter()
                .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
                .collect(),
                remove_headers: rewrites.remove_header.clone(),
                redact_headers: rewrites.redact_header.clone(),
                set_query: split_specs("--set-query", &rewrites.set_query, "name=value", |spec| {
                    spec.split_once('=')
                })?
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
                host: rewrites.host_override.clone(),
            },
            targets,
        })
    }
}

/// Splits every `spec` given to `flag` in two with `split`; a spec that does not split is refused,
/// saying which `form` was expected.
fn split_specs<'a>(
    flag: &str,
    specs: &'a [String],
    form: &str,
    split: impl Fn(&'a str) -> Option<(&'a str, &'a str)>,
) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    specs
        .iter()
        .map(|spec| {
            split(spec).ok_or_else(|| ConfigError::new(flag, format!("{spec:?} is not {form}")))
        })
        .collect()
}

impl ReplayerConfig {
    /// The effective configuration, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# cannot print: {error}\n"))
    }
}

/// Parses `http://host:port` (no path or query): where a target's requests go.
pub fn parse_target_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|error| format!("not a URL ({error}); expected http://host:port"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https targets are not supported yet; use http://".into()),
        _ => return Err("expected http://host:port".into()),
    }
    if uri.authority().is_none() {
        return Err("expected http://host:port".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a target is host:port only; the captured path and query are kept".into());
    }
    Ok(uri)
}

/// Parses `"10%"` into 10.0.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text
        .trim()
        .strip_suffix('%')
        .ok_or_else(|| format!("{text:?} is not a percentage like \"10%\""))?;
    let percent: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage like \"10%\""))?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("{text:?} is not between 0% and 100%"));
    }
    Ok(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_must_be_plain_http_host_and_port() {
        assert!(parse_target_url("http://127.0.0.1:8082").is_ok());
        assert!(parse_target_url("http://staging:80/").is_ok());
        assert!(parse_target_url("https://staging").is_err());
        assert!(parse_target_url("http://staging/prefix").is_err());
        assert!(parse_target_url("staging:8080").is_err());
    }

    #[test]
    fn percentages_are_checked() {
        assert_eq!(parse_percent("10%"), Ok(10.0));
        assert_eq!(parse_percent(" 0.5 %"), Ok(0.5));
        assert!(parse_percent("10").is_err());
        assert!(parse_percent("120%").is_err());
    }

    #[test]
    fn a_toml_file_and_the_equivalent_flags_give_the_same_config() {
        let file = r#"
            grpc_listen = "127.0.0.1:7070"
            [rewrites]
            redact_headers = ["Authorization"]
            [[target]]
            url = "http://a:80"
            rate = 100
            sample = "10%"
        "#;
        let from_file: ReplayerConfig = toml::from_str(file).unwrap();
        let from_flags = ReplayerArgs::parse_from([
            "tapwire-replayer",
            "--grpc-listen",
            "127.0.0.1:7070",
            "--target",
            "http://a:80",
            "--rate",
            "100",
            "--sample",
            "10%",
            "--redact-header",
            "Authorization",
        ])
        .into_config()
        .unwrap();
        assert_eq!(from_file, from_flags);
        // Printing and reading back is lossless.
        let printed: ReplayerConfig = toml::from_str(&from_file.to_toml()).unwrap();
        assert_eq!(printed, from_file);
    }

    #[test]
    fn unknown_fields_in_the_file_are_refused() {
        let result =
            toml::from_str::<ReplayerConfig>("[[target]]\nurl = \"http://a:80\"\nrat = 5\n");
        assert!(result.unwrap_err().to_string().contains("rat"));
    }
}
