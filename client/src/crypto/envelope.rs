//! The envelope: what `EncryptedMessage.message` holds.
//!
//! ```text
//! version (1 byte, = 1) ‖ epoch id (16) ‖ salt (16) ‖ AES-256-GCM ciphertext ‖ tag (16)
//! AAD = "secretd/v1/event" ‖ stream id (16) ‖ counter (u64 BE) ‖ epoch id (16)
//! ```
//! The key and nonce come from [`super::ratchet::message_key_nonce`] with the envelope's
//! salt; the plaintext is an encoded `SignedEvent`.

use super::ratchet::message_key_nonce;
use super::{TAG_LEN, open, seal, take};
use crate::error::Error;
use crate::user::UserRef;

/// The envelope format this client writes and the only one it reads.
pub const VERSION: u8 = 1;
/// Associated-data label of an envelope.
pub const AAD_LABEL: &[u8] = b"secretd/v1/event";
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + 16 + 16;

/// Where an event sits: what its keys and associated data are bound to.
#[derive(Clone, Copy, Debug)]
pub struct Position<'a> {
    /// The stream id (16 bytes).
    pub stream: &'a [u8; 16],
    /// The ratchet counter (`EncryptedMessage.id`).
    pub counter: u64,
    /// The epoch id.
    pub epoch: &'a [u8; 16],
    /// The sender as the pair's homeserver reports them.
    pub sender: &'a UserRef,
}

/// The parsed, still encrypted parts of an envelope.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The epoch the event was encrypted in.
    pub epoch: [u8; 16],
    /// The per-message salt.
    pub salt: [u8; 16],
    /// Ciphertext ‖ tag.
    pub ciphertext: &'a [u8],
}

fn aad(stream: &[u8; 16], counter: u64, epoch: &[u8; 16]) -> Vec<u8> {
    let mut aad = AAD_LABEL.to_vec();
    aad.extend_from_slice(stream);
    aad.extend_from_slice(&counter.to_be_bytes());
    aad.extend_from_slice(epoch);
    aad
}

/// Encrypts `plaintext` under message key `mk` at `pos` with the random `salt`.
pub fn seal_event(mk: &[u8; 32], pos: Position<'_>, salt: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    let (key, nonce) = message_key_nonce(mk, salt, pos.stream, pos.counter, pos.sender);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(VERSION);
    out.extend_from_slice(pos.epoch);
    out.extend_from_slice(salt);
    out.extend_from_slice(&seal(
        &key,
        &nonce,
        &aad(pos.stream, pos.counter, pos.epoch),
        plaintext,
    ));
    out
}

/// Splits an envelope into its parts, refusing unknown versions.
pub fn parse(bytes: &[u8]) -> Result<Envelope<'_>, Error> {
    let mut rest = bytes;
    let [version] = take::<1>(&mut rest, "envelope")?;
    if version != VERSION {
        return Err(Error::Protocol(format!(
            "envelope version {version} is not supported (this client reads version {VERSION})"
        )));
    }
    let epoch = take::<16>(&mut rest, "envelope")?;
    let salt = take::<16>(&mut rest, "envelope")?;
    if rest.len() < TAG_LEN {
        return Err(Error::Protocol("envelope is truncated".into()));
    }
    Ok(Envelope {
        epoch,
        salt,
        ciphertext: rest,
    })
}

/// Decrypts an envelope's ciphertext with message key `mk`; `pos.epoch` must be the
/// envelope's epoch.
pub fn open_event(mk: &[u8; 32], pos: Position<'_>, env: &Envelope<'_>) -> Result<Vec<u8>, Error> {
    let (key, nonce) = message_key_nonce(mk, &env.salt, pos.stream, pos.counter, pos.sender);
    open(
        &key,
        &nonce,
        &aad(pos.stream, pos.counter, pos.epoch),
        env.ciphertext,
    )
    .ok_or_else(|| {
        Error::Tampered(format!(
            "the event at counter {} does not decrypt: it was changed, or encrypted for another \
             position or sender",
            pos.counter
        ))
    })
}
