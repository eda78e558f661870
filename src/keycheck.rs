//! Validation and canonicalisation of users' RSA public identity keys.
//!
//! Accepts SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`), DER or PEM. The modulus must
//! be 4096–8192 bits and the public exponent 65537. The key is parsed by the `rsa` crate
//! (which also checks the modulus is odd and larger than the exponent) and re-encoded as
//! SPKI DER, the one form the server stores; its SHA-256 is the fingerprint.

use rsa::pkcs1::der::{Decode, pem};
use rsa::pkcs1::{DecodeRsaPublicKey, RsaPublicKeyRef};
use rsa::pkcs8::{EncodePublicKey, SubjectPublicKeyInfoRef};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Smallest accepted modulus, in bits.
pub const MIN_MODULUS_BITS: usize = 4096;
/// Largest accepted modulus, in bits.
pub const MAX_MODULUS_BITS: usize = 8192;
/// Largest accepted encoded key (PEM of an 8192-bit key is about 1.5 KiB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;
/// The one accepted public exponent.
const F4: [u8; 3] = [0x01, 0x00, 0x01];
/// OID of `rsaEncryption`.
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

/// A validated public key in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalKey {
    /// SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// SHA-256 of `spki_der`.
    pub fingerprint: [u8; 32],
    /// Modulus size in bits.
    pub bits: usize,
}

/// SHA-256 fingerprint of canonical key bytes.
pub fn fingerprint(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

/// Validates a posted key and returns its canonical form, or INVALID_ARGUMENT saying what
/// is wrong with it.
pub fn canonicalize(input: &[u8]) -> Result<CanonicalKey, Error> {
    if input.is_empty() {
        return Err(Error::invalid("key_data is empty; send an RSA public key"));
    }
    if input.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "key_data is {} bytes; an RSA public key of at most {MAX_MODULUS_BITS} bits fits in {MAX_KEY_BYTES}",
            input.len()
        )));
    }
    let not_rsa = || {
        Error::invalid(
            "key_data is not an RSA public key: send SPKI (\"PUBLIC KEY\") or PKCS1 \
             (\"RSA PUBLIC KEY\"), as DER or PEM",
        )
    };
    let trimmed = input.trim_ascii();
    let pem_storage;
    let (der, pem_label): (&[u8], Option<&str>) = if trimmed.starts_with(b"-----BEGIN") {
        let (label, der) = pem::decode_vec(trimmed).map_err(|_| not_rsa())?;
        pem_storage = (label.to_string(), der);
        (&pem_storage.1, Some(pem_storage.0.as_str()))
    } else {
        (input, None) // DER is binary: taken exactly as sent
    };
    let pkcs1: &[u8] = match pem_label {
        Some("PUBLIC KEY") => spki_payload(der).ok_or_else(not_rsa)?,
        Some("RSA PUBLIC KEY") => der,
        Some(_) => return Err(not_rsa()),
        None => spki_payload(der).unwrap_or(der),
    };
    let parts = RsaPublicKeyRef::from_der(pkcs1).map_err(|_| not_rsa())?;
    let bits = bit_length(parts.modulus.as_bytes());
    if !(MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&bits) {
        return Err(Error::invalid(format!(
            "the key's modulus is {bits} bits; secretd accepts {MIN_MODULUS_BITS} to {MAX_MODULUS_BITS} bits"
        )));
    }
    if parts.public_exponent.as_bytes() != F4 {
        return Err(Error::invalid(
            "the key's public exponent must be 65537 (generate the key with the default exponent)",
        ));
    }
    let key = rsa::PublicKey::from_pkcs1_der(pkcs1)
        .map_err(|_| Error::invalid("key_data is not a valid RSA public key (bad modulus)"))?;
    let spki_der = key
        .to_public_key_der()
        .map_err(|e| Error::internal("cannot re-encode a valid RSA key", &e))?
        .into_vec();
    Ok(CanonicalKey {
        fingerprint: fingerprint(&spki_der),
        spki_der,
        bits,
    })
}

/// The PKCS#1 bytes inside an SPKI structure whose algorithm is rsaEncryption.
fn spki_payload(der: &[u8]) -> Option<&[u8]> {
    let spki = SubjectPublicKeyInfoRef::from_der(der).ok()?;
    if spki.algorithm.oid.to_string() != RSA_ENCRYPTION {
        return None;
    }
    spki.subject_public_key.as_bytes()
}

/// Bit length of a big-endian unsigned integer.
fn bit_length(be: &[u8]) -> usize {
    let be = match be.iter().position(|&b| b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    (be.len() - 1) * 8 + (8 - be[0].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_length_counts_significant_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[0, 0x7f, 0xff]), 15);
    }

    #[test]
    fn messages_avoid_hash_and_percent() {
        let long = vec![b'x'; MAX_KEY_BYTES + 1];
        for bad in [&b""[..], b"hello", &long] {
            let msg = canonicalize(bad).unwrap_err().to_string();
            assert!(!msg.contains('#') && !msg.contains('%'), "{msg}");
        }
    }

    #[test]
    fn rejects_garbage_and_empty() {
        for bad in [
            &b""[..],
            b"hello",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(matches!(canonicalize(bad), Err(Error::InvalidArgument(_))));
        }
    }
}
