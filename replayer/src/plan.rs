//! A validated configuration compiled into what the replayer runs: regexes compiled, rates turned
//! into limiters, URLs parsed, token and TLS files read. [`EnginePlan::compile`] is the only way
//! to a plan, and it runs once: nothing starts on a configuration that could fail later.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use http::Uri;
use tapwire_shared::config::ConfigError;
use tapwire_shared::link::read_token;

use crate::compare::comparer::Rules;
use crate::compare::stage::ComparePlan;
use crate::compare::tally::Roles;
use crate::config::{
    CompareSettings, ReplayerConfig, Role, TargetSettings, Timing, WhenLimited, parse_target_url,
};
use crate::connect::TargetAddress;
use crate::filter::Filters;
use crate::middleware::MiddlewareSettings;
use crate::pace::StreamPacing;
use crate::rate::{CaptureRate, Rate};
use crate::rewrite::Rewrites;
use crate::sample::Sampler;
use crate::source::file::FileSettings;
use crate::target_tls::{TargetTls, TargetTlsError};

/// Where listeners connect when no address is given (and no file is replayed).
const DEFAULT_GRPC_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 7070);

/// How long a request's responses wait for the last one beyond the slowest compared target's
/// timeout and queue wait (`shed_after`: production's response may come after the targets').
const PENDING_GRACE: Duration = Duration::from_secs(2);

/// Requests of a file replay in the targets' hands at most.
const FILE_IN_FLIGHT: usize = 8192;

/// Everything the replayer runs, compiled.
pub struct EnginePlan {
    /// The gRPC server for listeners, unless only files are replayed.
    pub grpc_listen: Option<SocketAddr>,
    /// How listeners' streams are paced.
    pub grpc_pacing: StreamPacing,
    /// What listeners may hold of the gRPC server.
    pub grpc_limits: crate::source::grpc::LinkLimits,
    /// Recorded files to replay.
    pub files: Option<FileSettings>,
    /// Only read the files and report; send nothing.
    pub dry_run: bool,
    pub exit_after: Option<Duration>,
    /// `--record`: the file name template.
    pub record: Option<String>,
    /// `--output-stdout`, and whether bodies are prettified.
    pub print: Option<bool>,
    pub middleware: Option<MiddlewareSettings>,
    pub metrics_listen: Option<SocketAddr>,
    /// How often the accounting is logged (`--stats-interval`), unless off.
    pub stats_interval: Option<Duration>,
    /// How long targets may take to finish their queues at shutdown.
    pub drain_timeout: Duration,
    /// The bearer token listeners must present, if any.
    pub token: Option<String>,
    /// TLS for the listener link, if configured.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    pub global: GlobalPlan,
    pub targets: Vec<TargetPlan>,
    pub preserve_connections: bool,
    /// How targets' responses are compared, when targets have roles.
    pub compare: Option<ComparePlan>,
}

/// What applies to every record before it is offered to targets.
pub struct GlobalPlan {
    pub filters: Filters,
    pub rewrites: Rewrites,
    /// The global rate when over-rate records are dropped: which fit, by capture time.
    pub admission: Option<CaptureRate>,
    /// The global rate when over-rate records wait: each source stream is held back until it
    /// allows the next record.
    pub pacing: Option<Arc<DefaultDirectRateLimiter>>,
}

/// One target, compiled.
pub struct TargetPlan {
    /// `http://host:port` or `https://host:port`: the metric label and log name.
    pub name: String,
    pub url: Uri,
    /// Where requests and reachability probes connect, and TLS for an `https://` target.
    pub address: TargetAddress,
    pub filters: Filters,
    pub rewrites: Rewrites,
    pub sampler: Option<Sampler>,
    pub rate: Option<Rate>,
    pub when_limited: WhenLimited,
    pub concurrency: usize,
    pub timeout: Duration,
    pub queue: usize,
    /// How long the queue may stay full, holding sources back, before the target sheds.
    pub shed_after: Duration,
    pub keep_host: bool,
    /// What its responses are compared as, if they are.
    pub role: Option<Role>,
}

/// TLS for an `https://` target (`None` for `http://`), its settings checked: a CA file that
/// holds certificates, and no TLS setting on an `http://` target.
fn target_tls(
    url: &Uri,
    target: &TargetSettings,
    host_override: Option<&String>,
    field: &str,
) -> Result<Option<TargetTls>, ConfigError> {
    if url.scheme_str() != Some("https") {
        if target.target_ca.is_some() {
            return Err(ConfigError::new(
                format!("{field}.target_ca"),
                "only applies to an https:// target",
            ));
        }
        if target.target_insecure {
            return Err(ConfigError::new(
                format!("{field}.target_insecure"),
                "only applies to an https:// target",
            ));
        }
        return Ok(None);
    }
    if target.target_insecure && target.target_ca.is_some() {
        return Err(ConfigError::new(
            format!("{field}.target_insecure"),
            "accepts any certificate, so target_ca would not be used: give one or the other",
        ));
    }
    let server_name = match host_override {
        Some(host) => host.as_str(),
        None => url.host().unwrap_or_default(),
    };
    TargetTls::new(
        server_name,
        target.target_ca.as_deref(),
        target.target_insecure,
    )
    .map(Some)
    .map_err(|error| {
        let setting = match error {
            TargetTlsError::ServerName(_) if target.rewrites.host.is_some() => {
                format!("{field}.rewrites.host")
            }
            TargetTlsError::ServerName(_) if host_override.is_some() => "rewrites.host".into(),
            TargetTlsError::ServerName(_) => format!("{field}.url"),
            TargetTlsError::Files(_) => format!("{field}.target_ca"),
        };
        ConfigError::new(setting, error)
    })
}

impl EnginePlan {
    /// Validates every setting of `config` and compiles the plan; the error names the setting
    /// at fault.
    pub fn compile(config: &ReplayerConfig) -> Result<EnginePlan, ConfigError> {
        let sends_nowhere = config.output_stdout || config.input_file_dry_run;
        if config.targets.is_empty() && !sends_nowhere {
            return Err(ConfigError::new(
                "target",
                "at least one target is required (--target URL, or [[target]] in the file)",
            ));
        }
        if config.input_file_dry_run && config.input_files.is_empty() {
            return Err(ConfigError::new("input_file_dry_run", "needs --input-file"));
        }
        if config.prettify && !config.output_stdout {
            return Err(ConfigError::new(
                "prettify",
                "only applies to --output-stdout",
            ));
        }
        let files = if config.input_files.is_empty() {
            None
        } else {
            // Reading waits once this many requests are in the targets' hands: never more than
            // the smallest target queue (or the middleware's) holds.
            let smallest_queue = config.targets.iter().map(|t| t.queue as usize).min();
            let mut in_flight = smallest_queue.unwrap_or(FILE_IN_FLIGHT).min(FILE_IN_FLIGHT);
            if config.middleware.is_some() {
                in_flight = in_flight.min(crate::middleware::QUEUE_MESSAGES / 2);
            }
            Some(FileSettings {
                in_flight,
                files: crate::source::file::expand(&config.input_files)?,
                repeat: config.input_file_loop,
                pacing: StreamPacing {
                    timing: config.timing.unwrap_or(Timing::Original),
                    speed: config.speed,
                    // 0 is no cap, as in GoReplay.
                    max_wait: config.input_file_max_wait.filter(|wait| !wait.is_zero()),
                },
            })
        };
        let grpc_listen = match (config.grpc_listen, &files) {
            (Some(addr), _) => Some(addr),
            (None, None) => Some(DEFAULT_GRPC_LISTEN),
            (None, Some(_)) => None,
        };
        let middleware = config
            .middleware
            .as_deref()
            .map(|command| {
                let command: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
                if command.is_empty() {
                    return Err(ConfigError::new("middleware", "an empty command"));
                }
                Ok(MiddlewareSettings {
                    command,
                    timeout: config.middleware_timeout,
                })
            })
            .transpose()?;
        if !(config.speed.is_finite() && config.speed > 0.0) {
            return Err(ConfigError::new("speed", "must be a positive number"));
        }
        let global_rate = config
            .global_rate
            .map(|rate| Rate::new(rate, None, "global_rate"))
            .transpose()?;
        let (admission, pacing) = match (global_rate, config.when_limited) {
            (None, _) => (None, None),
            (Some(rate), WhenLimited::Drop) => (Some(rate.admission), None),
            (Some(rate), WhenLimited::Queue) => (None, Some(Arc::new(rate.pacing))),
        };
        let global = GlobalPlan {
            filters: Filters::compile(&config.filters, "filters")?,
            rewrites: Rewrites::compile(&config.rewrites, "rewrites")?,
            admission,
            pacing,
        };
        let targets = config
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
                // The Host a target is sent is also the name its certificate must hold.
                let host_override = target
                    .rewrites
                    .host
                    .as_ref()
                    .or(config.rewrites.host.as_ref());
                let address = TargetAddress {
                    authority: authority.to_owned(),
                    tls: target_tls(&url, target, host_override, &field)?,
                };
                Ok(TargetPlan {
                    name: format!("{}://{authority}", url.scheme_str().unwrap_or("http")),
                    address,
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
                    when_limited: config.when_limited,
                    concurrency: target.concurrency as usize,
                    timeout: target.timeout,
                    queue: target.queue as usize,
                    shed_after: target.shed_after,
                    keep_host: target.keep_host,
                    role: target.role,
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
        let compare = compare_plan(&config.compare, &targets, config.middleware.is_some())?;
        let token = config
            .token_file
            .as_deref()
            .map(|path| read_token(path).map_err(|error| ConfigError::new("token_file", error)))
            .transpose()?;
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(
                crate::source::tls::server_config(cert, key, config.tls.client_ca.as_deref())
                    .map_err(|error| ConfigError::new("tls", error))?,
            ),
            (None, None) if config.tls.client_ca.is_none() => None,
            _ => {
                return Err(ConfigError::new(
                    "tls",
                    "cert and key (--tls-cert, --tls-key) go together, and client_ca (--tls-ca) needs them",
                ));
            }
        };
        Ok(EnginePlan {
            grpc_listen,
            grpc_pacing: StreamPacing {
                timing: config.timing.unwrap_or(Timing::Asap),
                speed: config.speed,
                max_wait: None,
            },
            grpc_limits: crate::source::grpc::LinkLimits::compile(config)?,
            files,
            dry_run: config.input_file_dry_run,
            exit_after: config.exit_after,
            record: config.record.clone(),
            print: config.output_stdout.then_some(config.prettify),
            middleware,
            metrics_listen: config.metrics_listen,
            stats_interval: tapwire_shared::config::stats_every(config.stats_interval),
            drain_timeout: config.drain_timeout,
            token,
            tls,
            global,
            targets,
            preserve_connections: config.preserve_connections,
            compare,
        })
    }
}

/// The comparison of targets with roles: the candidate against the baseline (or production's
/// own responses, without one), the two baselines' differences as noise.
fn compare_plan(
    settings: &CompareSettings,
    targets: &[TargetPlan],
    middleware: bool,
) -> Result<Option<ComparePlan>, ConfigError> {
    let with_role = |role: Role| targets.iter().filter(move |t| t.role == Some(role));
    for role in [Role::Candidate, Role::Baseline, Role::Baseline2] {
        if with_role(role).count() > 1 {
            return Err(ConfigError::new(
                "target.role",
                format!("more than one target is the {}", role.as_str()),
            ));
        }
    }
    if with_role(Role::Production).next().is_some() {
        return Err(ConfigError::new(
            "target.role",
            "production is not a target: its responses come from the listeners' \
             --track-responses (or a file's type 2 records); roles are candidate, baseline and \
             baseline2",
        ));
    }
    let name = |role: Role| with_role(role).next().map(|t| t.name.clone());
    let Some(candidate) = name(Role::Candidate) else {
        if name(Role::Baseline).is_some() || name(Role::Baseline2).is_some() {
            return Err(ConfigError::new(
                "target.role",
                "a baseline is compared with a candidate: give one (--candidate URL)",
            ));
        }
        if settings != &CompareSettings::default() {
            return Err(ConfigError::new(
                "compare",
                "comparison settings need a candidate (--candidate URL)",
            ));
        }
        return Ok(None);
    };
    let baseline = name(Role::Baseline);
    let baseline2 = name(Role::Baseline2);
    if baseline2.is_some() && baseline.is_none() {
        return Err(ConfigError::new(
            "target.role",
            "a second baseline needs a baseline (--baseline URL)",
        ));
    }
    let mut roles = vec![(Role::Candidate, candidate)];
    let reference = match baseline {
        Some(baseline) => {
            roles.push((Role::Baseline, baseline));
            Role::Baseline
        }
        None => {
            roles.push((Role::Production, "production".to_owned()));
            Role::Production
        }
    };
    let noise_pair = baseline2.map(|baseline2| {
        roles.push((Role::Baseline2, baseline2));
        (Role::Baseline, Role::Baseline2)
    });
    let expiry = targets
        .iter()
        .filter(|t| t.role.is_some())
        .map(|t| t.timeout + t.shed_after)
        .max()
        .unwrap_or_default()
        + PENDING_GRACE;
    Ok(Some(ComparePlan {
        rules: Rules::compile(settings)?,
        roles: Roles {
            targets: roles,
            reference,
            noise_pair,
        },
        thresholds: Rules::thresholds(settings)?,
        diff_log: settings
            .diff_log
            .clone()
            .map(|path| (path, settings.diff_log_size.get())),
        queue: settings.queue as usize,
        expiry,
        production_first: middleware,
    }))
}
