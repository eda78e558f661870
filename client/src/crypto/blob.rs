//! The password-wrapped private-key blob stored with PostPrivateKey (docs/e2ee.md §2).
//!
//! ```text
//! version 2 (written):
//!   header = "sdpk" ‖ 0x02 ‖ kdf id (= 2) ‖ memory KiB (u32) ‖ passes (u32) ‖ lanes (u32)
//!            ‖ owner ‖ salt (16) ‖ nonce (12)
//!   owner  = ref("", user id) = u16 len(homeserver) (= 0) ‖ homeserver ‖ u64 user id
//!   blob   = header ‖ AES-256-GCM(K, nonce, PKCS#8 DER, AAD = "secretd/v1/blob" ‖ header)
//!   K      = Argon2id v0x13(password, salt, memory, passes, lanes), 32 bytes;
//!            at least 64 MiB and 3 passes
//! version 1 (read only, never written):
//!   header = "sdpk" ‖ 0x01 ‖ kdf id ‖ kdf parameters ‖ salt (16) ‖ nonce (12)
//!   blob   = header ‖ AES-256-GCM(K, nonce, PKCS#8 DER, AAD = header)
//!   kdf 1 = PBKDF2-HMAC-SHA256: iterations (u32), at least 600,000
//!   kdf 2 = Argon2id (v0x13):    memory KiB (u32) ‖ passes (u32) ‖ lanes (u32),
//!                                at least 19 MiB and 2 passes
//! ```
//! All integers big-endian. Version 2 binds the blob to its user: a reader refuses a blob
//! whose owner is not the user it expects, and a relabelled owner fails the tag.

use zeroize::Zeroizing;

use super::{NONCE_LEN, open, random, seal, take};
use crate::error::Error;
use crate::user::{self, UserRef};

/// The blob's magic bytes.
pub const MAGIC: &[u8; 4] = b"sdpk";
/// The blob format this client writes (it also reads [`VERSION_1`]).
pub const VERSION: u8 = 2;
/// The first blob format: no owner, PBKDF2 or weaker Argon2id; read, never written.
pub const VERSION_1: u8 = 1;
/// What a version 2 blob's associated data starts with (the header follows).
pub const AAD_LABEL: &[u8] = b"secretd/v1/blob";
/// The fewest PBKDF2 iterations a reader accepts (OWASP 2023 for PBKDF2-HMAC-SHA256);
/// PBKDF2 appears in version 1 blobs only.
pub const MIN_PBKDF2_ITERATIONS: u32 = 600_000;
/// The most PBKDF2 iterations a reader runs (a hostile server cannot make it spin longer).
pub const MAX_PBKDF2_ITERATIONS: u32 = 100_000_000;
/// The least Argon2id memory accepted in a version 2 blob, KiB (64 MiB).
pub const MIN_ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// The fewest Argon2id passes accepted in a version 2 blob.
pub const MIN_ARGON2_PASSES: u32 = 3;
/// The least Argon2id memory accepted in a version 1 blob, KiB (OWASP: 19 MiB).
pub const V1_MIN_ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// The fewest Argon2id passes accepted in a version 1 blob (OWASP: 2 with 19 MiB).
pub const V1_MIN_ARGON2_PASSES: u32 = 2;
/// The most Argon2id memory a reader spends, KiB (1 GiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;
/// The most Argon2id passes (and lanes) a reader runs.
pub const MAX_ARGON2_PASSES: u32 = 64;
/// The longest owner homeserver name a blob may carry, bytes.
const MAX_HOMESERVER_LEN: usize = 255;

/// How the password becomes the 32-byte wrapping key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC-SHA256 (kdf id 1): found in version 1 blobs, never written.
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
    /// The default, and the least a version 2 blob may use: Argon2id with 64 MiB,
    /// 3 passes, 1 lane (RFC 9106's second recommendation, with one lane).
    pub const DEFAULT: Kdf = Kdf::Argon2id {
        memory_kib: MIN_ARGON2_MEMORY_KIB,
        passes: MIN_ARGON2_PASSES,
        lanes: 1,
    };

    /// Refuses parameters a blob of `version` may not carry: too weak (a hostile server
    /// lowering them to speed up guessing) or too costly (making the client spin).
    fn check(&self, version: u8) -> Result<(), Error> {
        let (min_memory, min_passes) = if version == VERSION_1 {
            (V1_MIN_ARGON2_MEMORY_KIB, V1_MIN_ARGON2_PASSES)
        } else {
            (MIN_ARGON2_MEMORY_KIB, MIN_ARGON2_PASSES)
        };
        match *self {
            Kdf::Pbkdf2 { .. } if version != VERSION_1 => Err(Error::Blob(format!(
                "PBKDF2 is not allowed in a version {version} backup (only Argon2id)"
            ))),
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
            } if memory_kib < min_memory || passes < min_passes || lanes == 0 => {
                Err(Error::Blob(format!(
                    "Argon2id with {memory_kib} KiB, {passes} passes, {lanes} lanes is too weak \
                     for a version {version} backup (at least {min_memory} KiB, {min_passes} \
                     passes, 1 lane)"
                )))
            }
            Kdf::Argon2id {
                memory_kib,
                passes,
                lanes,
            } if memory_kib > MAX_ARGON2_MEMORY_KIB
                || passes > MAX_ARGON2_PASSES
                || lanes > MAX_ARGON2_PASSES =>
            {
                Err(Error::Blob(format!(
                    "Argon2id with {memory_kib} KiB, {passes} passes, {lanes} lanes is more than \
                     this client spends ({MAX_ARGON2_MEMORY_KIB} KiB, {MAX_ARGON2_PASSES} passes, \
                     {MAX_ARGON2_PASSES} lanes)"
                )))
            }
            _ => Ok(()),
        }
    }

    /// True when this is Argon2id with at least the default's memory and passes.
    pub fn at_least_default(&self) -> bool {
        matches!(*self, Kdf::Argon2id { memory_kib, passes, .. }
            if memory_kib >= MIN_ARGON2_MEMORY_KIB && passes >= MIN_ARGON2_PASSES)
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

/// What a blob's header says, checked against the reader's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The blob format: [`VERSION`] or [`VERSION_1`].
    pub version: u8,
    /// How the password becomes the wrapping key.
    pub kdf: Kdf,
    /// Whose identity the blob holds (version 2); None in version 1, which names nobody.
    pub owner: Option<UserRef>,
    salt: [u8; 16],
    nonce: [u8; NONCE_LEN],
    /// Bytes of the header (everything before the ciphertext).
    len: usize,
}

impl Header {
    /// True when the blob is in the format and strength this client writes: anything
    /// else is re-wrapped at the next password entry.
    pub fn is_current(&self) -> bool {
        self.version == VERSION && self.kdf.at_least_default()
    }

    /// The AEAD's associated data for the blob this header starts.
    fn aad<'b>(&self, blob: &'b [u8]) -> std::borrow::Cow<'b, [u8]> {
        let header = &blob[..self.len];
        if self.version == VERSION_1 {
            header.into()
        } else {
            [AAD_LABEL, header].concat().into()
        }
    }
}

/// Wraps a PKCS#8 DER private key under `password` for `owner` (the user whose identity
/// it is, as `ref("", user id)`: see docs/e2ee.md §2), with fresh random salt and nonce,
/// as a version 2 blob. `kdf` must be Argon2id with at least [`Kdf::DEFAULT`]'s cost.
pub fn seal_private_key(
    pkcs8_der: &[u8],
    password: &str,
    kdf: Kdf,
    owner: &UserRef,
) -> Result<Vec<u8>, Error> {
    seal_with(pkcs8_der, password, kdf, owner, &random()?, &random()?)
}

/// [`seal_private_key`] with the given salt and nonce (for test vectors; never reuse them).
pub fn seal_with(
    pkcs8_der: &[u8],
    password: &str,
    kdf: Kdf,
    owner: &UserRef,
    salt: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, Error> {
    kdf.check(VERSION)?;
    user::check(owner)?;
    let mut blob = MAGIC.to_vec();
    blob.push(VERSION);
    kdf.encode(&mut blob);
    blob.extend_from_slice(&user::encode(owner));
    blob.extend_from_slice(salt);
    blob.extend_from_slice(nonce);
    let key = kdf.derive(password.as_bytes(), salt)?;
    let aad = [AAD_LABEL, &blob].concat();
    let sealed = seal(&key, nonce, &aad, pkcs8_der);
    blob.extend_from_slice(&sealed);
    Ok(blob)
}

/// The blob's header, checked: magic, a known version, a known KDF within the limits of
/// that version, and (version 2) a well-formed owner.
pub fn header(blob: &[u8]) -> Result<Header, Error> {
    let mut rest = blob;
    let magic = take::<4>(&mut rest, "private-key blob").map_err(blob_err)?;
    if &magic != MAGIC {
        return Err(Error::Blob(
            "it is not a secretd private-key blob (bad magic bytes)".into(),
        ));
    }
    let [version] = take::<1>(&mut rest, "private-key blob").map_err(blob_err)?;
    if version != VERSION && version != VERSION_1 {
        return Err(Error::Blob(format!(
            "blob version {version} is not supported (this client reads versions {VERSION_1} \
             and {VERSION})"
        )));
    }
    let [kdf_id] = take::<1>(&mut rest, "private-key blob").map_err(blob_err)?;
    let kdf = match kdf_id {
        1 => Kdf::Pbkdf2 {
            iterations: take_u32(&mut rest)?,
        },
        2 => Kdf::Argon2id {
            memory_kib: take_u32(&mut rest)?,
            passes: take_u32(&mut rest)?,
            lanes: take_u32(&mut rest)?,
        },
        other => {
            return Err(Error::Blob(format!(
                "key derivation id {other} is unknown (1 = PBKDF2-HMAC-SHA256, 2 = Argon2id)"
            )));
        }
    };
    kdf.check(version)?;
    let owner = if version == VERSION_1 {
        None
    } else {
        Some(take_owner(&mut rest)?)
    };
    let salt = take::<16>(&mut rest, "private-key blob").map_err(blob_err)?;
    let nonce = take::<NONCE_LEN>(&mut rest, "private-key blob").map_err(blob_err)?;
    Ok(Header {
        version,
        kdf,
        owner,
        salt,
        nonce,
        len: blob.len() - rest.len(),
    })
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, Error> {
    Ok(u32::from_be_bytes(
        take::<4>(rest, "private-key blob").map_err(blob_err)?,
    ))
}

/// The owner field: `u16 len ‖ homeserver (UTF-8, at most 255 bytes) ‖ u64 user id`.
fn take_owner(rest: &mut &[u8]) -> Result<UserRef, Error> {
    let len = usize::from(u16::from_be_bytes(
        take::<2>(rest, "private-key blob").map_err(blob_err)?,
    ));
    if len > MAX_HOMESERVER_LEN {
        return Err(Error::Blob(format!(
            "the owner's homeserver name is {len} bytes long (at most {MAX_HOMESERVER_LEN})"
        )));
    }
    if rest.len() < len {
        return Err(Error::Blob("private-key blob is truncated".into()));
    }
    let (name, tail) = rest.split_at(len);
    *rest = tail;
    let homeserver = String::from_utf8(name.to_vec())
        .map_err(|_| Error::Blob("the owner's homeserver name is not UTF-8".into()))?;
    let user_id = u64::from_be_bytes(take::<8>(rest, "private-key blob").map_err(blob_err)?);
    Ok(UserRef {
        homeserver,
        user_id,
    })
}

/// A truncation found by [`take`] (a protocol error) as a blob error.
fn blob_err(e: Error) -> Error {
    match e {
        Error::Protocol(what) => Error::Blob(what),
        other => other,
    }
}

/// Unwraps a blob with `password`: the PKCS#8 DER private key. `owner` is the user the
/// caller expects (`ref("", user id)` of the token's user): a version 2 blob naming
/// anyone else is refused before any key derivation. A tag failure is
/// [`Error::WrongPassword`] (or a blob altered on the server, its owner field included).
pub fn open_private_key(
    blob: &[u8],
    password: &str,
    owner: &UserRef,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let header = header(blob)?;
    if let Some(found) = header.owner.as_ref().filter(|&found| found != owner) {
        return Err(Error::Blob(format!(
            "this backup belongs to user {}, not to you (user {}): the server handed you \
             another user's backup",
            user::display(found),
            user::display(owner)
        )));
    }
    let key = header.kdf.derive(password.as_bytes(), &header.salt)?;
    open(&key, &header.nonce, &header.aad(blob), &blob[header.len..])
        .map(Zeroizing::new)
        .ok_or(Error::WrongPassword)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    const PASSWORD: &str = "pw";
    const KEY: &[u8] = b"key bytes";

    fn alice() -> UserRef {
        user::local(1001)
    }

    /// One sealed blob for the tests (each Argon2id derivation costs 64 MiB and ~0.1 s).
    fn sealed() -> &'static [u8] {
        static BLOB: OnceLock<Vec<u8>> = OnceLock::new();
        BLOB.get_or_init(|| {
            seal_with(KEY, PASSWORD, Kdf::DEFAULT, &alice(), &[7; 16], &[9; 12]).unwrap()
        })
    }

    fn refusal(blob: &[u8], owner: &UserRef) -> String {
        open_private_key(blob, PASSWORD, owner)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn version_2_layout() {
        let blob = sealed();
        assert_eq!(&blob[..4], b"sdpk");
        assert_eq!(blob[4], 2, "version");
        assert_eq!(blob[5], 2, "kdf id: Argon2id");
        assert_eq!(&blob[6..10], &65_536u32.to_be_bytes(), "memory KiB");
        assert_eq!(&blob[10..14], &3u32.to_be_bytes(), "passes");
        assert_eq!(&blob[14..18], &1u32.to_be_bytes(), "lanes");
        assert_eq!(&blob[18..28], user::encode(&alice()).as_slice(), "owner");
        assert_eq!(
            &blob[18..28],
            &hex::decode("000000000000000003e9").unwrap()[..]
        );
        assert_eq!(&blob[28..44], &[7; 16], "salt");
        assert_eq!(&blob[44..56], &[9; 12], "nonce");
        assert_eq!(blob.len(), 56 + KEY.len() + 16, "ciphertext and tag");
        let h = header(blob).unwrap();
        assert_eq!(
            (h.version, h.kdf, h.owner.clone(), h.len),
            (2, Kdf::DEFAULT, Some(alice()), 56)
        );
        assert!(h.is_current());
        assert_eq!(
            open_private_key(blob, PASSWORD, &alice())
                .unwrap()
                .as_slice(),
            KEY
        );
        // The associated data is the label and the header, not the header alone.
        let k = Kdf::DEFAULT.derive(PASSWORD.as_bytes(), &[7; 16]).unwrap();
        assert!(open(&k, &[9; 12], &blob[..56], &blob[56..]).is_none());
        assert!(
            open(
                &k,
                &[9; 12],
                &[AAD_LABEL, &blob[..56]].concat(),
                &blob[56..]
            )
            .is_some()
        );
    }

    #[test]
    fn owner_with_homeserver_round_trips_in_the_header() {
        // Writers use ref("", id); the field carries any homeserver a later version needs.
        let mut blob = MAGIC.to_vec();
        blob.push(VERSION);
        Kdf::DEFAULT.encode(&mut blob);
        let far = user::parse("5@b.example").unwrap();
        blob.extend_from_slice(&user::encode(&far));
        blob.extend_from_slice(&[0; 16 + 12 + 16]);
        assert_eq!(header(&blob).unwrap().owner, Some(far));
        assert_eq!(
            refusal(&blob, &user::local(5)),
            "unusable private-key backup: this backup belongs to user 5@b.example, not to you \
             (user 5): the server handed you another user's backup"
        );
    }

    #[test]
    fn another_users_blob_is_refused_before_any_derivation() {
        // Even with a wrong password: the owner is checked before the KDF runs.
        let e = open_private_key(sealed(), "wrong", &user::local(2002)).unwrap_err();
        assert!(matches!(e, Error::Blob(_)));
        assert_eq!(
            e.to_string(),
            "unusable private-key backup: this backup belongs to user 1001, not to you \
             (user 2002): the server handed you another user's backup"
        );
    }

    #[test]
    fn a_relabelled_owner_fails_the_tag() {
        let mut blob = sealed().to_vec();
        blob[18..28].copy_from_slice(&user::encode(&user::local(2002)));
        assert!(matches!(
            open_private_key(&blob, PASSWORD, &user::local(2002)),
            Err(Error::WrongPassword)
        ));
    }

    #[test]
    fn version_2_refuses_weak_or_costly_parameters() {
        let with = |range: std::ops::Range<usize>, v: u32| {
            let mut blob = sealed().to_vec();
            blob[range].copy_from_slice(&v.to_be_bytes());
            refusal(&blob, &alice())
        };
        assert_eq!(
            with(6..10, 65_535),
            "unusable private-key backup: Argon2id with 65535 KiB, 3 passes, 1 lanes is too \
             weak for a version 2 backup (at least 65536 KiB, 3 passes, 1 lane)"
        );
        assert_eq!(
            with(10..14, 2),
            "unusable private-key backup: Argon2id with 65536 KiB, 2 passes, 1 lanes is too \
             weak for a version 2 backup (at least 65536 KiB, 3 passes, 1 lane)"
        );
        assert_eq!(
            with(14..18, 0),
            "unusable private-key backup: Argon2id with 65536 KiB, 3 passes, 0 lanes is too \
             weak for a version 2 backup (at least 65536 KiB, 3 passes, 1 lane)"
        );
        assert_eq!(
            with(6..10, MAX_ARGON2_MEMORY_KIB + 1),
            "unusable private-key backup: Argon2id with 1048577 KiB, 3 passes, 1 lanes is more \
             than this client spends (1048576 KiB, 64 passes, 64 lanes)"
        );
        // The version 1 minimum (19 MiB, 2 passes) is not enough for version 2.
        let mut v1_params = sealed().to_vec();
        v1_params[6..10].copy_from_slice(&V1_MIN_ARGON2_MEMORY_KIB.to_be_bytes());
        v1_params[10..14].copy_from_slice(&V1_MIN_ARGON2_PASSES.to_be_bytes());
        assert!(refusal(&v1_params, &alice()).contains("too weak for a version 2 backup"));
        // (Version 1 blobs with those parameters still open: crypto::vectors.)
    }

    #[test]
    fn malformed_owners_are_refused() {
        let mut long = sealed()[..18].to_vec();
        long.extend_from_slice(&256u16.to_be_bytes());
        long.extend_from_slice(&[b'a'; 256 + 8 + 28]);
        assert_eq!(
            refusal(&long, &alice()),
            "unusable private-key backup: the owner's homeserver name is 256 bytes long (at \
             most 255)"
        );
        let mut not_utf8 = sealed()[..18].to_vec();
        not_utf8.extend_from_slice(&[0, 1, 0xff]);
        not_utf8.extend_from_slice(&[0; 8 + 28 + 16]);
        assert_eq!(
            refusal(&not_utf8, &alice()),
            "unusable private-key backup: the owner's homeserver name is not UTF-8"
        );
        for cut in [20, 27, 30, 55] {
            assert_eq!(
                refusal(&sealed()[..cut], &alice()),
                "unusable private-key backup: private-key blob is truncated",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn only_the_default_or_stronger_is_current() {
        let v2 = |kdf| Header {
            version: VERSION,
            kdf,
            owner: Some(alice()),
            salt: [0; 16],
            nonce: [0; 12],
            len: 0,
        };
        let argon2 = |memory_kib, passes, lanes| Kdf::Argon2id {
            memory_kib,
            passes,
            lanes,
        };
        for (kdf, current) in [
            (Kdf::DEFAULT, true),
            (argon2(256 * 1024, 4, 2), true),
            (argon2(64 * 1024, 2, 1), false),
            (argon2(32 * 1024, 3, 1), false),
            (
                Kdf::Pbkdf2 {
                    iterations: 10_000_000,
                },
                false,
            ),
        ] {
            assert_eq!(v2(kdf).is_current(), current, "{kdf:?}");
        }
        assert!(
            !Header {
                version: VERSION_1,
                ..v2(Kdf::DEFAULT)
            }
            .is_current()
        );
    }
}
