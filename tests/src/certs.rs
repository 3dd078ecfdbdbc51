//! Throwaway certificate authorities and certificates for tests of the TLS link: a CA, a
//! server certificate for `localhost`, and client certificates signed by it or by a rogue CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA able to sign server and client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file), what peers trust.
    pub cert: PathBuf,
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// A new CA named `name`, its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tapwire test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        let cert = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert, certificate.pem())?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert,
            dir: dir.to_owned(),
            name: name.to_owned(),
        })
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> anyhow::Result<CertFiles> {
        self.sign("server", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate, for a listener.
    pub fn client(&self) -> anyhow::Result<CertFiles> {
        self.sign("client", ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(&self, role: &str, usage: ExtendedKeyUsagePurpose) -> anyhow::Result<CertFiles> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tapwire test {role}"));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{}-{role}.pem", self.name)),
            key: self.dir.join(format!("{}-{role}-key.pem", self.name)),
        };
        std::fs::write(&files.cert, certificate.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}
