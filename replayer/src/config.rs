//! The replayer's configuration: command-line flags parsed straight into data, validated before
//! anything starts, and turned into one [`TargetConfig`] per target.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Parser;
use http::Uri;

use crate::target::TargetConfig;

/// Receives captured HTTP requests from tapwire listeners over gRPC and replays every one of
/// them to each staging target, measuring what each target answers.
#[derive(Debug, Clone, Parser)]
#[command(name = "tapwire-replayer", version, max_term_width = 100)]
pub struct ReplayerConfig {
    /// Address the gRPC server listens on for listener streams.
    #[arg(
        long,
        default_value = "0.0.0.0:7070",
        value_name = "ADDR",
        help_heading = "Listeners"
    )]
    pub grpc_listen: SocketAddr,

    /// Staging target as http://host:port. Repeat to send every request to several targets.
    /// Requests only ever go to these addresses, never to a captured Host.
    #[arg(long = "target", required = true, value_name = "URL", help_heading = "Targets",
          value_parser = parse_target_url)]
    pub targets: Vec<Uri>,

    /// Most requests per second sent to each target; requests over it are dropped and counted
    /// (reason `rate_limited`). Unlimited when not given.
    #[arg(long, value_name = "PER_SECOND", help_heading = "Targets")]
    pub rate: Option<NonZeroU32>,

    /// Most requests in flight to each target at once.
    #[arg(long, default_value_t = 64, value_name = "REQUESTS", help_heading = "Targets",
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub concurrency: u32,

    /// Longest wait for a target's complete response (connect included).
    #[arg(long, default_value = "10s", value_name = "DURATION", help_heading = "Targets",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Requests queued per target while its connections are busy. When full, new requests for
    /// that target are dropped and counted (reason `target_queue_full`); other targets go on.
    #[arg(long, default_value_t = 10_000, value_name = "REQUESTS", help_heading = "Targets",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub target_queue: u64,

    /// Send the captured Host header instead of rewriting it to the target's host:port.
    #[arg(long, help_heading = "Targets")]
    pub keep_host: bool,

    /// On SIGTERM or Ctrl-C, how long to keep sending queued requests before exiting.
    #[arg(long, default_value = "10s", value_name = "DURATION", help_heading = "Targets",
          value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", help_heading = "Observability")]
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_target_url(text: &str) -> Result<Uri, String> {
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

impl ReplayerConfig {
    pub fn target_configs(&self) -> Vec<TargetConfig> {
        self.targets
            .iter()
            .map(|url| TargetConfig {
                url: url.clone(),
                rate: self.rate,
                concurrency: self.concurrency as usize,
                timeout: self.timeout,
                queue_capacity: self.target_queue as usize,
                keep_host: self.keep_host,
            })
            .collect()
    }
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
}
