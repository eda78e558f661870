//! Hybrid encryption of invites to the invitee's identity key.
//!
//! ```text
//! "sdiv" ‖ version (1 byte, = 1) ‖ len (u16 BE) ‖ RSA-OAEP-SHA256(invitee key, k) (len bytes)
//!        ‖ nonce (12) ‖ AES-256-GCM(k, nonce, SignedInvite, AAD)
//! k   = 32 random bytes, fresh per invite
//! AAD = "secretd/v1/invite" ‖ pair id (16) ‖ invitee ref ‖ every byte before the ciphertext
//! ```

use zeroize::Zeroizing;

use super::identity::{Identity, PublicIdentity};
use super::{NONCE_LEN, open, random, seal, take};
use crate::error::Error;
use crate::user::{self, UserRef};

/// Magic bytes of a sealed invite.
pub const MAGIC: &[u8; 4] = b"sdiv";
/// The invite format this client writes and reads.
pub const VERSION: u8 = 1;
/// Associated-data label of an invite.
pub const AAD_LABEL: &[u8] = b"secretd/v1/invite";

fn aad(pair: &[u8; 16], invitee: &UserRef, header: &[u8]) -> Vec<u8> {
    let mut aad = AAD_LABEL.to_vec();
    aad.extend_from_slice(pair);
    aad.extend_from_slice(&user::encode(invitee));
    aad.extend_from_slice(header);
    aad
}

/// Encrypts an invite payload to `to` for `invitee` in `pair`.
pub fn seal_invite(
    to: &PublicIdentity,
    pair: &[u8; 16],
    invitee: &UserRef,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let key = Zeroizing::new(random::<32>()?);
    let nonce = random::<NONCE_LEN>()?;
    let wrapped = to.encrypt(key.as_ref())?;
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&nonce);
    let sealed = seal(&key, &nonce, &aad(pair, invitee, &out), payload);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts an invite sent to `me` (as `invitee`) in `pair`.
pub fn open_invite(
    me: &Identity,
    pair: &[u8; 16],
    invitee: &UserRef,
    sealed: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut rest = sealed;
    if &take::<4>(&mut rest, "invite")? != MAGIC {
        return Err(Error::Protocol(
            "not a secretd invite (bad magic bytes)".into(),
        ));
    }
    let [version] = take::<1>(&mut rest, "invite")?;
    if version != VERSION {
        return Err(Error::Protocol(format!(
            "invite version {version} is not supported (this client reads version {VERSION})"
        )));
    }
    let len = u16::from_be_bytes(take::<2>(&mut rest, "invite")?) as usize;
    if rest.len() < len + NONCE_LEN {
        return Err(Error::Protocol("invite is truncated".into()));
    }
    let (wrapped, after) = rest.split_at(len);
    rest = after;
    let nonce = take::<NONCE_LEN>(&mut rest, "invite")?;
    let key = Zeroizing::new(me.decrypt(wrapped)?);
    let key: &[u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| Error::Protocol("the invite's wrapped key is not 32 bytes".into()))?;
    let header = &sealed[..sealed.len() - rest.len()];
    open(key, &nonce, &aad(pair, invitee, header), rest).ok_or_else(|| {
        Error::Tampered(
            "the invite does not decrypt: it was changed or is for another pair or user".into(),
        )
    })
}
