//! Certificates made at run time with rcgen (nothing secret is committed): a test CA, the
//! server certificates it signs (for `localhost` and `127.0.0.1`), and TLS clients that
//! trust exactly one CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A certificate authority of its own, for one test.
pub struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The files of a server certificate as secretd reads them, and its CA's certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (its certificate's common name).
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A new server certificate for `localhost` and `127.0.0.1`: (certificate, key), PEM.
    pub fn server_cert(&self) -> (String, String) {
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA's certificate and a new server certificate with its key into `dir`
    /// as `NAME-ca.pem`, `NAME.crt` and `NAME.key`.
    pub fn write(&self, dir: &Path, name: &str) -> TlsFiles {
        let files = TlsFiles {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        let (cert, key) = self.server_cert();
        std::fs::write(&files.ca, &self.pem).unwrap();
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }
}

/// A TLS channel to `addr` (host:port) trusting only the CA certificate `ca_pem`.
pub async fn tls_channel(addr: &str, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))?
        .connect()
        .await
}

/// A SecretService client of the TLS server at `addr` trusting `ca_pem`, sending `token`.
pub async fn tls_client_at(addr: &str, ca_pem: &str, token: String) -> super::Client {
    let channel = tls_channel(addr, ca_pem).await.expect("TLS connection");
    secretd::proto::secret_service_client::SecretServiceClient::with_interceptor(
        channel,
        super::Bearer(Some(token)),
    )
}
