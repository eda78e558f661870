//! The replay cache of incoming "s2s" tokens (DESIGN §9a): each token's `jti` is
//! accepted once. A token is remembered until it can no longer verify (`exp` plus the
//! leeway), so one captured on the wire is refused (UNAUTHENTICATED) for the whole of its
//! life.
//!
//! Per replica: replicas of one homeserver do not share it, so a token captured on its
//! way to one replica can be played once more at each other replica within its lifetime
//! (at most 65 s, and only on the method it names — `mth`). A replica restarted forgets
//! what it saw; the 60 s lifetime bounds that too.
//!
//! Memory: ids are kept per peer, and a peer's calls reach the cache only after its rate
//! limit (`federation.rate_per_sec`, `rate_burst`), so a peer holds at most
//! `rate_burst + 70 × rate_per_sec` entries (7,200 at the defaults, about 1 MB), and never
//! more than [`MAX_PER_PEER`] (100,000, about 13 MB) whatever the limit: past that its
//! calls are RESOURCE_EXHAUSTED until old ids expire. A peer fills only its own share.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::error::Error;

/// The most ids remembered for one peer.
pub const MAX_PER_PEER: usize = 100_000;

/// Why a token was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its `jti` was seen before.
    Replayed,
    /// The peer's share is full; retry after this many milliseconds.
    Full(u64),
}

/// The ids of one peer's tokens still alive, in the order they arrived.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    /// (forget at, Unix seconds; id).
    order: VecDeque<(u64, String)>,
}

/// Seen ids per peer.
pub struct ReplayCache {
    max_per_peer: usize,
    peers: Mutex<HashMap<String, Seen>>,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(MAX_PER_PEER)
    }
}

impl ReplayCache {
    /// A cache of at most `max_per_peer` ids per peer.
    pub fn new(max_per_peer: usize) -> Self {
        ReplayCache {
            max_per_peer,
            peers: Mutex::default(),
        }
    }

    /// Records the first use of `jti` from `peer`, remembered until `forget_at` (Unix
    /// seconds); `now` is the time in Unix seconds.
    pub fn first_use(
        &self,
        peer: &str,
        jti: &str,
        forget_at: u64,
        now: u64,
    ) -> Result<(), Refusal> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(peer) {
            peers.insert(peer.to_string(), Seen::default());
        }
        let seen = peers.get_mut(peer).expect("inserted above");
        // Ids arrive in about the order they expire (every token lives at most 65 s), so
        // the expired ones are at the front; one behind a longer-lived id waits for it,
        // which only remembers it longer.
        while let Some((at, _)) = seen.order.front()
            && *at < now
        {
            let (_, old) = seen.order.pop_front().expect("front exists");
            seen.ids.remove(&old);
        }
        if seen.ids.contains(jti) {
            return Err(Refusal::Replayed);
        }
        if seen.ids.len() >= self.max_per_peer {
            let oldest = seen.order.front().map_or(now, |(at, _)| *at);
            return Err(Refusal::Full(
                oldest.saturating_sub(now).saturating_add(1) * 1000,
            ));
        }
        seen.ids.insert(jti.to_string());
        seen.order.push_back((forget_at, jti.to_string()));
        Ok(())
    }

    /// Ids remembered for `peer`.
    pub fn len(&self, peer: &str) -> usize {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(peer).map_or(0, |s| s.ids.len())
    }
}

impl Refusal {
    /// The answer to the calling peer.
    pub fn status(self, peer: &str) -> tonic::Status {
        match self {
            Refusal::Replayed => tonic::Status::unauthenticated(format!(
                "this s2s token was used before (its jti): homeserver {peer:?} must sign a new \
                 token for every call"
            )),
            Refusal::Full(retry_after_ms) => Error::Throttled {
                message: format!(
                    "homeserver {peer:?} has {MAX_PER_PEER} unexpired s2s tokens in use at this \
                     server, the most one peer may have (its replay cache share); retry in \
                     {retry_after_ms} ms"
                ),
                retry_after_ms,
            }
            .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_accepted_once_until_it_expires() {
        let cache = ReplayCache::new(3);
        assert_eq!(cache.first_use("b", "1", 100, 50), Ok(()));
        assert_eq!(cache.first_use("b", "1", 100, 60), Err(Refusal::Replayed));
        // Another peer's ids are its own.
        assert_eq!(cache.first_use("c", "1", 100, 60), Ok(()));
        assert_eq!(cache.first_use("b", "2", 100, 60), Ok(()));
        assert_eq!(cache.first_use("b", "3", 110, 60), Ok(()));
        // b's share is full until its oldest id expires at 100.
        assert_eq!(
            cache.first_use("b", "4", 120, 60),
            Err(Refusal::Full(41_000))
        );
        assert_eq!(cache.len("c"), 1);
        // Past 100, ids 1 and 2 are forgotten: the share has room, and the cache is
        // bounded by time, not by what it once saw.
        assert_eq!(cache.first_use("b", "4", 160, 101), Ok(()));
        assert_eq!(cache.len("b"), 2);
    }
}
