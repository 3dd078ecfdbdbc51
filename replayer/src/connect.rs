//! Opening a connection to a target, the one way requests and reachability probes both use:
//! the DNS lookup, a TCP connect to each address in turn, and for an `https://` target the TLS
//! handshake ([`crate::target_tls`]). A failure says which step failed, why, and for which
//! name or address. What flows over the connection is the same either way ([`MaybeTls`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::stream::MaybeTls;
use crate::target_tls::{TargetTls, describe_handshake};

/// How long one address may take to accept a connection before the next is tried: an
/// address that drops packets (often an unrouted IPv6 one) must not use up `--timeout`.
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the TLS handshake may take once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a target is and how to speak to it.
#[derive(Clone)]
pub struct TargetAddress {
    /// `host:port`.
    pub authority: String,
    /// For an `https://` target.
    pub tls: Option<TargetTls>,
}

/// Why no connection to a target could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DNS lookup failed for {host}: {cause}")]
    Lookup { host: String, cause: io::Error },
    #[error("cannot connect to {addr}: {}", describe_connect(.cause))]
    Connect { addr: SocketAddr, cause: io::Error },
    #[error("TLS handshake with {addr} failed: {}", describe_handshake(.cause))]
    Tls { addr: SocketAddr, cause: io::Error },
}

impl ConnectError {
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnectError::Tls { .. })
    }
}

impl TargetAddress {
    /// Looks the host up, connects, and for TLS completes the handshake. No timeout here:
    /// callers run it under their own.
    pub async fn connect(&self) -> Result<MaybeTls, ConnectError> {
        let lookup = |cause| ConnectError::Lookup {
            host: self
                .authority
                .rsplit_once(':')
                .map_or(self.authority.as_str(), |(host, _port)| host)
                .to_owned(),
            cause,
        };
        let addrs = tokio::net::lookup_host(self.authority.as_str())
            .await
            .map_err(lookup)?;
        let mut failure = None;
        for addr in addrs {
            match within(CONNECT_ATTEMPT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(stream) => return self.start(stream, addr).await,
                Err(cause) => failure = Some(ConnectError::Connect { addr, cause }),
            }
        }
        Err(failure.unwrap_or_else(|| {
            lookup(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no address",
            ))
        }))
    }

    async fn start(&self, stream: TcpStream, addr: SocketAddr) -> Result<MaybeTls, ConnectError> {
        // Requests are written whole; waiting for acknowledgements would only add latency.
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(MaybeTls::Plain(stream));
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), stream);
        match within(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(stream) => Ok(MaybeTls::tls(stream)),
            Err(cause) => Err(ConnectError::Tls { addr, cause }),
        }
    }
}

/// `step`'s result, or a `TimedOut` error once `limit` has passed.
async fn within<T>(limit: Duration, step: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// A connect failure in words: "connection refused", not "Connection refused (os error 111)".
fn describe_connect(cause: &io::Error) -> String {
    match cause.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::TimedOut => format!(
            "no answer within {}",
            humantime::format_duration(CONNECT_ATTEMPT_TIMEOUT)
        ),
        io::ErrorKind::HostUnreachable => "host unreachable".to_owned(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
        _ => cause.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connect_names_the_address() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let target = TargetAddress {
            authority: addr.to_string(),
            tls: None,
        };
        let error = target.connect().await.err().unwrap();
        assert_eq!(
            error.to_string(),
            format!("cannot connect to {addr}: connection refused")
        );
        assert!(!error.is_tls());
    }

    #[tokio::test]
    async fn a_lookup_failure_names_the_host() {
        // A port that does not parse fails the lookup without asking any DNS server.
        let target = TargetAddress {
            authority: "staging.invalid:http".into(),
            tls: None,
        };
        let error = target.connect().await.err().unwrap();
        let message = error.to_string();
        assert!(
            message.starts_with("DNS lookup failed for staging.invalid: "),
            "{message}"
        );
    }
}
