//! PEM files named by the configuration: read whole, parsed with rustls' own PEM reader,
//! and every failure a [`Misconfigured`] naming the key and the file.

use std::path::Path;

use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Misconfigured;

/// The bytes of `path`, named by config key `key`.
pub fn read(key: &str, path: &Path) -> Result<Vec<u8>, Misconfigured> {
    std::fs::read(path)
        .map_err(|e| Misconfigured(format!("{key} {}: cannot read it: {e}", path.display())))
}

/// The certificates in `pem` (the contents of `path`), in file order; at least one.
pub fn certificates(
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, Misconfigured> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(key, path, e))?;
    if certs.is_empty() {
        return Err(Misconfigured(format!(
            "{key} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in `pem` (the contents of `path`): PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn private_key(
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, Misconfigured> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => Misconfigured(format!(
            "{key} {}: holds no PEM private key (PKCS#8 -----BEGIN PRIVATE KEY-----, or RSA \
             or EC)",
            path.display()
        )),
        e => not_pem(key, path, e),
    })
}

fn not_pem(key: &str, path: &Path, e: pem::Error) -> Misconfigured {
    Misconfigured(format!("{key} {}: not a PEM file ({e})", path.display()))
}
