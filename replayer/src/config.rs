//! The replayer's configuration as data: structs whose fields are both the command-line flags and
//! the keys of the `--config` TOML file, each setting declared once (its default on its flag).
//! On the command line, per-target settings (`--rate`, `--sample`...) apply to every `--target`,
//! and a target's own follow its URL (`--target 'http://a:80;rate=10'`, the keys of a
//! `[[target]]` table); in a file each `[[target]]` has its own, with its own filters and rewrites.
//! [`EnginePlan::compile`](crate::plan::EnginePlan::compile) validates it into what runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use http::Uri;
use serde::{Deserialize, Serialize};
use tapwire_shared::config::{
    self as shared_config, ByteSize, ConfigError, ConfigFileFlags, Configuration, DeploymentFlag,
    Loaded, LogFormat, flag_defaults, struct_keys,
};

/// Receives captured HTTP requests from tapwire listeners over gRPC and replays them to staging
/// targets: filtered, rewritten, sampled and rate-limited per target, each target with its own
/// queue so a slow one never delays the others.
#[derive(Debug, Clone, PartialEq, Parser, Serialize, Deserialize)]
#[command(name = "tapwire-replayer", version = env!("TAPWIRE_VERSION"), max_term_width = 100)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayerConfig {
    #[command(flatten)]
    #[serde(skip)]
    pub file: ConfigFileFlags,

    /// Address the gRPC server listens on for listener streams [default: 0.0.0.0:7070; with
    /// --input-file, no server unless this is given].
    #[arg(long, value_name = "ADDR", help_heading = "Listeners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<SocketAddr>,

    /// Serve Prometheus metrics at http://ADDR/metrics, and health probes at /healthz and
    /// /readyz.
    ///
    /// /healthz answers 200 "ok" while the runtime turns (503 once it has not for 10 s).
    /// /readyz answers 200 "ready" while the gRPC port is served (with --grpc-listen) and at
    /// least one target is reachable (its latest connect, tried every 2 s, succeeded: TCP, and
    /// for https:// the TLS handshake); otherwise 503 with one line per unmet condition.
    /// Targets are probed every 2 s only when this is given (once at start-up always).
    #[arg(long, value_name = "ADDR", help_heading = "Observability")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log lines as text, or as one JSON object per line (`timestamp`, `level`, `message` and
    /// the event's fields), for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, help_heading = "Observability")]
    pub log_format: LogFormat,

    /// How often to log the accounting: totals, and one line per target (received, answered
    /// by status class, dropped by reason, rate and p50/p99 latency over the interval); 0
    /// turns it off.
    #[arg(long, default_value = "10s", value_name = "DURATION", help_heading = "Observability",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,

    /// Accept only listeners presenting the bearer token in this file (compared in constant
    /// time). Others are refused and counted.
    #[arg(long, value_name = "FILE", help_heading = "Listeners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,

    /// Listener connections held at once (TLS or not, handshaking or streaming); past it a new
    /// connection is closed at once and counted. Keep it well under the open-file limit.
    #[arg(
        long,
        default_value_t = 512,
        value_name = "CONNECTIONS",
        help_heading = "Listeners"
    )]
    pub max_connections: u32,

    /// Concurrent streams one listener connection may open (a listener uses one).
    #[arg(
        long,
        default_value_t = 16,
        value_name = "STREAMS",
        help_heading = "Listeners"
    )]
    pub max_streams_per_connection: u32,

    /// Time a new listener connection has to complete its TLS handshake (with TLS) and send
    /// the HTTP/2 preface; a connection that says nothing is closed after it.
    #[arg(long, default_value = "10s", value_name = "DURATION", help_heading = "Listeners",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,

    /// Bytes of batches held from all listeners together, received and not yet finished with
    /// by the targets; at the cap, streams stop reading (the listeners hold the rest).
    #[arg(long, default_value_t = ByteSize(256 << 20), value_name = "SIZE",
          help_heading = "Listeners")]
    pub max_held_bytes: ByteSize,

    /// On SIGTERM or Ctrl-C, how long targets may take to finish what is queued.
    #[arg(long, default_value = "10s", value_name = "DURATION", help_heading = "Engine",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,

    /// Most records per second replayed in all, whatever the targets' own rates.
    #[arg(long, value_name = "PER_SECOND", help_heading = "Engine")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_rate: Option<u32>,

    /// What happens to requests over a rate: dropped and counted, or held in the (bounded)
    /// target queue until the rate allows them.
    #[arg(long, value_enum, default_value_t = WhenLimited::Drop, help_heading = "Engine")]
    pub when_limited: WhenLimited,

    /// `asap` sends each request as soon as it arrives; `original` keeps the captured gaps
    /// between requests (scaled by --speed) [default: asap for listeners, original for files].
    #[arg(long, value_enum, help_heading = "Engine")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,

    /// With --timing original: 2.0 replays twice as fast as captured, 0.5 half as fast.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "FACTOR",
        help_heading = "Engine"
    )]
    pub speed: f64,

    /// Replay the requests of one captured client connection in order, over one connection
    /// to each target (logins before the requests that need their cookie).
    #[arg(long, help_heading = "Engine")]
    pub preserve_connections: bool,

    /// Replay GoReplay .gor files (a glob such as 'requests_*.gor'; .gz files are gunzipped),
    /// merged in timestamp order, through the same engine as live traffic. Repeatable. Without
    /// --grpc-listen, the replayer exits when they are done.
    #[arg(long = "input-file", value_name = "PATTERN", help_heading = "Files")]
    #[serde(rename = "input_file", skip_serializing_if = "Vec::is_empty")]
    pub input_files: Vec<String>,

    /// Replay the files again and again (until SIGTERM or --exit-after).
    #[arg(long, help_heading = "Files")]
    pub input_file_loop: bool,

    /// Cap on any pause between two requests when keeping the files' timing, e.g. 1s.
    #[arg(long, value_name = "DURATION", help_heading = "Files",
          value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_file_max_wait: Option<Duration>,

    /// Read the files and print how many requests they hold, their time span and how long a
    /// replay would take; send nothing.
    #[arg(long, help_heading = "Files")]
    pub input_file_dry_run: bool,

    /// Stop after this long, as on SIGTERM.
    #[arg(long, value_name = "DURATION", help_heading = "Engine",
          value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub exit_after: Option<Duration>,

    /// Record what the replayer sees to a GoReplay .gor file: requests as they arrive,
    /// production's responses, and every target's responses (same naming, chunks and .gz as
    /// the listener's --output-file).
    #[arg(long, value_name = "PATH", help_heading = "Outputs")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,

    /// Print every request that passes the global filters, as it would be sent, in the .gor
    /// format; with --input-file and no --target, replaces sending.
    #[arg(long, help_heading = "Outputs")]
    pub output_stdout: bool,

    /// With --output-stdout: decode chunked, gzip and deflate bodies for display.
    #[arg(long, help_heading = "Outputs")]
    pub prettify: bool,

    /// Run this program as GoReplay middleware ("CMD ARGS", split at spaces): every message
    /// goes to its stdin hex-encoded, one per line, and only the requests it writes back are
    /// replayed.
    #[arg(long, value_name = "COMMAND", help_heading = "Middleware")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub middleware: Option<String>,

    /// How long a request given to the middleware is waited for; one it read and did not
    /// write back by then is filtered, and a middleware that stops reading is restarted.
    #[arg(long, default_value = "5s", value_name = "DURATION", help_heading = "Middleware",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub middleware_timeout: Duration,

    /// TLS (and with a client CA, mutual TLS) on the listener link.
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsSettings::is_empty")]
    pub tls: TlsSettings,

    #[command(flatten)]
    #[serde(skip_serializing_if = "FilterSettings::is_empty")]
    pub filters: FilterSettings,

    #[command(flatten)]
    #[serde(skip_serializing_if = "RewriteSettings::is_empty")]
    pub rewrites: RewriteSettings,

    /// The staging targets (in a file: `[[target]]` tables).
    #[arg(skip)]
    #[serde(rename = "target")]
    pub targets: Vec<TargetSettings>,

    /// Staging target as http://host:port or https://host:port. Repeat to send every request
    /// to several targets. Requests only ever go to configured targets, never to a captured
    /// Host.
    ///
    /// The per-target flags below apply to every --target; a target's own settings follow its
    /// URL as `;key=value`, with the keys of a `[[target]]` table in a file, e.g.
    /// 'http://a:8080;rate=10;sample=5%;timeout=2s'.
    #[arg(
        long = "target",
        value_name = "URL[;KEY=VALUE...]",
        help_heading = "Targets"
    )]
    #[serde(skip)]
    target_urls: Vec<String>,

    /// The per-target flags, for every `--target`.
    #[command(flatten)]
    #[serde(skip)]
    every_target: TargetSettings,

    /// The build under test: a target (written as --target's, keys included) whose responses
    /// are compared with the baseline's, or with production's when there is no baseline (the
    /// listeners' --track-responses, or type 2 records in files).
    #[arg(long, value_name = "URL[;KEY=VALUE...]", help_heading = "Comparison")]
    #[serde(skip)]
    candidate: Option<String>,

    /// The current build: the target the candidate's responses are compared with.
    #[arg(long, value_name = "URL[;KEY=VALUE...]", help_heading = "Comparison")]
    #[serde(skip)]
    baseline: Option<String>,

    /// A second instance of the current build: where it differs from the baseline is noise
    /// (timestamps, generated ids), not reported against the candidate.
    #[arg(long, value_name = "URL[;KEY=VALUE...]", help_heading = "Comparison")]
    #[serde(skip)]
    baseline2: Option<String>,

    /// How responses are compared (in a file: the `[compare]` table).
    #[command(flatten)]
    pub compare: CompareSettings,
}

impl Default for ReplayerConfig {
    fn default() -> Self {
        flag_defaults()
    }
}

impl ReplayerConfig {
    /// The configuration `args` describe (flags, or the file named by `--config`).
    pub fn load<I, S>(args: I) -> Result<Loaded<ReplayerConfig>, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let mut loaded = shared_config::load::<ReplayerConfig, _, _>(args)?;
        loaded.config.expand_target_flags()?;
        Ok(loaded)
    }

    /// Each `--target` becomes a target with the per-target flags' settings, overridden by its
    /// own `;key=value` settings.
    fn expand_target_flags(&mut self) -> Result<(), ConfigError> {
        let every_target = std::mem::take(&mut self.every_target);
        // `--target-ca` and `--target-insecure` are for the https:// targets among them: a
        // command line may mix both kinds (given inline, on an http:// one, they are refused).
        let plain_targets = TargetSettings {
            target_ca: None,
            target_insecure: false,
            ..every_target.clone()
        };
        let is_https = |spec: &String| {
            let scheme = spec.trim_start().get(..8);
            scheme.is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        };
        let role_urls = [
            (Role::Candidate, self.candidate.take()),
            (Role::Baseline, self.baseline.take()),
            (Role::Baseline2, self.baseline2.take()),
        ];
        let any_https = self.target_urls.iter().any(is_https)
            || role_urls
                .iter()
                .any(|(_, url)| url.as_ref().is_some_and(is_https));
        if every_target != plain_targets && !any_https {
            let flag = match every_target.target_insecure {
                true => "--target-insecure",
                false => "--target-ca",
            };
            return Err(ConfigError::new(
                flag,
                "only applies to https:// targets, and no --target is one",
            ));
        }
        for (index, spec) in std::mem::take(&mut self.target_urls).iter().enumerate() {
            let base = match is_https(spec) {
                true => &every_target,
                false => &plain_targets,
            };
            let target = base
                .with_inline_settings(spec)
                .map_err(|problem| ConfigError::new(format!("--target[{index}]"), problem))?;
            self.targets.push(target);
        }
        for (role, spec) in role_urls {
            let Some(spec) = spec else { continue };
            let base = match is_https(&spec) {
                true => &every_target,
                false => &plain_targets,
            };
            let mut target = base
                .with_inline_settings(&spec)
                .map_err(|problem| ConfigError::new(format!("--{}", role.as_str()), problem))?;
            target.role = Some(role);
            self.targets.push(target);
        }
        Ok(())
    }
}

impl Configuration for ReplayerConfig {
    /// Where this replayer listens and how listeners authenticate; what it replays, to which
    /// targets and how, belongs to the file.
    const DEPLOYMENT_FLAGS: &'static [DeploymentFlag] = &[
        DeploymentFlag::same_key("grpc_listen"),
        DeploymentFlag::same_key("metrics_listen"),
        DeploymentFlag::same_key("token_file"),
        DeploymentFlag {
            id: "tls_cert",
            key: "tls.cert",
        },
        DeploymentFlag {
            id: "tls_key",
            key: "tls.key",
        },
        DeploymentFlag {
            id: "tls_ca",
            key: "tls.client_ca",
        },
        DeploymentFlag::same_key("log_format"),
        DeploymentFlag::same_key("stats_interval"),
    ];

    fn file_keys() -> Vec<String> {
        let tables = ["tls", "filters", "rewrites", "target", "compare"];
        let mut keys: Vec<String> = struct_keys::<ReplayerConfig>("")
            .into_iter()
            .filter(|key| !tables.contains(&key.as_str()))
            .collect();
        keys.extend(struct_keys::<TlsSettings>("tls."));
        keys.extend(struct_keys::<CompareSettings>("compare."));
        keys.extend(struct_keys::<FilterSettings>("filters."));
        keys.extend(struct_keys::<RewriteSettings>("rewrites."));
        keys.extend(
            struct_keys::<TargetSettings>("target.")
                .into_iter()
                .filter(|key| !["target.filters", "target.rewrites"].contains(&key.as_str())),
        );
        keys.extend(struct_keys::<FilterSettings>("target.filters."));
        keys.extend(struct_keys::<RewriteSettings>("target.rewrites."));
        keys
    }
}

/// The replayer's TLS files, all PEM.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Listeners")]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Serve the listener link over TLS with this certificate (PEM, chain first). Plaintext
    /// connections are then refused. Needs --tls-key.
    #[arg(long = "tls-cert", id = "tls_cert", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", id = "tls_key", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,

    /// Mutual TLS: accept only listeners presenting a certificate signed by this CA (PEM).
    #[arg(long = "tls-ca", id = "tls_ca", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    pub fn is_empty(&self) -> bool {
        self == &TlsSettings::default()
    }
}

/// How the responses of targets with roles are compared (`[compare]` in a file).
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Comparison")]
#[serde(default, deny_unknown_fields)]
pub struct CompareSettings {
    /// A response header not compared (repeat for more), besides those never compared: Date,
    /// Server, X-Request-Id, X-Trace-Id, Age, Expires, Last-Modified, ETag, and the framing
    /// (Content-Length, Transfer-Encoding, Connection). Set-Cookie is compared by cookie names.
    #[arg(
        long = "compare-ignore-header",
        id = "compare_ignore_header",
        value_name = "NAME"
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore_headers: Vec<String>,

    /// A body field path not compared (repeat for more): `$.meta.generated_at`, `*` for any
    /// one key or index (`$.items[*].id`), `..` for any depth (`$..request_id`).
    #[arg(
        long = "compare-ignore-path",
        id = "compare_ignore_path",
        value_name = "PATTERN"
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore_paths: Vec<String>,

    /// Endpoints are named by method and path with numeric and UUID segments collapsed
    /// (`GET /users/{n}`); a segment matching REGEX (whole) becomes PLACEHOLDER too, e.g.
    /// '{sku}=[A-Z]+-[0-9]+' (repeat for more).
    #[arg(
        long = "endpoint-pattern",
        id = "endpoint_pattern",
        value_name = "PLACEHOLDER=REGEX"
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoint_patterns: Vec<String>,

    /// A field path's differences are the candidate's only if they exceed the noise's by this
    /// share of the candidate's own count (Diffy's relative threshold).
    #[arg(
        long = "noise-relative",
        id = "noise_relative",
        default_value = "20%",
        value_name = "PERCENT"
    )]
    pub noise_relative: String,

    /// ... and by this share of the requests compared at the endpoint (Diffy's absolute
    /// threshold).
    #[arg(
        long = "noise-absolute",
        id = "noise_absolute",
        default_value = "0.03%",
        value_name = "PERCENT"
    )]
    pub noise_absolute: String,

    /// Write a JSON Lines diff log: a `difference` line per request where the candidate
    /// differed, and a `summary` line (what the report shows) every --stats-interval and at
    /// the end. `tapwire-replayer report PATH` turns it into the HTML report.
    #[arg(long = "diff-log", id = "diff_log", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_log: Option<PathBuf>,

    /// The diff log is rotated at this size: PATH becomes PATH.1 (replacing the older one).
    #[arg(long = "diff-log-size", id = "diff_log_size", default_value_t = ByteSize(64 << 20),
          value_name = "SIZE")]
    pub diff_log_size: ByteSize,

    /// Requests whose responses wait to be compared at most; beyond, they are counted as not
    /// compared (`queue_full`): comparing never slows replay.
    #[arg(
        long = "compare-queue",
        id = "compare_queue",
        default_value_t = 10_000,
        value_name = "REQUESTS"
    )]
    pub queue: u64,

    /// Largest decoded body compared; a larger response is counted as not compared
    /// (`too_large`).
    #[arg(long = "compare-body-limit", id = "compare_body_limit",
          default_value_t = ByteSize(4 << 20), value_name = "SIZE")]
    pub body_limit: ByteSize,
}

impl Default for CompareSettings {
    fn default() -> Self {
        flag_defaults()
    }
}

/// What a target's responses are compared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The build under test.
    Candidate,
    /// The current build: the candidate's reference.
    Baseline,
    /// Another instance of the current build: its differences from the baseline are noise.
    Baseline2,
    /// Production's own responses (the listeners' --track-responses; never a target).
    Production,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Candidate => "candidate",
            Role::Baseline => "baseline",
            Role::Baseline2 => "baseline2",
            Role::Production => "production",
        }
    }
}

/// One staging target. On the command line these flags apply to every `--target`.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Targets")]
#[serde(default, deny_unknown_fields)]
pub struct TargetSettings {
    /// `http://host:port` or `https://host:port`.
    #[arg(skip)]
    pub url: String,

    /// Most requests per second sent to each target.
    #[arg(long, value_name = "PER_SECOND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,

    /// Requests allowed above the rate in a burst (records arrive in batches, so a smaller burst
    /// would admit less than the rate) [default: 30 ms worth of the rate, at least 1].
    #[arg(long, value_name = "REQUESTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,

    /// Replay only this share of requests, e.g. `10%`.
    #[arg(long, value_name = "PERCENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,

    /// Sample consistently by a key, so a user's requests are all replayed or none:
    /// `header:X-User-Id`, `cookie:session` or `param:user_id`.
    #[arg(long, value_name = "KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_key: Option<String>,

    /// Most requests in flight to each target at once.
    #[arg(long, default_value_t = 64, value_name = "REQUESTS")]
    pub concurrency: u32,

    /// Longest wait for a target's complete response (connect included).
    #[arg(long, default_value = "10s", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,

    /// Requests queued per target. While a queue is full, the replayer stops reading from
    /// listeners and files (they hold the burst) rather than drop.
    #[arg(
        long = "target-queue",
        default_value_t = 10_000,
        value_name = "REQUESTS"
    )]
    pub queue: u64,

    /// A target whose queue stays full for longer than this is slower than the traffic: it
    /// stops holding the others back and sheds what does not fit its queue (counted,
    /// `shed_slow_target`) until it has caught up.
    #[arg(long, default_value = "5s", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub shed_after: Duration,

    /// Send the captured Host header instead of the target's host:port.
    #[arg(long)]
    pub keep_host: bool,

    /// For an https:// target: trust only the CAs in this PEM file for its certificate,
    /// instead of the public web roots built into the replayer.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ca: Option<PathBuf>,

    /// For an https:// target: accept any certificate it presents (self-signed staging).
    /// The traffic is still encrypted, but a machine in the middle could read or change it:
    /// a warning naming the target is logged at start.
    #[arg(long)]
    pub target_insecure: bool,

    /// Compare this target's responses as the `candidate`, the `baseline` or the `baseline2`
    /// (file only; on the command line --candidate, --baseline, --baseline2).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,

    /// This target's own filters, after the global ones (file only).
    #[arg(skip)]
    #[serde(skip_serializing_if = "FilterSettings::is_empty")]
    pub filters: FilterSettings,

    /// This target's own rewrites, after the global ones (file only).
    #[arg(skip)]
    #[serde(skip_serializing_if = "RewriteSettings::is_empty")]
    pub rewrites: RewriteSettings,
}

impl Default for TargetSettings {
    fn default() -> Self {
        flag_defaults()
    }
}

impl TargetSettings {
    /// The keys a `--target` may set inline: those with a flag, the scalar ones (a field added
    /// with a flag is one of them, with no code here).
    pub fn inline_keys() -> Vec<String> {
        TargetSettings::augment_args(clap::Command::new("target"))
            .get_arguments()
            .map(|arg| arg.get_id().to_string())
            .collect()
    }

    /// These settings for the target `spec` names: `URL;key=value;...`, each `key=value` as
    /// that key would be in a `[[target]]` table (`rate=10`, `sample=5%`, `timeout=2s`).
    fn with_inline_settings(&self, spec: &str) -> Result<TargetSettings, String> {
        let mut parts = spec.split(';');
        let url = parts.next().unwrap_or_default().trim().to_owned();
        let mut target = TargetSettings {
            url,
            ..self.clone()
        };
        let inline_keys = TargetSettings::inline_keys();
        for part in parts.map(str::trim).filter(|part| !part.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let key = key.trim();
            if !inline_keys.iter().any(|known| known == key) {
                return Err(format!(
                    "unknown key {key:?}; a target's keys are {}",
                    inline_keys.join(", ")
                ));
            }
            target = target.with_setting(key, value.trim())?;
        }
        Ok(target)
    }

    /// These settings with `key` set to `value`, read as a TOML value when it is one (`10`,
    /// `true`) and as a string otherwise (`5%`, `2s`); whichever the key's type takes.
    fn with_setting(&self, key: &str, value: &str) -> Result<TargetSettings, String> {
        let mut table = toml::Table::try_from(self).map_err(|error| format!("{key}: {error}"))?;
        let as_toml = toml::from_str::<toml::Table>(&format!("value = {value}"))
            .ok()
            .filter(|parsed| parsed.len() == 1)
            .and_then(|mut parsed| parsed.remove("value"));
        let mut first_error = None;
        for candidate in as_toml
            .into_iter()
            .chain([toml::Value::String(value.to_owned())])
        {
            table.insert(key.to_owned(), candidate);
            match table.clone().try_into::<TargetSettings>() {
                Ok(target) => return Ok(target),
                Err(error) => {
                    // Its first line: the rest only repeats the key.
                    let message = error.to_string();
                    let first_line = message.lines().next().unwrap_or_default().to_owned();
                    first_error.get_or_insert(first_line);
                }
            }
        }
        let error = first_error.unwrap_or_default();
        Err(format!("{key}: {}", error.trim_end()))
    }
}

/// Which requests are replayed (GoReplay's flag names in brackets). Every list is optional; an
/// empty allow-list allows all. As flags they apply to all targets.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Filters")]
#[serde(default, deny_unknown_fields)]
pub struct FilterSettings {
    /// Replay only these methods (--http-allow-method). Repeatable.
    #[arg(long = "allow-method", value_name = "METHOD")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Replay only URLs (path and query) matching one of these regexes (--http-allow-url).
    #[arg(long, value_name = "REGEX")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_url: Vec<String>,
    /// Never replay URLs matching this regex (--http-disallow-url). Repeatable.
    #[arg(long, value_name = "REGEX")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_url: Vec<String>,
    /// Replay only requests whose Host matches one of these regexes.
    #[arg(long, value_name = "REGEX")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_host: Vec<String>,
    /// Never replay requests whose Host matches this regex.
    #[arg(long, value_name = "REGEX")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_host: Vec<String>,
    /// `Name: regex`; replay only requests with such a header (--http-allow-header).
    #[arg(long, value_name = "HEADER")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_header: Vec<String>,
    /// `Name: regex`; never replay requests with such a header (--http-disallow-header).
    #[arg(long, value_name = "HEADER")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_header: Vec<String>,
    /// Replay only requests whose Basic auth `user:password` matches (--http-basic-auth-filter).
    #[arg(long, value_name = "REGEX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<String>,
}

/// How requests are changed before they are sent. As flags they apply to all targets.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Rewrites")]
#[serde(default, deny_unknown_fields)]
pub struct RewriteSettings {
    /// `REGEX:REPLACEMENT` on the path and query, with $1-style groups (--http-rewrite-url);
    /// split at the last `:`. In a file: `url = [{ from = "...", to = "..." }]`.
    #[arg(long = "rewrite-url", value_name = "REGEX:REPLACEMENT")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub url: Vec<UrlRewrite>,
    /// `Name: REGEX,REPLACEMENT` (--http-rewrite-header): every line of that header whose
    /// value matches gets the regex replaced, with $1-style groups; split at the first `,`
    /// as GoReplay does. In a file: `rewrite_headers = [{ name = "...", from = "...", to = "..." }]`.
    #[arg(long = "rewrite-header", value_name = "HEADER")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rewrite_headers: Vec<HeaderRewrite>,
    /// `Name: value`; set (or replace) a header. In a file: `set_headers = { Name = "value" }`.
    #[arg(long = "set-header", value_name = "HEADER", value_parser = parse_header_assignment)]
    #[serde(skip_serializing_if = "Vec::is_empty", with = "pairs_as_table")]
    pub set_headers: Vec<(String, String)>,
    /// Remove a header.
    #[arg(long = "remove-header", value_name = "NAME")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
    /// Replace a header's value with `REDACTED` (e.g. Authorization, Cookie).
    #[arg(long = "redact-header", value_name = "NAME")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,
    /// `name=value`; set a query parameter. In a file: `set_query = { name = "value" }`.
    #[arg(long = "set-query", value_name = "PARAM", value_parser = parse_query_assignment)]
    #[serde(skip_serializing_if = "Vec::is_empty", with = "pairs_as_table")]
    pub set_query: Vec<(String, String)>,
    /// Send this Host header.
    #[arg(long = "host-override", value_name = "HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl FilterSettings {
    pub fn is_empty(&self) -> bool {
        self == &FilterSettings::default()
    }
}

impl RewriteSettings {
    pub fn is_empty(&self) -> bool {
        self == &RewriteSettings::default()
    }
}

/// A regex replacement on the path and query, with `$1`-style groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    pub from: String,
    pub to: String,
}

impl FromStr for UrlRewrite {
    type Err = String;

    /// `REGEX:REPLACEMENT`, split at the last `:` (regexes contain colons more often).
    fn from_str(spec: &str) -> Result<Self, String> {
        let (from, to) = spec
            .rsplit_once(':')
            .ok_or_else(|| format!("{spec:?} is not REGEX:REPLACEMENT"))?;
        Ok(UrlRewrite {
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }
}

/// A regex replacement on the value of a header, with `$1`-style groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewrite {
    pub name: String,
    pub from: String,
    pub to: String,
}

impl FromStr for HeaderRewrite {
    type Err = String;

    /// `Name: REGEX,REPLACEMENT`: the name up to the first `:`, the regex up to the first `,`
    /// after it (GoReplay's `--http-rewrite-header` syntax).
    fn from_str(spec: &str) -> Result<Self, String> {
        let malformed = || format!("{spec:?} is not `Name: REGEX,REPLACEMENT`");
        let (name, rule) = spec.split_once(':').ok_or_else(malformed)?;
        let (from, to) = rule.trim_start().split_once(',').ok_or_else(malformed)?;
        Ok(HeaderRewrite {
            name: name.trim().to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }
}

fn parse_header_assignment(spec: &str) -> Result<(String, String), String> {
    let (name, value) = spec
        .split_once(':')
        .ok_or_else(|| format!("{spec:?} is not `Name: value`"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

fn parse_query_assignment(spec: &str) -> Result<(String, String), String> {
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not name=value"))?;
    Ok((name.to_owned(), value.to_owned()))
}

/// `(name, value)` pairs written as a TOML table (`{ name = "value" }`), in name order.
mod pairs_as_table {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        pairs: &[(String, String)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let table: BTreeMap<&str, &str> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        table.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, String)>, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
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

/// Parses a target URL into `http://host:port` or `https://host:port`, the port made explicit
/// (80 or 443 when the URL gives none): where a target's requests go, and its name in metrics
/// and logs. A path or query is refused (the captured path and query are what is sent), and so
/// are credentials: they would end up in metric labels and logs, and a target would not be
/// sent them anyway.
pub fn parse_target_url(text: &str) -> Result<Uri, String> {
    const EXPECTED: &str = "expected http://host:port or https://host:port";
    let uri: Uri = text
        .parse()
        .map_err(|error| format!("not a URL ({error}); {EXPECTED}"))?;
    let (scheme, default_port) = match uri.scheme_str() {
        Some("http") => ("http", 80),
        Some("https") => ("https", 443),
        _ => return Err(EXPECTED.into()),
    };
    let Some(authority) = uri.authority() else {
        return Err(EXPECTED.into());
    };
    if authority.as_str().contains('@') {
        return Err(
            "credentials do not belong in a target URL (they would show in metrics and \
             logs); send them as a header instead, e.g. --set-header 'Authorization: Basic ...' \
             or `set_headers` in the target's [target.rewrites]"
                .into(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("a target URL needs a host: {EXPECTED}"));
    }
    if authority.as_str().ends_with(':') {
        return Err(format!(
            "empty port: expected {scheme}://host:port (or {scheme}://host for port {default_port})"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a target is host:port only; the captured path and query are kept".into());
    }
    let port = authority.port_u16().unwrap_or(default_port);
    if port == 0 {
        return Err("port 0 is not a port a target can listen on".into());
    }
    format!("{scheme}://{}:{port}", authority.host())
        .parse()
        .map_err(|error| format!("not a URL ({error}); {EXPECTED}"))
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

    fn from_flags(flags: &[&str]) -> ReplayerConfig {
        let args = std::iter::once("tapwire-replayer").chain(flags.iter().copied());
        ReplayerConfig::load(args).unwrap().config
    }

    #[test]
    fn target_urls_must_be_plain_http_or_https_host_and_port() {
        assert!(parse_target_url("http://127.0.0.1:8082").is_ok());
        assert!(parse_target_url("http://staging:80/").is_ok());
        assert!(parse_target_url("https://staging:8443").is_ok());
        assert!(parse_target_url("ftp://staging").is_err());
        assert!(parse_target_url("http://staging/prefix").is_err());
        assert!(parse_target_url("https://staging/prefix").is_err());
        assert!(parse_target_url("staging:8080").is_err());
    }

    #[test]
    fn target_urls_name_their_port_and_carry_no_credentials() {
        let url = |text| parse_target_url(text).map(|uri| uri.to_string());
        assert_eq!(url("http://127.0.0.1").unwrap(), "http://127.0.0.1:80/");
        assert_eq!(url("http://[::1]:8080").unwrap(), "http://[::1]:8080/");
        assert_eq!(url("https://staging").unwrap(), "https://staging:443/");
        assert!(url("https://user:pw@staging").is_err());
        let credentials = url("http://user:pw@staging:8080").unwrap_err();
        assert!(credentials.contains("set-header"), "{credentials}");
        assert!(!credentials.contains("pw"), "{credentials}");
        assert!(url("http://user@staging:8080").is_err());
        assert!(url("http://:8080").is_err());
        assert!(url("http://staging:").is_err());
        assert!(url("http://staging:0").is_err());
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
            set_headers = { "X-Replayed-By" = "tapwire" }
            url = [{ from = "^/v1/(.*)", to = "/v2/$1" }]
            [tls]
            cert = "server.pem"
            key = "server-key.pem"
            [[target]]
            url = "http://a:80"
            rate = 100
            sample = "10%"
        "#;
        let from_file: ReplayerConfig = toml::from_str(file).unwrap();
        let from_flags = from_flags(&[
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
            "--set-header",
            "X-Replayed-By: tapwire",
            "--rewrite-url",
            "^/v1/(.*):/v2/$1",
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server-key.pem",
        ]);
        assert_eq!(from_file, from_flags);
        // Printing and reading back is lossless.
        let printed: ReplayerConfig = toml::from_str(&shared_config::to_toml(&from_file)).unwrap();
        assert_eq!(printed, from_file);
    }

    #[test]
    fn inline_target_settings_override_the_per_target_flags() {
        let config = from_flags(&[
            "--rate",
            "50",
            "--target",
            "http://a:80;rate=10;sample=5%;timeout=2s;keep_host=true;queue=7",
            "--target",
            "http://b:80",
        ]);
        let [a, b] = &config.targets[..] else {
            panic!("{:?}", config.targets)
        };
        assert_eq!(a.url, "http://a:80");
        assert_eq!(a.rate, Some(10));
        assert_eq!(a.sample.as_deref(), Some("5%"));
        assert_eq!(a.timeout, Duration::from_secs(2));
        assert!(a.keep_host);
        assert_eq!(a.queue, 7);
        assert_eq!((b.url.as_str(), b.rate), ("http://b:80", Some(50)));
        assert_eq!(b.timeout, Duration::from_secs(10));
    }

    #[test]
    fn inline_target_keys_are_checked() {
        let load =
            |spec: &str| ReplayerConfig::load(["tapwire-replayer", "--target", spec]).map(|_| ());
        let unknown = load("http://a:80;rat=10").unwrap_err();
        assert_eq!(unknown.field, "--target[0]");
        assert!(unknown.problem.contains("\"rat\""), "{unknown}");
        assert!(unknown.problem.contains("rate, burst, sample"), "{unknown}");
        let bad_value = load("http://a:80;rate=fast").unwrap_err();
        assert!(bad_value.problem.starts_with("rate: "), "{bad_value}");
        assert!(load("http://a:80;rate").is_err());
        assert!(load("http://a:80;url=http://b:80").is_err());
        assert!(load("http://a:80;filters=x").is_err());
    }

    #[test]
    fn deployment_flags_are_flags_that_set_their_file_key() {
        shared_config::check_deployment_flags::<ReplayerConfig>(
            &[
                ("grpc_listen", "127.0.0.1:7070"),
                ("metrics_listen", "127.0.0.1:9090"),
                ("token_file", "/etc/tapwire/token"),
                ("tls_cert", "cert.pem"),
                ("tls_key", "key.pem"),
                ("tls_ca", "ca.pem"),
                ("log_format", "json"),
                ("stats_interval", "5s"),
            ],
            &[],
        );
    }

    #[test]
    fn every_file_key_is_known() {
        let keys = ReplayerConfig::file_keys();
        for key in [
            "grpc_listen",
            "tls.client_ca",
            "target.rate",
            "target.filters.allow_url",
        ] {
            assert!(keys.iter().any(|known| known == key), "{key} in {keys:?}");
        }
        assert!(
            !keys.iter().any(|key| key == "target" || key == "tls"),
            "{keys:?}"
        );
    }

    #[test]
    fn unknown_fields_in_the_file_are_refused() {
        let result =
            toml::from_str::<ReplayerConfig>("[[target]]\nurl = \"http://a:80\"\nrat = 5\n");
        assert!(result.unwrap_err().to_string().contains("rat"));
    }
}
