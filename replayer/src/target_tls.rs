//! TLS to an `https://` target: the client configuration (the public web roots, the CAs of
//! `--target-ca`, or with `--target-insecure` any certificate), the server name sent as SNI and
//! checked against the certificate (the URL's host, or the `--host-override` host), and TLS
//! failures described so that a person can act on them. The handshake itself is part of
//! connecting ([`crate::connect`]); what runs over TLS is the same HTTP/1.1 as over TCP.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::source::tls::{TlsError, certificates};

/// How to speak TLS to one target.
#[derive(Clone)]
pub struct TargetTls {
    pub connector: TlsConnector,
    /// Sent as SNI, and the name the certificate must be valid for.
    pub server_name: ServerName<'static>,
    /// Any certificate is accepted (`--target-insecure`).
    pub insecure: bool,
}

impl TargetTls {
    /// TLS for a target whose certificate is checked against the CAs in `ca` (PEM), else the
    /// public web roots; or, `insecure`, not checked at all. `server_name` is a host, with or
    /// without a port (`--host-override` may carry one).
    pub fn new(
        server_name: &str,
        ca: Option<&Path>,
        insecure: bool,
    ) -> Result<TargetTls, TargetTlsError> {
        let server_name = parse_server_name(server_name)?;
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::from)?;
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let roots = match ca {
                Some(path) => {
                    let mut roots = RootCertStore::empty();
                    for certificate in certificates(path)? {
                        roots.add(certificate).map_err(TlsError::from)?;
                    }
                    roots
                }
                None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        // What is replayed is HTTP/1.1 byte for byte; a server that would pick h2 must not.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TargetTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            insecure,
        })
    }
}

/// Why TLS to a target cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum TargetTlsError {
    #[error("{0:?} is not a name a TLS certificate can be checked against")]
    ServerName(String),
    #[error(transparent)]
    Files(#[from] TlsError),
}

/// A host name or IP address (brackets and port dropped) as a TLS server name.
fn parse_server_name(host: &str) -> Result<ServerName<'static>, TargetTlsError> {
    let invalid = || TargetTlsError::ServerName(host.to_owned());
    let authority: http::uri::Authority = host.parse().map_err(|_| invalid())?;
    let bare = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|_| invalid())
}

/// What went wrong in TLS, for a person: the rustls error behind an I/O error, with a hint
/// for the common cases; `None` when the error is not a TLS one.
pub fn describe(error: &std::io::Error) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "certificate signed by an unknown issuer (not a CA the replayer trusts: \
             --target-ca FILE names the right one, --target-insecure accepts any)"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("name mismatch: {tls}"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("{tls} (is the target serving TLS on this port, or is it http://?)")
        }
        other => other.to_string(),
    })
}

/// A handshake failure described: the TLS error, or what ended the handshake.
pub fn describe_handshake(error: &std::io::Error) -> String {
    if let Some(tls) = describe(error) {
        return tls;
    }
    match error.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            "the target closed the connection during the handshake (handshake EOF: is it \
             serving TLS on this port?)"
                .to_owned()
        }
        std::io::ErrorKind::TimedOut => {
            "the handshake timed out (is it serving TLS on this port?)".to_owned()
        }
        _ => error.to_string(),
    }
}

/// `--target-insecure`: every certificate is taken as valid, though the handshake's signatures
/// are still checked (they prove nothing without a trusted certificate, but rustls needs them
/// to complete the handshake).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_drop_ports_and_brackets() {
        let name = |host| parse_server_name(host).map(|name| name.to_str().into_owned());
        assert_eq!(name("staging.example").unwrap(), "staging.example");
        assert_eq!(name("staging.example:8443").unwrap(), "staging.example");
        assert_eq!(name("127.0.0.1:443").unwrap(), "127.0.0.1");
        assert_eq!(name("[::1]:443").unwrap(), "::1");
        assert!(name("bad name").is_err());
    }

    #[test]
    fn tls_errors_are_described_with_a_hint() {
        let unknown = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let described = describe_handshake(&unknown);
        assert!(described.contains("unknown issuer"), "{described}");
        assert!(described.contains("--target-ca"), "{described}");
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(describe(&eof).is_none());
        assert!(describe_handshake(&eof).contains("handshake EOF"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("tapwire-target-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = TargetTls::new("staging", Some(&empty), false)
            .err()
            .unwrap();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let missing = TargetTls::new("staging", Some(&dir.join("missing.pem")), false);
        assert!(missing.is_err());
        assert!(TargetTls::new("staging", None, false).is_ok(), "web roots");
        let _ = std::fs::remove_dir_all(dir);
    }
}
