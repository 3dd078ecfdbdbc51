//! Packet sources and the capture loop. A [`PacketSource`] is a live interface (libpcap with
//! TPACKET_V3, non-blocking, woken by our own `poll`) or a pcap/pcapng file; both go through
//! exactly the same path: decode ([`packet`](crate::packet)), reassemble and cut
//! ([`reassembly`](crate::reassembly)), make records ([`record`](crate::record)). The loop runs
//! on its own thread and never waits for an output. Production traffic is only ever observed,
//! never touched.

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
    pub ports: Vec<u16>,
    /// Cut the server's segments into responses (they are captured anyway, for their ACKs).
    pub track_responses: bool,
    pub snaplen: i32,
    pub buffer_bytes: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "cannot open interface {interface:?} for capture: {source} (capturing needs root or CAP_NET_RAW)"
    )]
    Open {
        interface: String,
        source: pcap::Error,
    },
    #[error("cannot read capture file {path}: {source}")]
    OpenFile { path: String, source: pcap::Error },
    #[error("cannot install capture filter {filter:?}: {source}")]
    Filter { filter: String, source: pcap::Error },
    #[error("{source_name} has link type {linktype:?}, which tapwire cannot decode")]
    UnsupportedLinkType {
        source_name: String,
        linktype: pcap::Linktype,
    },
    #[error("capture failed: {0}")]
    Read(#[from] pcap::Error),
    #[error("waiting for packets failed: {0}")]
    Poll(nix::errno::Errno),
}

/// The BPF program: TCP segments to and from the service's ports. The server's segments are
/// always needed, for the ACKs that prove production accepted a request (see
/// [`reassembly`](crate::reassembly)); their payload is only used when responses are tracked.
/// On Ethernet the same test is repeated behind an 802.1Q tag, which shifts every offset after
/// it.
pub fn bpf_filter(ports: &[u16], link: LinkType) -> String {
    let ports: Vec<String> = ports.iter().map(|port| format!("port {port}")).collect();
    let untagged = format!("tcp and ({})", ports.join(" or "));
    match link {
        LinkType::Ethernet => format!("({untagged}) or (vlan and {untagged})"),
        _ => untagged,
    }
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
        let open_error = |source| CaptureError::Open {
            interface: config.interface.clone(),
            source,
        };
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
        let filter = |link| bpf_filter(&config.ports, link);
        let link = install_filter(&mut handle, filter, &config.interface)?;
        tracing::info!(interface = %config.interface, filter = %filter(link), ?link, "capture started");
        Ok(PacketSource {
            input: Input::Live(handle),
            link,
            ports: config.ports.clone(),
        })
    }

    /// Opens a pcap or pcapng file (from tcpdump or Wireshark).
    pub fn open_file(path: &Path, ports: &[u16]) -> Result<Self, CaptureError> {
        let mut handle =
            pcap::Capture::from_file(path).map_err(|source| CaptureError::OpenFile {
                path: path.display().to_string(),
                source,
            })?;
        let filter = |link| bpf_filter(ports, link);
        let link = install_filter(&mut handle, filter, &path.display().to_string())?;
        tracing::info!(file = %path.display(), filter = %filter(link), ?link, "capture started");
        Ok(PacketSource {
            input: Input::File(handle),
            link,
            ports: ports.to_vec(),
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
    filter_for: impl Fn(LinkType) -> String,
    source_name: &str,
) -> Result<LinkType, CaptureError> {
    let linktype = handle.get_datalink();
    let link = LinkType::from_pcap(linktype).ok_or_else(|| CaptureError::UnsupportedLinkType {
        source_name: source_name.to_owned(),
        linktype,
    })?;
    let filter = filter_for(link);
    handle
        .filter(&filter, true)
        .map_err(|source| CaptureError::Filter {
            filter: filter.clone(),
            source,
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
