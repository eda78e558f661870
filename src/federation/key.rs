//! This homeserver's Ed25519 server key: it signs the server-to-server tokens and the
//! federation tokens of our users (DESIGN §9), and the heads of the key transparency log
//! (DESIGN §12). It exists with federation off too: `serve` loads or creates it at every
//! start.
//!
//! The key is `federation.signing_key_file` when configured (replicas of one homeserver
//! share it; the file must exist), else `data_dir/federation-key`, created on first use
//! as a PKCS#8 PEM file, mode 0600, atomically as the JWT secret is (`auth/secret.rs`):
//! written and synced under a temporary name, then published with a hard link that never
//! replaces an existing file, so processes starting together on one data directory end
//! up with one key and a crash never leaves a partial one. The key id is the first 8
//! bytes of the SHA-256 of the raw public key, in hex.

use std::io::ErrorKind;
use std::path::Path;

use base64::Engine;
use jsonwebtoken::EncodingKey;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

use crate::config::{ED25519_PUBLIC_KEY_LEN, Misconfigured, Settings};
use crate::private_files;

/// File name of the generated server key inside the data directory.
pub const KEY_FILE: &str = "federation-key";

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// This server's Ed25519 key pair.
pub struct ServerKey {
    public: [u8; ED25519_PUBLIC_KEY_LEN],
    key_id: String,
    encoding: EncodingKey,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ServerKey {
    /// A new random key (tests, and the first start).
    pub fn generate() -> anyhow::Result<(ServerKey, Vec<u8>)> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        let der = pkcs8_v1(pkcs8.as_ref());
        let key = ServerKey::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("a generated key does not parse: {e}"))?;
        Ok((key, der))
    }

    /// The key in a PKCS#8 document (DER), or why it is not an Ed25519 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<ServerKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| format!("it is not a PKCS#8 Ed25519 private key ({e})"))?;
        let public = <[u8; ED25519_PUBLIC_KEY_LEN]>::try_from(pair.public_key().as_ref())
            .map_err(|_| "its public key is not 32 bytes".to_string())?;
        Ok(ServerKey {
            key_id: key_id(&public),
            public,
            encoding: EncodingKey::from_ed_der(der),
            pair,
        })
    }

    /// The key in a PKCS#8 file: PEM (`-----BEGIN PRIVATE KEY-----`) or DER.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<ServerKey, String> {
        match std::str::from_utf8(bytes).map(str::trim) {
            Ok(text) if text.starts_with(PEM_BEGIN) => {
                let body: String = text
                    .trim_start_matches(PEM_BEGIN)
                    .trim_end_matches(PEM_END)
                    .split_whitespace()
                    .collect();
                let der = base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .map_err(|e| format!("its PEM body is not base64 ({e})"))?;
                ServerKey::from_pkcs8(&der)
            }
            _ => ServerKey::from_pkcs8(bytes),
        }
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8; ED25519_PUBLIC_KEY_LEN] {
        &self.public
    }

    /// The public key in base64 (standard alphabet), as peers configure it.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public)
    }

    /// The key id: first 8 bytes of SHA-256 of the public key, lower-case hex.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The Ed25519 signature of `message` (64 bytes): what signs tree heads.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// The signing key for `jsonwebtoken` (EdDSA).
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// The key id of a raw public key: its SHA-256's first 8 bytes, lower-case hex.
pub fn key_id(public: &[u8]) -> String {
    Sha256::digest(public)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// ring writes PKCS#8 v2 (RFC 5958, with the public key), which OpenSSL 3.0 cannot read;
/// the v1 form (RFC 8410: the 32-byte seed only) is what `openssl genpkey -algorithm
/// ed25519` writes, so operators can inspect the file with openssl. Anything not of the
/// expected shape is kept as it is.
fn pkcs8_v1(v2: &[u8]) -> Vec<u8> {
    const V2_PREFIX: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    match v2.get(..48) {
        Some(head) if head.starts_with(&V2_PREFIX) => {
            let mut v1 = V1_PREFIX.to_vec();
            v1.extend_from_slice(&head[16..48]);
            v1
        }
        _ => v2.to_vec(),
    }
}

/// PKCS#8 DER as a PEM document.
fn to_pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from(PEM_BEGIN);
    pem.push('\n');
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

/// The server key as [`load_or_create`] finds it, creating nothing: the configured
/// `federation.signing_key_file` (which must exist), or `data_dir/federation-key` if it
/// exists (None if not).
pub fn load_existing(settings: &Settings) -> anyhow::Result<Option<ServerKey>> {
    let configured = &settings.federation.signing_key_file;
    if !configured.is_empty() {
        let path = Path::new(configured);
        let bytes = std::fs::read(path).map_err(|e| {
            Misconfigured(format!(
                "federation.signing_key_file {} cannot be read ({e}); point it at the \
                 homeserver's PKCS#8 Ed25519 key, or leave it empty to use {KEY_FILE} in the \
                 data directory",
                path.display()
            ))
        })?;
        private_files::tighten_if_exists(path);
        return parse_file(path, &bytes).map(Some);
    }
    read_existing(&settings.data_dir.join(KEY_FILE))
}

/// The server key: `federation.signing_key_file` (must exist) or `data_dir/federation-key`
/// (created when missing).
pub fn load_or_create(settings: &Settings) -> anyhow::Result<ServerKey> {
    let dir = &settings.data_dir;
    if settings.federation.signing_key_file.is_empty() {
        private_files::private_dir(dir)?;
    }
    if let Some(key) = load_existing(settings)? {
        return Ok(key);
    }
    let path = dir.join(KEY_FILE);
    let (key, der) = ServerKey::generate()?;
    match private_files::publish_new(dir, KEY_FILE, to_pem(&der).as_bytes(), &mut || {})? {
        private_files::Published::Ours => {
            tracing::warn!(
                key_id = key.key_id(),
                "generated this server's key in {} (mode 0600): it signs the heads of the key \
                 transparency log (clients pin it) and federation tokens; back it up, share \
                 it with every replica (federation.signing_key_file), and give peers the line \
                 `secretd federation-key` prints",
                path.display()
            );
            Ok(key)
        }
        // Another process published its key first: use that one.
        private_files::Published::Theirs => read_existing(&path)?
            .ok_or_else(|| anyhow::anyhow!("{} vanished while starting", path.display())),
    }
}

fn read_existing(path: &Path) -> anyhow::Result<Option<ServerKey>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            private_files::tighten_if_exists(path);
            parse_file(path, &bytes).map(Some)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => anyhow::bail!("cannot read the federation key {}: {e}", path.display()),
    }
}

fn parse_file(path: &Path, bytes: &[u8]) -> anyhow::Result<ServerKey> {
    ServerKey::from_file_bytes(bytes).map_err(|e| {
        Misconfigured(format!(
            "the federation key file {} is unusable: {e}; restore the homeserver's key (peers \
             have pinned its public key), or delete the file to generate a new one and give \
             every peer the new public key",
            path.display()
        ))
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_key_id() {
        let (key, der) = ServerKey::generate().unwrap();
        let again = ServerKey::from_file_bytes(to_pem(&der).as_bytes()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let raw = ServerKey::from_file_bytes(&der).unwrap();
        assert_eq!(raw.key_id(), key.key_id());
        let signature = raw.sign(b"head");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public_key())
            .verify(b"head", &signature)
            .unwrap();
        assert_eq!(key.key_id().len(), 16);
        assert!(ServerKey::from_file_bytes(b"not a key").is_err());
    }

    #[test]
    fn generated_keys_are_pkcs8_v1_as_openssl_writes_them() {
        let (key, der) = ServerKey::generate().unwrap();
        // SEQUENCE of 46 bytes, version 0, id-Ed25519, the 32-byte seed.
        assert_eq!(der.len(), 48);
        assert_eq!(&der[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
        let again = ServerKey::from_pkcs8(&der).unwrap();
        assert_eq!(again.public_key(), key.public_key());
    }

    #[test]
    fn first_use_creates_one_private_key_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::config::defaults();
        settings.data_dir = dir.path().join("data");
        let first = load_or_create(&settings).unwrap();
        let second = load_or_create(&settings).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(settings.data_dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        settings.federation.signing_key_file = dir.path().join("missing").display().to_string();
        let err = load_or_create(&settings).unwrap_err();
        assert!(err.is::<Misconfigured>(), "{err:#}");
    }
}
