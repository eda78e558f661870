//! The construction's building blocks, each a thin wrapper over a RustCrypto primitive:
//! HKDF-SHA256, HMAC-SHA256, AES-256-GCM, SHA-256 and the operating system's random
//! numbers. `docs/e2ee.md` is the specification these modules implement.

pub mod blob;
pub mod envelope;
pub mod identity;
pub mod invite;
pub mod ratchet;
#[cfg(test)]
mod vectors;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Bytes of an AES-256-GCM key.
pub const KEY_LEN: usize = 32;
/// Bytes of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of an AES-GCM tag.
pub const TAG_LEN: usize = 16;

/// `N` bytes from the operating system's random number generator.
pub fn random<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)
        .map_err(|e| Error::Crypto(format!("the system random number generator failed: {e}")))?;
    Ok(out)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// HKDF-SHA256 (RFC 5869, extract then expand) of `ikm` with `salt` and `info`, filling
/// `out` (at most 8160 bytes; the construction uses 32 and 44).
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("HKDF output lengths used here are far below 255 * 32");
}

/// AES-256-GCM encryption: ciphertext followed by the 16-byte tag.
pub fn seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    Aes256Gcm::new(&(*key).into())
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encrypts any message below 64 GiB")
}

/// AES-256-GCM decryption of ciphertext ‖ tag; `None` when the tag does not verify
/// (wrong key, or the bytes or the associated data were changed).
pub fn open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    Aes256Gcm::new(&(*key).into())
        .decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

/// The 16 bytes of a canonical UUID string (a pair or stream id as the server names it).
pub fn uuid_bytes(id: &str) -> Result<[u8; 16], Error> {
    let parsed = uuid::Uuid::try_parse(id)
        .map_err(|_| Error::Protocol(format!("{id:?} is not a UUID (pair and stream ids are)")))?;
    Ok(*parsed.as_bytes())
}

/// Splits `N` bytes off the front of `bytes`.
pub(crate) fn take<const N: usize>(bytes: &mut &[u8], what: &str) -> Result<[u8; N], Error> {
    if bytes.len() < N {
        return Err(Error::Protocol(format!("{what} is truncated")));
    }
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    Ok(head.try_into().expect("split at N"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_detects_changes() {
        let key = [7u8; 32];
        let nonce = [9u8; 12];
        let sealed = seal(&key, &nonce, b"aad", b"hello");
        assert_eq!(
            open(&key, &nonce, b"aad", &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        assert!(open(&key, &nonce, b"aaD", &sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(open(&key, &nonce, b"aad", &flipped).is_none());
    }

    #[test]
    fn hkdf_matches_rfc5869_case_1() {
        // RFC 5869, test case 1 (SHA-256).
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let mut okm = [0u8; 42];
        hkdf_sha256(&ikm, &salt, &info, &mut okm);
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }
}
