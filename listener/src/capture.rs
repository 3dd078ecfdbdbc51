//! Live capture with libpcap: opens the interface with a BPF filter for the service's ports, then
//! runs the capture loop on its own thread. The loop decodes each frame, hands the segment to the
//! [`Reassembler`], and pushes every completed request into the [`RecordQueue`], which never
//! blocks. Production traffic is only ever observed, never touched.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use tapwire_shared::RequestRecord;

use crate::http::CutEvent;
use crate::metrics::ListenerMetrics;
use crate::packet::{self, LinkType};
use crate::reassembly::Reassembler;
use crate::transport::RecordQueue;

/// The kernel hands over a block of packets when it fills or after this long: the most a
/// captured packet waits before the listener sees it.
const BLOCK_TIMEOUT_MS: i32 = 20;
/// Longest sleep waiting for packets, so housekeeping and shutdown always get a turn.
const POLL_TIMEOUT_MS: u16 = 100;
/// How often idle flows are evicted and kernel drop counts refreshed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Where and what to capture.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub interface: String,
    pub ports: Vec<u16>,
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
    #[error("cannot install capture filter {filter:?}: {source}")]
    Filter { filter: String, source: pcap::Error },
    #[error("interface {interface:?} has link type {linktype:?}, which tapwire cannot decode")]
    UnsupportedLinkType {
        interface: String,
        linktype: pcap::Linktype,
    },
    #[error("capture failed: {0}")]
    Read(#[from] pcap::Error),
    #[error("waiting for packets failed: {0}")]
    Poll(nix::errno::Errno),
}

/// The BPF program: client->server TCP segments on the service's ports only.
pub fn bpf_filter(ports: &[u16]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|port| format!("dst port {port}"))
        .collect();
    format!("tcp and ({})", ports.join(" or "))
}

/// An open, filtered capture handle.
pub struct LiveCapture {
    handle: pcap::Capture<pcap::Active>,
    link: LinkType,
}

impl LiveCapture {
    pub fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
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
        let filter = bpf_filter(&config.ports);
        handle
            .filter(&filter, true)
            .map_err(|source| CaptureError::Filter {
                filter: filter.clone(),
                source,
            })?;
        let linktype = handle.get_datalink();
        let link =
            LinkType::from_pcap(linktype).ok_or_else(|| CaptureError::UnsupportedLinkType {
                interface: config.interface.clone(),
                linktype,
            })?;
        tracing::info!(interface = %config.interface, %filter, ?link, "capture started");
        Ok(LiveCapture { handle, link })
    }

    /// Captures until `stop` is set, then processes what the kernel already holds and returns.
    pub fn run(
        self,
        reassembler: Reassembler,
        queue: RecordQueue,
        metrics: ListenerMetrics,
        stop: Arc<AtomicBool>,
    ) -> Result<(), CaptureError> {
        let mut pipeline = PacketPipeline {
            link: self.link,
            reassembler,
            queue,
            metrics,
            next_record_id: 0,
        };
        let mut handle = self.handle;
        let mut last_housekeeping = Instant::now();
        let mut stopping_since: Option<Instant> = None;
        loop {
            loop {
                match handle.next_packet() {
                    Ok(frame) => pipeline.process(&frame),
                    // Non-blocking: nothing more to read right now.
                    Err(pcap::Error::TimeoutExpired) => break,
                    Err(error) => return Err(CaptureError::Read(error)),
                }
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                last_housekeeping = Instant::now();
                pipeline.housekeeping(&mut handle);
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
                None if stop.load(Ordering::Relaxed) => stopping_since = Some(Instant::now()),
                None => {}
            }
            let mut readable = [PollFd::new(handle.as_fd(), PollFlags::POLLIN)];
            match poll(&mut readable, PollTimeout::from(POLL_TIMEOUT_MS)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(CaptureError::Poll(errno)),
            }
        }
        pipeline.housekeeping(&mut handle);
        Ok(())
    }
}

/// Everything one captured frame passes through, owned by the capture thread.
struct PacketPipeline {
    link: LinkType,
    reassembler: Reassembler,
    queue: RecordQueue,
    metrics: ListenerMetrics,
    next_record_id: u64,
}

impl PacketPipeline {
    fn process(&mut self, frame: &pcap::Packet<'_>) {
        self.metrics.packets_captured.inc();
        let segment = match packet::decode(self.link, frame.data) {
            Ok(segment) => segment,
            Err(error) => {
                self.metrics.packets_malformed.inc();
                tracing::debug!(%error, "skipped frame");
                return;
            }
        };
        let now_ns = timeval_ns(frame.header.ts.tv_sec, frame.header.ts.tv_usec);
        let (queue, metrics, next_record_id) =
            (&self.queue, &self.metrics, &mut self.next_record_id);
        self.reassembler
            .ingest(&segment, now_ns, &mut |flow, event| match event {
                CutEvent::Request {
                    bytes,
                    started_at_ns,
                } => {
                    metrics.requests_captured.inc();
                    *next_record_id += 1;
                    queue.push(RequestRecord {
                        id: *next_record_id,
                        captured_at_ns: started_at_ns,
                        client: flow.client,
                        server: flow.server,
                        request: bytes,
                    });
                }
                CutEvent::Dropped(reason) => {
                    metrics.dropped(reason).inc();
                }
            });
    }

    fn housekeeping(&mut self, handle: &mut pcap::Capture<pcap::Active>) {
        let idle_flows = self.reassembler.evict_idle(wall_clock_ns());
        if idle_flows > 0 {
            tracing::debug!(idle_flows, "evicted idle flows");
        }
        self.metrics
            .flows_active
            .set(self.reassembler.active_flows() as i64);
        record_kernel_drops(handle, &self.metrics);
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
