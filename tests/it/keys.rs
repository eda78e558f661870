//! PostKey, FetchKey, PostPrivateKey, FetchPrivateKey: every rule and every rejection, on
//! SQLite and on Postgres, through a real server and a real gRPC client.

use crate::common::*;
use rsa::pkcs1::der::Encode;
use rsa::pkcs1::{EncodeRsaPublicKey, LineEnding, UintRef};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use secretd::proto::{
    FetchKeyRequest, FetchPrivateKeyRequest, PostKeyRequest, PostPrivateKeyRequest,
};
use sha2::{Digest, Sha256};
use tonic::Code;

both_backends!(
    posts_and_fetches_a_key,
    every_encoding_of_a_key_is_the_same_key,
    rotation_keeps_history_newest_first,
    accepts_8192_bit_keys,
    rejects_bad_keys_and_writes_nothing,
    fetch_key_validates_its_request,
    data_survives_a_restart,
);

/// The SPKI DER inside a PEM fixture (what the server must store).
fn spki_der(pem: &[u8]) -> Vec<u8> {
    let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem).unwrap();
    assert_eq!(label, "PUBLIC KEY");
    der
}

fn fetch_req(user: u64) -> FetchKeyRequest {
    FetchKeyRequest {
        user_id: user,
        homeserver: String::new(),
        known_tree_size: 0,
    }
}

async fn posts_and_fetches_a_key(b: Backend) {
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = s.client(user).await;
    let pem = key_pem(1);
    let der = spki_der(&pem);
    let r = c
        .post_key(PostKeyRequest {
            key_data: pem.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(r.fingerprint, Sha256::digest(&der).to_vec());
    // Re-posting the current key is a no-op.
    let again = c
        .post_key(PostKeyRequest { key_data: pem })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    assert_eq!(again.fingerprint, r.fingerprint);
    // Anyone may fetch it.
    let mut other = s.client(random_user()).await;
    let k = other.fetch_key(fetch_req(user)).await.unwrap().into_inner();
    let current = k.current_key.unwrap();
    assert_eq!(current.key_data, der);
    assert_eq!(current.fingerprint, r.fingerprint);
    assert!(current.posted_at.unwrap().seconds > 1_700_000_000);
    assert!(k.past_keys.is_empty());
    // Our own server name counts as local.
    let named = other
        .fetch_key(FetchKeyRequest {
            user_id: user,
            homeserver: "localhost".into(),
            known_tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.current_key.unwrap().key_data, der);
    s.stop().await;
}

async fn every_encoding_of_a_key_is_the_same_key(b: Backend) {
    let s = TestServer::start(b).await;
    let pem = key_pem(2);
    let key = rsa::PublicKey::from_public_key_pem(std::str::from_utf8(&pem).unwrap()).unwrap();
    let encodings: Vec<(&str, Vec<u8>)> = vec![
        ("spki pem", pem.clone()),
        ("spki der", key.to_public_key_der().unwrap().into_vec()),
        ("pkcs1 der", key.to_pkcs1_der().unwrap().into_vec()),
        (
            "pkcs1 pem",
            key.to_pkcs1_pem(LineEnding::LF).unwrap().into_bytes(),
        ),
        (
            "pem with surrounding whitespace",
            [b"\n  ".to_vec(), pem.clone(), b"\n\n".to_vec()].concat(),
        ),
    ];
    let expected = Sha256::digest(spki_der(&pem)).to_vec();
    // Each encoding posted by a fresh user stores the canonical SPKI DER...
    for (name, bytes) in &encodings {
        let user = random_user();
        let mut c = s.client(user).await;
        let r = c
            .post_key(PostKeyRequest {
                key_data: bytes.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(r.into_inner().fingerprint, expected, "{name}");
        let k = c.fetch_key(fetch_req(user)).await.unwrap().into_inner();
        assert_eq!(k.current_key.unwrap().key_data, spki_der(&pem), "{name}");
    }
    // ...and one user re-posting it in another encoding changes nothing.
    let user = random_user();
    let mut c = s.client(user).await;
    let mut changed = Vec::new();
    for (_, bytes) in &encodings {
        changed.push(
            c.post_key(PostKeyRequest {
                key_data: bytes.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .changed,
        );
    }
    assert_eq!(changed, vec![true, false, false, false, false]);
    let k = c.fetch_key(fetch_req(user)).await.unwrap().into_inner();
    assert!(k.past_keys.is_empty());
    s.stop().await;
}

async fn rotation_keeps_history_newest_first(b: Backend) {
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = s.client(user).await;
    for n in 1..=3 {
        let r = c
            .post_key(PostKeyRequest {
                key_data: key_pem(n),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.changed);
    }
    let k = c.fetch_key(fetch_req(user)).await.unwrap().into_inner();
    let current = k.current_key.unwrap();
    assert_eq!(current.key_data, spki_der(&key_pem(3)));
    let past: Vec<Vec<u8>> = k.past_keys.iter().map(|k| k.key_data.clone()).collect();
    assert_eq!(past, vec![spki_der(&key_pem(2)), spki_der(&key_pem(1))]);
    let times: Vec<_> = std::iter::once(&current)
        .chain(k.past_keys.iter())
        .map(|k| k.posted_at.unwrap())
        .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    // A retired key never becomes current again.
    let st = expect_code(
        c.post_key(PostKeyRequest {
            key_data: key_pem(1),
        })
        .await,
        Code::AlreadyExists,
    );
    assert!(st.message().contains("past keys"), "{}", st.message());
    let after = c.fetch_key(fetch_req(user)).await.unwrap().into_inner();
    assert_eq!(after.current_key.unwrap().key_data, spki_der(&key_pem(3)));
    assert_eq!(after.past_keys.len(), 2);
    s.stop().await;
}

async fn accepts_8192_bit_keys(b: Backend) {
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = s.client(user).await;
    let pem = fixture_bytes("rsa8192.pub.pem");
    c.post_key(PostKeyRequest {
        key_data: pem.clone(),
    })
    .await
    .unwrap();
    let k = c.fetch_key(fetch_req(user)).await.unwrap().into_inner();
    assert_eq!(k.current_key.unwrap().key_data, spki_der(&pem));
    s.stop().await;
}

/// A PKCS#1 DER public key with an arbitrary (not necessarily real) modulus.
fn pkcs1_with_modulus_bits(bits: usize, exponent: &[u8]) -> Vec<u8> {
    let mut n = vec![0xffu8; bits.div_ceil(8)];
    let extra = n.len() * 8 - bits;
    n[0] >>= extra;
    let key = rsa::pkcs1::RsaPublicKey {
        modulus: UintRef::new(&n).unwrap(),
        public_exponent: UintRef::new(exponent).unwrap(),
    };
    key.to_der().unwrap()
}

async fn rejects_bad_keys_and_writes_nothing(b: Backend) {
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = s.client(user).await;
    let cert_label = String::from_utf8(key_pem(1))
        .unwrap()
        .replace("PUBLIC KEY", "CERTIFICATE");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        ("2048-bit", fixture_bytes("rsa2048.pub.pem"), "2048 bits"),
        ("e = 3", fixture_bytes("rsa4096_e3.pub.pem"), "65537"),
        (
            "garbage",
            b"this is not a key at all".to_vec(),
            "not an RSA public key",
        ),
        (
            "random bytes",
            (0..600).map(|i| (i * 7 % 256) as u8).collect(),
            "not an RSA public key",
        ),
        ("oversize", vec![b'A'; 16 * 1024 + 1], "16384"),
        (
            "ed25519",
            fixture_bytes("ed25519.pub.pem"),
            "not an RSA public key",
        ),
        (
            "wrong PEM label",
            cert_label.into_bytes(),
            "not an RSA public key",
        ),
        (
            "truncated PEM",
            key_pem(1)[..400].to_vec(),
            "not an RSA public key",
        ),
        (
            "4095-bit modulus",
            pkcs1_with_modulus_bits(4095, &[1, 0, 1]),
            "4095 bits",
        ),
        (
            "8200-bit modulus",
            pkcs1_with_modulus_bits(8200, &[1, 0, 1]),
            "8200 bits",
        ),
        (
            "even modulus",
            {
                let mut n = vec![0xffu8; 512];
                n[511] = 0xfe;
                rsa::pkcs1::RsaPublicKey {
                    modulus: UintRef::new(&n).unwrap(),
                    public_exponent: UintRef::new(&[1, 0, 1]).unwrap(),
                }
                .to_der()
                .unwrap()
            },
            "not a valid RSA public key",
        ),
        (
            "trailing garbage after DER",
            [pkcs1_with_modulus_bits(4096, &[1, 0, 1]), vec![0, 1, 2]].concat(),
            "not an RSA public key",
        ),
    ];
    for (name, bytes, needle) in cases {
        let st = expect_code(
            c.post_key(PostKeyRequest { key_data: bytes }).await,
            Code::InvalidArgument,
        );
        assert!(st.message().contains(needle), "{name}: {:?}", st.message());
    }
    // Nothing was stored, and the server still works.
    expect_code(c.fetch_key(fetch_req(user)).await, Code::NotFound);
    c.post_key(PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .unwrap();
    assert!(c.fetch_key(fetch_req(user)).await.is_ok());
    s.stop().await;
}

async fn fetch_key_validates_its_request(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let st = expect_code(c.fetch_key(fetch_req(random_user())).await, Code::NotFound);
    assert!(st.message().contains("has not posted a public key"));
    expect_code(c.fetch_key(fetch_req(0)).await, Code::InvalidArgument);
    expect_code(c.fetch_key(fetch_req(1 << 63)).await, Code::InvalidArgument);
    let st = expect_code(
        c.fetch_key(FetchKeyRequest {
            user_id: 5,
            homeserver: "other.example".into(),
            known_tree_size: 0,
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("federation is off"), "{st:?}");
    s.stop().await;
}

fn blob(data: &[u8], expected: Option<u64>) -> PostPrivateKeyRequest {
    PostPrivateKeyRequest {
        key_data: data.to_vec(),
        expected_version: expected,
    }
}

async fn data_survives_a_restart(b: Backend) {
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = s.client(user).await;
    c.post_key(PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .unwrap();
    c.post_key(PostKeyRequest {
        key_data: key_pem(2),
    })
    .await
    .unwrap();
    c.post_private_key(blob(b"backup", None)).await.unwrap();
    drop(c);
    let s = s.restart().await;
    let mut c = s.client(user).await;
    let k = c.fetch_key(fetch_req(user)).await.unwrap().into_inner();
    assert_eq!(k.current_key.unwrap().key_data, spki_der(&key_pem(2)));
    assert_eq!(k.past_keys.len(), 1);
    let f = c
        .fetch_private_key(FetchPrivateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((f.key_data.as_slice(), f.version), (&b"backup"[..], 1));
    s.stop().await;
}
