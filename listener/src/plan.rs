//! A validated configuration compiled into what the listener runs: limits checked, token and
//! TLS files read, replayer URLs checked against the TLS settings. [`ListenerPlan::compile`] is
//! the only way to a plan, so nothing starts on a configuration that could fail later; every
//! error names the setting at fault.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tapwire_runtime::gor_output::{Destination, GorOutputSettings};
use tapwire_shared::config::{ByteSize, ConfigError};
use tapwire_shared::redact::Redaction;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::capture::{CaptureConfig, CaptureFilter};
use crate::config::{Compression, ListenerConfig};
use crate::link::LinkSettings;
use crate::queue::BufferPolicy;
use crate::reassembly::ReassemblyLimits;
use crate::replayers::ReplayerSet;
use crate::router::LinkConfig;

/// Message bytes (requests and responses) per gRPC batch. Small batches reach the replayer
/// sooner and keep the encode buffers small (measured: 4 MiB batches cost 30 MiB more RSS and
/// lost requests at 10k/s).
const BATCH_BYTES: usize = 256 << 10;
/// Largest --max-request-bytes: a record must fit in one gRPC message, with room to spare.
const MAX_REQUEST_BYTES_LIMIT: u64 = (tapwire_shared::link::MAX_MESSAGE_BYTES as u64) / 4 * 3;
/// Smallest kernel capture buffer libpcap is asked for.
const MIN_PCAP_BUFFER_BYTES: i32 = 65_536;

/// Message bytes a file or stdout output may hold queued for its writer thread.
const OUTPUT_QUEUE_BYTES: usize = 8 << 20;

/// Everything the listener runs, validated.
pub struct ListenerPlan {
    /// This listener process: record ids restart with each, so it is part of every message id.
    pub instance: u64,
    pub capture: CaptureConfig,
    /// Read this file instead of capturing live.
    pub input_pcap: Option<PathBuf>,
    /// Become this user once the capture is open (looked up before anything starts).
    pub user: Option<nix::unistd::User>,
    /// `--real-ip-header`: the field that carries each request's client address.
    pub real_ip_header: Option<String>,
    pub reassembly: ReassemblyLimits,
    pub redaction: Redaction,
    pub buffer: BufferSettings,
    pub spool: Option<SpoolSettings>,
    /// The replayers, when records go to any.
    pub link: Option<LinkConfig>,
    /// `--output-file`.
    pub file: Option<GorOutputSettings>,
    /// `--output-stdout`.
    pub stdout: Option<GorOutputSettings>,
    /// `--output-null`.
    pub null: bool,
    pub drain_timeout: Duration,
    pub metrics_listen: Option<SocketAddr>,
    /// How often the accounting is logged (`--stats-interval`), unless off.
    pub stats_interval: Option<Duration>,
    /// `--exit-after`: capture stops after this long.
    pub exit_after: Option<Duration>,
}

/// The memory buffer between capture and the links.
#[derive(Debug, Clone, Copy)]
pub struct BufferSettings {
    pub records: usize,
    pub bytes: usize,
    pub policy: BufferPolicy,
}

/// Where and how much to spool.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub bytes: u64,
}

fn at_least<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    least: T,
) -> Result<T, ConfigError> {
    if value < least {
        return Err(ConfigError::new(field, format!("must be at least {least}")));
    }
    Ok(value)
}

/// `size` as the type a part takes it in (`usize`, or libpcap's `i32`).
fn size_in<T: TryFrom<u64>>(field: &str, size: ByteSize) -> Result<T, ConfigError> {
    T::try_from(size.get()).map_err(|_| ConfigError::new(field, format!("{size} is too large")))
}

fn read_pem(field: &str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| {
        ConfigError::new(field, format!("cannot read {}: {error}", path.display()))
    })
}

impl ListenerPlan {
    /// Validates every setting of `config` and compiles the plan; the error names the setting
    /// at fault.
    pub fn compile(config: &ListenerConfig) -> Result<ListenerPlan, ConfigError> {
        if config.ports.is_empty() {
            return Err(ConfigError::new("port", "at least one port is required"));
        }
        let max_request_bytes = at_least("max_request_bytes", config.max_request_bytes.get(), 1)?;
        if max_request_bytes > MAX_REQUEST_BYTES_LIMIT {
            return Err(ConfigError::new(
                "max_request_bytes",
                format!(
                    "must be at most {MAX_REQUEST_BYTES_LIMIT} (a record must fit in one gRPC message)"
                ),
            ));
        }
        let capture = CaptureConfig {
            interface: config.interface.clone(),
            filter: capture_filter(config)?,
            track_responses: config.track_responses,
            // Loopback and GRO deliver segments far above the MTU; never truncate them.
            snaplen: 262_144,
            buffer_bytes: at_least(
                "pcap_buffer_bytes",
                size_in("pcap_buffer_bytes", config.pcap_buffer_bytes)?,
                MIN_PCAP_BUFFER_BYTES,
            )?,
        };
        let reassembly = ReassemblyLimits {
            max_request_bytes: max_request_bytes as usize,
            max_out_of_order_bytes: size_in(
                "max_out_of_order_bytes",
                config.max_out_of_order_bytes,
            )?,
            gap_timeout_ns: config.gap_timeout.as_nanos() as u64,
            flow_idle_timeout_ns: config.flow_idle_timeout.as_nanos() as u64,
            max_buffered_bytes: size_in("max_buffered_bytes", config.max_buffered_bytes)?,
            max_flows: at_least("max_flows", config.max_flows, 1)? as usize,
        };
        let buffer = BufferSettings {
            records: at_least("buffer_records", config.buffer_records, 1)? as usize,
            bytes: size_in("buffer_bytes", config.buffer_bytes)?,
            policy: config.buffer_policy,
        };
        let instance = rand::random();
        let link = if config.replayers.is_empty() {
            None
        } else {
            Some(link(config, instance)?)
        };
        let file = config
            .output_file
            .as_ref()
            .map(|template| GorOutputSettings {
                destination: Destination::Files {
                    template: template.clone(),
                    size_limit: config.output_file_size_limit.get(),
                    max_total: config.output_file_max_size.map(ByteSize::get),
                    append: config.output_file_append,
                },
                prettify: false,
                queue_bytes: OUTPUT_QUEUE_BYTES,
            });
        let stdout = config.output_stdout.then_some(GorOutputSettings {
            destination: Destination::Stdout,
            prettify: config.prettify,
            queue_bytes: OUTPUT_QUEUE_BYTES,
        });
        if link.is_none() && file.is_none() && stdout.is_none() && !config.output_null {
            return Err(ConfigError::new(
                "replayer",
                "no output: give a replayer, or --output-file, --output-stdout or --output-null",
            ));
        }
        if config.prettify && !config.output_stdout {
            return Err(ConfigError::new(
                "prettify",
                "only applies to --output-stdout",
            ));
        }
        Ok(ListenerPlan {
            instance,
            capture,
            input_pcap: config.input_pcap.clone(),
            user: config.user.as_deref().map(account).transpose()?,
            real_ip_header: config
                .real_ip_header
                .as_deref()
                .map(header_name)
                .transpose()?,
            reassembly,
            redaction: Redaction::new(&config.redact_headers, &config.redact_json_fields),
            buffer,
            spool: config.spool_dir.as_ref().map(|dir| SpoolSettings {
                dir: dir.clone(),
                bytes: config.spool_bytes.get(),
            }),
            link,
            file,
            stdout,
            null: config.output_null,
            drain_timeout: config.drain_timeout,
            metrics_listen: config.metrics_listen,
            stats_interval: tapwire_shared::config::stats_every(config.stats_interval),
            exit_after: config.exit_after,
        })
    }
}

/// The links' settings: reads the token and TLS files, checks the replayer URLs against the TLS
/// settings (names are resolved by the links).
fn link(config: &ListenerConfig, instance: u64) -> Result<LinkConfig, ConfigError> {
    let listener_id = config.listener_id.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "listener".into())
    });
    let tls = match (&config.tls_ca, &config.tls_cert, &config.tls_key) {
        (_, Some(_), None) | (_, None, Some(_)) => {
            return Err(ConfigError::new(
                "tls_cert",
                "tls_cert and tls_key go together",
            ));
        }
        (None, Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "tls_cert",
                "needs tls_ca to check the replayer",
            ));
        }
        (None, None, None) => None,
        (Some(ca), cert, key) => {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_pem("tls_ca", ca)?));
            if let (Some(cert), Some(key)) = (cert, key) {
                tls = tls.identity(Identity::from_pem(
                    read_pem("tls_cert", cert)?,
                    read_pem("tls_key", key)?,
                ));
            }
            Some(tls)
        }
    };
    for url in &config.replayers {
        match (url.0.scheme_str(), &tls) {
            (Some("https"), None) => {
                return Err(ConfigError::new(
                    "replayer",
                    format!(
                        "{url} is https:// but no tls_ca (--tls-ca) was given to check its certificate"
                    ),
                ));
            }
            (Some("http"), Some(_)) => {
                return Err(ConfigError::new(
                    "replayer",
                    format!("{url} is http:// but TLS is configured (--tls-ca): use https://"),
                ));
            }
            _ => {}
        }
    }
    let urls = config.replayers.iter().map(|url| url.0.clone()).collect();
    Ok(LinkConfig {
        replayers: ReplayerSet::new(urls, tls),
        settings: LinkSettings {
            authorization: authorization(config)?,
            listener_id,
            instance,
            max_batch_records: at_least("batch_records", config.batch_records, 1)? as usize,
            max_batch_bytes: BATCH_BYTES,
            max_unacked_batches: at_least("max_unacked_batches", config.max_unacked_batches, 1)?
                as usize,
            compress: config.compression == Compression::Gzip,
        },
    })
}

/// What to capture: the ports, narrowed by `host`, `exclude_host` and `bpf_filter`.
fn capture_filter(config: &ListenerConfig) -> Result<CaptureFilter, ConfigError> {
    if let Some(both) = config
        .hosts
        .iter()
        .find(|host| config.exclude_hosts.contains(host))
    {
        return Err(ConfigError::new(
            "exclude_host",
            format!("{both} is also given as --host"),
        ));
    }
    let expression = match config.bpf_filter.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(expression) => Some(expression.to_owned()),
    };
    let filter = CaptureFilter {
        ports: config.ports.iter().map(|port| port.get()).collect(),
        hosts: config.hosts.clone(),
        exclude_hosts: config.exclude_hosts.clone(),
        expression,
    };
    if let Some(expression) = &filter.expression {
        filter.check().map_err(|cause| {
            ConfigError::new(
                "bpf_filter",
                format!(
                    "{expression:?} cannot be used as a capture filter here (libpcap: {cause})"
                ),
            )
        })?;
    }
    Ok(filter)
}

/// The account `--user` names, looked up now: a missing user fails before capture starts.
fn account(name: &str) -> Result<nix::unistd::User, ConfigError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(account)) => Ok(account),
        Ok(None) => Err(ConfigError::new(
            "user",
            format!("no user {name:?} on this host"),
        )),
        Err(errno) => Err(ConfigError::new(
            "user",
            format!("cannot look up user {name:?}: {errno}"),
        )),
    }
}

/// A header field name (an HTTP token), as given.
fn header_name(name: &str) -> Result<String, ConfigError> {
    let is_token_char =
        |byte: u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte);
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(ConfigError::new(
            "real_ip_header",
            format!("{name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)"),
        ));
    }
    // Setting one of these to an address would change how the request is framed or routed.
    const FRAMING: [&str; 7] = [
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "upgrade",
        "te",
        "trailer",
    ];
    if FRAMING
        .iter()
        .any(|framing| name.eq_ignore_ascii_case(framing))
    {
        return Err(ConfigError::new(
            "real_ip_header",
            format!("{name:?} frames or routes the request; choose another name (e.g. X-Real-IP)"),
        ));
    }
    Ok(name.to_owned())
}

/// The bearer token from `token_file`, marked sensitive so it never shows in logs.
fn authorization(config: &ListenerConfig) -> Result<Option<MetadataValue<Ascii>>, ConfigError> {
    let Some(path) = &config.token_file else {
        return Ok(None);
    };
    let token = tapwire_shared::link::read_token(path)
        .map_err(|error| ConfigError::new("token_file", error))?;
    let mut value: MetadataValue<Ascii> = tapwire_shared::link::bearer(&token)
        .parse()
        .map_err(|_| ConfigError::new("token_file", "the token is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(Some(value))
}
