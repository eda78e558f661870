//! Tokens that verified, remembered by the SHA-256 of their exact bytes, so a client's
//! repeated calls skip the signature check and the JSON parse (they were about 5 % of the
//! server's time per call). A hit checks the expiry again and nothing else; failures are
//! never remembered. Each entry has a fixed size whatever the token's length, and the map
//! starts over when full.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// Entries kept at most.
const ENTRIES: usize = 16_384;

/// The SHA-256 of a token: its key in a [`TokenCache`].
pub(crate) type TokenDigest = [u8; 32];

/// The digest of `token`.
pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// What verifying a token established, with the Unix second after which it is void.
pub(crate) struct TokenCache<T> {
    entries: Mutex<HashMap<TokenDigest, (u64, T)>>,
}

impl<T> Default for TokenCache<T> {
    fn default() -> Self {
        TokenCache {
            entries: Mutex::default(),
        }
    }
}

impl<T: Clone> TokenCache<T> {
    /// The remembered value of the token with `digest`, if it is still valid at `now`.
    pub(crate) fn get(&self, digest: &TokenDigest, now: u64) -> Option<T> {
        match self.lock().get(digest) {
            Some((expires_at, value)) if now <= *expires_at => Some(value.clone()),
            _ => None,
        }
    }

    /// Remembers what the token with `digest` established, valid until `expires_at`.
    pub(crate) fn put(&self, digest: TokenDigest, expires_at: u64, value: T) {
        let mut entries = self.lock();
        if entries.len() >= ENTRIES {
            entries.clear();
        }
        entries.insert(digest, (expires_at, value));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TokenDigest, (u64, T)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the token with `digest` is remembered (valid or not).
    #[cfg(test)]
    pub(crate) fn contains(&self, digest: &TokenDigest) -> bool {
        self.lock().contains_key(digest)
    }
}
