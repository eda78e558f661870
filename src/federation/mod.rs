//! Federation, part 1 (DESIGN §9, issue 11): this server's Ed25519 key, the pinned peer
//! map, server-to-server tokens, the `SecretFederationService` and FetchKey of users of
//! other homeservers.
//!
//! - `key.rs`: the server key (created at first start, or from config) and its key id;
//! - `token.rs`: minting and verifying "s2s" and "fed-user" EdDSA JWTs against pinned keys;
//! - `peers.rs`: the static peer map (name, endpoint, pinned key, channel);
//! - `gate.rs`: token check and per-peer rate limit in front of the federation service;
//! - `service.rs`: the `SecretFederationService` handlers (layer 4: they use the store);
//! - `client.rs`: outgoing calls (FetchUserKey) and the cache of fetched keys.
//!
//! Part 2 adds foreign members (identity columns), DeliverInvite and "fed-user" callers
//! on SecretService; the token and peer code here already serves both.

pub mod client;
pub mod gate;
pub mod key;
pub mod peers;
pub mod service;
pub mod token;

use std::sync::Arc;

use crate::config::{FederationSettings, Settings};

/// Everything federation needs at run time; `None` in the app state when it is off.
pub struct Federation {
    /// Our `server_name`: `iss` of the tokens we sign, `aud` of those we accept.
    pub server_name: String,
    /// The `[federation]` table.
    pub settings: FederationSettings,
    /// Our signing key.
    pub key: key::ServerKey,
    /// The configured peers.
    pub peers: peers::Peers,
    /// Keys fetched from peers.
    pub cache: client::KeyCache,
}

impl Federation {
    /// Loads (or creates) the server key and builds the peer map when
    /// `federation.enabled`; `None` when federation is off. Needs a Tokio runtime.
    pub fn start(settings: &Settings) -> anyhow::Result<Option<Arc<Federation>>> {
        if !settings.federation.enabled {
            return Ok(None);
        }
        let key = key::load_or_create(settings)?;
        let peers = peers::Peers::from_settings(&settings.federation)?;
        tracing::info!(
            server_name = settings.server_name,
            key_id = key.key_id(),
            peers = settings.federation.peers.len(),
            "federation is on"
        );
        Ok(Some(Arc::new(Federation {
            server_name: settings.server_name.clone(),
            settings: settings.federation.clone(),
            key,
            peers,
            cache: client::KeyCache::default(),
        })))
    }
}
