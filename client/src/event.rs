//! Event plaintexts: a signed, versioned [`EventBody`] inside a [`SignedEvent`], and the
//! signed [`InviteBody`] inside a [`SignedInvite`].

use prost::Message;

use crate::crypto::identity::{Identity, PublicIdentity};
use crate::error::Error;
pub use crate::proto::e2ee::event_body::Kind;
pub use crate::proto::e2ee::{
    ChainState, EventBody, InviteBody, Rekey, RoomState, SignedEvent, SignedInvite, Text, TrustKey,
    TrustedUser,
};
use crate::user::UserRef;

/// The body format version this client writes and reads (events and invites).
pub const BODY_VERSION: u32 = 1;
/// Signature label of an event.
pub const EVENT_SIG_LABEL: &[u8] = b"secretd/v1/event-sig";
/// Signature label of an invite.
pub const INVITE_SIG_LABEL: &[u8] = b"secretd/v1/invite-sig";

/// What an event signature covers besides the body: where the event sits.
pub fn event_signing_input(
    stream: &[u8; 16],
    counter: u64,
    epoch: &[u8; 16],
    body: &[u8],
) -> Vec<u8> {
    let mut input = EVENT_SIG_LABEL.to_vec();
    input.extend_from_slice(stream);
    input.extend_from_slice(&counter.to_be_bytes());
    input.extend_from_slice(epoch);
    input.extend_from_slice(body);
    input
}

/// A body from `sender` (whose key is `identity`) with the client's clock.
pub fn body(sender: UserRef, identity: &Identity, kind: Kind) -> EventBody {
    EventBody {
        version: BODY_VERSION,
        sender: Some(sender),
        sender_fingerprint: identity.fingerprint().to_vec(),
        client_time_ms: now_ms(),
        kind: Some(kind),
        seen_heads: Vec::new(),
    }
}

/// Encodes and signs `body` for the position (stream, counter, epoch): the envelope
/// plaintext.
pub fn sign_event(
    identity: &Identity,
    stream: &[u8; 16],
    counter: u64,
    epoch: &[u8; 16],
    body: &EventBody,
) -> Result<Vec<u8>, Error> {
    let body = body.encode_to_vec();
    let signature = identity.sign(&event_signing_input(stream, counter, epoch, &body))?;
    Ok(SignedEvent { body, signature }.encode_to_vec())
}

/// Parses an envelope plaintext into its signed bytes, signature and body, refusing
/// unknown body versions and bodies without a sender or kind.
pub fn parse_event(plaintext: &[u8]) -> Result<(SignedEvent, EventBody), Error> {
    let signed = SignedEvent::decode(plaintext)
        .map_err(|e| Error::Protocol(format!("event plaintext does not parse: {e}")))?;
    let body = EventBody::decode(signed.body.as_slice())
        .map_err(|e| Error::Protocol(format!("event body does not parse: {e}")))?;
    if body.version != BODY_VERSION {
        return Err(Error::Protocol(format!(
            "event body version {} is not supported (this client reads version {BODY_VERSION})",
            body.version
        )));
    }
    if body.sender.is_none() || body.kind.is_none() {
        return Err(Error::Protocol(
            "event body lacks a sender or a kind".into(),
        ));
    }
    Ok((signed, body))
}

/// Verifies an event's signature with the sender's key.
pub fn verify_event(
    key: &PublicIdentity,
    stream: &[u8; 16],
    counter: u64,
    epoch: &[u8; 16],
    signed: &SignedEvent,
) -> Result<(), Error> {
    key.verify(
        &event_signing_input(stream, counter, epoch, &signed.body),
        &signed.signature,
    )
}

fn invite_signing_input(body: &[u8]) -> Vec<u8> {
    let mut input = INVITE_SIG_LABEL.to_vec();
    input.extend_from_slice(body);
    input
}

/// Encodes and signs an invite body: the invite's plaintext.
pub fn sign_invite(identity: &Identity, body: &InviteBody) -> Result<Vec<u8>, Error> {
    let body = body.encode_to_vec();
    let signature = identity.sign(&invite_signing_input(&body))?;
    Ok(SignedInvite { body, signature }.encode_to_vec())
}

/// Parses an invite plaintext, refusing unknown versions.
pub fn parse_invite(plaintext: &[u8]) -> Result<(SignedInvite, InviteBody), Error> {
    let signed = SignedInvite::decode(plaintext)
        .map_err(|e| Error::Protocol(format!("invite plaintext does not parse: {e}")))?;
    let body = InviteBody::decode(signed.body.as_slice())
        .map_err(|e| Error::Protocol(format!("invite body does not parse: {e}")))?;
    if body.version != BODY_VERSION {
        return Err(Error::Protocol(format!(
            "invite version {} is not supported (this client reads version {BODY_VERSION})",
            body.version
        )));
    }
    Ok((signed, body))
}

/// Verifies an invite's signature with the inviter's key.
pub fn verify_invite(key: &PublicIdentity, signed: &SignedInvite) -> Result<(), Error> {
    key.verify(&invite_signing_input(&signed.body), &signed.signature)
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
