//! Fixed test vectors of the construction, as printed in `docs/e2ee.md` and recomputed
//! independently (Python `cryptography`, no shared code) by `docs/e2ee_vectors.py`.

use super::blob::{self, Kdf, open_private_key, seal_with};
use super::envelope::{Position, open_event, parse, seal_event};
use super::ratchet::{initial_chain_key, message_key, message_key_nonce, next_chain_key};
use super::uuid_bytes;
use crate::error::Error;
use crate::user;

fn range<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start + i as u8)
}

const STREAM: &str = "00112233-4455-6677-8899-aabbccddeeff";

#[test]
fn ratchet_and_message_key() {
    let stream = uuid_bytes(STREAM).unwrap();
    let ck0 = initial_chain_key(&range(0x00), &stream, &range(0xa0));
    let ck1 = next_chain_key(&ck0);
    let ck2 = next_chain_key(&ck1);
    let mk2 = message_key(&ck2);
    assert_eq!(
        hex::encode(ck0),
        "2bef49a72e6b9381f04bffe7f14337b91223db2479cc6a4fe6c8e0ec71819139"
    );
    assert_eq!(
        hex::encode(ck1),
        "3987fed076323804f4e4e8dc37ef87c8f9a2e48c00dac40f7730beb9897eb127"
    );
    assert_eq!(
        hex::encode(ck2),
        "76d3e81c62acef9f8b9cbe1397d4247719941fd49772a66edbd45d11c1fa1f88"
    );
    assert_eq!(
        hex::encode(mk2),
        "754d18211d98ed96ec1fe987b39f0addbeb1328eed2436e846edd3f929b34cb2"
    );
    let (key, nonce) = message_key_nonce(&mk2, &range(0xb0), &stream, 2, &user::local(42));
    assert_eq!(
        hex::encode(key),
        "d94625331114698b759053ce46e4b2b6183006e716c0b19bb25bc8f4f1a5b5df"
    );
    assert_eq!(hex::encode(nonce), "64d89a0384530cefc4060a8c");
}

#[test]
fn envelope() {
    let stream = uuid_bytes(STREAM).unwrap();
    let ck0 = initial_chain_key(&range(0x00), &stream, &range(0xa0));
    let mk2 = message_key(&next_chain_key(&next_chain_key(&ck0)));
    let sender = user::local(42);
    let epoch = range(0xa0);
    let pos = Position {
        stream: &stream,
        counter: 2,
        epoch: &epoch,
        sender: &sender,
    };
    let sealed = seal_event(&mk2, pos, &range(0xb0), b"hello");
    assert_eq!(
        hex::encode(&sealed),
        "01a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\
         8701ddf8b8e4ff9b03ad811c5163c1f1a13b5cca1a"
    );
    let env = parse(&sealed).unwrap();
    assert_eq!(open_event(&mk2, pos, &env).unwrap(), b"hello");
    // Bound to its position and sender: any other counter or sender fails.
    let other = user::local(43);
    for moved in [
        Position { counter: 3, ..pos },
        Position {
            sender: &other,
            ..pos
        },
    ] {
        assert!(matches!(
            open_event(&mk2, moved, &env),
            Err(Error::Tampered(_))
        ));
    }
}

const PASSWORD: &str = "correct horse battery staple";
const KEY: &[u8] = b"not really a PKCS#8 key";
/// Version 1 blobs as older clients wrote them (docs/e2ee.md §12): read, never written.
const V1_PBKDF2: &str = "7364706b0101000927c0c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadb\
    83ebf6d75fb4c42e26b439c6be5119bef8a65b17dde2d7f614213c0a593a6244e94c13fa576026";
const V1_ARGON2ID: &str = "7364706b010200004c000000000200000001\
    c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadb\
    301579a1169972ac223ff99c2e7b29febca92b4aa71bb6324e1aef09c4ab007bd8039714d1cc6a";
/// The version 2 vector: Argon2id 65,536 KiB / 3 / 1, owner local user 42.
const V2: &str = "7364706b02020001000000000003000000010000000000000000002a\
    c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadb\
    9602f5af9bf405bce01dff9510c4e0f2f29489c78b26f9d44f391c832e8b298d4dd20bcd59e3d6";

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn blob_v1_vectors_still_open() {
    // Version 1 names no owner: any expected user opens it.
    for (v, kdf) in [
        (
            V1_PBKDF2,
            Kdf::Pbkdf2 {
                iterations: 600_000,
            },
        ),
        (
            V1_ARGON2ID,
            Kdf::Argon2id {
                memory_kib: 19_456,
                passes: 2,
                lanes: 1,
            },
        ),
    ] {
        let blob = unhex(v);
        let h = blob::header(&blob).unwrap();
        assert_eq!((h.version, h.kdf, h.owner.clone()), (1, kdf, None));
        assert!(!h.is_current(), "a version 1 blob is re-wrapped");
        let opened = open_private_key(&blob, PASSWORD, &user::local(7)).unwrap();
        assert_eq!(opened.as_slice(), KEY);
    }
}

#[test]
fn blob_v2() {
    let owner = user::local(42);
    let blob = seal_with(
        KEY,
        PASSWORD,
        Kdf::DEFAULT,
        &owner,
        &range(0xc0),
        &range(0xd0),
    )
    .unwrap();
    assert_eq!(hex::encode(&blob), V2);
    assert_eq!(
        open_private_key(&blob, PASSWORD, &owner)
            .unwrap()
            .as_slice(),
        KEY
    );
    let h = blob::header(&blob).unwrap();
    assert_eq!(
        (h.version, h.kdf, h.owner.clone()),
        (2, Kdf::DEFAULT, Some(owner))
    );
    assert!(h.is_current());
}

#[test]
fn blob_refusals() {
    let v1 = unhex(V1_PBKDF2);
    let me = user::local(42);
    let refusal = |blob: &[u8]| {
        open_private_key(blob, PASSWORD, &me)
            .unwrap_err()
            .to_string()
    };
    assert!(matches!(
        open_private_key(&v1, "wrong", &me),
        Err(Error::WrongPassword)
    ));
    // A lowered iteration count is refused before any work.
    let mut weak = v1.clone();
    weak[6..10].copy_from_slice(&599_999u32.to_be_bytes());
    assert_eq!(
        refusal(&weak),
        "unusable private-key backup: PBKDF2 with 599999 iterations is too weak (at least 600000)"
    );
    // A raised one (within the cap) changes the authenticated header: refused as wrong.
    let mut changed = v1.clone();
    changed[6..10].copy_from_slice(&600_001u32.to_be_bytes());
    assert!(matches!(
        open_private_key(&changed, PASSWORD, &me),
        Err(Error::WrongPassword)
    ));
    // A version 1 PBKDF2 blob relabelled as version 2 (a downgrade of the KDF).
    let mut relabelled = v1.clone();
    relabelled[4] = 2;
    assert_eq!(
        refusal(&relabelled),
        "unusable private-key backup: PBKDF2 is not allowed in a version 2 backup (only \
         Argon2id)"
    );
    let mut future = v1.clone();
    future[4] = 3;
    assert_eq!(
        refusal(&future),
        "unusable private-key backup: blob version 3 is not supported (this client reads \
         versions 1 and 2)"
    );
    let mut unknown_kdf = v1.clone();
    unknown_kdf[5] = 9;
    assert_eq!(
        refusal(&unknown_kdf),
        "unusable private-key backup: key derivation id 9 is unknown (1 = PBKDF2-HMAC-SHA256, \
         2 = Argon2id)"
    );
    assert_eq!(
        refusal(b"sdpk"),
        "unusable private-key backup: private-key blob is truncated"
    );
    assert_eq!(
        refusal(b"nope nope nope"),
        "unusable private-key backup: it is not a secretd private-key blob (bad magic bytes)"
    );
    // Writers write version 2 Argon2id only, at least the default's cost, within the caps.
    for kdf in [
        Kdf::Pbkdf2 {
            iterations: 600_000,
        },
        Kdf::Argon2id {
            memory_kib: 19_456,
            passes: 2,
            lanes: 1,
        },
        Kdf::Argon2id {
            memory_kib: 4 * 1024 * 1024,
            passes: 3,
            lanes: 1,
        },
    ] {
        assert!(matches!(
            seal_with(KEY, PASSWORD, kdf, &me, &[0; 16], &[0; 12]),
            Err(Error::Blob(_))
        ));
    }
}
