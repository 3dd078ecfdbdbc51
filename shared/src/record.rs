//! The captured-request record: what a listener saw, and how it travels over gRPC.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;

use crate::proto;

/// One complete HTTP request as it crossed the wire on a production host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Unique within the listener that captured it.
    pub id: u64,
    /// Capture time of the request's first byte, nanoseconds since the Unix epoch.
    pub captured_at_ns: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Request line, headers and body, byte for byte.
    pub request: Bytes,
}

/// Production's response to a captured request, paired by the request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    pub request_id: u64,
    /// Capture time of the response's first byte, nanoseconds since the Unix epoch.
    pub captured_at_ns: u64,
    /// From the request's first byte to the response's last byte, as seen on the wire.
    pub latency_ns: u64,
    /// Status line, headers and body, byte for byte.
    pub response: Bytes,
}

impl From<ResponseRecord> for proto::ResponseRecord {
    fn from(record: ResponseRecord) -> Self {
        proto::ResponseRecord {
            request_id: record.request_id,
            captured_at_ns: record.captured_at_ns,
            latency_ns: record.latency_ns,
            response: record.response,
        }
    }
}

impl From<proto::ResponseRecord> for ResponseRecord {
    fn from(wire: proto::ResponseRecord) -> Self {
        ResponseRecord {
            request_id: wire.request_id,
            captured_at_ns: wire.captured_at_ns,
            latency_ns: wire.latency_ns,
            response: wire.response,
        }
    }
}

/// A wire record that cannot become a [`RequestRecord`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record {id}: missing {field} endpoint")]
    MissingEndpoint { id: u64, field: &'static str },
    #[error("record {id}: {field} address has {len} bytes, expected 4 or 16")]
    BadAddress {
        id: u64,
        field: &'static str,
        len: usize,
    },
    #[error("record {id}: {field} port {port} is out of range")]
    BadPort {
        id: u64,
        field: &'static str,
        port: u32,
    },
}

impl From<RequestRecord> for proto::RequestRecord {
    fn from(record: RequestRecord) -> Self {
        proto::RequestRecord {
            id: record.id,
            captured_at_ns: record.captured_at_ns,
            client: Some(endpoint_to_wire(record.client)),
            server: Some(endpoint_to_wire(record.server)),
            request: record.request,
        }
    }
}

impl TryFrom<proto::RequestRecord> for RequestRecord {
    type Error = RecordError;

    fn try_from(wire: proto::RequestRecord) -> Result<Self, Self::Error> {
        let id = wire.id;
        Ok(RequestRecord {
            id,
            captured_at_ns: wire.captured_at_ns,
            client: endpoint_from_wire(id, "client", wire.client)?,
            server: endpoint_from_wire(id, "server", wire.server)?,
            request: wire.request,
        })
    }
}

fn endpoint_to_wire(addr: SocketAddr) -> proto::Endpoint {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => Bytes::copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => Bytes::copy_from_slice(&v6.octets()),
    };
    proto::Endpoint {
        ip,
        port: u32::from(addr.port()),
    }
}

fn endpoint_from_wire(
    id: u64,
    field: &'static str,
    endpoint: Option<proto::Endpoint>,
) -> Result<SocketAddr, RecordError> {
    let endpoint = endpoint.ok_or(RecordError::MissingEndpoint { id, field })?;
    let ip = endpoint.ip_addr().ok_or(RecordError::BadAddress {
        id,
        field,
        len: endpoint.ip.len(),
    })?;
    let port = u16::try_from(endpoint.port).map_err(|_| RecordError::BadPort {
        id,
        field,
        port: endpoint.port,
    })?;
    Ok(SocketAddr::new(ip, port))
}

impl proto::Endpoint {
    fn ip_addr(&self) -> Option<IpAddr> {
        if let Ok(octets) = <[u8; 4]>::try_from(self.ip.as_ref()) {
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        } else if let Ok(octets) = <[u8; 16]>::try_from(self.ip.as_ref()) {
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        } else {
            None
        }
    }

    /// The address, if the wire form holds a valid one.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.ip_addr()?,
            u16::try_from(self.port).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(client: &str, server: &str) -> RequestRecord {
        RequestRecord {
            id: 42,
            captured_at_ns: 1_700_000_000_123_456_789,
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            request: Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        }
    }

    #[test]
    fn ipv4_and_ipv6_records_survive_the_wire() {
        for record in [
            sample("10.0.0.1:51000", "10.0.0.2:80"),
            sample("[2001:db8::1]:51000", "[2001:db8::2]:8080"),
        ] {
            let wire = proto::RequestRecord::from(record.clone());
            assert_eq!(RequestRecord::try_from(wire), Ok(record));
        }
    }

    #[test]
    fn wire_record_with_bad_address_is_rejected_by_name() {
        let mut wire = proto::RequestRecord::from(sample("10.0.0.1:1", "10.0.0.2:80"));
        wire.server = Some(proto::Endpoint {
            ip: Bytes::from_static(&[1, 2, 3]),
            port: 80,
        });
        assert_eq!(
            RequestRecord::try_from(wire),
            Err(RecordError::BadAddress {
                id: 42,
                field: "server",
                len: 3
            })
        );
    }

    #[test]
    fn wire_record_without_client_is_rejected() {
        let mut wire = proto::RequestRecord::from(sample("10.0.0.1:1", "10.0.0.2:80"));
        wire.client = None;
        assert_eq!(
            RequestRecord::try_from(wire),
            Err(RecordError::MissingEndpoint {
                id: 42,
                field: "client"
            })
        );
    }
}
