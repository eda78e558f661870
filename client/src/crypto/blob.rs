//! The password-wrapped private-key blob stored with PostPrivateKey.
//!
//! ```text
//! "sdpk" ‖ version (1 byte, = 1) ‖ kdf id (1 byte) ‖ kdf parameters ‖ salt (16) ‖ nonce (12)
//!        ‖ AES-256-GCM(key = KDF(password, salt) (32 bytes), nonce, PKCS#8 DER, AAD = all before)
//! kdf 1 = PBKDF2-HMAC-SHA256: iterations (u32 BE), at least 600,000
//! kdf 2 = Argon2id (v0x13):    memory KiB (u32 BE) ‖ passes (u32 BE) ‖ lanes (u32 BE)
//! ```

use zeroize::Zeroizing;

use super::{NONCE_LEN, open, random, seal, take};
use crate::error::Error;

/// The blob's magic bytes.
pub const MAGIC: &[u8; 4] = b"sdpk";
/// The blob format this client writes and reads.
pub const VERSION: u8 = 1;
/// The fewest PBKDF2 iterations a reader accepts (OWASP 2023 for PBKDF2-HMAC-SHA256).
pub const MIN_PBKDF2_ITERATIONS: u32 = 600_000;
/// The most PBKDF2 iterations a reader runs (a hostile server cannot make it spin longer).
pub const MAX_PBKDF2_ITERATIONS: u32 = 100_000_000;
/// The least Argon2id memory a reader accepts, KiB (OWASP: 19 MiB with 2 passes).
pub const MIN_ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// The most Argon2id memory a reader spends, KiB (1 GiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;

/// How the password becomes the 32-byte wrapping key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC-SHA256 (kdf id 1).
    Pbkdf2 {
        /// Iterations, at least [`MIN_PBKDF2_ITERATIONS`].
        iterations: u32,
    },
    /// Argon2id version 0x13 (kdf id 2).
    Argon2id {
        /// Memory in KiB.
        memory_kib: u32,
        /// Passes over memory.
        passes: u32,
        /// Parallel lanes.
        lanes: u32,
    },
}

impl Kdf {
    /// The default: PBKDF2-HMAC-SHA256 with 600,000 iterations.
    pub const DEFAULT: Kdf = Kdf::Pbkdf2 {
        iterations: MIN_PBKDF2_ITERATIONS,
    };
    /// OWASP's Argon2id baseline: 19 MiB, 2 passes, 1 lane.
    pub const ARGON2ID: Kdf = Kdf::Argon2id {
        memory_kib: MIN_ARGON2_MEMORY_KIB,
        passes: 2,
        lanes: 1,
    };

    fn check(&self) -> Result<(), Error> {
        match *self {
            Kdf::Pbkdf2 { iterations } if iterations < MIN_PBKDF2_ITERATIONS => {
                Err(Error::Blob(format!(
                    "PBKDF2 with {iterations} iterations is too weak (at least {MIN_PBKDF2_ITERATIONS})"
                )))
            }
            Kdf::Pbkdf2 { iterations } if iterations > MAX_PBKDF2_ITERATIONS => {
                Err(Error::Blob(format!(
                    "PBKDF2 with {iterations} iterations is more than this client runs ({MAX_PBKDF2_ITERATIONS})"
                )))
            }
            Kdf::Argon2id {
                memory_kib,
                passes,
                lanes,
            } if memory_kib < MIN_ARGON2_MEMORY_KIB || passes < 2 || lanes == 0 => {
                Err(Error::Blob(format!(
                    "Argon2id with {memory_kib} KiB, {passes} passes, {lanes} lanes is too weak \
                     (at least {MIN_ARGON2_MEMORY_KIB} KiB, 2 passes, 1 lane)"
                )))
            }
            Kdf::Argon2id {
                memory_kib,
                passes,
                lanes,
            } if memory_kib > MAX_ARGON2_MEMORY_KIB || passes > 64 || lanes > 64 => {
                Err(Error::Blob(format!(
                    "Argon2id with {memory_kib} KiB, {passes} passes, {lanes} lanes is more than \
                     this client spends ({MAX_ARGON2_MEMORY_KIB} KiB, 64 passes, 64 lanes)"
                )))
            }
            _ => Ok(()),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Kdf::Pbkdf2 { iterations } => {
                out.push(1);
                out.extend_from_slice(&iterations.to_be_bytes());
            }
            Kdf::Argon2id {
                memory_kib,
                passes,
                lanes,
            } => {
                out.push(2);
                for v in [memory_kib, passes, lanes] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
    }

    fn derive(&self, password: &[u8], salt: &[u8; 16]) -> Result<Zeroizing<[u8; 32]>, Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        match *self {
            Kdf::Pbkdf2 { iterations } => {
                // The non-generic entry point: its loop is compiled (and optimised) in the
                // pbkdf2 crate, not instantiated here.
                let params = pbkdf2::Params::new_with_output_len(iterations, 32)
                    .map_err(|e| Error::Blob(format!("PBKDF2 parameters: {e}")))?;
                pbkdf2::pbkdf2_hmac_with_params(
                    password,
                    salt,
                    pbkdf2::Algorithm::Pbkdf2Sha256,
                    params,
                    key.as_mut(),
                );
            }
            Kdf::Argon2id {
                memory_kib,
                passes,
                lanes,
            } => {
                let params = argon2::Params::new(memory_kib, passes, lanes, Some(32))
                    .map_err(|e| Error::Blob(format!("Argon2id parameters: {e}")))?;
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                    .hash_password_into(password, salt, key.as_mut())
                    .map_err(|e| Error::Blob(format!("Argon2id: {e}")))?;
            }
        }
        Ok(key)
    }
}

/// Wraps a PKCS#8 DER private key under `password` with fresh random salt and nonce.
pub fn seal_private_key(pkcs8_der: &[u8], password: &str, kdf: Kdf) -> Result<Vec<u8>, Error> {
    seal_with(pkcs8_der, password, kdf, &random()?, &random()?)
}

/// [`seal_private_key`] with the given salt and nonce (for test vectors; never reuse them).
pub fn seal_with(
    pkcs8_der: &[u8],
    password: &str,
    kdf: Kdf,
    salt: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, Error> {
    kdf.check()?;
    let mut blob = MAGIC.to_vec();
    blob.push(VERSION);
    kdf.encode(&mut blob);
    blob.extend_from_slice(salt);
    blob.extend_from_slice(nonce);
    let key = kdf.derive(password.as_bytes(), salt)?;
    let sealed = seal(&key, nonce, &blob, pkcs8_der);
    blob.extend_from_slice(&sealed);
    Ok(blob)
}

/// The KDF a blob names (after checking its header).
pub fn kdf_of(blob: &[u8]) -> Result<Kdf, Error> {
    Ok(parse_header(blob)?.0)
}

fn parse_header(blob: &[u8]) -> Result<(Kdf, [u8; 16], [u8; NONCE_LEN], usize), Error> {
    let mut rest = blob;
    let magic = take::<4>(&mut rest, "private-key blob").map_err(blob_err)?;
    if &magic != MAGIC {
        return Err(Error::Blob(
            "it is not a secretd private-key blob (bad magic bytes)".into(),
        ));
    }
    let [version] = take::<1>(&mut rest, "private-key blob").map_err(blob_err)?;
    if version != VERSION {
        return Err(Error::Blob(format!(
            "blob version {version} is not supported (this client reads version {VERSION})"
        )));
    }
    let [kdf_id] = take::<1>(&mut rest, "private-key blob").map_err(blob_err)?;
    let kdf = match kdf_id {
        1 => Kdf::Pbkdf2 {
            iterations: u32::from_be_bytes(
                take::<4>(&mut rest, "private-key blob").map_err(blob_err)?,
            ),
        },
        2 => {
            let mut v = [0u32; 3];
            for x in &mut v {
                *x =
                    u32::from_be_bytes(take::<4>(&mut rest, "private-key blob").map_err(blob_err)?);
            }
            Kdf::Argon2id {
                memory_kib: v[0],
                passes: v[1],
                lanes: v[2],
            }
        }
        other => {
            return Err(Error::Blob(format!(
                "key derivation id {other} is unknown (1 = PBKDF2-HMAC-SHA256, 2 = Argon2id)"
            )));
        }
    };
    kdf.check()?;
    let salt = take::<16>(&mut rest, "private-key blob").map_err(blob_err)?;
    let nonce = take::<NONCE_LEN>(&mut rest, "private-key blob").map_err(blob_err)?;
    Ok((kdf, salt, nonce, blob.len() - rest.len()))
}

fn blob_err(e: Error) -> Error {
    Error::Blob(e.to_string())
}

/// Unwraps a blob with `password`: the PKCS#8 DER private key, or [`Error::WrongPassword`].
pub fn open_private_key(blob: &[u8], password: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let (kdf, salt, nonce, header_len) = parse_header(blob)?;
    let key = kdf.derive(password.as_bytes(), &salt)?;
    open(&key, &nonce, &blob[..header_len], &blob[header_len..])
        .map(Zeroizing::new)
        .ok_or(Error::WrongPassword)
}
