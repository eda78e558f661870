//! Federation, part 1 (DESIGN §9, issue 11): this server's Ed25519 key, the pinned peer
//! map, server-to-server tokens, the `SecretFederationService` and FetchKey of users of
//! other homeservers.
//!
//! - `key.rs`: the server key (created at first start, or from config) and its key id;
//! - `token.rs`: minting and verifying "s2s" and "fed-user" EdDSA JWTs against pinned keys;
//! - `peers.rs`: the static peer map (name, endpoint, pinned key, channel);
//! - `gate.rs`: token check and per-peer rate limit in front of the federation service;
//! - `replay.rs`: the per-replica cache of s2s token ids seen (each token is used once);
//! - `service.rs`: the `SecretFederationService` handlers (layer 4: they use the store);
//! - `client.rs`: outgoing calls (FetchUserKey) and the cache of fetched keys;
//! - `proofs.rs`: the key transparency proof of a fetched key, verified against the pinned
//!   key and passed on (DESIGN §12);
//! - `heads.rs`: the tree heads seen of other servers and evidence of equivocation;
//! - `exchange.rs`: the ExchangeHeads rounds with every peer.
//!
//! Foreign users at SecretService: `auth/` verifies their "fed-user" tokens,
//! `service/router.rs` admits them to the RPCs §9 allows and gives them the id this
//! database knows them by ([`ForeignIds`]); `service/rooms.rs` delivers invites to users
//! of other homeservers through [`Federation::deliver_invite`].

pub mod client;
pub mod exchange;
pub mod gate;
pub mod heads;
pub mod key;
pub mod peers;
pub mod proofs;
pub mod replay;
pub mod service;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{FederationSettings, Settings};
use crate::domain::{Foreign, UserId};
use crate::error::Error;
use crate::store::DynStore;

/// The full path of SecretFederationService.FetchUserKey (an s2s token's `mth`).
pub const FETCH_USER_KEY_PATH: &str =
    "/protocol.secret.federation.v1.SecretFederationService/FetchUserKey";
/// The full path of SecretFederationService.DeliverInvite (an s2s token's `mth`).
pub const DELIVER_INVITE_PATH: &str =
    "/protocol.secret.federation.v1.SecretFederationService/DeliverInvite";
/// The full path of SecretFederationService.ExchangeHeads (an s2s token's `mth`).
pub const EXCHANGE_HEADS_PATH: &str =
    "/protocol.secret.federation.v1.SecretFederationService/ExchangeHeads";

/// Everything federation needs at run time; `None` in the app state when it is off.
pub struct Federation {
    /// Our `server_name`: `iss` of the tokens we sign, `aud` of those we accept.
    pub server_name: String,
    /// The `[federation]` table.
    pub settings: FederationSettings,
    /// Our signing key (shared with the key transparency publisher).
    pub key: Arc<key::ServerKey>,
    /// The configured peers.
    pub peers: peers::Peers,
    /// Keys fetched from peers.
    pub cache: client::KeyCache,
    /// The budgets of outgoing calls.
    pub outgoing: client::Outgoing,
    /// The ids this database gives users of other homeservers.
    pub ids: ForeignIds,
    /// The tree heads seen of other homeservers, and who was caught equivocating.
    pub heads: heads::HeadBook,
    /// The store (evidence of equivocation, this server's newest head).
    pub store: DynStore,
}

/// The ids this database knows users of other homeservers by (negative numbers from the
/// `foreign_users` table), remembered once read: a user's id never changes, so a
/// remembered one is never stale, on any replica.
///
/// Callers who hold nothing here are remembered too, for [`ForeignIds::UNKNOWN_TTL`]: a
/// foreign caller who repeats calls costs one database read per that time per replica.
/// An id given on this replica ends that at once; one given on another replica is seen
/// here at most that long after.
#[derive(Default)]
pub struct ForeignIds {
    known: Mutex<HashMap<Foreign, UserId>>,
    unknown: Mutex<HashMap<Foreign, Instant>>,
}

impl ForeignIds {
    /// Ids remembered at most; past it the map starts over (the database has them all).
    const MAX: usize = 100_000;
    /// How long a foreign user found to hold nothing here is taken to hold nothing.
    pub const UNKNOWN_TTL: Duration = Duration::from_secs(5);

    /// The id of `who`, or `None` when they hold nothing here. Ids are given only by the
    /// store, in the transaction that stores something for a foreign user; the caller
    /// then [`ForeignIds::remember`]s it.
    pub async fn get(&self, store: &DynStore, who: &Foreign) -> Result<Option<UserId>, Error> {
        if let Some(id) = self.lock().get(who) {
            return Ok(Some(*id));
        }
        if self
            .unknown()
            .get(who)
            .is_some_and(|at| at.elapsed() < Self::UNKNOWN_TTL)
        {
            return Ok(None);
        }
        let id = store.foreign_user(who).await?;
        match id {
            Some(id) => self.remember(who, id),
            None => {
                let mut unknown = self.unknown();
                if unknown.len() >= Self::MAX {
                    unknown.retain(|_, at| at.elapsed() < Self::UNKNOWN_TTL);
                    if unknown.len() >= Self::MAX {
                        unknown.clear();
                    }
                }
                unknown.insert(who.clone(), Instant::now());
            }
        }
        Ok(id)
    }

    /// Remembers the id the store gave (or read for) `who`.
    pub fn remember(&self, who: &Foreign, id: UserId) {
        let mut known = self.lock();
        if known.len() >= Self::MAX {
            known.clear();
        }
        known.insert(who.clone(), id);
        drop(known);
        self.unknown().remove(who);
    }

    fn unknown(&self) -> std::sync::MutexGuard<'_, HashMap<Foreign, Instant>> {
        self.unknown.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Foreign, UserId>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Federation {
    /// Builds the peer map around the server key (see [`key::load_or_create`]) when
    /// `federation.enabled`, over `store`; `None` when federation is off. Needs a Tokio
    /// runtime.
    pub fn start(
        settings: &Settings,
        key: Arc<key::ServerKey>,
        store: DynStore,
    ) -> anyhow::Result<Option<Arc<Federation>>> {
        if !settings.federation.enabled {
            return Ok(None);
        }
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
            outgoing: client::Outgoing::from_settings(&settings.federation),
            ids: ForeignIds::default(),
            heads: heads::HeadBook::default(),
            store,
        })))
    }
}
