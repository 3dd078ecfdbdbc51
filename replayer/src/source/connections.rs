//! Who may hold a connection to the gRPC port, and for how long before proving it speaks
//! gRPC. Every connection, plaintext or TLS, takes one of `--max-connections` slots (past them a
//! new one is closed at once, counted `link_refused{reason="connection_limit"}`), and must
//! complete its TLS handshake (with TLS) and send the HTTP/2 preface within
//! `--handshake-timeout` (`handshake_timeout`), or be closed. Only then is it handed to the gRPC
//! server. Errors accepting (out of file descriptors) back off instead of spinning, so the
//! metrics endpoint and real listeners still get their turn.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::ReplayerMetrics;
use crate::outcome::LinkRefusal;

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

/// Accepts connections within `limits`, completing their handshakes concurrently, and yields
/// only those that passed.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerConfig>>,
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
            tokio::spawn(async move {
                let handshake = handshake(tcp, tls.as_ref(), peer, slot);
                match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                    Ok(Ok(connection)) => {
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
        Some(acceptor) => {
            LinkStream::Tls(Box::new(acceptor.accept(tcp).await.map_err(|error| {
                Refusal {
                    reason: LinkRefusal::TlsHandshake,
                    detail: error.to_string(),
                }
            })?))
        }
        None => LinkStream::Plain(tcp),
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
        _slot: slot,
    })
}

enum LinkStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A listener connection that passed its handshake; holds its slot until closed.
pub struct LinkConnection {
    stream: LinkStream,
    /// Bytes of the preface (already read) still to hand to the server.
    preface_left: usize,
    info: TcpConnectInfo,
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

impl AsyncRead for LinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            LinkStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            LinkStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkStream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, data),
            LinkStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, data),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            LinkStream::Plain(tcp) => tcp.is_write_vectored(),
            LinkStream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            LinkStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            LinkStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
