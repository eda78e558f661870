//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, outside the workspace).
//!
//! Not part of the server's API: hidden from the docs, used only by `fuzz/fuzz_targets/*`
//! and by the regression tests that replay what the fuzzers found. Each function takes
//! arbitrary input, runs the code a hostile client reaches with it, and panics only when
//! an invariant the server relies on is broken (a panic is what the fuzzer reports).

use std::sync::OnceLock;

use prost::Message;
use tonic::Code;

use crate::auth::Verifier;
use crate::domain::StreamId;
use crate::error::Error;
use crate::keycheck;
use crate::proto;
use crate::requests;

pub use crate::store::append::check::{History, Scenario, check as check_plan_batch};

/// The HS256 secret of the fuzzing verifier (tokens the fuzzer signs use it too).
pub const FUZZ_SECRET: &str = "fuzzing-secret-0123456789abcdef-0123456789";

/// Public-key parsing and canonicalisation: whatever the bytes, an answer and no panic;
/// an accepted key is canonical (canonicalising its canonical form gives it back, with
/// the same fingerprint), and a refusal is INVALID_ARGUMENT.
pub fn canonicalize_key(input: &[u8]) {
    match keycheck::canonicalize(input) {
        Ok(key) => {
            let again = keycheck::canonicalize(&key.spki_der)
                .expect("the canonical form of an accepted key is accepted");
            assert_eq!(
                again.spki_der, key.spki_der,
                "canonical form is a fixed point"
            );
            assert_eq!(again.fingerprint, key.fingerprint);
            assert_eq!(key.fingerprint, keycheck::fingerprint(&key.spki_der));
        }
        Err(e) => assert_invalid(&e, "canonicalize"),
    }
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let settings = crate::config::Settings {
            jwt_secret: FUZZ_SECRET.into(),
            ..crate::config::defaults()
        };
        Verifier::from_settings(&settings).expect("the fuzzing verifier builds")
    })
}

/// Token verification of an arbitrary bearer token: no panic, and a refusal is
/// UNAUTHENTICATED with a message a person can read.
pub fn verify_token(token: &str) {
    if let Err(status) = verifier().verify_caller(token) {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(!status.message().is_empty());
    }
}

/// Claim checking behind a valid signature: `claims` (arbitrary bytes; only JSON objects
/// get this far in a real token) is signed with [`FUZZ_SECRET`] and verified. Accepted
/// tokens name a user id in 1 ..= 2^63-1.
pub fn verify_signed_claims(claims: &[u8]) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(claims)
    else {
        return;
    };
    let Ok(token) = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &map,
        &jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET.as_bytes()),
    ) else {
        return;
    };
    match verifier().verify_caller(&token) {
        Ok(caller) => assert!(caller.user.get() >= 1, "accepted user id {}", caller.user),
        Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
    }
}

/// The `token` target: the first byte picks raw bearer-token bytes (even) or a claims
/// object signed with the fuzzing key (odd), so the fuzzer reaches the claim checks too.
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            verify_token(token);
        }
    } else {
        verify_signed_claims(rest);
    }
}

/// The `requests` target: the first byte picks the request type, the rest goes through
/// [`validate_request`].
pub fn request(data: &[u8]) {
    if let Some((&kind, rest)) = data.split_first() {
        validate_request(kind, rest);
    }
}

/// The request messages a client sends, by the index [`validate_request`] takes.
pub const REQUEST_TYPES: &[&str] = &[
    "PostKeyRequest",
    "FetchKeyRequest",
    "PostPrivateKeyRequest",
    "SendInviteRequest",
    "FetchInvitesRequest",
    "ListChannelPairsRequest",
    "LeaveChannelPairRequest",
    "RemoveMemberRequest",
    "PostMessageRequest",
    "FetchMessagesRequest",
    "ManageStream",
];

/// Decodes `bytes` as request type `kind` (an index into [`REQUEST_TYPES`], taken modulo
/// its length) and parses it the way its handler does (the `TryFrom` conversions of
/// `requests.rs`) before touching the store. Bytes
/// that are not the message are a decode error (tonic refuses those before a handler
/// runs); a decoded message is accepted or refused with INVALID_ARGUMENT, never a panic.
pub fn validate_request(kind: u8, bytes: &[u8]) {
    /// Decodes `bytes` as `M` and parses it into the handler's request type `R`.
    fn parsed<M, R>(bytes: &[u8]) -> Option<Result<(), Error>>
    where
        M: Message + Default,
        R: TryFrom<M, Error = Error>,
    {
        decode::<M>(bytes).map(|m| R::try_from(m).map(|_| ()))
    }
    let result = match kind as usize % REQUEST_TYPES.len() {
        0 => parsed::<proto::PostKeyRequest, requests::PostKey>(bytes),
        1 => parsed::<proto::FetchKeyRequest, requests::FetchKey>(bytes),
        2 => parsed::<proto::PostPrivateKeyRequest, requests::PostPrivateKey>(bytes),
        3 => parsed::<proto::SendInviteRequest, requests::SendInvite>(bytes),
        4 => decode::<proto::FetchInvitesRequest>(bytes).map(|r| {
            let _ = requests::FetchInvites::from(r);
            Ok(())
        }),
        5 => parsed::<proto::ListChannelPairsRequest, requests::ListChannelPairs>(bytes),
        6 => parsed::<proto::LeaveChannelPairRequest, requests::LeaveChannelPair>(bytes),
        7 => parsed::<proto::RemoveMemberRequest, requests::RemoveMember>(bytes),
        8 => parsed::<proto::PostMessageRequest, requests::PostMessage>(bytes),
        9 => parsed::<proto::FetchMessagesRequest, requests::FetchMessages>(bytes),
        _ => decode::<proto::ManageStream>(bytes).map(|r| {
            for id in r.subscribe_to.iter().chain(&r.unsubscribe_to) {
                StreamId::parse("subscribe_to", id)?;
            }
            for c in &r.resume_from {
                StreamId::parse("resume_from.stream_id", &c.stream_id)?;
            }
            Ok(())
        }),
    };
    if let Some(Err(e)) = result {
        assert_invalid(&e, REQUEST_TYPES[kind as usize % REQUEST_TYPES.len()]);
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

/// A refusal of client input is INVALID_ARGUMENT with a message free of the characters
/// clients decode inconsistently.
fn assert_invalid(e: &Error, what: &str) {
    let status = tonic::Status::from(e.clone());
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(!status.message().is_empty(), "{what}: empty message");
}

/// The counter rules: `plan_batch` checked against the model in `store/append/check.rs`
/// on a scenario built from `data` (three streams with histories, one unknown stream,
/// outsiders, a batch of up to 11 posts, a gap). Panics with the scenario on a mismatch.
pub fn plan_batch(data: &[u8]) {
    let scenario = scenario_from_bytes(data);
    if let Err(why) = check_plan_batch(&scenario) {
        panic!("{why}\n{scenario:?}");
    }
}

/// Reads fuzzer bytes as small numbers; zeros once they run out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    /// A counter: mostly small and close together; sometimes anywhere up to i64::MAX.
    fn counter(&mut self) -> i64 {
        match self.byte() {
            250..=255 => {
                let mut v = 0u64;
                for _ in 0..8 {
                    v = (v << 8) | u64::from(self.byte());
                }
                (v >> 1).max(1) as i64
            }
            b => i64::from(b % 24) + 1,
        }
    }

    fn user(&mut self) -> i64 {
        i64::from(self.byte() % 3) + 1
    }
}

fn scenario_from_bytes(data: &[u8]) -> Scenario {
    use crate::store::AppendRequest;
    use uuid::Uuid;
    let mut b = Reader(data);
    let stream = |i: u8| Uuid::from_u128(u128::from(i % 4) + 1);
    let streams = (0..3u8)
        .map(|i| {
            let n = b.byte() % 6;
            let events = (0..n)
                .map(|_| (b.counter(), b.user(), vec![b.byte() % 2]))
                .collect();
            History {
                stream: stream(i),
                events,
                member_epoch: i64::from(b.byte() % 3),
            }
        })
        .collect();
    let outsiders = (0..b.byte() % 3)
        .map(|_| (stream(b.byte()), b.user()))
        .collect();
    let max_gap = match b.byte() {
        255 => i64::MAX,
        g => i64::from(g % 8) + 1,
    };
    let batch = (0..b.byte() % 12)
        .map(|_| AppendRequest {
            stream_id: stream(b.byte()),
            sender: b.user(),
            sender_origin: None,
            counter: b.counter(),
            body: bytes::Bytes::from(vec![b.byte() % 2]),
        })
        .collect();
    Scenario {
        streams,
        outsiders,
        batch,
        max_gap,
    }
}
