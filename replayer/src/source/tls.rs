//! TLS on the listener link: the replayer's certificate, and with a client CA, mutual TLS so
//! that only listeners holding a certificate signed by that CA may connect. Handshakes run here
//! rather than inside tonic so that every refused connection (plaintext, unknown certificate, no
//! certificate) is counted and logged with its peer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// A handshake slower than this is abandoned: a client that connects and says nothing must not
/// hold a slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken and waiting for the gRPC server to pick them up.
const ACCEPTED_BACKLOG: usize = 64;

/// A TLS file that cannot be used; `field` is the setting that names it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Invalid(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| unreadable(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| unreadable(error.to_string()))?;
    if certificates.is_empty() {
        return Err(unreadable("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::File {
        path: path.display().to_string(),
        reason: error.to_string(),
    })
}

/// The server side of the link's TLS, from PEM files. With `client_ca`, a client certificate
/// signed by it is required.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(path)? {
                roots.add(certificate)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certificates(cert)?, private_key(key)?)?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and completes their TLS handshakes concurrently, yielding only the
/// connections that passed. Refused ones are counted in `refused` and logged.
pub fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    refused: Counter,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (accepted, incoming) = mpsc::channel(ACCEPTED_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            // The server gone (shut down) ends accepting too, so the port is released.
            let accepted_connection = tokio::select! {
                connection = listener.accept() => connection,
                () = accepted.closed() => return,
            };
            let (tcp, peer) = match accepted_connection {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "cannot accept a listener connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, handed_over, refused) =
                (acceptor.clone(), accepted.clone(), refused.clone());
            tokio::spawn(async move {
                match handshake(&acceptor, tcp).await {
                    Ok(tls) => {
                        let _ = handed_over.send(Ok(tls)).await;
                    }
                    Err(reason) => {
                        refused.inc();
                        tracing::warn!(%peer, %reason, "refused a listener connection: TLS handshake failed");
                    }
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

async fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
    }
}
