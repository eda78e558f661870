//! The E2EE layer: one device of one user — the [`Device`] and its keys (this file),
//! identity and password backup ([`identity`]), rooms and invites ([`rooms`]), trust
//! ([`trust`]), posting ([`posting`]), receiving ([`receiving`]), rotation
//! ([`rotation`]), membership ([`membership`]).
//!
//! A [`Device`] owns a [`DeviceState`] (serialisable; the CLI keeps it in a file) and an
//! [`Api`] connection. Every method that changes the state leaves it consistent when it
//! fails half-way: keys are added before they are announced, cursors move only past
//! events that were processed.

pub mod accepting;
mod consistency;
pub mod epochs;
mod gossip;
pub mod identity;
pub mod incoming;
pub mod keylog;
pub mod membership;
pub mod opening;
mod peerlog;
pub mod posting;
pub mod receiving;
pub mod remote;
pub mod rooms;
pub mod rotation;
pub mod trust;

use std::collections::HashMap;

use crate::api::Api;
use crate::crypto::identity::{Identity, PublicIdentity};
use crate::crypto::ratchet::DEFAULT_MAX_GAP;
use crate::error::{Error, Result};
use crate::state::{DeviceState, Room, STATE_VERSION};
use crate::user::{self, UserRef};

pub use accepting::Accepted;
pub use epochs::History;
pub use incoming::{Content, Incoming, Transcript};
pub use membership::{Member, RoomView};
pub use posting::{Outgoing, Sent};

/// Which stream of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// The message stream (chat messages).
    Message,
    /// The state stream (trust, name, photo, rekey markers).
    State,
}

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
    /// Connections to the other homeservers this device's rooms live on.
    remotes: remote::Remotes,
    /// Test hook: this many coming key fetches fail as if the server were unavailable.
    #[doc(hidden)]
    pub failing_key_fetches: usize,
    /// Gossiped heads already proved consistent with this device's log.
    checked: gossip::Checked,
}

impl Device {
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
            failing_key_fetches: 0,
            remotes: Default::default(),
            max_gap: DEFAULT_MAX_GAP,
            checked: Default::default(),
        })
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
}
