//! TLS on the listen port: the certificate new connections get, swapped whole on reload,
//! and the stream of accepted connections (each handshake in a task of its own, bounded
//! in number and in time) that tonic serves as it would serve TCP.
//!
//! tonic's own `ServerTlsConfig` takes a fixed identity; here rustls asks
//! [`ServerCert`] for the certificate at each handshake, so a reload reaches every later
//! connection while those already open keep the one they were made with.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::server::TlsStream;

use super::files;
use crate::config::{Misconfigured, Settings};

/// How long a client may take over its TLS handshake before the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; no further connection is accepted until one ends.
const MAX_HANDSHAKES: usize = 1024;

/// The certificate and key of `tls_cert_file` / `tls_key_file`, as last read.
pub struct ServerCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// The certificate of the settings, read and checked now (the key must be the
    /// certificate's); None when TLS is off (both keys empty).
    pub fn from_settings(settings: &Settings) -> Result<Option<Arc<ServerCert>>, Misconfigured> {
        if settings.tls_cert_file.is_empty() && settings.tls_key_file.is_empty() {
            return Ok(None);
        }
        let cert_file = PathBuf::from(&settings.tls_cert_file);
        let key_file = PathBuf::from(&settings.tls_key_file);
        let current = RwLock::new(Arc::new(load(&cert_file, &key_file)?));
        Ok(Some(Arc::new(ServerCert {
            cert_file,
            key_file,
            current,
        })))
    }

    /// Reads both files again. On success every later handshake gets the new certificate
    /// (connections already open keep theirs); on failure the one in use stays and the
    /// error says which file is wrong.
    pub fn reload(&self) -> Result<(), Misconfigured> {
        let fresh = Arc::new(load(&self.cert_file, &self.key_file)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The certificate file (for logs).
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// A rustls server configuration (ring, TLS 1.2 and 1.3) that takes its certificate
    /// from `self` at each handshake; ALPN offers HTTP/2 (gRPC) and HTTP/1.1 (gRPC-Web).
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .expect("ring offers the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// The certificate chain of `cert_file` with the key of `key_file`, checked to belong
/// together.
fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, Misconfigured> {
    let (cert_key, key_key) = ("tls_cert_file", "tls_key_file");
    let certs = files::certificates(cert_key, cert_file, &files::read(cert_key, cert_file)?)?;
    let key = files::private_key(key_key, key_file, &files::read(key_key, key_file)?)?;
    CertifiedKey::from_der(certs, key, &super::provider()).map_err(|e| {
        Misconfigured(format!(
            "{key_key} {} cannot serve the certificate of {cert_key} {}: {e}",
            key_file.display(),
            cert_file.display()
        ))
    })
}

/// The connections of `listener` once their TLS handshake (with `config`) is done, for
/// tonic's `serve_with_incoming`. A handshake that fails or takes longer than
/// [`HANDSHAKE_TIMEOUT`] closes its connection (logged at debug: a plaintext client or a
/// port scanner is not news); a failed `accept` is passed on, as `TcpIncoming` does.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send {
    let acceptor = TlsAcceptor::from(config);
    let handshakes = JoinSet::new();
    futures_util::stream::unfold(
        (listener, acceptor, handshakes),
        |(listener, acceptor, mut handshakes)| async move {
            let next = next_connection(&listener, &acceptor, &mut handshakes).await;
            Some((next, (listener, acceptor, handshakes)))
        },
    )
}

async fn next_connection(
    listener: &TcpListener,
    acceptor: &TlsAcceptor,
    handshakes: &mut JoinSet<io::Result<TlsStream<TcpStream>>>,
) -> io::Result<TlsStream<TcpStream>> {
    loop {
        tokio::select! {
            accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => {
                let (tcp, _) = accepted?;
                // As for plaintext: Nagle plus delayed ACKs add 40 ms to small answers.
                let _ = tcp.set_nodelay(true);
                let handshake = acceptor.accept(tcp);
                handshakes.spawn(async move {
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                        .await
                        .unwrap_or_else(|_| {
                            Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))
                        })
                });
            }
            Some(done) = handshakes.join_next() => match done {
                Ok(Ok(tls)) => return Ok(tls),
                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                Err(e) => tracing::debug!("TLS handshake task ended: {e}"),
            },
        }
    }
}
