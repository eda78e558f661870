//! Accepting invites: decrypt, authenticate, and take the keys — under the rules that
//! keep a hostile server out (docs/e2ee.md §7 and §13):
//!
//! - the inviter signs with the key the server lists as their *current* one (a key
//!   listed only as a past key signs nothing new), and that key matches this device's pin
//!   for them (pinned now if it is the first one seen);
//! - into a room the device already holds, only a member the room already trusts may
//!   invite, and the invite's room state (name, trusted users) is ignored: an invite
//!   never vouches for itself there;
//! - its epochs pass [`super::epochs::check`]: one epoch per generation, only the next
//!   generation new in a held room, chains that agree with what the device holds.

use std::collections::BTreeMap;

use super::remote::Frame;
use super::trust::{add_trust, check_trusted};
use super::{Device, epochs};
use crate::crypto::identity::{PublicIdentity, fingerprint_hex};
use crate::crypto::invite::open_invite;
use crate::crypto::uuid_bytes;
use crate::error::{Error, Result};
use crate::event::{self, InviteBody};
use crate::proto::secret::ReceivedInvite;
use crate::state::{Room, StreamState};
use crate::user::{self, UserRef};

/// The outcome of processing one invite.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The invite id.
    pub invite_id: u64,
    /// The pair.
    pub pair_id: String,
    /// The inviter.
    pub from: UserRef,
    /// The room's name, or why the invite was refused.
    pub result: std::result::Result<String, String>,
    /// True when the invite brought a room this device did not use before: a room it
    /// never had, or one the user had left or been removed from (joined again). False
    /// for new keys of a room it already uses (a rotation, a self-invite).
    pub new_room: bool,
}

impl Device {
    /// Processes every invite not processed yet (oldest first): decrypts, authenticates
    /// and merges each into the device's rooms. A refused invite is reported and skipped.
    pub async fn accept_invites(&mut self) -> Result<Vec<Accepted>> {
        let invites = self
            .api
            .fetch_invites_after(self.state.invites_after)
            .await?;
        let mut out = Vec::with_capacity(invites.len());
        for invite in invites {
            out.push(self.accept_invite(&invite).await);
        }
        Ok(out)
    }

    /// Processes one invite (from FetchInvites or a live subscription). A refused invite
    /// changes nothing but the device's invite cursor (and, for a changed key, the record
    /// of the key offered).
    pub async fn accept_invite(&mut self, invite: &ReceivedInvite) -> Accepted {
        // The inviter as this device's homeserver names them.
        let from = UserRef {
            homeserver: invite.from_homeserver.clone(),
            user_id: invite.from_user,
        };
        let pair_id = invite
            .pair
            .as_ref()
            .map(|p| p.pair_id.clone())
            .unwrap_or_default();
        let in_use = self
            .state
            .rooms
            .get(&pair_id)
            .is_some_and(|r| r.lost.is_none());
        let result = self
            .open_and_merge(invite, &from)
            .await
            .map_err(|e| e.to_string());
        if result.is_ok()
            && let Some(room) = self.state.rooms.get_mut(&pair_id)
            && room.lost.is_some()
        {
            // Invited again after leaving or a removal. Should the server still refuse
            // the room, the next catch-up marks it lost again.
            room.set_lost(None);
        }
        self.state.invites_after = self.state.invites_after.max(invite.invite_id);
        Accepted {
            invite_id: invite.invite_id,
            pair_id,
            from,
            new_room: !in_use && result.is_ok(),
            result,
        }
    }

    /// Opens an invite and checks everything that does not depend on the room; also the
    /// naming of the pair's homeserver.
    async fn open_checked(
        &mut self,
        invite: &ReceivedInvite,
        from: &UserRef,
    ) -> Result<(InviteBody, [u8; 32], Frame)> {
        let pair = invite
            .pair
            .as_ref()
            .ok_or_else(|| Error::Protocol("the invite names no channel pair".into()))?;
        let frame = if invite.pair_homeserver.is_empty() {
            Frame::local()
        } else {
            Frame {
                pair: invite.pair_homeserver.clone(),
                home: self.home_name().await?,
            }
        };
        let me = frame.to_room(&self.me);
        let plaintext = open_invite(
            &self.identity,
            &uuid_bytes(&pair.pair_id)?,
            &me,
            &invite.invite,
        )?;
        let (signed, body) = event::parse_invite(&plaintext)?;
        let mismatch = |what: &str| {
            Error::Protocol(format!(
                "the invite's {what} differs from what the server says"
            ))
        };
        if (&body.pair_id, &body.message_id, &body.state_id)
            != (&pair.pair_id, &pair.message_id, &pair.state_id)
        {
            return Err(mismatch("channel pair"));
        }
        if body.invitee.as_ref() != Some(&me) || body.invitee_fingerprint != self.fingerprint() {
            return Err(mismatch("invitee"));
        }
        if body.inviter.as_ref() != Some(&frame.to_room(from)) {
            return Err(mismatch("inviter"));
        }
        let fp: [u8; 32] = body
            .inviter_fingerprint
            .as_slice()
            .try_into()
            .map_err(|_| Error::Protocol("the inviter's fingerprint is not 32 bytes".into()))?;
        let key = self.inviter_key(from, &fp).await?;
        event::verify_invite(&key, &signed)?;
        Ok((body, fp, frame))
    }

    /// The key an inviter signs with: this device's own for a self-invite; otherwise the
    /// server's *current* key for them, which must be the one pinned (or is pinned now).
    async fn inviter_key(&mut self, from: &UserRef, fp: &[u8; 32]) -> Result<PublicIdentity> {
        if *from == self.me {
            if *fp != self.fingerprint() {
                return Err(Error::Untrusted(format!(
                    "the invite claims to come from your own account but is signed with key \
                     {}, not this device's identity key",
                    fingerprint_hex(fp)
                )));
            }
            return Ok(self.identity.public().clone());
        }
        let current = self.server_key(from).await?;
        if current.fingerprint() != *fp {
            return Err(Error::Untrusted(format!(
                "the invite from user {} is signed with key {}, which is not their current key \
                 ({}): a key the server lists only as a past key signs nothing new",
                user::display(from),
                fingerprint_hex(fp),
                fingerprint_hex(&current.fingerprint())
            )));
        }
        self.check_pin(from, fp, false)?;
        Ok(current)
    }

    async fn open_and_merge(&mut self, invite: &ReceivedInvite, from: &UserRef) -> Result<String> {
        let (body, fp, frame) = self.open_checked(invite, from).await?;
        let pair_id = body.pair_id.clone();
        // In the room, the inviter is named as the pair's homeserver names them.
        let inviter = frame.to_room(from);
        if let Some(held) = self.state.rooms.get(&pair_id) {
            if held.homeserver != frame.pair {
                return Err(Error::Protocol(format!(
                    "the invite places room [{}] on homeserver {:?}, but it lives on {:?}",
                    held.name, frame.pair, held.homeserver
                )));
            }
            // A room this device holds: only a member it already trusts brings keys, and
            // what the invite says about the room is not taken.
            if *from != self.me {
                check_trusted(held, &inviter, &fp).map_err(|_| {
                    Error::Untrusted(format!(
                        "user {} (key {}) is not trusted in room [{}], so their invite into it \
                         is refused: an invite never vouches for itself",
                        user::display(from),
                        fingerprint_hex(&fp),
                        held.name
                    ))
                })?;
            }
            let message = epochs::check(Some(&held.message), &body.message_chains)?;
            let state = epochs::check(Some(&held.state), &body.state_chains)?;
            let name = held.name.clone();
            let room = self.room_mut(&pair_id)?;
            for (id, e) in message {
                room.message.add_epoch(id, e);
            }
            for (id, e) in state {
                room.state.add_epoch(id, e);
            }
            return Ok(name);
        }
        // A new room: the inviter (pinned above) vouches for its state and members.
        let state = body.room.clone().unwrap_or_default();
        let mut incoming = Room {
            pair_id: pair_id.clone(),
            homeserver: frame.pair.clone(),
            endpoint: String::new(),
            message: StreamState::new(body.message_id.clone()),
            state: StreamState::new(body.state_id.clone()),
            name: state.name.clone(),
            photo: state.photo.clone(),
            photo_url: state.photo_url.clone(),
            name_set_at: 0,
            trusted: BTreeMap::new(),
            lost: None,
            lost_changed_ms: 0,
            rekey_pending: BTreeMap::new(),
        };
        for t in &state.trusted {
            let Some(who) = &t.user else { continue };
            for key in &t.fingerprints {
                add_trust(&mut incoming, who, key);
            }
        }
        if check_trusted(&incoming, &inviter, &fp).is_err() {
            return Err(Error::Untrusted(format!(
                "the inviter {} does not list its own key in the invite's room state",
                user::display(from)
            )));
        }
        for (id, e) in epochs::check(None, &body.message_chains)? {
            incoming.message.add_epoch(id, e);
        }
        for (id, e) in epochs::check(None, &body.state_chains)? {
            incoming.state.add_epoch(id, e);
        }
        let name = incoming.name.clone();
        self.state.rooms.insert(pair_id, incoming);
        Ok(name)
    }
}
