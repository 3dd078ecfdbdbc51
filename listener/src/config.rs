//! The listener's configuration as data: one struct whose fields are both the command-line flags
//! and the keys of the `--config` TOML file, each declared once (its default on its flag).
//! [`ListenerPlan::compile`](crate::plan::ListenerPlan::compile) validates it into what runs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use tapwire_runtime::gor_output::DEFAULT_CHUNK_BYTES;
use tapwire_shared::config::{
    ByteSize, ConfigFileFlags, Configuration, DeploymentFlag, LogFormat, struct_keys,
};
use tonic::transport::Uri;

use crate::queue::BufferPolicy;

/// Captures HTTP/1.x requests arriving at a service's port with libpcap and streams them to a
/// tapwire replayer over gRPC, or saves them to a GoReplay .gor file. It only observes traffic:
/// production is never in its path.
#[derive(Debug, Clone, PartialEq, Parser, Serialize, Deserialize)]
#[command(name = "tapwire-listener", version = env!("TAPWIRE_VERSION"), max_term_width = 100)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    #[command(flatten)]
    #[serde(skip)]
    pub file: ConfigFileFlags,

    /// Network interface to capture on; `any` captures on all of them.
    #[arg(long, default_value = "any", help_heading = "Capture")]
    pub interface: String,

    /// Port of the service whose incoming requests are captured. Repeat for several ports.
    #[arg(
        long = "port",
        required_unless_present = "config",
        value_name = "PORT",
        help_heading = "Capture"
    )]
    #[serde(rename = "port")]
    pub ports: Vec<NonZeroU16>,

    /// Also capture the service's responses, pair each with its request (same id) and record
    /// production's latency, so staging's answers can be compared with production's.
    #[arg(long, help_heading = "Capture")]
    pub track_responses: bool,

    /// Capture only traffic to and from these server addresses (IPv4 or IPv6), e.g. one pod's
    /// IP on a Kubernetes node. Repeatable. Default: every destination on the port.
    #[arg(long = "host", value_name = "ADDR", help_heading = "Capture")]
    #[serde(rename = "host", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<IpAddr>,

    /// Do not capture traffic to and from these server addresses. Repeatable.
    #[arg(long = "exclude-host", value_name = "ADDR", help_heading = "Capture")]
    #[serde(rename = "exclude_host", skip_serializing_if = "Vec::is_empty")]
    pub exclude_hosts: Vec<IpAddr>,

    /// A libpcap filter expression (tcpdump syntax) that narrows the capture further: the
    /// listener captures `(its own filter) and (EXPR)`.
    #[arg(long, value_name = "EXPR", help_heading = "Capture")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_filter: Option<String>,

    /// Add `NAME: <client IP>` to every captured request, as GoReplay's
    /// --input-raw-realip-header does: a field of that name sent by the client has its value
    /// replaced (in every copy); otherwise the field is added as the last header.
    #[arg(long, value_name = "NAME", help_heading = "Capture")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_ip_header: Option<String>,

    /// After opening the capture handle, drop root and run as this user (its primary group, no
    /// supplementary groups): the open handle is all the capture privilege still needed.
    #[arg(long, value_name = "USER", help_heading = "Capture")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,

    /// Read a pcap or pcapng file (tcpdump, Wireshark) instead of capturing live; it goes
    /// through exactly the same reassembly and cutting. The listener exits when the file ends.
    #[arg(long, value_name = "FILE", help_heading = "Capture")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_pcap: Option<PathBuf>,

    /// Stop this long after starting, drain, and exit (non-zero when every request seen was
    /// dropped: see README, Exit codes).
    #[arg(long, value_name = "DURATION", help_heading = "Capture",
          value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub exit_after: Option<Duration>,

    /// Kernel capture buffer size (at least 65536). A bigger buffer rides out longer bursts
    /// before the kernel drops packets (reported as tapwire_listener_pcap_dropped_packets).
    #[arg(long, default_value_t = ByteSize(16 << 20), value_name = "SIZE", help_heading = "Capture")]
    pub pcap_buffer_bytes: ByteSize,

    /// Largest request kept (at most 48 MiB). Larger ones are dropped and counted (reason
    /// `too_large`) without disturbing the rest of their connection.
    #[arg(long, default_value_t = ByteSize(4 << 20), value_name = "SIZE", help_heading = "Reassembly")]
    pub max_request_bytes: ByteSize,

    /// Memory held per connection for out-of-order segments while waiting for a missing one,
    /// counted by cost (bytes plus about 100 bytes of bookkeeping per segment; adjacent segments
    /// are merged). Past it the hole is given up: skipped if production acknowledged past it
    /// (reason `capture_gap`), else what is held is discarded (`unacknowledged_by_server`).
    #[arg(long, default_value_t = ByteSize(1 << 20), value_name = "SIZE", help_heading = "Reassembly")]
    pub max_out_of_order_bytes: ByteSize,

    /// How long a missing segment may be waited for before its bytes are declared lost. Only
    /// the request it falls in is dropped (reason `capture_gap`); the connection goes on.
    #[arg(long, default_value = "1s", value_name = "DURATION", help_heading = "Reassembly",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub gap_timeout: Duration,

    /// Memory held across all connections for their state (512 bytes each), incomplete
    /// requests, out-of-order segments and requests awaiting production's ACK, counted by cost. Past it the connections holding
    /// most are shed (partial requests counted as `flow_shed`).
    #[arg(long, default_value_t = ByteSize(24 << 20), value_name = "SIZE", help_heading = "Reassembly")]
    pub max_buffered_bytes: ByteSize,

    /// Connections tracked at once (at least 1). Past it the least recently active are shed.
    #[arg(
        long,
        default_value_t = 65_536,
        value_name = "FLOWS",
        help_heading = "Reassembly"
    )]
    pub max_flows: u64,

    /// Forget a connection after this long without packets.
    #[arg(long, default_value = "60s", value_name = "DURATION", help_heading = "Reassembly",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub flow_idle_timeout: Duration,

    /// Replayer to stream requests to, as a gRPC URL (http://host:port, or https:// with
    /// --tls-ca). Repeat for several replayers, or give a name resolving to several addresses
    /// (a Kubernetes headless Service): each client connection goes to one of them, chosen by
    /// a hash of its addresses, and moves to another while its replayer is down.
    #[arg(
        long = "replayer",
        required_unless_present_any = ["config", "output_file", "output_stdout", "output_null"],
        value_name = "URL",
        help_heading = "Replayer link"
    )]
    #[serde(rename = "replayer")]
    pub replayers: Vec<ReplayerUrl>,

    /// Replace this header's value with `REDACTED` in every captured request (and response)
    /// before it leaves this host, e.g. Authorization, Cookie. Repeatable.
    #[arg(
        long = "redact-header",
        value_name = "NAME",
        help_heading = "Replayer link"
    )]
    #[serde(rename = "redact_header", skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,

    /// Replace this JSON field's value with "REDACTED", at any depth, in every JSON request
    /// and response body before it leaves this host, e.g. password. Repeatable.
    #[arg(
        long = "redact-json-field",
        value_name = "NAME",
        help_heading = "Replayer link"
    )]
    #[serde(rename = "redact_json_field", skip_serializing_if = "Vec::is_empty")]
    pub redact_json_fields: Vec<String>,

    /// Present the bearer token in this file to the replayer.
    #[arg(long, value_name = "FILE", help_heading = "Replayer link")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,

    /// Trust this CA (PEM) for the replayer's certificate; required by https:// replayer URLs.
    #[arg(long, value_name = "FILE", help_heading = "Replayer link")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,

    /// Mutual TLS: present this certificate (PEM) to the replayer; needs --tls-key.
    #[arg(long, value_name = "FILE", help_heading = "Replayer link")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", help_heading = "Replayer link")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// Compress batches on the link (the replayer always accepts gzip). Worth it across
    /// datacentres; on a LAN it mostly costs listener CPU.
    #[arg(long, value_enum, default_value_t = Compression::None, help_heading = "Replayer link")]
    pub compression: Compression,

    /// Name of this listener in the replayer's metrics and logs [default: the hostname].
    #[arg(long, value_name = "NAME", help_heading = "Replayer link")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_id: Option<String>,

    /// Most records queued for the links (at least 1; those in flight are bounded by
    /// --buffer-bytes and --max-unacked-batches).
    #[arg(
        long,
        default_value_t = 65_536,
        value_name = "RECORDS",
        help_heading = "Buffering"
    )]
    pub buffer_records: u64,

    /// Most message bytes held in memory for the replayers (queued, in flight or
    /// unacknowledged). Kept well under the listener's 64 MiB memory goal; ride out longer
    /// outages with --spool-dir.
    #[arg(long, default_value_t = ByteSize(16 << 20), value_name = "SIZE", help_heading = "Buffering")]
    pub buffer_bytes: ByteSize,

    /// When the buffer (or the spool) is full: `drop-newest` refuses new records (counted as
    /// `queue_full` / `spool_full`), `drop-oldest` evicts the oldest ones not yet sent
    /// (`evicted` / `spool_full`). Capture never waits.
    #[arg(long, value_enum, default_value_t = BufferPolicy::DropNewest, help_heading = "Buffering")]
    pub buffer_policy: BufferPolicy,

    /// While no replayer is up, and at shutdown for what is still unacknowledged, keep batches
    /// on disk in this directory; they are sent once a replayer is up, also after a listener
    /// restart.
    #[arg(long, value_name = "DIR", help_heading = "Buffering")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,

    /// Most bytes in the spool.
    #[arg(long, default_value_t = ByteSize(1 << 30), value_name = "SIZE", help_heading = "Buffering",
          requires = "spool_dir")]
    pub spool_bytes: ByteSize,

    /// Most records per gRPC batch (at least 1).
    #[arg(
        long,
        default_value_t = 512,
        value_name = "RECORDS",
        help_heading = "Replayer link"
    )]
    pub batch_records: u64,

    /// Batches in flight before the link waits for acknowledgements (at least 1).
    #[arg(
        long,
        default_value_t = 32,
        value_name = "BATCHES",
        help_heading = "Replayer link"
    )]
    pub max_unacked_batches: u64,

    /// On SIGTERM or Ctrl-C, how long to keep sending what is queued before exiting.
    #[arg(long, default_value = "5s", value_name = "DURATION", help_heading = "Replayer link",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,

    /// Save captured requests (and, with --track-responses, production's responses) to this
    /// GoReplay .gor file, beside or instead of the replayers. The name may hold %Y %m %d %H %M
    /// %S (UTC), %NS, %r (message id) and %i (this process); a new file starts when the name
    /// changes. A name ending in .gz is gzipped.
    #[arg(long, value_name = "PATH", help_heading = "Outputs")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,

    /// Start a new chunk (`<name>_<n>.gor`) once a file holds this much (e.g. 32mb, 1GiB).
    #[arg(long, default_value_t = ByteSize(DEFAULT_CHUNK_BYTES), value_name = "SIZE",
          help_heading = "Outputs")]
    pub output_file_size_limit: ByteSize,

    /// Stop writing once this much is written in all; what is refused is counted (`file_full`).
    #[arg(long, value_name = "SIZE", help_heading = "Outputs")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_file_max_size: Option<ByteSize>,

    /// Append to one file: no chunks and no `_<n>` in the name.
    #[arg(long, help_heading = "Outputs")]
    pub output_file_append: bool,

    /// Print every captured message to stdout, as GoReplay's --output-stdout does (the .gor
    /// format, readable for text bodies).
    #[arg(long, help_heading = "Outputs")]
    pub output_stdout: bool,

    /// With --output-stdout: decode chunked, gzip and deflate bodies for display.
    #[arg(long, help_heading = "Outputs")]
    pub prettify: bool,

    /// Count and discard every captured record: measures capture alone.
    #[arg(long, help_heading = "Outputs")]
    pub output_null: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics, and health probes at /healthz and
    /// /readyz. Without it the listener opens no port.
    ///
    /// /healthz answers 200 "ok" while the capture loop and the runtime turn (503 once one has
    /// not turned for 10 s). /readyz answers 200 "ready" while the capture is open and a
    /// replayer link is up or a file output (--output-file, --output-stdout) is open; otherwise
    /// 503 with one line per unmet condition.
    #[arg(long, value_name = "ADDR", help_heading = "Observability")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log lines as text, or as one JSON object per line (`timestamp`, `level`, `message` and
    /// the event's fields), for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, help_heading = "Observability")]
    pub log_format: LogFormat,

    /// How often to log the accounting (captured, sent, dropped by reason, buffered, rate); 0
    /// turns it off.
    #[arg(long, default_value = "10s", value_name = "DURATION", help_heading = "Observability",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        tapwire_shared::config::flag_defaults()
    }
}

impl Configuration for ListenerConfig {
    /// Where this listener runs and how it reaches the replayers; what it captures and how it
    /// buffers belong to the file.
    const DEPLOYMENT_FLAGS: &'static [DeploymentFlag] = &[
        DeploymentFlag::same_key("interface"),
        DeploymentFlag::same_key("user"),
        DeploymentFlag {
            id: "replayers",
            key: "replayer",
        },
        DeploymentFlag::same_key("listener_id"),
        DeploymentFlag::same_key("token_file"),
        DeploymentFlag::same_key("tls_ca"),
        DeploymentFlag::same_key("tls_cert"),
        DeploymentFlag::same_key("tls_key"),
        DeploymentFlag::same_key("spool_dir"),
        DeploymentFlag::same_key("metrics_listen"),
        DeploymentFlag::same_key("log_format"),
        DeploymentFlag::same_key("stats_interval"),
    ];

    fn file_keys() -> Vec<String> {
        struct_keys::<ListenerConfig>("")
    }
}

/// Batch compression on the replayer link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    None,
    Gzip,
}

/// A replayer's gRPC URL: `http://host:port`, or `https://host:port` with TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayerUrl(pub Uri);

impl FromStr for ReplayerUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("not a URL ({error}); expected http://host:port"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.authority().is_some() => Ok(ReplayerUrl(uri)),
            _ => Err("expected http://host:port (or https://host:port with --tls-ca)".into()),
        }
    }
}

impl fmt::Display for ReplayerUrl {
    /// As written, `http://host:port`: without the `/` path a URL parser adds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        f.write_str(text.strip_suffix('/').unwrap_or(&text))
    }
}

impl Serialize for ReplayerUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReplayerUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_flags(flags: &[&str]) -> ListenerConfig {
        let args = std::iter::once("tapwire-listener").chain(flags.iter().copied());
        ListenerConfig::parse_from(args)
    }

    #[test]
    fn a_toml_file_and_the_equivalent_flags_give_the_same_config() {
        let file = r#"
            port = [8080, 8443]
            replayer = ["http://10.0.0.7:7070"]
            gap_timeout = "2s"
            buffer_policy = "drop-oldest"
            redact_header = ["Authorization"]
        "#;
        let from_file: ListenerConfig = toml::from_str(file).unwrap();
        let from_flags = from_flags(&[
            "--port",
            "8080",
            "--port",
            "8443",
            "--replayer",
            "http://10.0.0.7:7070",
            "--gap-timeout",
            "2s",
            "--buffer-policy",
            "drop-oldest",
            "--redact-header",
            "Authorization",
        ]);
        assert_eq!(from_file, from_flags);
        // Printing and reading back is lossless.
        let printed: ListenerConfig =
            toml::from_str(&tapwire_shared::config::to_toml(&from_file)).unwrap();
        assert_eq!(printed, from_file);
    }

    #[test]
    fn deployment_flags_are_flags_that_set_their_file_key() {
        tapwire_shared::config::check_deployment_flags::<ListenerConfig>(
            &[
                ("interface", "eth0"),
                ("user", "tapwire"),
                ("replayers", "http://replayer:7070"),
                ("listener_id", "web-1"),
                ("token_file", "/etc/tapwire/token"),
                ("tls_ca", "ca.pem"),
                ("tls_cert", "cert.pem"),
                ("tls_key", "key.pem"),
                ("spool_dir", "/var/spool/tapwire"),
                ("metrics_listen", "127.0.0.1:9090"),
                ("log_format", "json"),
                ("stats_interval", "5s"),
            ],
            &["--port", "80", "--output-null"],
        );
    }

    #[test]
    fn every_file_key_is_known() {
        let keys = ListenerConfig::file_keys();
        for key in ["interface", "port", "replayer", "metrics_listen", "user"] {
            assert!(keys.iter().any(|known| known == key), "{key} in {keys:?}");
        }
    }

    #[test]
    fn every_size_takes_units_on_flags_and_in_the_file() {
        let from_flags = from_flags(&[
            "--port",
            "80",
            "--output-null",
            "--pcap-buffer-bytes",
            "32mb",
            "--max-request-bytes",
            "1MiB",
            "--max-out-of-order-bytes",
            "512k",
            "--max-buffered-bytes",
            "64MiB",
            "--buffer-bytes",
            "8mb",
            "--spool-dir",
            "/tmp",
            "--spool-bytes",
            "2GiB",
        ]);
        let file = r#"
            port = [80]
            output_null = true
            pcap_buffer_bytes = "32MiB"
            max_request_bytes = 1048576
            max_out_of_order_bytes = "512KiB"
            max_buffered_bytes = "64mb"
            buffer_bytes = "8MiB"
            spool_dir = "/tmp"
            spool_bytes = "2gb"
        "#;
        let from_file: ListenerConfig = toml::from_str(file).unwrap();
        assert_eq!(from_flags, from_file);
        assert_eq!(from_file.max_out_of_order_bytes, ByteSize(512 << 10));
        assert_eq!(from_file.spool_bytes, ByteSize(2 << 30));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let error = toml::from_str::<ListenerConfig>("port = [80]\nmax_flow = 5\n").unwrap_err();
        assert!(error.to_string().contains("max_flow"), "{error}");
    }
}
