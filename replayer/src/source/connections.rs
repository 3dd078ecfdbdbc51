//! Who may hold a connection to the gRPC port, and for how long before proving it speaks
//! gRPC. Every connection, plaintext or TLS, takes one of `--max-connections` slots (past them a
//! new one is closed at once, counted `link_refused{reason="connection_limit"}`), and must
//! complete its TLS handshake (with TLS) and send the HTTP/2 preface within
//! `--handshake-timeout` (`handshake_timeout`), or be closed. Only then is it handed to the gRPC
//! server, and it must then open a stream that passes the token check within another
//! `--handshake-timeout` (`no_authenticated_stream`), so connections that speak HTTP/2 but never
//! authenticate cannot keep the slots from real listeners either. Errors accepting (out of file descriptors) back off instead of spinning, so the
//! metrics endpoint and real listeners still get their turn.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::ReplayerMetrics;
use crate::outcome::LinkRefusal;
use crate::stream::MaybeTls;

/// What every HTTP/2 connection opens with (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Connections past their handshake, waiting for the gRPC server to pick them up.
const ACCEPTED_BACKLOG: usize = 64;
/// Pauses after a failed `accept`, doubling up to the longest.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_LONGEST: Duration = Duration::from_secs(1);

/// Limits on listener connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections held at once, handshaking or serving.
    pub max_connections: usize,
    /// Time a new connection has to complete TLS (if any) and send the HTTP/2 preface.
    pub handshake_timeout: Duration,
}

/// The open connections, by peer address, and whether each has opened an authenticated stream:
/// the token check marks them, each connection reads its own mark.
#[derive(Debug, Clone, Default)]
pub struct AuthenticatedPeers(Arc<Mutex<HashMap<SocketAddr, Arc<AtomicBool>>>>);

impl AuthenticatedPeers {
    /// A stream from `peer` passed the token check.
    pub fn authenticated(&self, peer: Option<SocketAddr>) {
        let peers = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mark) = peer.and_then(|peer| peers.get(&peer)) {
            mark.store(true, Ordering::Relaxed);
        }
    }

    fn register(&self, peer: SocketAddr) -> Arc<AtomicBool> {
        let mark = Arc::new(AtomicBool::new(false));
        let mut peers = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        peers.insert(peer, Arc::clone(&mark));
        mark
    }

    fn forget(&self, peer: SocketAddr) {
        let mut peers = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        peers.remove(&peer);
    }
}

/// Accepts connections within `limits`, completing their handshakes concurrently, and yields
/// only those that passed.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerConfig>>,
    peers: AuthenticatedPeers,
    metrics: ReplayerMetrics,
) -> ReceiverStream<io::Result<LinkConnection>> {
    let (accepted, incoming) = mpsc::channel(ACCEPTED_BACKLOG);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tls = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF_FIRST;
        loop {
            // The server gone (shut down) ends accepting too, so the port is released.
            let accepted_connection = tokio::select! {
                connection = listener.accept() => connection,
                () = accepted.closed() => return,
            };
            let (tcp, peer) = match accepted_connection {
                Ok(connection) => {
                    backoff = ACCEPT_BACKOFF_FIRST;
                    connection
                }
                Err(error) => {
                    // Out of file descriptors and the like: the pending connection stays
                    // pending, so accepting again at once would spin.
                    metrics.accept_errors.inc();
                    tracing::warn!(%error, pause = ?backoff, "cannot accept a listener connection");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_LONGEST);
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                metrics.link_refused(LinkRefusal::ConnectionLimit).inc();
                tracing::debug!(%peer, "refused a listener connection: --max-connections reached");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tls, handed_over, metrics) = (tls.clone(), accepted.clone(), metrics.clone());
            let peers = peers.clone();
            tokio::spawn(async move {
                let handshake = handshake(tcp, tls.as_ref(), peer, slot);
                match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                    Ok(Ok(mut connection)) => {
                        connection.proof = Some(ProofDeadline {
                            authenticated: peers.register(peer),
                            deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                            peers,
                            peer,
                            metrics,
                        });
                        let _ = handed_over.send(Ok(connection)).await;
                    }
                    Ok(Err(refusal)) => {
                        metrics.link_refused(refusal.reason).inc();
                        if refusal.reason == LinkRefusal::TlsHandshake {
                            metrics.tls_handshakes_failed.inc();
                        }
                        let reason = match refusal.reason {
                            LinkRefusal::TlsHandshake => "TLS handshake failed",
                            _ => "no HTTP/2 preface",
                        };
                        tracing::warn!(%peer, detail = %refusal.detail,
                            "refused a listener connection: {reason}");
                    }
                    Err(_) => {
                        metrics.link_refused(LinkRefusal::HandshakeTimeout).inc();
                        if tls.is_some() {
                            metrics.tls_handshakes_failed.inc();
                        }
                        tracing::debug!(%peer, timeout = ?limits.handshake_timeout,
                            "refused a listener connection: no handshake in time");
                    }
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

struct Refusal {
    reason: LinkRefusal,
    detail: String,
}

/// TLS if configured, then the HTTP/2 preface, read here and replayed to the server.
async fn handshake(
    tcp: TcpStream,
    tls: Option<&TlsAcceptor>,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
) -> Result<LinkConnection, Refusal> {
    let info = TcpConnectInfo {
        local_addr: tcp.local_addr().ok(),
        remote_addr: Some(peer),
    };
    let mut stream = match tls {
        Some(acceptor) => MaybeTls::tls(acceptor.accept(tcp).await.map_err(|error| Refusal {
            reason: LinkRefusal::TlsHandshake,
            detail: error.to_string(),
        })?),
        None => MaybeTls::Plain(tcp),
    };
    let mut preface = [0u8; PREFACE.len()];
    stream
        .read_exact(&mut preface)
        .await
        .map_err(|error| Refusal {
            reason: LinkRefusal::NotHttp2,
            detail: error.to_string(),
        })?;
    if &preface != PREFACE {
        return Err(Refusal {
            reason: LinkRefusal::NotHttp2,
            detail: "no HTTP/2 preface".into(),
        });
    }
    Ok(LinkConnection {
        stream,
        preface_left: PREFACE.len(),
        info,
        proof: None,
        _slot: slot,
    })
}

/// Until a connection has opened an authenticated stream: the time it has left to do so.
struct ProofDeadline {
    authenticated: Arc<AtomicBool>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    peers: AuthenticatedPeers,
    peer: SocketAddr,
    metrics: ReplayerMetrics,
}

impl Drop for ProofDeadline {
    fn drop(&mut self) {
        self.peers.forget(self.peer);
    }
}

/// A listener connection that passed its handshake; holds its slot until closed.
pub struct LinkConnection {
    stream: MaybeTls,
    /// Bytes of the preface (already read) still to hand to the server.
    preface_left: usize,
    info: TcpConnectInfo,
    /// Set once handed to the server; cleared once a stream on it passed the token check.
    proof: Option<ProofDeadline>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for LinkConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for LinkConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.preface_left > 0 {
            let start = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(buf.remaining());
            buf.put_slice(&PREFACE[start..start + n]);
            self.preface_left -= n;
            return Poll::Ready(Ok(()));
        }
        if let Some(proof) = &mut self.proof {
            if proof.authenticated.load(Ordering::Relaxed) {
                self.proof = None;
            } else if proof.deadline.as_mut().poll(cx).is_ready() {
                proof
                    .metrics
                    .link_refused(LinkRefusal::NoAuthenticatedStream)
                    .inc();
                tracing::debug!(peer = %proof.peer, "closed a listener connection: no authenticated stream in time");
                self.proof = None;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no authenticated stream in time",
                )));
            }
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LinkConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
