//! Trust: which identity keys a room vouches for (its trusted set, grown by invites and
//! by TrustKey and RoomState events of trusted members).

use crate::crypto::identity::fingerprint_hex;
use crate::error::{Error, Result};
use crate::state::Room;
use crate::user::{self, UserRef};

/// Adds `(who, fp)` to the room's trusted keys.
pub(crate) fn add_trust(room: &mut Room, who: &UserRef, fp: &[u8]) {
    room.trusted
        .entry(user::display(who))
        .or_default()
        .insert(fingerprint_hex(fp));
}

/// Fails unless `room` trusts `fp` for `who`.
pub(crate) fn check_trusted(room: &Room, who: &UserRef, fp: &[u8]) -> Result<()> {
    let name = user::display(who);
    let hex = fingerprint_hex(fp);
    if room
        .trusted
        .get(&name)
        .is_some_and(|set| set.contains(&hex))
    {
        Ok(())
    } else {
        Err(Error::Untrusted(format!(
            "user {name}'s key {hex} is not trusted in room {:?} (no TrustKey or room state names it)",
            room.name
        )))
    }
}
