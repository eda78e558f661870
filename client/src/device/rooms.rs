//! Rooms: creating a pair and seeding its ratchets, and inviting (a TrustKey for the
//! invitee's pinned key, then a hybrid-encrypted invite). Accepting is
//! [`super::accepting`].

use std::collections::BTreeMap;

use super::epochs::{History, chain_states, chain_states_since, new_epoch};
use super::trust::add_trust;
use super::{Device, StreamKind};
use crate::crypto::identity::{PublicIdentity, fingerprint_hex};
use crate::crypto::invite::seal_invite;
use crate::crypto::uuid_bytes;
use crate::error::{Error, Result};
use crate::event::{self, ChainState, InviteBody, Kind, RoomState, TrustKey, TrustedUser};
use crate::state::{Room, StreamState};
use crate::user::{self, UserRef};

/// Largest photo a room state may carry inline.
pub const MAX_PHOTO_BYTES: usize = 16 * 1024;

pub(super) fn room_state_of(room: &Room) -> RoomState {
    RoomState {
        name: room.name.clone(),
        photo: room.photo.clone(),
        photo_url: room.photo_url.clone(),
        trusted: room
            .trusted
            .iter()
            .filter_map(|(who, fps)| {
                Some(TrustedUser {
                    user: Some(user::parse(who).ok()?),
                    fingerprints: fps.iter().filter_map(|f| hex::decode(f).ok()).collect(),
                })
            })
            .collect(),
    }
}

impl Device {
    /// Creates a room: a channel pair with fresh ratchets on both streams, this user
    /// trusted, a self-invite (so other devices of this user get the keys) and a RoomState
    /// event. Returns the pair id.
    pub async fn create_room(
        &mut self,
        name: &str,
        photo: Vec<u8>,
        photo_url: &str,
    ) -> Result<String> {
        if photo.len() > MAX_PHOTO_BYTES {
            return Err(Error::State(format!(
                "the photo has {} bytes; inline photos may have at most {MAX_PHOTO_BYTES} (give a URL instead)",
                photo.len()
            )));
        }
        let pair = self.api.generate_channel_pair().await?;
        let mut streams = Vec::new();
        for id in [&pair.message_id, &pair.state_id] {
            let mut stream = StreamState::new(id.clone());
            let (epoch_id, epoch) = new_epoch(id, 0, 0)?;
            stream.epochs.insert(epoch_id, epoch);
            streams.push(stream);
        }
        let [message, state] = <[StreamState; 2]>::try_from(streams).expect("two streams");
        let mut room = Room {
            pair_id: pair.pair_id.clone(),
            homeserver: String::new(),
            endpoint: String::new(),
            message,
            state,
            name: name.to_string(),
            photo,
            photo_url: photo_url.to_string(),
            name_set_at: 0,
            trusted: BTreeMap::new(),
            lost: None,
            lost_changed_ms: 0,
            rekey_pending: BTreeMap::new(),
        };
        add_trust(&mut room, &self.me.clone(), &self.fingerprint());
        let state_event = Kind::RoomState(room_state_of(&room));
        self.state.rooms.insert(pair.pair_id.clone(), room);
        // The self-invite first: after it, any device of this user can restore the room.
        let me = self.me.clone();
        self.invite_user(&pair.pair_id, &me, History::All, false)
            .await?;
        self.post_event(&pair.pair_id, StreamKind::State, state_event)
            .await?;
        Ok(pair.pair_id)
    }

    /// Renames a room: a RoomState event with the new name (and the room's photo and
    /// trusted users) on the state stream.
    pub async fn rename(&mut self, room: &str, name: &str) -> Result<()> {
        let pair_id = self.room(room)?.pair_id.clone();
        if let Some(e) = self.lost_error(&pair_id) {
            return Err(e);
        }
        self.catch_up_room(&pair_id).await?;
        let mut state = room_state_of(self.room(&pair_id)?);
        state.name = name.to_string();
        self.post_event(&pair_id, StreamKind::State, Kind::RoomState(state))
            .await?;
        Ok(())
    }

    /// Test hook: posts any event kind on either stream, as a buggy or hostile member's
    /// client could (readers must refuse what does not belong).
    #[doc(hidden)]
    pub async fn post_raw(&mut self, room: &str, stream: StreamKind, kind: Kind) -> Result<u64> {
        let pair_id = self.room(room)?.pair_id.clone();
        Ok(self.post_event(&pair_id, stream, kind).await?.event_id)
    }

    /// Invites `who` (as this device's homeserver names them) into a room: their key (the server's current one, checked against
    /// this device's pin: a changed key is refused unless `accept_new_key`), a TrustKey
    /// for it on the state stream, then the room's keys from the point `history` says,
    /// encrypted to that key. Returns the invite id.
    pub async fn invite(
        &mut self,
        room: &str,
        who: &UserRef,
        history: History,
        accept_new_key: bool,
    ) -> Result<u64> {
        let pair_id = self.room(room)?.pair_id.clone();
        if let Some(e) = self.lost_error(&pair_id) {
            return Err(e);
        }
        self.invite_user(&pair_id, who, history, accept_new_key)
            .await
    }

    pub(super) async fn invite_user(
        &mut self,
        pair_id: &str,
        who: &UserRef,
        history: History,
        accept_new_key: bool,
    ) -> Result<u64> {
        user::check(who)?;
        let key = self.current_key_of(who, accept_new_key).await?;
        // Everything in the room names the invitee as the pair's homeserver does.
        let invitee = self.frame(pair_id)?.to_room(who);
        if *who != self.me {
            self.catch_up_room(pair_id).await?;
            let room = self.room_mut(pair_id)?;
            let known = room
                .trusted
                .get(&user::display(&invitee))
                .is_some_and(|s| s.contains(&fingerprint_hex(&key.fingerprint())));
            if !known {
                let kind = Kind::TrustKey(TrustKey {
                    user: Some(invitee.clone()),
                    fingerprint: key.fingerprint().to_vec(),
                });
                self.post_event(pair_id, StreamKind::State, kind).await?;
                add_trust(self.room_mut(pair_id)?, &invitee, &key.fingerprint());
            }
        }
        let room = self.room(pair_id)?;
        let generation = room.message.newest_generation().unwrap_or(0);
        let chains = (
            chain_states(&room.message, history)?,
            chain_states(&room.state, history)?,
        );
        let invite_id = self.send_invite(pair_id, &invitee, &key, chains).await?;
        if *who != self.me {
            // A rotation may have run while this invite was made, the invitee not yet a
            // member when the rotator listed them, and the TrustKey above may have gone
            // out in the generation it closed: take its keys (they may be waiting in an
            // invite), vouch again in the new generation and hand the keys on.
            self.accept_invites().await?;
            self.catch_up_room(pair_id).await?;
            let room = self.room(pair_id)?;
            if room.message.newest_generation().unwrap_or(0) > generation {
                let newer = (
                    chain_states_since(&room.message, generation + 1),
                    chain_states_since(&room.state, generation + 1),
                );
                let kind = Kind::TrustKey(TrustKey {
                    user: Some(invitee.clone()),
                    fingerprint: key.fingerprint().to_vec(),
                });
                self.post_event(pair_id, StreamKind::State, kind).await?;
                self.send_invite(pair_id, &invitee, &key, newer).await?;
            }
        }
        Ok(invite_id)
    }

    /// Encrypts and sends one invite carrying the given chain states to `who`, named as
    /// the pair's homeserver names them.
    pub(super) async fn send_invite(
        &mut self,
        pair_id: &str,
        who: &UserRef,
        key: &PublicIdentity,
        (message_chains, state_chains): (Vec<ChainState>, Vec<ChainState>),
    ) -> Result<u64> {
        let me = self.me_in(pair_id)?;
        let room = self.room(pair_id)?;
        let body = InviteBody {
            version: event::BODY_VERSION,
            pair_id: room.pair_id.clone(),
            message_id: room.message.stream_id.clone(),
            state_id: room.state.stream_id.clone(),
            inviter: Some(me),
            inviter_fingerprint: self.fingerprint().to_vec(),
            invitee: Some(who.clone()),
            invitee_fingerprint: key.fingerprint().to_vec(),
            message_chains,
            state_chains,
            room: Some(room_state_of(room)),
            client_time_ms: event::now_ms(),
        };
        let signed = event::sign_invite(&self.identity, &body)?;
        let sealed = seal_invite(key, &uuid_bytes(pair_id)?, who, &signed)?;
        self.api_for(pair_id)
            .await?
            .send_invite(pair_id, who.user_id, &who.homeserver, sealed)
            .await
    }
}
