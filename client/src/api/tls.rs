//! How the client reaches a server: over TLS when the URL says `https://` (the server's
//! certificate verified against the system's roots, or only against a CA file), in
//! plaintext when it says `http://`, and never otherwise. An `https://` URL is never
//! spoken to in plaintext, so the bearer token never leaves in the clear for it.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// The endpoint for `url`, with TLS for `https://`: the CA certificates of `ca_file`
/// only, when given, else the system's roots. `Err` says why in words: a URL that is
/// neither `http://` nor `https://`, a CA file with an `http://` URL (it would protect
/// nothing), an unreadable CA file, or no roots.
pub(super) fn endpoint(url: &str, ca_file: Option<&Path>) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| format!("not a URL: {e}"))?;
    let https = match endpoint.uri().scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must start with https:// (or http:// for plaintext)".into()),
    };
    if !https {
        return match ca_file {
            Some(path) => Err(format!(
                "a CA file ({}) is given but the URL is plaintext http://: use https://",
                path.display()
            )),
            None => Ok(endpoint),
        };
    }
    let config = ClientTlsConfig::new();
    let config = match ca_file {
        Some(path) => config.ca_certificate(Certificate::from_pem(ca_certificates(path)?)),
        None => config.with_native_roots(),
    };
    endpoint
        .tls_config(config)
        .map_err(|e| format!("cannot set up TLS: {}", innermost(&e)))
}

/// The contents of a CA file, checked to hold a PEM certificate.
fn ca_certificates(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    if !pem
        .windows(CERTIFICATE.len())
        .any(|w| w == CERTIFICATE.as_bytes())
    {
        return Err(format!(
            "the CA file {} holds no PEM certificate ({CERTIFICATE}-----)",
            path.display()
        ));
    }
    Ok(pem)
}

const CERTIFICATE: &str = "-----BEGIN CERTIFICATE";

/// `path` made absolute against the working directory (a device's state keeps it, and
/// later commands may run elsewhere).
pub(super) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Advice for a connection to an `https://` URL that failed with `reason`.
pub(super) fn advice(reason: &str) -> &'static str {
    if reason.contains("certificate") || reason.contains("UnknownIssuer") {
        " — the server's certificate is not trusted: give the CA that signed it with \
         --ca-file (or check the URL's host name)"
    } else if reason.contains("corrupt message") || reason.contains("InvalidContentType") {
        " — does the server serve TLS? (a plaintext server needs an http:// URL)"
    } else {
        ""
    }
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    innermost.to_string()
}
