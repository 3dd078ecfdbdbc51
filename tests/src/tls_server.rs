//! An HTTPS staging target for tests: the raw server of [`crate::servers`] (exact bytes of
//! each request recorded, each answered `200`) behind TLS (rustls) with a certificate from
//! [`crate::certs`]. It counts completed handshakes, so a test can tell whether connections
//! were reused, and keeps the server name (SNI) each client sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::certs::CertFiles;
use crate::servers::RawServer;

/// A raw HTTPS target on a free loopback port.
#[derive(Clone)]
pub struct TlsRawServer {
    raw: RawServer,
    handshakes: Arc<AtomicUsize>,
    server_names: Arc<Mutex<Vec<Option<String>>>>,
}

impl TlsRawServer {
    /// Serves HTTP/1.1 over TLS with `cert` (offering ALPN `http/1.1`).
    pub async fn start(cert: &CertFiles) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_file_iter(&cert.cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&cert.key)?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let server = TlsRawServer {
            raw: RawServer::recording_at(listener.local_addr()?),
            handshakes: Arc::default(),
            server_names: Arc::default(),
        };
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (server, acceptor) = (accepting.clone(), acceptor.clone());
                tokio::spawn(async move {
                    // A failed handshake (an untrusted certificate, a probe) just ends.
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let name = stream.get_ref().1.server_name().map(str::to_owned);
                    server.server_names.lock().expect("names lock").push(name);
                    server.handshakes.fetch_add(1, Ordering::Relaxed);
                    server.raw.serve(stream).await;
                });
            }
        });
        Ok(server)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.raw.authority())
    }

    /// What it received, and the Host a target is sent.
    pub fn raw(&self) -> &RawServer {
        &self.raw
    }

    /// TLS handshakes completed: connections that could carry requests.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// The server name each completed handshake asked for (`None`: no SNI, as for an IP).
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.server_names.lock().expect("names lock").clone()
    }
}
