//! Removal and key rotation: a new epoch on both streams, invites carrying it to the
//! members the room trusts (at the keys this device pinned for them), never to the
//! removed, whatever the server's member list says; a self-invite with all history; then
//! Rekey markers in the new epoch. Invites that failed for a passing reason are kept and
//! retried ([`Device::sync_room`]); members who joined while the rotation ran get the
//! new keys too.

use super::epochs::{History, chain_states_since, new_epoch};
use super::{Device, StreamKind};
use crate::crypto::identity::fingerprint_hex;
use crate::error::{Error, Result};
use crate::event::{ChainState, Kind, Rekey};
use crate::user::{self, UserRef};

/// What a rotation did.
#[derive(Clone, Debug, Default)]
pub struct Rotation {
    /// The new generation.
    pub generation: u32,
    /// Members who were sent the new keys.
    pub rekeyed: Vec<UserRef>,
    /// Members who were not, and why (removed, not trusted in the room, a changed key).
    pub skipped: Vec<(UserRef, String)>,
    /// Members whose invite failed for a passing reason: retried by the next sync.
    pub pending: Vec<UserRef>,
}

/// Which chain states a rotation's invites carry: both streams' epochs of `generation`
/// and newer.
fn chains_since(
    device: &Device,
    pair_id: &str,
    generation: u32,
) -> Result<(Vec<ChainState>, Vec<ChainState>)> {
    let room = device.room(pair_id)?;
    Ok((
        chain_states_since(&room.message, generation),
        chain_states_since(&room.state, generation),
    ))
}

impl Device {
    /// Removes a member (owner only; `who` as this device's homeserver names them) and
    /// rotates the room's keys so that they cannot read anything posted afterwards.
    pub async fn remove_member(&mut self, room: &str, who: &UserRef) -> Result<Rotation> {
        let pair_id = self.room(room)?.pair_id.clone();
        if let Some(e) = self.lost_error(&pair_id) {
            return Err(e);
        }
        let target = self.frame(&pair_id)?.to_room(who);
        let api = self.api_for(&pair_id).await?;
        if let Err(e) = api
            .remove_member(&pair_id, target.user_id, &target.homeserver)
            .await
        {
            return Err(self.room_refused(&pair_id, e).await);
        }
        self.rotate(&pair_id, vec![who.clone()]).await
    }

    /// The members the pair's homeserver lists (this user excluded), as it names them.
    async fn listed_members(&mut self, pair_id: &str) -> Result<Vec<UserRef>> {
        let me = self.me_in(pair_id)?;
        let info = self
            .api_for(pair_id)
            .await?
            .list_channel_pairs(false)
            .await?
            .into_iter()
            .find(|p| p.pair.as_ref().is_some_and(|p| p.pair_id == pair_id))
            .ok_or_else(|| {
                Error::State(format!("the server does not list room {pair_id} for you"))
            })?;
        Ok(super::membership::members_of(&info)
            .into_iter()
            .filter(|m| *m != me)
            .collect())
    }

    /// Rotates a room's keys: a new epoch on both streams (the next generation, starting
    /// at each stream's head), invites carrying only it to every member the room trusts
    /// except `removed` (as this device's homeserver names them), a self-invite with all
    /// history, then a Rekey marker in the new epoch on both streams. The report names
    /// users as this device's homeserver does.
    pub async fn rotate(&mut self, room: &str, removed: Vec<UserRef>) -> Result<Rotation> {
        let pair_id = self.room(room)?.pair_id.clone();
        if let Some(e) = self.lost_error(&pair_id) {
            return Err(e);
        }
        let frame = self.frame(&pair_id)?;
        let removed: Vec<UserRef> = removed.iter().map(|r| frame.to_room(r)).collect();
        self.catch_up_room(&pair_id).await?;
        let listed = self.listed_members(&pair_id).await?;
        let room = self.room_mut(&pair_id)?;
        let newest = [&room.message, &room.state]
            .iter()
            .filter_map(|s| s.newest_generation())
            .max()
            .unwrap_or(0);
        let generation = newest.checked_add(1).ok_or_else(|| {
            Error::State(format!(
                "room [{}] is at the last generation ({newest}); it cannot rotate again",
                room.name
            ))
        })?;
        for stream in [&mut room.message, &mut room.state] {
            let (id, epoch) = new_epoch(&stream.stream_id, generation, stream.last_counter)?;
            stream.epochs.insert(id, epoch);
        }
        let mut report = Rotation {
            generation,
            ..Rotation::default()
        };
        for who in &listed {
            self.rekey(&pair_id, who, &removed, generation, &mut report)
                .await?;
        }
        let me = self.me.clone();
        self.invite_user(&pair_id, &me, History::All, false).await?;
        for kind in [StreamKind::Message, StreamKind::State] {
            let marker = Kind::Rekey(Rekey {
                generation,
                removed: removed.clone(),
            });
            self.post_event(&pair_id, kind, marker).await?;
        }
        // Members who joined while this ran (an invite racing the rotation).
        for who in self.listed_members(&pair_id).await? {
            if !listed.contains(&who) {
                self.rekey(&pair_id, &who, &removed, generation, &mut report)
                    .await?;
            }
        }
        Ok(report)
    }

    /// Sends the keys of `generation` (and newer) to one member (`who` as the pair's
    /// homeserver names them), if the room trusts them at the key this device pinned;
    /// records why not otherwise.
    async fn rekey(
        &mut self,
        pair_id: &str,
        who: &UserRef,
        removed: &[UserRef],
        generation: u32,
        report: &mut Rotation,
    ) -> Result<()> {
        let name = user::display(who);
        // Reported, pinned and fetched as this device's homeserver names them.
        let home = self.frame(pair_id)?.to_home(who);
        if removed.contains(who) {
            report.skipped.push((home.clone(), "removed".into()));
            return Ok(());
        }
        let Some(trusted) = self.room(pair_id)?.trusted.get(&name).cloned() else {
            report.skipped.push((
                home.clone(),
                "not trusted in this room: the server lists them, but no trusted member \
                 vouched for their key"
                    .into(),
            ));
            return Ok(());
        };
        let key = match self.current_key_of(&home, false).await {
            Ok(key) => key,
            Err(e) if e.is_transient() => {
                self.keep_pending(pair_id, &name, generation)?;
                report.pending.push(home.clone());
                return Ok(());
            }
            Err(e) => {
                report.skipped.push((home.clone(), e.to_string()));
                return Ok(());
            }
        };
        let fp = fingerprint_hex(&key.fingerprint());
        if !trusted.contains(&fp) {
            report.skipped.push((
                home.clone(),
                format!("their key {fp} is not the one this room trusts for them"),
            ));
            return Ok(());
        }
        let chains = chains_since(self, pair_id, generation)?;
        match self.send_invite(pair_id, who, &key, chains).await {
            Ok(_) => {
                self.room_mut(pair_id)?.rekey_pending.remove(&name);
                report.rekeyed.push(home.clone());
            }
            Err(e) if e.is_transient() => {
                self.keep_pending(pair_id, &name, generation)?;
                report.pending.push(home.clone());
            }
            Err(e) => report.skipped.push((home.clone(), e.to_string())),
        }
        Ok(())
    }

    fn keep_pending(&mut self, pair_id: &str, name: &str, generation: u32) -> Result<()> {
        let pending = &mut self.room_mut(pair_id)?.rekey_pending;
        let at = pending.entry(name.to_string()).or_insert(generation);
        *at = (*at).min(generation);
        Ok(())
    }

    /// Retries the rotation invites of a room that failed for a passing reason, to
    /// members the server still lists.
    pub(crate) async fn retry_rekeys(&mut self, pair_id: &str) -> Result<()> {
        let pending = self.room(pair_id)?.rekey_pending.clone();
        if pending.is_empty() {
            return Ok(());
        }
        let listed = self.listed_members(pair_id).await?;
        for (name, generation) in pending {
            let who = user::parse(&name)?;
            if !listed.contains(&who) {
                self.room_mut(pair_id)?.rekey_pending.remove(&name);
                continue;
            }
            let mut report = Rotation::default();
            self.rekey(pair_id, &who, &[], generation, &mut report)
                .await?;
            if !report.skipped.is_empty() {
                self.room_mut(pair_id)?.rekey_pending.remove(&name);
            }
        }
        Ok(())
    }
}
