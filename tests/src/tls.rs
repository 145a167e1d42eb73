//! A certificate authority made at run time, for tests that need TLS between krouter and an
//! upstream: it issues server certificates for the mock upstream and gives clients the one
//! root they should trust.
//!
//! Nothing here is committed to the repository: each `TestCa` is a fresh key and certificate.
//! All crypto goes through ring (`rustls::crypto::ring`), never aws-lc.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A throwaway certificate authority: a self-signed CA certificate and its key.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

// === impl TestCa ===

impl TestCa {
    /// A new CA with a fresh ECDSA P-256 key, valid for every test that could run.
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("ring generates an ECDSA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "krouter test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, key).expect("rcgen signs the CA");
        Self { issuer }
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Writes the CA certificate as `test-ca.pem` in `dir` and returns its path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        fs::write(&path, self.cert_pem())
            .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
        path
    }

    /// A server configuration presenting a fresh leaf certificate for `names` (DNS names
    /// such as `localhost`, or IP addresses such as `127.0.0.1`) signed by this CA, offering
    /// ALPN `h2` and `http/1.1`.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        let key = KeyPair::generate().expect("ring generates an ECDSA key");
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("the names are valid DNS names or IP addresses");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("krouter test server"),
        );
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params
            .signed_by(&key, &self.issuer)
            .expect("rcgen signs the leaf");
        let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der().clone(), self.cert_der()], private_key)
                .expect("the leaf matches its key");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client configuration that trusts only this CA, offering ALPN `h2` and `http/1.1`.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der())
            .expect("the CA certificate is a valid trust anchor");
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}
