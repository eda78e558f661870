//! The E2EE layer: one device of one user. Identity and password backup (this file),
//! rooms and invites ([`rooms`]), posting and reading ([`messages`]).
//!
//! A [`Device`] owns a [`DeviceState`] (serialisable; the CLI keeps it in a file) and an
//! [`Api`] connection. Every method that changes the state leaves it consistent when it
//! fails half-way: keys are added before they are announced, cursors move only past
//! events that were processed.

pub mod membership;
pub mod posting;
pub mod receiving;
pub mod rooms;
pub mod rotation;

use std::collections::{BTreeMap, HashMap};

use tonic::Code;

use crate::api::Api;
use crate::crypto::blob::{self, Kdf};
use crate::crypto::identity::{Identity, PublicIdentity, fingerprint_hex};
use crate::crypto::ratchet::DEFAULT_MAX_GAP;
use crate::error::{Error, Result};
use crate::state::{DeviceState, Room, STATE_VERSION};
use crate::user::{self, UserRef};

pub use membership::{Member, RoomView};
pub use posting::{Outgoing, Sent};
pub use receiving::{Content, Incoming, StreamKind, Transcript};
pub use rooms::{Accepted, History};

/// One device of one user: identity, rooms, keys, and the connection to the homeserver.
pub struct Device {
    api: Api,
    state: DeviceState,
    identity: Identity,
    me: UserRef,
    /// Public keys already fetched and parsed: (user text form, fingerprint) → key.
    keys: HashMap<(String, [u8; 32]), PublicIdentity>,
    /// Events processed and not yet handed out by [`Device::take_processed`].
    processed: Vec<Incoming>,
    /// The largest ratchet jump this device derives when receiving.
    pub max_gap: u64,
    /// Test hook: hold post attempts (see [`posting::PostGate`]).
    #[doc(hidden)]
    pub post_gate: Option<posting::PostGate>,
}

impl Device {
    /// First device of a user: generates the identity key, stores it wrapped under
    /// `password` (compare-and-set: only if no backup exists yet) and posts the public key.
    pub async fn init(api: Api, password: &str, kdf: Kdf) -> Result<Device> {
        let user_id = crate::token::check(&api.token(), None, crate::time::now_secs())?.user_id;
        if api.fetch_private_key().await?.is_some() {
            return Err(Error::State(format!(
                "user {user_id} already has an identity backed up on {}: use `login` on a new device",
                api.url()
            )));
        }
        let identity = Identity::generate()?;
        let sealed = blob::seal_private_key(&identity.to_pkcs8()?, password, kdf)?;
        // Backup first: a crash after it leaves a restorable identity, never a posted key
        // whose private half is lost.
        let version = match api.post_private_key(&sealed, Some(0)).await {
            Ok(v) => v,
            Err(e) if e.code() == Some(Code::Aborted) => {
                return Err(Error::State(
                    "another device stored an identity backup at the same moment: use `login`"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        };
        Self::new_device(api, user_id, identity, version).await
    }

    /// A new device of an existing user: unwraps the identity from the backup with
    /// `password`, then rebuilds every room from the invites and reads their streams.
    pub async fn login(api: Api, password: &str) -> Result<Device> {
        let user_id = crate::token::check(&api.token(), None, crate::time::now_secs())?.user_id;
        let Some((sealed, version)) = api.fetch_private_key().await? else {
            return Err(Error::State(format!(
                "user {user_id} has no identity backup on {}: run `init` first",
                api.url()
            )));
        };
        let pkcs8 = blob::open_private_key(&sealed, password)?;
        let identity = Identity::from_pkcs8(&pkcs8)?;
        let mut device = Self::new_device(api, user_id, identity, version).await?;
        device.accept_invites().await?;
        // Rooms the user has since left or was removed from are kept, marked, and
        // skipped; every other room is caught up.
        for pair in device.state.rooms.keys().cloned().collect::<Vec<_>>() {
            match device.catch_up_room(&pair).await {
                Ok(()) | Err(Error::RoomLost { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        device.take_processed();
        Ok(device)
    }

    /// A device with no rooms yet, after making sure the server holds its public key.
    async fn new_device(
        api: Api,
        user_id: u64,
        identity: Identity,
        backup_version: u64,
    ) -> Result<Device> {
        Self::ensure_key_posted(&api, user_id, &identity).await?;
        let state = DeviceState {
            version: STATE_VERSION,
            server: api.url().to_string(),
            token: api.token(),
            user_id,
            identity_pkcs8: identity.to_pkcs8()?.to_vec(),
            fingerprint: identity.fingerprint(),
            backup_version,
            invites_after: 0,
            rooms: BTreeMap::new(),
            token_source: None,
            token_source_set_ms: 0,
        };
        Self::from_parts(api, state, identity)
    }

    /// A device from saved state.
    pub fn from_state(api: Api, state: DeviceState) -> Result<Device> {
        if state.version != STATE_VERSION {
            return Err(Error::State(format!(
                "the saved state has format {} but this client reads format {STATE_VERSION}",
                state.version
            )));
        }
        let identity = Identity::from_pkcs8(&state.identity_pkcs8)?;
        if identity.fingerprint() != state.fingerprint {
            return Err(Error::State(
                "the saved state's key and fingerprint disagree".into(),
            ));
        }
        Self::from_parts(api, state, identity)
    }

    fn from_parts(api: Api, state: DeviceState, identity: Identity) -> Result<Device> {
        Ok(Device {
            api,
            me: user::local(state.user_id),
            state,
            identity,
            keys: HashMap::new(),
            processed: Vec::new(),
            post_gate: None,
            max_gap: DEFAULT_MAX_GAP,
        })
    }

    /// Makes sure the server's current key for us is the identity's public key.
    async fn ensure_key_posted(api: &Api, user_id: u64, identity: &Identity) -> Result<()> {
        match api.fetch_key(user_id, "").await {
            Ok(keys) if keys.current.fingerprint == identity.fingerprint() => return Ok(()),
            Ok(keys) => {
                return Err(Error::State(format!(
                    "the server's current key for user {user_id} ({}) is not the key in your \
                     backup ({}): another identity was posted after this backup",
                    fingerprint_hex(&keys.current.fingerprint),
                    fingerprint_hex(&identity.fingerprint())
                )));
            }
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) => return Err(e),
        }
        let fp = api.post_key(identity.public().spki()).await?;
        if fp != identity.fingerprint() {
            return Err(Error::Protocol(
                "PostKey returned another fingerprint than our key's".into(),
            ));
        }
        Ok(())
    }

    /// Re-wraps the identity under a new password (compare-and-set against the backup
    /// version this device last saw, so a concurrent change elsewhere is never overwritten).
    pub async fn change_password(&mut self, new_password: &str, kdf: Kdf) -> Result<()> {
        let sealed = blob::seal_private_key(&self.identity.to_pkcs8()?, new_password, kdf)?;
        match self
            .api
            .post_private_key(&sealed, Some(self.state.backup_version))
            .await
        {
            Ok(v) => {
                self.state.backup_version = v;
                Ok(())
            }
            Err(e) if e.code() == Some(Code::Aborted) => Err(Error::State(format!(
                "the backup changed on another device since this one saw version {}: log in again first",
                self.state.backup_version
            ))),
            Err(e) => Err(e),
        }
    }

    /// The saved state.
    pub fn state(&self) -> &DeviceState {
        &self.state
    }

    /// The state, for saving.
    pub fn into_state(self) -> DeviceState {
        self.state
    }

    /// The connection.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Uses `token` for every later call (and reconnect) and keeps it in the state. The
    /// caller checks it first ([`crate::token::check`]).
    pub fn set_token(&mut self, token: &str) {
        self.api.set_token(token);
        self.state.token = token.to_string();
    }

    /// Sets (or clears) where long-running commands get fresh tokens.
    pub fn set_token_source(&mut self, source: Option<crate::state::TokenSource>) {
        self.state.token_source = source;
        self.state.token_source_set_ms =
            crate::time::now_ms().max(self.state.token_source_set_ms + 1);
    }

    /// This device's user.
    pub fn me(&self) -> &UserRef {
        &self.me
    }

    /// SHA-256 of the identity's public key.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.identity.fingerprint()
    }

    /// A room by pair id or unique name.
    pub fn room(&self, name_or_id: &str) -> Result<&Room> {
        self.state.find_room(name_or_id)
    }

    pub(crate) fn room_mut(&mut self, pair_id: &str) -> Result<&mut Room> {
        self.state
            .rooms
            .get_mut(pair_id)
            .ok_or_else(|| Error::State(format!("no room {pair_id} on this device")))
    }

    /// The key `user` signs with, found by fingerprint among the keys the server holds for
    /// them (current and past).
    pub(crate) async fn key_of(&mut self, who: &UserRef, fp: &[u8]) -> Result<PublicIdentity> {
        let fp: [u8; 32] = fp
            .try_into()
            .map_err(|_| Error::Protocol("a key fingerprint is not 32 bytes".into()))?;
        if *who == self.me && fp == self.identity.fingerprint() {
            return Ok(self.identity.public().clone());
        }
        let cache_key = (user::display(who), fp);
        if let Some(k) = self.keys.get(&cache_key) {
            return Ok(k.clone());
        }
        let keys = self.api.fetch_key(who.user_id, &who.homeserver).await?;
        for k in std::iter::once(&keys.current).chain(keys.past.iter()) {
            let parsed = PublicIdentity::from_spki(&k.key_data)?;
            let key_fp = parsed.fingerprint();
            self.keys.insert((cache_key.0.clone(), key_fp), parsed);
        }
        self.keys.get(&cache_key).cloned().ok_or_else(|| {
            Error::Untrusted(format!(
                "the server knows no key {} for user {}",
                fingerprint_hex(&fp),
                cache_key.0
            ))
        })
    }

    /// The current key of `user` as the server has it.
    pub(crate) async fn current_key_of(&mut self, who: &UserRef) -> Result<PublicIdentity> {
        if *who == self.me {
            return Ok(self.identity.public().clone());
        }
        let keys = self.api.fetch_key(who.user_id, &who.homeserver).await?;
        let parsed = PublicIdentity::from_spki(&keys.current.key_data)?;
        self.keys
            .insert((user::display(who), parsed.fingerprint()), parsed.clone());
        Ok(parsed)
    }
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
