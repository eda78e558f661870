//! TLS (rustls with ring; no OpenSSL): the listen port's certificate, re-read on SIGHUP,
//! and the trust this server puts in peers it calls over `https://`.
//!
//! - `files.rs`: PEM certificates and private keys read from files, errors naming the
//!   config key that named the file;
//! - `listener.rs`: the certificate every new connection gets (swapped whole by
//!   [`ServerCert::reload`], so connections already open keep theirs) and the stream of
//!   accepted TLS connections tonic serves;
//! - [`client_tls`]: how this server (calling an `https://` peer) or `secretd health`
//!   verifies a server: the system's roots, or only the CA(s) of a CA file.

mod files;
mod listener;

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::config::Misconfigured;

pub use listener::{ServerCert, incoming};

/// The TLS settings for calling an `https://` server: only the certificates of `ca_file`
/// (a PEM file, named by `key`, a config key or flag, in errors) are trusted when it is
/// given, else the system's roots. The file is read now, so a missing or empty one is a
/// configuration error at start, not a failed call later.
pub fn client_tls(ca_file: Option<&Path>, key: &str) -> Result<ClientTlsConfig, Misconfigured> {
    let config = ClientTlsConfig::new();
    match ca_file {
        Some(path) => {
            let pem = files::read(key, path)?;
            files::certificates(key, path, &pem)?;
            Ok(config.ca_certificate(Certificate::from_pem(pem)))
        }
        None => Ok(config.with_native_roots()),
    }
}

/// rustls' ring provider: the cipher suites, key exchanges and signature algorithms of the
/// listen port (tonic uses the same one for outgoing calls). rustls 0.23.48 deprecated it
/// for lacking post-quantum key exchange, which only its aws-lc-rs provider offers; ring
/// stays the choice here (no C/CMake build, as in the rest of the tree).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}
