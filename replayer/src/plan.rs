//! A validated configuration compiled into what the engine runs: regexes compiled, rates turned
//! into limiters, URLs parsed. [`ReplayerConfig::compile`] is the only way to a plan, so nothing
//! starts on a configuration that could fail later.

use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use http::Uri;

use tapwire_shared::token::read_token;

use crate::config::{ConfigError, ReplayerConfig, Timing, WhenLimited, parse_target_url};
use crate::filter::Filters;
use crate::rate::{CaptureRate, Sampler, limiter};
use crate::rewrite::Rewrites;

/// Everything the engine needs, compiled.
pub struct EnginePlan {
    /// The bearer token listeners must present, if any.
    pub token: Option<String>,
    /// TLS for the listener link, if configured.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    pub global: GlobalPlan,
    pub targets: Vec<TargetPlan>,
    pub timing: Timing,
    pub speed: f64,
    pub preserve_connections: bool,
}

/// What applies to every record before it is offered to targets.
pub struct GlobalPlan {
    pub filters: Filters,
    pub rewrites: Rewrites,
    pub rate: Option<Rate>,
    pub when_limited: WhenLimited,
}

/// A rate, both ways it is enforced: which requests fit (on the capture clock, when over-rate
/// requests are dropped) and when they are sent (in real time).
pub struct Rate {
    pub admission: CaptureRate,
    pub pacing: DefaultDirectRateLimiter,
}

impl Rate {
    fn new(rate: u32, burst: Option<u32>, field: &str) -> Result<Rate, ConfigError> {
        Ok(Rate {
            admission: CaptureRate::new(rate, burst, field)?,
            pacing: limiter(rate, burst, field)?,
        })
    }
}

/// One target, compiled.
pub struct TargetPlan {
    /// `http://host:port`: the metric label and log name.
    pub name: String,
    pub url: Uri,
    pub filters: Filters,
    pub rewrites: Rewrites,
    pub sampler: Option<Sampler>,
    pub rate: Option<Rate>,
    pub when_limited: WhenLimited,
    pub concurrency: usize,
    pub timeout: Duration,
    pub queue: usize,
    pub keep_host: bool,
}

impl ReplayerConfig {
    /// Validates every field and compiles the plan; the error names the field at fault.
    pub fn compile(&self) -> Result<EnginePlan, ConfigError> {
        if self.targets.is_empty() {
            return Err(ConfigError::new(
                "target",
                "at least one target is required",
            ));
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(ConfigError::new("speed", "must be a positive number"));
        }
        let global = GlobalPlan {
            filters: Filters::compile(&self.filters, "filters")?,
            rewrites: Rewrites::compile(&self.rewrites, "rewrites")?,
            rate: self
                .global_rate
                .map(|rate| Rate::new(rate, None, "global_rate"))
                .transpose()?,
            when_limited: self.when_limited,
        };
        let targets = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                let field = format!("target[{i}]");
                let url = parse_target_url(&target.url)
                    .map_err(|problem| ConfigError::new(format!("{field}.url"), problem))?;
                if target.concurrency == 0 || target.queue == 0 {
                    return Err(ConfigError::new(
                        &field,
                        "concurrency and queue must be at least 1",
                    ));
                }
                let authority = url.authority().map_or("", |a| a.as_str());
                Ok(TargetPlan {
                    name: format!("http://{authority}"),
                    filters: Filters::compile(&target.filters, &format!("{field}.filters"))?,
                    rewrites: Rewrites::compile(&target.rewrites, &format!("{field}.rewrites"))?,
                    sampler: Sampler::compile(
                        target.sample.as_deref(),
                        target.sample_key.as_deref(),
                        &field,
                    )?,
                    rate: target
                        .rate
                        .map(|rate| Rate::new(rate, target.burst, &format!("{field}.rate")))
                        .transpose()?,
                    when_limited: self.when_limited,
                    concurrency: target.concurrency as usize,
                    timeout: target.timeout,
                    queue: target.queue as usize,
                    keep_host: target.keep_host,
                    url,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ConfigError::new(
                "target",
                format!("{} is configured twice", pair[0]),
            ));
        }
        let token = self
            .token_file
            .as_deref()
            .map(|path| read_token(path).map_err(|error| ConfigError::new("token_file", error)))
            .transpose()?;
        let tls = self
            .tls
            .as_ref()
            .map(|settings| {
                crate::tls::server_config(settings).map_err(|error| ConfigError::new("tls", error))
            })
            .transpose()?;
        Ok(EnginePlan {
            token,
            tls,
            global,
            targets,
            timing: self.timing,
            speed: self.speed,
            preserve_connections: self.preserve_connections,
        })
    }
}
