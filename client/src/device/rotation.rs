//! Removal and key rotation: a new epoch on both streams, invites carrying it to the
//! remaining members (and a self-invite with all history), then Rekey markers.

use std::collections::BTreeSet;

use super::Device;
use super::StreamKind;
use super::rooms::{History, chain_states, new_epoch};
use crate::error::{Error, Result};
use crate::event::{ChainState, Kind, Rekey};
use crate::state::StreamState;
use crate::user::{self, UserRef};

impl Device {
    /// Removes a member (owner only) and rotates the room's keys so that they cannot read
    /// anything posted afterwards.
    pub async fn remove_member(&mut self, room: &str, who: &UserRef) -> Result<()> {
        let pair_id = self.room(room)?.pair_id.clone();
        self.api.remove_member(&pair_id, who.user_id).await?;
        self.rotate(&pair_id, vec![who.clone()]).await
    }

    /// Rotates a room's keys: a new epoch on both streams, an invite carrying it to every
    /// remaining member (and a self-invite with all history), then a Rekey marker in the
    /// new epoch on both streams.
    pub async fn rotate(&mut self, room: &str, removed: Vec<UserRef>) -> Result<()> {
        let pair_id = self.room(room)?.pair_id.clone();
        self.catch_up_room(&pair_id).await?;
        let info = self
            .api
            .list_channel_pairs(false)
            .await?
            .into_iter()
            .find(|p| p.pair.as_ref().is_some_and(|p| p.pair_id == pair_id))
            .ok_or_else(|| {
                Error::State(format!("the server does not list room {pair_id} for you"))
            })?;
        let mut fresh = BTreeSet::new();
        let room = self.room_mut(&pair_id)?;
        for stream in [&mut room.message, &mut room.state] {
            let generation = stream.current_epoch().map_or(0, |(_, e)| e.generation + 1);
            let (id, epoch) = new_epoch(&stream.stream_id, generation, stream.last_counter)?;
            fresh.insert(id.clone());
            stream.epochs.insert(id, epoch);
        }
        let generation = room
            .message
            .current_epoch()
            .map_or(0, |(_, e)| e.generation);
        let only_fresh = |s: &StreamState| -> Vec<ChainState> {
            chain_states(s, History::All)
                .into_iter()
                .filter(|c| fresh.contains(&hex::encode(&c.epoch)))
                .collect()
        };
        let chains = (only_fresh(&room.message), only_fresh(&room.state));
        let my_id = self.me.user_id;
        for member in info.members.iter().copied().filter(|&m| m != my_id) {
            let who = user::local(member);
            let key = self.current_key_of(&who).await?;
            self.send_invite(&pair_id, &who, &key, chains.clone())
                .await?;
        }
        let me = self.me.clone();
        self.invite_user(&pair_id, &me, History::All).await?;
        for kind in [StreamKind::Message, StreamKind::State] {
            let marker = Kind::Rekey(Rekey {
                generation,
                removed: removed.clone(),
            });
            self.post_event(&pair_id, kind, marker).await?;
        }
        Ok(())
    }
}
