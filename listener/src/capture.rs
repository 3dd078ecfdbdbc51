//! Packet sources and the capture loop. A [`PacketSource`] is a live interface (libpcap with
//! TPACKET_V3, non-blocking, woken by our own `poll`) or a pcap/pcapng file; both go through
//! exactly the same path: decode ([`packet`](crate::packet)), reassemble and cut
//! ([`reassembly`](crate::reassembly)), make records ([`record`](crate::record)). The loop runs
//! on its own thread and never waits for an output. Production traffic is only ever observed,
//! never touched.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tapwire_runtime::Shutdown;
use tapwire_runtime::health::Heartbeat;

use crate::metrics::ListenerMetrics;
use crate::packet::{self, FlowKey, LinkType};
use crate::reassembly::{Direction, Reassembler};
use crate::record::RecordStage;

/// The kernel hands over a block of packets when it fills or after this long: the most a
/// captured packet waits before the listener sees it. Measured at 5k requests/s: 20 ms gives a
/// capture-to-replay p50 of 14 ms for 7 µs of listener CPU per request; 5 ms gave 3.5 ms for
/// 15 µs. Production's CPU matters more than replay latency.
const BLOCK_TIMEOUT_MS: i32 = 20;
/// Longest sleep waiting for packets, so housekeeping and shutdown always get a turn.
const POLL_TIMEOUT_MS: u16 = 100;
/// Most packets read in one turn of the capture loop: under sustained load the kernel always
/// has more, and the turn must still end for the heartbeat, housekeeping and shutdown.
const MAX_PACKETS_PER_TURN: usize = 4096;
/// How often holes and idle flows are expired and gauges refreshed (in capture time).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Reading a file, the loop beats once per this many packets (far less than a second's worth).
const FILE_PACKETS_PER_BEAT: u64 = 1024;

/// Where and what to capture live.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub interface: String,
    pub filter: CaptureFilter,
    /// Cut the server's segments into responses (they are captured anyway, for their ACKs).
    pub track_responses: bool,
    pub snaplen: i32,
    pub buffer_bytes: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "no network interface {interface:?} (libpcap: {cause}); available: {}",
        available.join(", ")
    )]
    NoSuchInterface {
        interface: String,
        cause: String,
        available: Vec<String>,
    },
    #[error(
        "no permission to capture on interface {interface:?} (libpcap: {cause}): capturing needs root or the CAP_NET_RAW capability"
    )]
    PermissionDenied { interface: String, cause: String },
    #[error("cannot open interface {interface:?} for capture (libpcap: {cause})")]
    Open { interface: String, cause: String },
    #[error("cannot read capture file {path} (libpcap: {cause})")]
    OpenFile { path: String, cause: String },
    #[error("cannot install capture filter {filter:?} (libpcap: {cause})")]
    Filter { filter: String, cause: String },
    #[error("{source_name} has link type {linktype:?}, which tapwire cannot decode")]
    UnsupportedLinkType {
        source_name: String,
        linktype: pcap::Linktype,
    },
    #[error("capture failed (libpcap: {})", pcap_message(.0))]
    Read(pcap::Error),
    #[error("waiting for packets failed: {0}")]
    Poll(nix::errno::Errno),
}

/// libpcap's own words, without the crate's "libpcap error: " prefix (the caller names libpcap).
pub fn pcap_message(error: &pcap::Error) -> String {
    match error {
        pcap::Error::PcapError(message) => message.clone(),
        other => other.to_string(),
    }
}

impl CaptureError {
    /// Why `interface` could not be opened, from libpcap's `error`: an interface that does not
    /// exist is named with the ones that do, and permissions are blamed only when they are
    /// the cause.
    fn opening(interface: &str, error: &pcap::Error) -> CaptureError {
        let cause = pcap_message(error);
        let available: Vec<String> = pcap::Device::list()
            .unwrap_or_default()
            .into_iter()
            .map(|device| device.name)
            .collect();
        if !available.is_empty() && !available.iter().any(|name| name == interface) {
            return CaptureError::NoSuchInterface {
                interface: interface.to_owned(),
                cause,
                available,
            };
        }
        let lowercase = cause.to_ascii_lowercase();
        let interface = interface.to_owned();
        if lowercase.contains("permission") || lowercase.contains("not permitted") {
            CaptureError::PermissionDenied { interface, cause }
        } else {
            CaptureError::Open { interface, cause }
        }
    }
}

/// What the capture keeps: TCP segments to and from the service's ports, optionally narrowed
/// to some server addresses, away from others, and by the user's own expression.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureFilter {
    pub ports: Vec<u16>,
    /// Only these servers (empty: every destination on the ports).
    pub hosts: Vec<IpAddr>,
    /// Never these servers.
    pub exclude_hosts: Vec<IpAddr>,
    /// `--bpf-filter`, combined with `and`.
    pub expression: Option<String>,
}

impl CaptureFilter {
    /// Every segment to and from `ports`.
    pub fn ports(ports: &[u16]) -> CaptureFilter {
        CaptureFilter {
            ports: ports.to_vec(),
            ..CaptureFilter::default()
        }
    }

    /// The BPF program. The server's segments are always needed, for the ACKs that prove
    /// production accepted a request (see [`reassembly`](crate::reassembly)); their payload is
    /// only used when responses are tracked. A server address is matched with its port, in the
    /// direction of each segment: on loopback or a router the client may share the server's
    /// address, or one of the excluded ones. On Ethernet the whole test is repeated behind an
    /// 802.1Q tag, which shifts every offset after it (the user's expression included).
    pub fn for_link(&self, link: LinkType) -> String {
        let ports = |direction: &str| {
            let each: Vec<String> = self
                .ports
                .iter()
                .map(|port| format!("{direction}port {port}"))
                .collect();
            each.join(" or ")
        };
        let servers = |hosts: &[IpAddr]| {
            let at = |direction: &str| {
                let each: Vec<String> = hosts
                    .iter()
                    .map(|host| format!("{direction} host {host}"))
                    .collect();
                format!(
                    "({}) and ({})",
                    each.join(" or "),
                    ports(&format!("{direction} "))
                )
            };
            format!("({}) or ({})", at("dst"), at("src"))
        };
        let mut untagged = format!("tcp and ({})", ports(""));
        if !self.hosts.is_empty() {
            untagged = format!("{untagged} and ({})", servers(&self.hosts));
        }
        if !self.exclude_hosts.is_empty() {
            untagged = format!("{untagged} and not ({})", servers(&self.exclude_hosts));
        }
        if let Some(expression) = &self.expression {
            untagged = format!("{untagged} and ({expression})");
        }
        match link {
            LinkType::Ethernet => format!("({untagged}) or (vlan and {untagged})"),
            _ => untagged,
        }
    }

    /// Compiles the whole filter for each link type a live capture can have (Ethernet, and
    /// the cooked types of interface `any`), so that an expression that cannot work on one
    /// (`vlan`, `ether ...` on `any`) is refused at start, not when capture opens. Err holds
    /// libpcap's message.
    pub fn check(&self) -> Result<(), String> {
        for (link, linktype) in [
            (LinkType::Ethernet, pcap::Linktype::ETHERNET),
            (LinkType::LinuxSll, pcap::Linktype::LINUX_SLL),
            (LinkType::LinuxSll2, pcap::Linktype::LINUX_SLL2),
        ] {
            compile(&self.for_link(link), linktype)?;
        }
        Ok(())
    }
}

/// Compiles `filter` for `linktype` without a capture; Err holds libpcap's message.
fn compile(filter: &str, linktype: pcap::Linktype) -> Result<(), String> {
    let dead = pcap::Capture::dead(linktype).map_err(|e| pcap_message(&e))?;
    dead.compile(filter, true)
        .map(drop)
        .map_err(|error| pcap_message(&error))
}

/// Those of `ports` on which no TCP socket listens in this network namespace, from
/// /proc/net/tcp and tcp6 (`None` when neither can be read).
pub fn ports_without_listener(ports: &[u16]) -> Option<Vec<u16>> {
    const LISTEN: &str = "0A";
    let mut listening = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            if let (Some(port), LISTEN) = (port, state) {
                listening.push(port);
            }
        }
    }
    read_any.then(|| {
        ports
            .iter()
            .copied()
            .filter(|port| !listening.contains(port))
            .collect()
    })
}

/// An open, filtered source of captured frames.
pub struct PacketSource {
    input: Input,
    link: LinkType,
    ports: Vec<u16>,
}

enum Input {
    Live(pcap::Capture<pcap::Active>),
    File(pcap::Capture<pcap::Offline>),
}

impl PacketSource {
    /// Opens a live interface.
    pub fn open_live(config: &CaptureConfig) -> Result<Self, CaptureError> {
        let open_error = |error| CaptureError::opening(&config.interface, &error);
        let mut handle = pcap::Capture::from_device(config.interface.as_str())
            .map_err(open_error)?
            .promisc(false)
            .snaplen(config.snaplen)
            .buffer_size(config.buffer_bytes)
            // TPACKET_V3 packs packets into shared blocks; immediate mode would fall back to
            // fixed snaplen-sized frames, so the same buffer would hold only a few dozen packets.
            .immediate_mode(false)
            .timeout(BLOCK_TIMEOUT_MS)
            .open()
            .map_err(open_error)?
            // Waiting is done by our own poll(), which (unlike libpcap's) always times out.
            .setnonblock()
            .map_err(open_error)?;
        let link = install_filter(&mut handle, &config.filter, &config.interface)?;
        // Before "capture started": whoever waits for that line has seen the warnings too.
        for port in ports_without_listener(&config.filter.ports).unwrap_or_default() {
            tracing::warn!(
                port,
                "nothing listens on this port in this network namespace: check --port; on a \
                 Kubernetes node or with containers the service may listen in another \
                 namespace, and its traffic to the pod's address is still captured"
            );
        }
        tracing::info!(interface = %config.interface, filter = %config.filter.for_link(link), ?link, "capture started");
        Ok(PacketSource {
            input: Input::Live(handle),
            link,
            ports: config.filter.ports.clone(),
        })
    }

    /// Opens a pcap or pcapng file (from tcpdump or Wireshark).
    pub fn open_file(path: &Path, filter: &CaptureFilter) -> Result<Self, CaptureError> {
        let mut handle =
            pcap::Capture::from_file(path).map_err(|error| CaptureError::OpenFile {
                path: path.display().to_string(),
                cause: pcap_message(&error),
            })?;
        let link = install_filter(&mut handle, filter, &path.display().to_string())?;
        tracing::info!(file = %path.display(), filter = %filter.for_link(link), ?link, "capture started");
        Ok(PacketSource {
            input: Input::File(handle),
            link,
            ports: filter.ports.clone(),
        })
    }

    /// Captures until `stop` is requested (live) or the file ends, then closes every flow and
    /// returns. `heartbeat` beats once per turn of the loop (liveness, `/healthz`).
    pub fn run(
        self,
        reassembler: Reassembler,
        records: RecordStage,
        stop: &Shutdown,
        heartbeat: &Heartbeat,
    ) -> Result<(), CaptureError> {
        let mut pipeline = PacketPipeline {
            link: self.link,
            ports: self.ports,
            reassembler,
            records,
            last_packet_ns: 0,
        };
        match self.input {
            Input::Live(handle) => pipeline.run_live(handle, stop, heartbeat),
            Input::File(handle) => pipeline.run_file(handle, heartbeat),
        }
    }
}

fn install_filter<T: pcap::Activated + ?Sized>(
    handle: &mut pcap::Capture<T>,
    filter: &CaptureFilter,
    source_name: &str,
) -> Result<LinkType, CaptureError> {
    let linktype = handle.get_datalink();
    let link = LinkType::from_pcap(linktype).ok_or_else(|| CaptureError::UnsupportedLinkType {
        source_name: source_name.to_owned(),
        linktype,
    })?;
    let filter = filter.for_link(link);
    handle
        .filter(&filter, true)
        .map_err(|error| CaptureError::Filter {
            cause: pcap_message(&error),
            filter,
        })?;
    Ok(link)
}

/// Everything one captured frame passes through, owned by the capture thread.
struct PacketPipeline {
    link: LinkType,
    /// The service's ports: segments to them are requests, from them responses.
    ports: Vec<u16>,
    reassembler: Reassembler,
    records: RecordStage,
    last_packet_ns: u64,
}

impl PacketPipeline {
    fn run_live(
        &mut self,
        mut handle: pcap::Capture<pcap::Active>,
        stop: &Shutdown,
        heartbeat: &Heartbeat,
    ) -> Result<(), CaptureError> {
        let mut last_housekeeping = Instant::now();
        let mut stopping_since: Option<Instant> = None;
        loop {
            heartbeat.beat();
            let mut drained = false;
            for _ in 0..MAX_PACKETS_PER_TURN {
                match handle.next_packet() {
                    Ok(frame) => self.process(&frame),
                    // Non-blocking: nothing more to read right now.
                    Err(pcap::Error::TimeoutExpired) => {
                        drained = true;
                        break;
                    }
                    Err(error) => return Err(CaptureError::Read(error)),
                }
            }
            // What the kernel had (or a turn's worth of it) is handed over: one wakeup for
            // the whole burst.
            self.records.flush();
            if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                last_housekeeping = Instant::now();
                // Packet timestamps come from the wall clock, so idleness is judged against it.
                self.housekeeping(wall_clock_ns());
                record_kernel_drops(&mut handle, self.records.metrics());
            }
            // Once stopping, give the kernel time to hand over its last partly filled block:
            // requests it captured before the stop belong to this run.
            match stopping_since {
                Some(since)
                    if since.elapsed() > Duration::from_millis(3 * BLOCK_TIMEOUT_MS as u64) =>
                {
                    break;
                }
                Some(_) => {}
                None if stop.is_requested() => stopping_since = Some(Instant::now()),
                None => {}
            }
            if !drained {
                // More is ready: read on without waiting.
                continue;
            }
            let mut readable = [PollFd::new(handle.as_fd(), PollFlags::POLLIN)];
            match poll(&mut readable, PollTimeout::from(POLL_TIMEOUT_MS)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(CaptureError::Poll(errno)),
            }
        }
        record_kernel_drops(&mut handle, self.records.metrics());
        self.close_all();
        Ok(())
    }

    fn run_file(
        &mut self,
        mut handle: pcap::Capture<pcap::Offline>,
        heartbeat: &Heartbeat,
    ) -> Result<(), CaptureError> {
        let mut last_housekeeping_ns = 0;
        for turn in 0u64.. {
            // A file is read as fast as it goes: a clock read per packet would be its cost.
            if turn % FILE_PACKETS_PER_BEAT == 0 {
                heartbeat.beat();
            }
            match handle.next_packet() {
                Ok(frame) => self.process(&frame),
                Err(pcap::Error::NoMorePackets) => break,
                Err(error) => return Err(CaptureError::Read(error)),
            }
            // A file carries its own clock: expire holes and idle flows by packet time.
            let interval = HOUSEKEEPING_INTERVAL.as_nanos() as u64;
            if self.last_packet_ns.saturating_sub(last_housekeeping_ns) >= interval {
                last_housekeeping_ns = self.last_packet_ns;
                self.housekeeping(self.last_packet_ns);
            }
        }
        self.close_all();
        Ok(())
    }

    fn process(&mut self, frame: &pcap::Packet<'_>) {
        self.records.metrics().packets_captured.inc();
        let mut segment = match packet::decode(self.link, frame.data) {
            Ok(segment) => segment,
            Err(error) => {
                self.records.metrics().packets_malformed.inc();
                tracing::debug!(%error, "skipped frame");
                return;
            }
        };
        let now_ns = timeval_ns(frame.header.ts.tv_sec, frame.header.ts.tv_usec);
        self.last_packet_ns = self.last_packet_ns.max(now_ns);
        let direction = if self.ports.contains(&segment.flow.server.port()) {
            Direction::Request
        } else {
            // From the service's port: a response. Flows are keyed client first.
            segment.flow = FlowKey {
                client: segment.flow.server,
                server: segment.flow.client,
            };
            Direction::Response
        };
        self.reassembler
            .ingest_directed(&segment, direction, now_ns, &mut self.records);
    }

    fn housekeeping(&mut self, now_ns: u64) {
        self.reassembler.expire(now_ns, &mut self.records);
        self.records.flush();
        self.update_gauges();
    }

    /// End of capture: whatever is held behind holes is still cut, the holes counted.
    fn close_all(&mut self) {
        self.reassembler.finish(&mut self.records);
        self.records.flush();
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let metrics = self.records.metrics();
        metrics
            .flows_active
            .set(self.reassembler.active_flows() as i64);
        metrics
            .buffered_bytes
            .set(self.reassembler.buffered_bytes() as i64);
    }
}

fn record_kernel_drops(handle: &mut pcap::Capture<pcap::Active>, metrics: &ListenerMetrics) {
    if let Ok(stats) = handle.stats() {
        metrics
            .pcap_dropped_packets
            .set(i64::from(stats.dropped) + i64::from(stats.if_dropped));
    }
}

/// A pcap timestamp (seconds, microseconds) as nanoseconds since the Unix epoch.
fn timeval_ns(seconds: i64, micros: i64) -> u64 {
    (seconds.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(micros.max(0) as u64 * 1_000)
}

/// Packet timestamps come from the same clock, so idleness is judged against it.
fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_is_every_destination_on_the_ports() {
        let filter = CaptureFilter::ports(&[80, 8080]);
        assert_eq!(
            filter.for_link(LinkType::LinuxSll2),
            "tcp and (port 80 or port 8080)"
        );
    }

    #[test]
    fn server_addresses_are_matched_with_their_port_in_each_direction() {
        let filter = CaptureFilter {
            ports: vec![8080],
            hosts: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            exclude_hosts: vec!["10.0.0.9".parse().unwrap()],
            expression: Some("len > 100".into()),
        };
        assert_eq!(
            filter.for_link(LinkType::Raw),
            "tcp and (port 8080) \
             and (((dst host 10.0.0.7 or dst host fd00::7) and (dst port 8080)) \
             or ((src host 10.0.0.7 or src host fd00::7) and (src port 8080))) \
             and not (((dst host 10.0.0.9) and (dst port 8080)) \
             or ((src host 10.0.0.9) and (src port 8080))) \
             and (len > 100)"
        );
        filter.check().unwrap();
    }

    #[test]
    fn an_invalid_expression_is_refused_with_libpcaps_message() {
        let with = |expression: &str| CaptureFilter {
            expression: Some(expression.to_owned()),
            ..CaptureFilter::ports(&[80])
        };
        assert_eq!(with("tcp port 80").check(), Ok(()));
        let error = with("port nonsense").check().unwrap_err();
        assert!(error.contains("nonsense"), "{error}");
        assert!(!error.starts_with("libpcap error"), "{error}");
        // Valid alone, but not on every link a capture can have: refused before capture.
        for expression in ["vlan 100", "ether broadcast"] {
            assert!(with(expression).check().is_err(), "{expression}");
        }
    }
}
