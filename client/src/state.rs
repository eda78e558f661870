//! A device's local state, serialisable with serde (the CLI keeps it as JSON).
//!
//! Everything in it only grows or moves forward (rooms, epochs, trusted keys, cursors), so
//! two copies written by two processes of one device merge without loss:
//! [`DeviceState::merge`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::crypto::ratchet::ChainPoint;
use crate::encoding::{b64, hex32};

mod records;
pub use records::{LogView, Lost, MissingEpoch, Pin, SeenHead, TokenSource};

/// Format version of the serialised state.
pub const STATE_VERSION: u32 = 1;

/// One device of one user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The homeserver's secretd URL.
    pub server: String,
    /// The CA file the server's TLS certificate is verified against (`--ca-file`); none:
    /// the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The bearer token (JWT) the device calls with.
    pub token: String,
    /// The user id (the token's `sub`).
    pub user_id: u64,
    /// The unwrapped identity private key, PKCS#8 DER: whoever reads the state file holds
    /// the key (the CLI writes it 0600 in a 0700 directory).
    #[serde(with = "b64")]
    pub identity_pkcs8: Vec<u8>,
    /// SHA-256 of the identity public key (SPKI DER).
    #[serde(with = "hex32")]
    pub fingerprint: [u8; 32],
    /// Version of the private-key backup on the server, as last seen.
    pub backup_version: u64,
    /// The last invite id processed (invites are processed in id order).
    pub invites_after: u64,
    /// Rooms by pair id.
    pub rooms: BTreeMap<String, Room>,
    /// Where long-running commands get a fresh token before this one expires.
    #[serde(default)]
    pub token_source: Option<TokenSource>,
    /// When `token_source` was last set (ms since the Unix epoch): the later setting wins
    /// when two processes' copies merge.
    #[serde(default)]
    pub token_source_set_ms: i64,
    /// Identity keys pinned by this device: user (text form) → pin. The first key seen for
    /// a user is pinned; a different key later is not used until the user accepts it.
    #[serde(default)]
    pub pins: BTreeMap<String, Pin>,
    /// This device's homeserver's name (its `server_name`), learned when first needed:
    /// how other homeservers name this user.
    #[serde(default)]
    pub home_name: Option<String>,
    /// The device's view of its homeserver's key log (None until first used).
    #[serde(default)]
    pub home_log: Option<LogView>,
    /// What this device knows of other homeservers' key logs, by name (as its homeserver
    /// names them): their pinned keys and newest heads.
    #[serde(default)]
    pub peer_logs: BTreeMap<String, LogView>,
}

/// One room: a channel pair with the keys and trust this device holds for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Room {
    /// The pair id.
    pub pair_id: String,
    /// The homeserver the pair lives on, as this device's homeserver names it: "" for
    /// this device's own homeserver.
    #[serde(default)]
    pub homeserver: String,
    /// Where that homeserver serves clients, when it is another one (as its `Federate`
    /// answer said).
    #[serde(default)]
    pub endpoint: String,
    /// The message stream.
    pub message: StreamState,
    /// The state stream.
    pub state: StreamState,
    /// The room's name.
    pub name: String,
    /// A small photo, or empty.
    #[serde(with = "b64")]
    pub photo: Vec<u8>,
    /// A photo URL, or empty.
    pub photo_url: String,
    /// State-stream event id of the RoomState event that set name and photo (0 = set by
    /// an invite).
    pub name_set_at: u64,
    /// Trusted identity keys: user (text form, see [`crate::user::display`]) → hex
    /// fingerprints.
    pub trusted: BTreeMap<String, BTreeSet<String>>,
    /// Set when the user left or was removed: the room is kept (its history stays
    /// readable on this device) but skipped by catch-up and live updates.
    #[serde(default)]
    pub lost: Option<Lost>,
    /// When `lost` last changed (ms since the Unix epoch): the later change wins when two
    /// processes' copies merge (a room can be lost and joined again).
    #[serde(default)]
    pub lost_changed_ms: i64,
    /// Members (text form) whose rotation invite failed for a passing reason, with the
    /// generation from which they need the keys: retried at the next sync.
    #[serde(default)]
    pub rekey_pending: BTreeMap<String, u32>,
}

/// The keys and read position of one stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamState {
    /// The stream id.
    pub stream_id: String,
    /// The last event id processed (events are processed in event-id order).
    pub last_event_id: u64,
    /// The counter of that event: the stream's head counter as far as this device knows.
    pub last_counter: u64,
    /// Ratchet epochs by hex epoch id.
    pub epochs: BTreeMap<String, EpochState>,
    /// The highest counter of an event this device accepted on the stream: counters only
    /// grow along a stream, so an event at or below it is a replay (or a reordering) and
    /// is refused.
    #[serde(default)]
    pub accepted_counter: u64,
    /// An epoch (hex id) the stream has events in, after this device's keys begin, that
    /// this device holds no keys for: the keys were rotated and the invite carrying the
    /// new ones has not arrived (or was withheld). While it is not held, the device does
    /// not post on the stream with its old keys.
    #[serde(default)]
    pub missing_epoch: Option<MissingEpoch>,
}

/// One epoch of a stream's ratchet as this device holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochState {
    /// 0 for a room's first epoch, +1 per rotation.
    pub generation: u32,
    /// The earliest chain key this device holds (from an invite or its own seed): history
    /// is readable from `origin.counter + 1` on.
    pub origin: ChainPoint,
    /// The chain key at the last event of this epoch processed in order.
    pub cursor: ChainPoint,
    /// The counter the epoch starts after (see `ChainState.start`); the previous
    /// generation closes there. None when not known (an invite from before the field):
    /// the origin stands in for it.
    #[serde(default)]
    pub start: Option<u64>,
}

impl EpochState {
    /// The counter the epoch starts after, as far as this device knows.
    pub fn start_counter(&self) -> u64 {
        self.start.unwrap_or(self.origin.counter)
    }
}

impl DeviceState {
    /// Folds `other` (another process's copy of the same device) into `self`.
    pub fn merge(&mut self, other: DeviceState) {
        // The token that lives longer is the fresher one (another process may have saved
        // a renewed token while this one ran).
        let expiry = |t: &str| crate::token::inspect(t).map_or(0, |i| i.expires_at);
        if expiry(&other.token) > expiry(&self.token) {
            self.token = other.token;
        }
        if other.token_source_set_ms > self.token_source_set_ms {
            self.token_source = other.token_source;
            self.token_source_set_ms = other.token_source_set_ms;
        }
        for (user, pin) in other.pins {
            match self.pins.get_mut(&user) {
                Some(mine) if mine.changed_ms >= pin.changed_ms => {}
                Some(mine) => *mine = pin,
                None => {
                    self.pins.insert(user, pin);
                }
            }
        }
        self.home_name = self.home_name.take().or(other.home_name);
        match (&mut self.home_log, other.home_log) {
            (None, theirs) => self.home_log = theirs,
            (Some(mine), Some(theirs)) if mine.public_key == theirs.public_key => {
                let size = |v: &LogView| v.head.as_ref().map_or(0, |h| h.tree_size);
                if size(&theirs) > size(mine) {
                    mine.head = theirs.head;
                }
                mine.own_seq = mine.own_seq.max(theirs.own_seq);
                for e in theirs.forks_acknowledged {
                    if !mine.forks_acknowledged.contains(&e) {
                        mine.forks_acknowledged.push(e);
                    }
                }
                for e in theirs.forks {
                    if !mine.forks.contains(&e) {
                        mine.forks.push(e);
                    }
                }
                let acknowledged = mine.forks_acknowledged.clone();
                mine.forks.retain(|e| !acknowledged.contains(e));
            }
            _ => {}
        }
        for (name, theirs) in other.peer_logs {
            match self.peer_logs.get_mut(&name) {
                None => {
                    self.peer_logs.insert(name, theirs);
                }
                Some(mine) if mine.public_key == theirs.public_key => {
                    let size = |v: &LogView| v.head.as_ref().map_or(0, |h| h.tree_size);
                    if size(&theirs) > size(mine) {
                        mine.head = theirs.head;
                    }
                }
                Some(_) => {}
            }
        }
        self.backup_version = self.backup_version.max(other.backup_version);
        self.invites_after = self.invites_after.max(other.invites_after);
        for (id, room) in other.rooms {
            match self.rooms.get_mut(&id) {
                Some(mine) => mine.merge(room),
                None => {
                    self.rooms.insert(id, room);
                }
            }
        }
    }

    /// A room by pair id, or by name when exactly one room has it.
    pub fn find_room(&self, name_or_id: &str) -> Result<&Room, crate::Error> {
        if let Some(room) = self.rooms.get(name_or_id) {
            return Ok(room);
        }
        let matches: Vec<&Room> = self
            .rooms
            .values()
            .filter(|r| r.name == name_or_id)
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(crate::Error::State(format!(
                "no room named {name_or_id:?} on this device (see `rooms`; accept pending invites first)"
            ))),
            _ => Err(crate::Error::State(format!(
                "{} rooms are named {name_or_id:?}: name the room by its pair id",
                matches.len()
            ))),
        }
    }
}

impl Room {
    /// Folds another copy of this room into `self`.
    pub fn merge(&mut self, other: Room) {
        self.message.merge(other.message);
        self.state.merge(other.state);
        if other.name_set_at > self.name_set_at {
            self.name = other.name;
            self.photo = other.photo;
            self.photo_url = other.photo_url;
            self.name_set_at = other.name_set_at;
        }
        for (user, fps) in other.trusted {
            self.trusted.entry(user).or_default().extend(fps);
        }
        for (user, generation) in other.rekey_pending {
            let at = self.rekey_pending.entry(user).or_insert(generation);
            *at = (*at).min(generation);
        }
        if other.lost_changed_ms > self.lost_changed_ms {
            self.lost = other.lost;
            self.lost_changed_ms = other.lost_changed_ms;
        }
    }

    /// Marks the room lost (or, with None, a member again) as of now.
    pub fn set_lost(&mut self, lost: Option<Lost>) {
        self.lost = lost;
        self.lost_changed_ms = crate::time::now_ms().max(self.lost_changed_ms + 1);
    }

    /// The room's streams: message first, then state.
    pub fn streams(&self) -> [&StreamState; 2] {
        [&self.message, &self.state]
    }
}

impl StreamState {
    /// A stream this device has no keys for yet.
    pub fn new(stream_id: String) -> StreamState {
        StreamState {
            stream_id,
            last_event_id: 0,
            last_counter: 0,
            epochs: BTreeMap::new(),
            accepted_counter: 0,
            missing_epoch: None,
        }
    }

    /// Folds another copy of this stream into `self`.
    pub fn merge(&mut self, other: StreamState) {
        if other.last_event_id > self.last_event_id {
            self.last_event_id = other.last_event_id;
            self.last_counter = other.last_counter;
            self.missing_epoch = other.missing_epoch.clone();
        }
        self.accepted_counter = self.accepted_counter.max(other.accepted_counter);
        for (id, epoch) in other.epochs {
            self.add_epoch(id, epoch);
        }
    }

    /// Adds what `epoch` knows: the earlier origin and the later cursor win.
    pub fn add_epoch(&mut self, id: String, epoch: EpochState) {
        match self.epochs.get_mut(&id) {
            Some(mine) => {
                if epoch.origin.counter < mine.origin.counter {
                    mine.origin = epoch.origin;
                }
                if epoch.cursor.counter > mine.cursor.counter {
                    mine.cursor = epoch.cursor;
                }
                mine.start = mine.start.or(epoch.start);
            }
            None => {
                self.epochs.insert(id, epoch);
            }
        }
    }

    /// The epoch senders use: the highest generation (a device holds at most one epoch
    /// per generation).
    pub fn current_epoch(&self) -> Option<(&String, &EpochState)> {
        self.epochs.iter().max_by_key(|(_, e)| e.generation)
    }

    /// The highest generation held.
    pub fn newest_generation(&self) -> Option<u32> {
        self.epochs.values().map(|e| e.generation).max()
    }

    /// The epoch of `generation`, if held.
    pub fn epoch_of_generation(&self, generation: u32) -> Option<(&String, &EpochState)> {
        self.epochs.iter().find(|(_, e)| e.generation == generation)
    }

    /// The counter after which `epoch` is closed: the start of the next generation, when
    /// this device holds it.
    pub fn closed_after(&self, epoch: &EpochState) -> Option<u64> {
        let next = epoch.generation.checked_add(1)?;
        self.epoch_of_generation(next)
            .map(|(_, e)| e.start_counter())
    }

    /// True when events of this stream after the device's keys begin use an epoch it does
    /// not hold (see `missing_epoch`).
    pub fn rotation_missing(&self) -> bool {
        self.missing_epoch
            .as_ref()
            .is_some_and(|m| !self.epochs.contains_key(&m.epoch))
    }
}
