//! Writing pcap files of crafted TCP segments: exact, repeatable capture scenarios (reordering,
//! duplicates, overlaps, missing segments, VLAN, IPv6, cooked capture) for the listener's
//! `--input-pcap`.
//!
//! The listener replays only what the server acknowledged, so [`write_pcap`] adds the server's
//! ACKs as production's kernel would send them, assuming the server received every byte the
//! client sent (the capture may still miss or reorder some: that is what fixtures test).
//! [`write_pcap_exact`] writes the segments alone, for segments the server never accepted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use etherparse::{IpHeaders, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, VlanId};

/// How frames are framed below IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixtureLink {
    Ethernet,
    /// Ethernet with an 802.1Q tag.
    EthernetVlan(u16),
    /// Linux cooked capture v1 (interface `any`, older libpcap).
    LinuxSll,
    /// Linux cooked capture v2 (interface `any`, libpcap 1.10+).
    LinuxSll2,
}

/// One TCP segment of a client connection, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Sent by the server (a response segment) rather than the client.
    pub from_server: bool,
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    /// The acknowledgment number, with the ACK flag.
    pub ack: Option<u32>,
    pub payload: Vec<u8>,
}

/// A client connection: hands out its segments by stream offset.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Initial sequence number: the SYN's; data starts at `isn + 1`.
    pub isn: u32,
    /// The server's initial sequence number (its SYN-ACK's).
    pub server_isn: u32,
}

impl Connection {
    pub fn new(client: &str, server: &str, isn: u32) -> Connection {
        Connection {
            client: client.parse().expect("client address"),
            server: server.parse().expect("server address"),
            isn,
            server_isn: isn ^ 0x5a5a_5a5a,
        }
    }

    fn segment(&self, offset: usize, payload: &[u8]) -> Segment {
        Segment {
            client: self.client,
            server: self.server,
            from_server: false,
            seq: self.isn.wrapping_add(1).wrapping_add(offset as u32),
            syn: false,
            fin: false,
            rst: false,
            ack: None,
            payload: payload.to_vec(),
        }
    }

    pub fn syn(&self) -> Segment {
        Segment {
            seq: self.isn,
            syn: true,
            ..self.segment(0, b"")
        }
    }

    /// Data starting at stream offset `offset`.
    pub fn data(&self, offset: usize, payload: &[u8]) -> Segment {
        self.segment(offset, payload)
    }

    /// FIN after `offset` bytes of stream.
    pub fn fin(&self, offset: usize) -> Segment {
        Segment {
            fin: true,
            ..self.segment(offset, b"")
        }
    }

    pub fn rst(&self, offset: usize) -> Segment {
        Segment {
            rst: true,
            ..self.segment(offset, b"")
        }
    }

    /// The server's SYN-ACK.
    pub fn syn_ack(&self) -> Segment {
        Segment {
            from_server: true,
            seq: self.server_isn,
            syn: true,
            ..self.segment(0, b"")
        }
    }

    /// Server data (response bytes) starting at offset `offset` of the server's stream.
    pub fn response(&self, offset: usize, payload: &[u8]) -> Segment {
        Segment {
            from_server: true,
            seq: self.server_isn.wrapping_add(1).wrapping_add(offset as u32),
            ..self.segment(0, payload)
        }
    }

    /// The server's FIN after `offset` bytes of its stream.
    pub fn server_fin(&self, offset: usize) -> Segment {
        Segment {
            fin: true,
            ..self.response(offset, b"")
        }
    }

    /// `stream` cut into consecutive segments of at most `mss` bytes, from offset `start`.
    pub fn split(&self, start: usize, stream: &[u8], mss: usize) -> Vec<Segment> {
        stream
            .chunks(mss)
            .enumerate()
            .map(|(i, chunk)| self.data(start + i * mss, chunk))
            .collect()
    }
}

fn ip_headers(source: IpAddr, destination: IpAddr) -> anyhow::Result<IpHeaders> {
    Ok(match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => IpHeaders::Ipv4(
            Ipv4Header::new(0, 64, IpNumber::TCP, source.octets(), destination.octets())?,
            Default::default(),
        ),
        (IpAddr::V6(source), IpAddr::V6(destination)) => IpHeaders::Ipv6(
            Ipv6Header {
                next_header: IpNumber::TCP,
                hop_limit: 64,
                source: source.octets(),
                destination: destination.octets(),
                ..Default::default()
            },
            Default::default(),
        ),
        _ => anyhow::bail!("client and server must both be IPv4 or both IPv6"),
    })
}

/// The frame for `segment`, framed for `link`.
pub fn frame(link: FixtureLink, segment: &Segment) -> anyhow::Result<Vec<u8>> {
    let (source, destination) = if segment.from_server {
        (segment.server, segment.client)
    } else {
        (segment.client, segment.server)
    };
    let ip = ip_headers(source.ip(), destination.ip())?;
    let (client_mac, server_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let builder = match link {
        FixtureLink::Ethernet => PacketBuilder::ethernet2(client_mac, server_mac).ip(ip),
        FixtureLink::EthernetVlan(id) => PacketBuilder::ethernet2(client_mac, server_mac)
            .single_vlan(VlanId::try_new(id)?)
            .ip(ip),
        FixtureLink::LinuxSll | FixtureLink::LinuxSll2 => PacketBuilder::ip(ip),
    };
    let mut tcp = builder.tcp(source.port(), destination.port(), segment.seq, 65535);
    if segment.syn {
        tcp = tcp.syn();
    }
    if segment.fin {
        tcp = tcp.fin();
    }
    if segment.rst {
        tcp = tcp.rst();
    }
    if let Some(ack) = segment.ack {
        tcp = tcp.ack(ack);
    }
    if !segment.payload.is_empty() {
        tcp = tcp.psh();
    }
    let mut frame = cooked_header(link, segment.client.ip());
    tcp.write(&mut frame, &segment.payload)
        .context("building frame")?;
    Ok(frame)
}

/// The Linux cooked-capture header for an IP packet, or nothing for Ethernet.
fn cooked_header(link: FixtureLink, ip: IpAddr) -> Vec<u8> {
    let ethertype: u16 = if ip.is_ipv4() { 0x0800 } else { 0x86dd };
    match link {
        FixtureLink::Ethernet | FixtureLink::EthernetVlan(_) => Vec::new(),
        FixtureLink::LinuxSll => {
            // Packet type, ARPHRD type, address length, 8-byte address, protocol.
            let mut header = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
            header.extend_from_slice(&ethertype.to_be_bytes());
            header
        }
        FixtureLink::LinuxSll2 => {
            // Protocol, reserved, interface index, ARPHRD type, packet type, address length,
            // 8-byte address.
            let mut header = ethertype.to_be_bytes().to_vec();
            header.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 1, 0, 6]);
            header.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0, 0]);
            header
        }
    }
}

/// Writes `segments`, in the given order, as a pcap file; one millisecond apart. The server
/// acknowledges what the client sent (see the module doc).
pub fn write_pcap(path: &Path, link: FixtureLink, segments: &[Segment]) -> anyhow::Result<()> {
    write_pcap_timed(path, link, &one_millisecond_apart(segments))
}

/// Writes `(microseconds since the first, segment)` pairs, in the given order, as a pcap file,
/// with the server's ACKs added.
pub fn write_pcap_timed(
    path: &Path,
    link: FixtureLink,
    segments: &[(u64, Segment)],
) -> anyhow::Result<()> {
    write_timed(path, link, &acknowledged(segments))
}

/// Writes exactly `segments`, one millisecond apart: no ACK is added.
pub fn write_pcap_exact(
    path: &Path,
    link: FixtureLink,
    segments: &[Segment],
) -> anyhow::Result<()> {
    write_timed(path, link, &one_millisecond_apart(segments))
}

fn one_millisecond_apart(segments: &[Segment]) -> Vec<(u64, Segment)> {
    segments
        .iter()
        .enumerate()
        .map(|(i, segment)| (1_000 * i as u64, segment.clone()))
        .collect()
}

/// `segments` with the server's ACKs: each server segment acknowledges everything the client
/// has sent so far, and a bare ACK follows each client segment that sent more.
fn acknowledged(segments: &[(u64, Segment)]) -> Vec<(u64, Segment)> {
    let mut sent: HashMap<(SocketAddr, SocketAddr), u32> = HashMap::new();
    let mut out = Vec::with_capacity(segments.len() * 2);
    for (micros, segment) in segments {
        let key = (segment.client, segment.server);
        if segment.from_server {
            let ack = segment.ack.or(sent.get(&key).copied());
            out.push((
                *micros,
                Segment {
                    ack,
                    ..segment.clone()
                },
            ));
            continue;
        }
        out.push((*micros, segment.clone()));
        if segment.rst {
            continue;
        }
        let end = segment
            .seq
            .wrapping_add(segment.payload.len() as u32)
            .wrapping_add(u32::from(segment.syn) + u32::from(segment.fin));
        let advanced = match sent.get(&key) {
            Some(&acked) => (end.wrapping_sub(acked) as i32) > 0,
            None => !segment.syn,
        };
        if segment.syn || advanced {
            sent.insert(key, end);
        }
        if advanced {
            let bare_ack = Segment {
                from_server: true,
                seq: 0,
                syn: false,
                fin: false,
                rst: false,
                ack: Some(end),
                payload: Vec::new(),
                ..segment.clone()
            };
            out.push((*micros, bare_ack));
        }
    }
    out
}

fn write_timed(path: &Path, link: FixtureLink, segments: &[(u64, Segment)]) -> anyhow::Result<()> {
    let linktype = match link {
        FixtureLink::Ethernet | FixtureLink::EthernetVlan(_) => pcap::Linktype::ETHERNET,
        FixtureLink::LinuxSll => pcap::Linktype::LINUX_SLL,
        FixtureLink::LinuxSll2 => pcap::Linktype::LINUX_SLL2,
    };
    let mut file = pcap::Capture::dead(linktype)?
        .savefile(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for (micros, segment) in segments {
        let data = frame(link, segment)?;
        let micros = *micros as i64;
        let header = pcap::PacketHeader {
            ts: libc::timeval {
                tv_sec: 1_750_000_000 + micros / 1_000_000,
                tv_usec: micros % 1_000_000,
            },
            caplen: data.len() as u32,
            len: data.len() as u32,
        };
        file.write(&pcap::Packet::new(&header, &data));
    }
    file.flush()?;
    Ok(())
}

/// Sends `segment` on the loopback interface (needs root): the kernel receives it like any
/// packet from the wire, and a listener capturing `lo` sees it. For segments production never
/// accepted: spoofed, or outside a connection's window.
pub fn inject_on_loopback(segment: &Segment) -> anyhow::Result<()> {
    LoopbackSender::open()?.send(segment)
}

/// Sends crafted segments on `lo`, one open handle for many of them.
pub struct LoopbackSender {
    handle: pcap::Capture<pcap::Active>,
}

impl LoopbackSender {
    pub fn open() -> anyhow::Result<LoopbackSender> {
        let handle = pcap::Capture::from_device("lo")?
            .open()
            .context("cannot open lo to send (needs root)")?;
        Ok(LoopbackSender { handle })
    }

    pub fn send(&mut self, segment: &Segment) -> anyhow::Result<()> {
        let mut frame = frame(FixtureLink::Ethernet, segment)?;
        // Loopback's hardware address is all zeros: a frame addressed elsewhere is dropped.
        frame[..12].fill(0);
        self.handle.sendpacket(frame).context("cannot send on lo")?;
        Ok(())
    }
}
