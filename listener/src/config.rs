//! The listener's configuration: command-line flags parsed straight into data that can be read,
//! validated and printed before anything runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Uri};

use crate::capture::CaptureConfig;
use crate::link::LinkSettings;
use crate::reassembly::ReassemblyLimits;
use crate::replayers::ReplayerSet;
use crate::transport::{Ascii, BufferPolicy, LinkConfig, MetadataValue};

/// Message bytes (requests and responses) per gRPC batch. Small batches reach the replayer sooner and keep the encode
/// buffers small (measured: 4 MiB batches cost 30 MiB more RSS and lost requests at 10k/s).
const BATCH_BYTES: usize = 256 << 10;
/// Largest --max-request-bytes: a record must fit in one gRPC message (the replayer takes 64 MiB).
const MAX_REQUEST_BYTES_LIMIT: u64 = 48 << 20;

/// Captures HTTP/1.x requests arriving at a service's port with libpcap and streams them to a
/// tapwire replayer over gRPC. It only observes traffic: production is never in its path.
#[derive(Debug, Clone, Parser)]
#[command(name = "tapwire-listener", version, max_term_width = 100)]
pub struct ListenerConfig {
    /// Network interface to capture on; `any` captures on all of them.
    #[arg(long, default_value = "any", help_heading = "Capture")]
    pub interface: String,

    /// Port of the service whose incoming requests are captured. Repeat for several ports.
    #[arg(long = "port", required = true, value_name = "PORT", help_heading = "Capture",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Also capture the service's responses, pair each with its request (same id) and record
    /// production's latency, so staging's answers can be compared with production's.
    #[arg(long, help_heading = "Capture")]
    pub track_responses: bool,

    /// After opening the capture handle, drop root and run as this user (its primary group, no
    /// supplementary groups): the open handle is all the capture privilege still needed.
    #[arg(long, value_name = "USER", help_heading = "Capture")]
    pub user: Option<String>,

    /// Read a pcap or pcapng file (tcpdump, Wireshark) instead of capturing live; it goes
    /// through exactly the same reassembly and cutting. The listener exits when the file ends.
    #[arg(long, value_name = "FILE", help_heading = "Capture")]
    pub input_pcap: Option<PathBuf>,

    /// Kernel capture buffer size. A bigger buffer rides out longer bursts before the kernel
    /// drops packets (reported as tapwire_listener_pcap_dropped_packets).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES", help_heading = "Capture",
          value_parser = clap::value_parser!(i32).range(65_536..))]
    pub pcap_buffer_bytes: i32,

    /// Largest request kept. Larger ones are dropped and counted (reason `too_large`) without
    /// disturbing the rest of their connection.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES", help_heading = "Reassembly",
          value_parser = clap::value_parser!(u64).range(1..=MAX_REQUEST_BYTES_LIMIT))]
    pub max_request_bytes: u64,

    /// Out-of-order bytes held per connection while waiting for a missing segment. Past it the
    /// missing bytes are declared lost (reason `capture_gap`).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", help_heading = "Reassembly")]
    pub max_out_of_order_bytes: usize,

    /// How long a missing segment may be waited for before its bytes are declared lost. Only
    /// the request it falls in is dropped (reason `capture_gap`); the connection goes on.
    #[arg(long, default_value = "1s", value_name = "DURATION", help_heading = "Reassembly",
          value_parser = humantime::parse_duration)]
    pub gap_timeout: Duration,

    /// Bytes held across all connections for incomplete requests and out-of-order segments.
    /// Past it the connections holding most are shed (partial requests counted as `flow_shed`).
    #[arg(long, default_value_t = 24 << 20, value_name = "BYTES", help_heading = "Reassembly")]
    pub max_buffered_bytes: usize,

    /// Connections tracked at once. Past it the least recently active are shed.
    #[arg(long, default_value_t = 65_536, value_name = "FLOWS", help_heading = "Reassembly",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_flows: u64,

    /// Forget a connection after this long without packets.
    #[arg(long, default_value = "60s", value_name = "DURATION", help_heading = "Reassembly",
          value_parser = humantime::parse_duration)]
    pub flow_idle_timeout: Duration,

    /// Replayer to stream requests to, as a gRPC URL (http://host:port, or https:// with
    /// --tls-ca). Repeat for several replayers, or give a name resolving to several addresses
    /// (a Kubernetes headless Service): each client connection goes to one of them, chosen by
    /// a hash of its addresses, and moves to another while its replayer is down.
    #[arg(long = "replayer", required = true, value_name = "URL", help_heading = "Replayer link",
          value_parser = parse_replayer_url)]
    pub replayers: Vec<Uri>,

    /// Replace this header's value with `REDACTED` in every captured request (and response)
    /// before it leaves this host, e.g. Authorization, Cookie. Repeatable.
    #[arg(
        long = "redact-header",
        value_name = "NAME",
        help_heading = "Replayer link"
    )]
    pub redact_headers: Vec<String>,

    /// Replace this JSON field's value with "REDACTED", at any depth, in every JSON request
    /// and response body before it leaves this host, e.g. password. Repeatable.
    #[arg(
        long = "redact-json-field",
        value_name = "NAME",
        help_heading = "Replayer link"
    )]
    pub redact_json_fields: Vec<String>,

    /// Present the bearer token in this file to the replayer.
    #[arg(long, value_name = "FILE", help_heading = "Replayer link")]
    pub token_file: Option<PathBuf>,

    /// Trust this CA (PEM) for the replayer's certificate; required by https:// replayer URLs.
    #[arg(long, value_name = "FILE", help_heading = "Replayer link")]
    pub tls_ca: Option<PathBuf>,

    /// Mutual TLS: present this certificate (PEM) to the replayer.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Replayer link",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Replayer link",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Compress batches on the link (the replayer always accepts gzip). Worth it across
    /// datacentres; on a LAN it mostly costs listener CPU.
    #[arg(long, value_enum, default_value_t = Compression::None, help_heading = "Replayer link")]
    pub compression: Compression,

    /// Name of this listener in the replayer's metrics and logs. Defaults to the hostname.
    #[arg(long, value_name = "NAME", help_heading = "Replayer link")]
    pub listener_id: Option<String>,

    /// Most records queued for the links (those in flight are bounded by --buffer-bytes and
    /// --max-unacked-batches).
    #[arg(long, default_value_t = 65_536, value_name = "RECORDS", help_heading = "Buffering",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer_records: u64,

    /// Most message bytes held in memory for the replayers (queued, in flight or
    /// unacknowledged). Kept well under the listener's 64 MiB memory goal; ride out longer
    /// outages with --spool-dir.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES", help_heading = "Buffering")]
    pub buffer_bytes: usize,

    /// When the buffer (or the spool) is full: `drop-newest` refuses new records (counted as
    /// `queue_full` / `spool_full`), `drop-oldest` evicts the oldest ones not yet sent
    /// (`evicted` / `spool_full`). Capture never waits.
    #[arg(long, value_enum, default_value_t = BufferPolicy::DropNewest, help_heading = "Buffering")]
    pub buffer_policy: BufferPolicy,

    /// While no replayer is up, and at shutdown for what is still unacknowledged, keep batches
    /// on disk in this directory; they are sent once a replayer is up, also after a listener
    /// restart.
    #[arg(long, value_name = "DIR", help_heading = "Buffering")]
    pub spool_dir: Option<PathBuf>,

    /// Most bytes in the spool.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES", help_heading = "Buffering",
          requires = "spool_dir")]
    pub spool_bytes: u64,

    /// Most records per gRPC batch.
    #[arg(long, default_value_t = 512, value_name = "RECORDS", help_heading = "Replayer link",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_records: u64,

    /// Batches in flight before the link waits for acknowledgements.
    #[arg(long, default_value_t = 32, value_name = "BATCHES", help_heading = "Replayer link",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unacked_batches: u64,

    /// On SIGTERM or Ctrl-C, how long to keep sending what is queued before exiting.
    #[arg(long, default_value = "5s", value_name = "DURATION", help_heading = "Replayer link",
          value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics. Without it the listener opens no port.
    #[arg(long, value_name = "ADDR", help_heading = "Observability")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Batch compression on the replayer link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
}

fn parse_replayer_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|error| format!("not a URL ({error}); expected http://host:port"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => Ok(uri),
        _ => Err("expected http://host:port (or https://host:port with --tls-ca)".into()),
    }
}

/// Why the link cannot be set up from the flags.
#[derive(Debug, thiserror::Error)]
pub enum LinkSetupError {
    #[error(transparent)]
    Token(#[from] tapwire_shared::token::TokenError),
    #[error("cannot read {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("--replayer {0} is https:// but no --tls-ca was given to check its certificate")]
    TlsWithoutCa(Uri),
    #[error("--replayer {0} is http:// but TLS is configured (--tls-ca): use https://")]
    PlaintextWithTls(Uri),
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, LinkSetupError> {
    std::fs::read(path).map_err(|source| LinkSetupError::TlsFile {
        path: path.display().to_string(),
        source,
    })
}

impl ListenerConfig {
    pub fn capture(&self) -> CaptureConfig {
        CaptureConfig {
            interface: self.interface.clone(),
            ports: self.ports.clone(),
            track_responses: self.track_responses,
            // Loopback and GRO deliver segments far above the MTU; never truncate them.
            snaplen: 262_144,
            buffer_bytes: self.pcap_buffer_bytes,
        }
    }

    pub fn reassembly(&self) -> ReassemblyLimits {
        ReassemblyLimits {
            max_request_bytes: self.max_request_bytes as usize,
            max_out_of_order_bytes: self.max_out_of_order_bytes,
            gap_timeout_ns: self.gap_timeout.as_nanos() as u64,
            flow_idle_timeout_ns: self.flow_idle_timeout.as_nanos() as u64,
            max_buffered_bytes: self.max_buffered_bytes,
            max_flows: self.max_flows as usize,
        }
    }

    /// The links' settings: reads the token and TLS files, checks the replayer URLs against
    /// the TLS flags (names are resolved by the links).
    pub fn link(&self) -> Result<LinkConfig, LinkSetupError> {
        let listener_id = self.listener_id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_else(|| "listener".into())
        });
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => {
                let mut tls =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca)?));
                if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                    tls = tls.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
                }
                Some(tls)
            }
        };
        for uri in &self.replayers {
            match (uri.scheme_str(), &tls) {
                (Some("https"), None) => return Err(LinkSetupError::TlsWithoutCa(uri.clone())),
                (Some("http"), Some(_)) => {
                    return Err(LinkSetupError::PlaintextWithTls(uri.clone()));
                }
                _ => {}
            }
        }
        let replayers = ReplayerSet::new(self.replayers.clone(), tls);
        let authorization = match &self.token_file {
            None => None,
            Some(path) => {
                let token = tapwire_shared::token::read_token(path)?;
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {token}").parse().map_err(|_| {
                        tapwire_shared::token::TokenError::Invalid {
                            path: path.display().to_string(),
                        }
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(LinkConfig {
            replayers,
            settings: LinkSettings {
                authorization,
                listener_id,
                instance: rand::random(),
                max_batch_records: self.batch_records as usize,
                max_batch_bytes: BATCH_BYTES,
                max_unacked_batches: self.max_unacked_batches as usize,
                compress: self.compression == Compression::Gzip,
            },
        })
    }

    pub fn redaction(&self) -> tapwire_shared::redact::Redaction {
        tapwire_shared::redact::Redaction::new(&self.redact_headers, &self.redact_json_fields)
    }
}
