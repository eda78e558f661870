//! Outgoing calls to peers and the cache of users' keys fetched from them.
//!
//! FetchKey of a user of peer `b`: served from the cache while the entry is younger than
//! `federation.key_cache_secs`, else `b`'s `FetchUserKey` is called with a fresh "s2s"
//! token within `federation.request_timeout_secs`. Every key received is re-validated
//! as if it were posted here (`keycheck`: RSA 4096–8192 bits, e = 65537, SPKI DER) and
//! its fingerprint recomputed; a peer that sends anything else is answered as
//! UNAVAILABLE naming the peer (and counted), never passed on. Only good answers are
//! cached; `b`'s NOT_FOUND becomes NOT_FOUND naming the user and server.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::Code;

use super::Federation;
use super::token::{self, TokenType};
use crate::domain::UserId;
use crate::error::Error;
use crate::proto;
use crate::proto::federation::FetchUserKeyRequest;
use crate::proto::federation::secret_federation_service_client::SecretFederationServiceClient;

/// Users' keys fetched from peers, by (peer, user), with the time they were fetched.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<(String, i64), (Instant, proto::FetchKeyResponse)>>,
}

impl KeyCache {
    fn get(&self, peer: &str, user: UserId, ttl: Duration) -> Option<proto::FetchKeyResponse> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (peer.to_string(), user.get());
        match entries.get(&key) {
            Some((at, keys)) if at.elapsed() < ttl => Some(keys.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn put(&self, peer: &str, user: UserId, keys: proto::FetchKeyResponse) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries go when the map grows past what one burst of lookups leaves.
        if entries.len() >= 100_000 {
            entries.clear();
        }
        entries.insert((peer.to_string(), user.get()), (Instant::now(), keys));
    }
}

impl Federation {
    /// The keys of user `user` of homeserver `peer` (not this server), for FetchKey.
    /// `max_past_keys` caps the past keys as for a local user.
    pub async fn fetch_user_key(
        &self,
        peer: &str,
        user: UserId,
        max_past_keys: usize,
    ) -> Result<proto::FetchKeyResponse, Error> {
        let Some(target) = self.peers.get(peer) else {
            return Err(Error::FailedPrecondition(format!(
                "homeserver {peer:?} is not a federation peer of this server (config \
                 federation.peers), so its users cannot be reached"
            )));
        };
        let ttl = Duration::from_secs(self.settings.key_cache_secs);
        if let Some(keys) = self.cache.get(peer, user, ttl) {
            return Ok(keys);
        }
        let unavailable = |what: String| {
            Error::Unavailable(format!(
                "homeserver {peer:?} ({}) {what}; try again later",
                target.endpoint
            ))
        };
        let (bearer, _) = token::mint(
            &self.key,
            &self.server_name,
            peer,
            TokenType::S2s,
            None,
            TokenType::S2s.max_lifetime_secs(),
        )
        .map_err(|e| Error::Internal(format!("cannot sign a server-to-server token: {e}")))?;
        let mut request = tonic::Request::new(FetchUserKeyRequest {
            user_id: user.get() as u64,
        });
        let value = format!("Bearer {bearer}")
            .parse()
            .map_err(|_| Error::Internal("a signed token is not valid metadata".into()))?;
        request.metadata_mut().insert("authorization", value);
        let timeout = Duration::from_secs(self.settings.request_timeout_secs);
        request.set_timeout(timeout);
        let mut client = SecretFederationServiceClient::new(target.channel.clone());
        let answer = match tokio::time::timeout(timeout, client.fetch_user_key(request)).await {
            Err(_) => {
                crate::telemetry::federation_call(peer, "out", "timeout");
                return Err(unavailable(format!(
                    "did not answer within {} s (federation.request_timeout_secs)",
                    timeout.as_secs()
                )));
            }
            Ok(Err(status)) if status.code() == Code::NotFound => {
                crate::telemetry::federation_call(peer, "out", "not_found");
                return Err(Error::NotFound(format!(
                    "user {user} of homeserver {peer:?} has not posted a public key"
                )));
            }
            Ok(Err(status)) => {
                crate::telemetry::federation_call(peer, "out", "unavailable");
                return Err(unavailable(format!(
                    "could not be asked for the key of user {user}: {:?}: {}",
                    status.code(),
                    status.message()
                )));
            }
            Ok(Ok(answer)) => answer.into_inner(),
        };
        let keys = match validate(answer, max_past_keys) {
            Ok(keys) => keys,
            Err(why) => {
                crate::telemetry::federation_call(peer, "out", "invalid_answer");
                tracing::warn!(peer, user = user.get(), "a peer sent an invalid key: {why}");
                return Err(unavailable(format!(
                    "answered with an invalid key for user {user} ({why})"
                )));
            }
        };
        crate::telemetry::federation_call(peer, "out", "ok");
        self.cache.put(peer, user, keys.clone());
        Ok(keys)
    }
}

/// Checks every key of a peer's answer by the rules for posted keys and recomputes its
/// fingerprint; caps the past keys.
fn validate(
    answer: proto::federation::FetchUserKeyResponse,
    max_past_keys: usize,
) -> Result<proto::FetchKeyResponse, String> {
    let check = |key: &proto::Key| -> Result<(), String> {
        let canonical = crate::keycheck::canonicalize(&key.key_data).map_err(|e| e.to_string())?;
        if canonical.spki_der != key.key_data {
            return Err("a key is not in canonical SPKI DER form".into());
        }
        if canonical.fingerprint.as_slice() != key.fingerprint.as_slice() {
            return Err("a key's fingerprint is not the SHA-256 of the key".into());
        }
        Ok(())
    };
    let current = answer
        .current_key
        .ok_or_else(|| "the answer has no current key".to_string())?;
    check(&current)?;
    let mut more = answer.more_past_keys;
    let mut past = answer.past_keys;
    if past.len() > max_past_keys {
        past.truncate(max_past_keys);
        more = true;
    }
    for key in &past {
        check(key)?;
    }
    Ok(proto::FetchKeyResponse {
        current_key: Some(current),
        past_keys: past,
        more_past_keys: more,
    })
}
