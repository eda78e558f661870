//! Rooms: creating a pair and seeding its ratchets, inviting (TrustKey + hybrid-encrypted
//! invite) and accepting invites.

use std::collections::BTreeMap;

use super::trust::{add_trust, check_trusted};
use super::{Device, StreamKind};
use crate::crypto::identity::{PublicIdentity, fingerprint_hex};
use crate::crypto::invite::{open_invite, seal_invite};
use crate::crypto::ratchet::{ChainPoint, initial_chain_key};
use crate::crypto::{random, uuid_bytes};
use crate::error::{Error, Result};
use crate::event::{self, ChainState, InviteBody, Kind, RoomState, TrustKey, TrustedUser};
use crate::proto::secret::ReceivedInvite;
use crate::state::{EpochState, Room, StreamState};
use crate::user::{self, UserRef};

/// Largest photo a room state may carry inline.
pub const MAX_PHOTO_BYTES: usize = 16 * 1024;

/// How much history an invite opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    /// Every epoch the inviter holds, from the earliest point it holds.
    All,
    /// The current epoch from the stream's head on: only what is posted after the invite.
    FromNow,
}

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

/// The most ratchet steps spent checking that an invite's chain state lies on a chain
/// this device already holds.
pub const MAX_CONSISTENCY_STEPS: u64 = 1 << 20;

/// True when `given` lies on the same chain as `known` (one derives from the other).
fn same_chain(known: &EpochState, given: &ChainPoint) -> bool {
    let (from, to) = if given.counter >= known.origin.counter {
        (&known.origin, given)
    } else {
        (given, &known.origin)
    };
    to.counter - from.counter <= MAX_CONSISTENCY_STEPS
        && from.advanced_unbounded(to.counter).key == to.key
}

/// A fresh epoch for `stream_id`, starting after counter `start`.
pub(super) fn new_epoch(
    stream_id: &str,
    generation: u32,
    start: u64,
) -> Result<(String, EpochState)> {
    let seed = random::<16>()?;
    let epoch = random::<16>()?;
    let point = ChainPoint {
        counter: start,
        key: initial_chain_key(&seed, &uuid_bytes(stream_id)?, &epoch),
    };
    Ok((
        hex::encode(epoch),
        EpochState {
            generation,
            origin: point.clone(),
            cursor: point,
        },
    ))
}

fn room_state_of(room: &Room) -> RoomState {
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

pub(super) fn chain_states(stream: &StreamState, history: History) -> Vec<ChainState> {
    let state = |id: &str, generation: u32, p: &ChainPoint| ChainState {
        epoch: hex::decode(id).unwrap_or_default(),
        generation,
        counter: p.counter,
        chain_key: p.key.to_vec(),
    };
    match history {
        History::All => stream
            .epochs
            .iter()
            .map(|(id, e)| state(id, e.generation, &e.origin))
            .collect(),
        History::FromNow => stream
            .current_epoch()
            .map(|(id, e)| {
                let at = stream.last_counter.max(e.cursor.counter);
                state(id, e.generation, &e.cursor.advanced_unbounded(at))
            })
            .into_iter()
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
            message,
            state,
            name: name.to_string(),
            photo,
            photo_url: photo_url.to_string(),
            name_set_at: 0,
            trusted: BTreeMap::new(),
            lost: None,
            lost_changed_ms: 0,
        };
        add_trust(&mut room, &self.me.clone(), &self.fingerprint());
        let state_event = Kind::RoomState(room_state_of(&room));
        self.state.rooms.insert(pair.pair_id.clone(), room);
        // The self-invite first: after it, any device of this user can restore the room.
        let me = self.me.clone();
        self.invite_user(&pair.pair_id, &me, History::All).await?;
        self.post_event(&pair.pair_id, StreamKind::State, state_event)
            .await?;
        Ok(pair.pair_id)
    }

    /// Invites `who` into a room: fetches their key, posts a TrustKey for it on the state
    /// stream, and sends them the room's keys from the point `history` says (encrypted to
    /// their key). Returns the invite id.
    pub async fn invite(&mut self, room: &str, who: &UserRef, history: History) -> Result<u64> {
        let pair_id = self.room(room)?.pair_id.clone();
        self.invite_user(&pair_id, who, history).await
    }

    pub(super) async fn invite_user(
        &mut self,
        pair_id: &str,
        who: &UserRef,
        history: History,
    ) -> Result<u64> {
        user::check(who)?;
        let key = self.current_key_of(who).await?;
        if *who != self.me {
            self.catch_up_room(pair_id).await?;
            let room = self.room_mut(pair_id)?;
            let known = room
                .trusted
                .get(&user::display(who))
                .is_some_and(|s| s.contains(&fingerprint_hex(&key.fingerprint())));
            if !known {
                let kind = Kind::TrustKey(TrustKey {
                    user: Some(who.clone()),
                    fingerprint: key.fingerprint().to_vec(),
                });
                self.post_event(pair_id, StreamKind::State, kind).await?;
                add_trust(self.room_mut(pair_id)?, who, &key.fingerprint());
            }
        }
        let room = self.room(pair_id)?;
        let chains = (
            chain_states(&room.message, history),
            chain_states(&room.state, history),
        );
        self.send_invite(pair_id, who, &key, chains).await
    }

    /// Encrypts and sends one invite carrying the given chain states.
    pub(super) async fn send_invite(
        &mut self,
        pair_id: &str,
        who: &UserRef,
        key: &PublicIdentity,
        (message_chains, state_chains): (Vec<ChainState>, Vec<ChainState>),
    ) -> Result<u64> {
        let room = self.room(pair_id)?;
        let body = InviteBody {
            version: event::BODY_VERSION,
            pair_id: room.pair_id.clone(),
            message_id: room.message.stream_id.clone(),
            state_id: room.state.stream_id.clone(),
            inviter: Some(self.me.clone()),
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
        self.api
            .send_invite(pair_id, who.user_id, &who.homeserver, sealed)
            .await
    }

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

    /// Processes one invite (from FetchInvites or a live subscription).
    pub async fn accept_invite(&mut self, invite: &ReceivedInvite) -> Accepted {
        let from = user::local(invite.from_user);
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

    async fn open_and_merge(&mut self, invite: &ReceivedInvite, from: &UserRef) -> Result<String> {
        let pair = invite
            .pair
            .as_ref()
            .ok_or_else(|| Error::Protocol("the invite names no channel pair".into()))?;
        let plaintext = open_invite(
            &self.identity,
            &uuid_bytes(&pair.pair_id)?,
            &self.me,
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
        if body.invitee.as_ref() != Some(&self.me) || body.invitee_fingerprint != self.fingerprint()
        {
            return Err(mismatch("invitee"));
        }
        if body.inviter.as_ref() != Some(from) {
            return Err(mismatch("inviter"));
        }
        let key = self.key_of(from, &body.inviter_fingerprint).await?;
        event::verify_invite(&key, &signed)?;
        let state = body.room.clone().unwrap_or_default();
        let mut incoming = Room {
            pair_id: pair.pair_id.clone(),
            message: StreamState::new(pair.message_id.clone()),
            state: StreamState::new(pair.state_id.clone()),
            name: state.name.clone(),
            photo: state.photo.clone(),
            photo_url: state.photo_url.clone(),
            name_set_at: 0,
            trusted: BTreeMap::new(),
            lost: None,
            lost_changed_ms: 0,
        };
        for t in &state.trusted {
            let Some(who) = &t.user else { continue };
            for fp in &t.fingerprints {
                add_trust(&mut incoming, who, fp);
            }
        }
        // The inviter must vouch for itself, or already be trusted here.
        let trusted_here =
            |room: &Room| check_trusted(room, from, &body.inviter_fingerprint).is_ok();
        let known = self.state.rooms.get(&pair.pair_id);
        if !trusted_here(&incoming) && !known.is_some_and(trusted_here) {
            return Err(Error::Untrusted(format!(
                "the inviter {} does not list its own key in the invite's room state",
                user::display(from)
            )));
        }
        for (chains, stream) in [
            (&body.message_chains, &mut incoming.message),
            (&body.state_chains, &mut incoming.state),
        ] {
            for c in chains {
                let key: [u8; 32] = c.chain_key.as_slice().try_into().map_err(|_| {
                    Error::Protocol("a chain key in the invite is not 32 bytes".into())
                })?;
                if c.epoch.len() != 16 {
                    return Err(Error::Protocol(
                        "an epoch id in the invite is not 16 bytes".into(),
                    ));
                }
                let point = ChainPoint {
                    counter: c.counter,
                    key,
                };
                stream.add_epoch(
                    hex::encode(&c.epoch),
                    EpochState {
                        generation: c.generation,
                        origin: point.clone(),
                        cursor: point,
                    },
                );
            }
        }
        let name = incoming.name.clone();
        if let Some(known) = self.state.rooms.get(&pair.pair_id) {
            for (mine, given) in [
                (&known.message, &incoming.message),
                (&known.state, &incoming.state),
            ] {
                for (id, epoch) in &given.epochs {
                    if mine
                        .epochs
                        .get(id)
                        .is_some_and(|m| !same_chain(m, &epoch.origin))
                    {
                        return Err(Error::Protocol(format!(
                            "the invite's keys for epoch {id} contradict the keys this device holds"
                        )));
                    }
                }
            }
        }
        match self.state.rooms.get_mut(&pair.pair_id) {
            Some(room) => room.merge(incoming),
            None => {
                self.state.rooms.insert(pair.pair_id.clone(), incoming);
            }
        }
        Ok(name)
    }
}
