//! Decoding captured frames down to TCP segments: link layer (Ethernet with VLAN tags, Linux
//! cooked capture v1/v2, BSD loopback, raw IP), then IPv4/IPv6 and TCP via `etherparse`.

use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// The link layers the listener can decode, from libpcap's data link type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Linux cooked capture v1 (interface `any` on older libpcap).
    LinuxSll,
    /// Linux cooked capture v2 (interface `any` on libpcap 1.10+).
    LinuxSll2,
    /// BSD loopback: a 4-byte address family, then IP.
    Null,
    /// Bare IPv4 or IPv6 packets.
    Raw,
}

impl LinkType {
    pub fn from_pcap(linktype: pcap::Linktype) -> Option<LinkType> {
        match linktype {
            pcap::Linktype::ETHERNET => Some(LinkType::Ethernet),
            pcap::Linktype::LINUX_SLL => Some(LinkType::LinuxSll),
            pcap::Linktype::LINUX_SLL2 => Some(LinkType::LinuxSll2),
            pcap::Linktype::NULL | pcap::Linktype::LOOP => Some(LinkType::Null),
            pcap::Linktype::RAW | pcap::Linktype::IPV4 | pcap::Linktype::IPV6 => {
                Some(LinkType::Raw)
            }
            _ => None,
        }
    }

    /// Bytes of link-layer header before the IP header, for the types decoded by offset.
    fn ip_offset(self) -> usize {
        match self {
            LinkType::Ethernet => 0,
            LinkType::LinuxSll => 16,
            LinkType::LinuxSll2 => 20,
            LinkType::Null => 4,
            LinkType::Raw => 0,
        }
    }
}

/// A TCP connection seen from the server's side: requests flow from `client` to `server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// One TCP segment, borrowed from the captured frame.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub flow: FlowKey,
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    /// The acknowledgment number, when the ACK flag is set: the next byte the sender expects
    /// from its peer.
    pub ack: Option<u32>,
    pub payload: &'a [u8],
}

/// A frame that is not a decodable IPv4/IPv6 TCP segment.
#[derive(Debug, thiserror::Error)]
#[error("undecodable frame: {0}")]
pub struct MalformedPacket(String);

/// Decodes one frame. The capture filter admits only TCP, so anything else is malformed.
pub fn decode(link: LinkType, frame: &[u8]) -> Result<Segment<'_>, MalformedPacket> {
    let sliced = match link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(frame),
        other => {
            let ip = frame
                .get(other.ip_offset()..)
                .ok_or_else(|| MalformedPacket("shorter than its link-layer header".into()))?;
            SlicedPacket::from_ip(ip)
        }
    }
    .map_err(|error| MalformedPacket(error.to_string()))?;
    let (source, destination) = match &sliced.net {
        Some(NetSlice::Ipv4(ipv4)) => (
            IpAddr::V4(ipv4.header().source_addr()),
            IpAddr::V4(ipv4.header().destination_addr()),
        ),
        Some(NetSlice::Ipv6(ipv6)) => (
            IpAddr::V6(ipv6.header().source_addr()),
            IpAddr::V6(ipv6.header().destination_addr()),
        ),
        _ => return Err(MalformedPacket("not IP".into())),
    };
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        return Err(MalformedPacket("not TCP".into()));
    };
    Ok(Segment {
        flow: FlowKey {
            client: SocketAddr::new(source, tcp.source_port()),
            server: SocketAddr::new(destination, tcp.destination_port()),
        },
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        payload: tcp.payload(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_over_ipv4(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(51000, 8080, 1000, 65535)
            .psh();
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn ethernet_vlan_tagged_segment_is_decoded() {
        let builder = PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(42.try_into().unwrap())
            .ipv6([0x20; 16], [0x21; 16], 64)
            .tcp(40000, 80, 7, 1000);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"GET /").unwrap();
        let segment = decode(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(segment.flow.server.port(), 80);
        assert_eq!(segment.flow.client.port(), 40000);
        assert!(segment.flow.client.is_ipv6());
        assert_eq!(segment.seq, 7);
        assert_eq!(segment.payload, b"GET /");
    }

    #[test]
    fn linux_cooked_v1_and_v2_frames_are_decoded() {
        let ip = tcp_over_ipv4(b"hello");
        for (link, header_len) in [(LinkType::LinuxSll, 16), (LinkType::LinuxSll2, 20)] {
            let mut frame = vec![0u8; header_len];
            frame.extend_from_slice(&ip);
            let segment = decode(link, &frame).unwrap();
            assert_eq!(segment.flow.server, "10.0.0.2:8080".parse().unwrap());
            assert_eq!(segment.payload, b"hello");
        }
    }

    #[test]
    fn truncated_frame_is_malformed() {
        let ip = tcp_over_ipv4(b"hello");
        assert!(decode(LinkType::Raw, &ip[..30]).is_err());
        assert!(decode(LinkType::LinuxSll2, &[0u8; 10]).is_err());
    }
}
