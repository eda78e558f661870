//! Identity keys: RSA-4096 (e = 65537), one per user, the same on all of a user's devices.
//!
//! Public keys travel as SPKI DER; a key's fingerprint is SHA-256 of that DER (what the
//! server returns from PostKey). Signatures are RSA-PSS-SHA256 with MGF1-SHA256 and a
//! 32-byte salt; key transport is RSA-OAEP-SHA256 with MGF1-SHA256 and an empty label.

use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::sha256;
use crate::error::Error;

/// Modulus size of new identity keys.
pub const KEY_BITS: usize = 4096;
/// Smallest modulus accepted from others (the server's PostKey rule).
pub const MIN_BITS: usize = 4096;

/// A user's identity key pair.
pub struct Identity {
    key: PrivateKey,
    public: PublicIdentity,
}

/// Someone's public identity key.
#[derive(Clone)]
pub struct PublicIdentity {
    key: PublicKey,
    spki: Vec<u8>,
    fingerprint: [u8; 32],
}

impl Identity {
    /// A fresh RSA-4096 key pair with e = 65537.
    pub fn generate() -> Result<Identity, Error> {
        let key = PrivateKey::new(&mut getrandom::SysRng, KEY_BITS)
            .map_err(|e| Error::Crypto(format!("RSA key generation failed: {e}")))?;
        Identity::from_key(key)
    }

    fn from_key(key: PrivateKey) -> Result<Identity, Error> {
        let public = PublicIdentity::from_key(key.to_public_key())?;
        Ok(Identity { key, public })
    }

    /// Loads a private key from PKCS#8 DER (as unwrapped from the backup blob).
    pub fn from_pkcs8(der: &[u8]) -> Result<Identity, Error> {
        let key = PrivateKey::from_pkcs8_der(der)
            .map_err(|e| Error::Crypto(format!("the private key does not parse as PKCS#8: {e}")))?;
        Identity::from_key(key)
    }

    /// The private key as PKCS#8 DER (wiped from memory when dropped).
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let doc = self
            .key
            .to_pkcs8_der()
            .map_err(|e| Error::Crypto(format!("cannot encode the private key: {e}")))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// The public half.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// SHA-256 of the public key's SPKI DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.public.fingerprint
    }

    /// RSA-PSS-SHA256 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.key
            .pss_sign::<Sha256>(message)
            .map_err(|e| Error::Crypto(format!("signing failed: {e}")))
    }

    /// RSA-OAEP-SHA256 decryption.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, Error> {
        self.key.oaep_decrypt::<Sha256>(ciphertext).map_err(|_| {
            Error::Tampered("the RSA-OAEP key block does not decrypt with your key".into())
        })
    }
}

impl PublicIdentity {
    fn from_key(key: PublicKey) -> Result<PublicIdentity, Error> {
        let spki = key
            .to_public_key_der()
            .map_err(|e| Error::Crypto(format!("cannot encode the public key: {e}")))?
            .as_bytes()
            .to_vec();
        let fingerprint = sha256(&spki);
        Ok(PublicIdentity {
            key,
            spki,
            fingerprint,
        })
    }

    /// Parses an SPKI DER public key (as FetchKey returns it), enforcing the server's
    /// rules: at least 4096 bits, e = 65537.
    pub fn from_spki(der: &[u8]) -> Result<PublicIdentity, Error> {
        let key = PublicKey::from_public_key_der(der)
            .map_err(|e| Error::Protocol(format!("the public key does not parse as SPKI: {e}")))?;
        let bits = key.size() * 8;
        if bits < MIN_BITS || !e_is_65537(&key) {
            return Err(Error::Protocol(format!(
                "the public key ({bits} bits) is below {MIN_BITS} bits or its exponent is not 65537"
            )));
        }
        PublicIdentity::from_key(key)
    }

    /// The key as SPKI DER.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// SHA-256 of the SPKI DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Verifies an RSA-PSS-SHA256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        self.key
            .pss_verify::<Sha256>(message, signature)
            .map_err(|_| Error::BadSignature("the RSA-PSS signature does not verify".into()))
    }

    /// RSA-OAEP-SHA256 encryption of a short secret (a 32-byte key).
    pub fn encrypt(&self, secret: &[u8]) -> Result<Vec<u8>, Error> {
        self.key
            .oaep_encrypt::<Sha256>(secret)
            .map_err(|e| Error::Crypto(format!("RSA-OAEP encryption failed: {e}")))
    }
}

fn e_is_65537(key: &PublicKey) -> bool {
    let bytes = key.e().to_be_bytes();
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    trimmed == [1, 0, 1]
}

/// A fingerprint as lower-case hex.
pub fn fingerprint_hex(fp: &[u8]) -> String {
    hex::encode(fp)
}
