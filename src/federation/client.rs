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
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;

use super::Federation;
use super::token::{self, TokenType};
use crate::domain::UserId;
use crate::error::Error;
use crate::proto;
use crate::proto::federation::secret_federation_service_client::SecretFederationServiceClient;
use crate::proto::federation::{DeliverInviteRequest, FetchUserKeyRequest};

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
        if self.peers.get(peer).is_none() {
            return Err(not_a_peer(peer));
        }
        let ttl = Duration::from_secs(self.settings.key_cache_secs);
        if let Some(keys) = self.cache.get(peer, user, ttl) {
            return Ok(keys);
        }
        let request = FetchUserKeyRequest {
            user_id: user.get() as u64,
        };
        let answer = match self
            .call(peer, request, |mut client, request| async move {
                client.fetch_user_key(request).await
            })
            .await
        {
            Err(Refused(status)) if status.code() == Code::NotFound => {
                crate::telemetry::federation_call(peer, "out", "not_found");
                return Err(Error::NotFound(format!(
                    "user {user} of homeserver {peer:?} has not posted a public key"
                )));
            }
            Err(Refused(status)) => {
                crate::telemetry::federation_call(peer, "out", "unavailable");
                return Err(unavailable(
                    peer,
                    format!(
                        "could not be asked for the key of user {user}: {:?}: {}",
                        status.code(),
                        status.message()
                    ),
                ));
            }
            Err(Failed(error)) => return Err(error),
            Ok(answer) => answer,
        };
        let keys = match validate(answer, max_past_keys) {
            Ok(keys) => keys,
            Err(why) => {
                crate::telemetry::federation_call(peer, "out", "invalid_answer");
                tracing::warn!(peer, user = user.get(), "a peer sent an invalid key: {why}");
                return Err(unavailable(
                    peer,
                    format!("answered with an invalid key for user {user} ({why})"),
                ));
            }
        };
        crate::telemetry::federation_call(peer, "out", "ok");
        self.cache.put(peer, user, keys.clone());
        Ok(keys)
    }

    /// Delivers an invite to user `to` of homeserver `peer` (SecretFederationService
    /// .DeliverInvite); the invite's id in their inbox. The peer's refusals that a client
    /// can act on (no key, stale fingerprint, bad argument, rate limit) come back with their
    /// code and the peer's sentence; a peer that is down, slow or answers anything else is
    /// UNAVAILABLE naming it.
    pub async fn deliver_invite(
        &self,
        peer: &str,
        request: DeliverInviteRequest,
    ) -> Result<u64, Error> {
        if self.peers.get(peer).is_none() {
            return Err(not_a_peer(peer));
        }
        let to = request.to_user_id;
        match self
            .call(peer, request, |mut client, request| async move {
                client.deliver_invite(request).await
            })
            .await
        {
            Ok(answer) if answer.invite_id > 0 => {
                crate::telemetry::federation_call(peer, "out", "ok");
                Ok(answer.invite_id)
            }
            Ok(_) => {
                crate::telemetry::federation_call(peer, "out", "invalid_answer");
                Err(unavailable(
                    peer,
                    "answered DeliverInvite without an invite id".into(),
                ))
            }
            Err(Refused(status)) => {
                let refused = |outcome| {
                    crate::telemetry::federation_call(peer, "out", outcome);
                    format!(
                        "homeserver {peer:?} refused the invite for its user {to}: {}",
                        status.message()
                    )
                };
                Err(match status.code() {
                    Code::FailedPrecondition => Error::FailedPrecondition(refused("refused")),
                    Code::NotFound => Error::NotFound(refused("not_found")),
                    Code::InvalidArgument => Error::InvalidArgument(refused("invalid_argument")),
                    Code::PermissionDenied => Error::PermissionDenied(refused("refused")),
                    Code::ResourceExhausted => Error::ResourceExhausted(refused("refused")),
                    code => {
                        crate::telemetry::federation_call(peer, "out", "unavailable");
                        unavailable(
                            peer,
                            format!(
                                "could not take the invite for its user {to}: {code:?}: {}",
                                status.message()
                            ),
                        )
                    }
                })
            }
            Err(Failed(error)) => Err(error),
        }
    }

    /// Calls `peer` with a fresh "s2s" token within `federation.request_timeout_secs`.
    /// A timeout is counted and answered as UNAVAILABLE ([`Outcome::Failed`]); the peer's
    /// own error status is left to the caller ([`Outcome::Refused`]).
    async fn call<Req, Resp, F, Fut>(&self, peer: &str, message: Req, send: F) -> Outcome<Resp>
    where
        F: FnOnce(SecretFederationServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let Some(target) = self.peers.get(peer) else {
            return Err(Failed(not_a_peer(peer)));
        };
        let (bearer, _) = token::mint(
            &self.key,
            &self.server_name,
            peer,
            TokenType::S2s,
            None,
            TokenType::S2s.max_lifetime_secs(),
        )
        .map_err(|e| {
            Failed(Error::Internal(format!(
                "cannot sign a server-to-server token: {e}"
            )))
        })?;
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {bearer}").parse().map_err(|_| {
            Failed(Error::Internal(
                "a signed token is not valid metadata".into(),
            ))
        })?;
        request.metadata_mut().insert("authorization", value);
        let timeout = Duration::from_secs(self.settings.request_timeout_secs);
        request.set_timeout(timeout);
        let client = SecretFederationServiceClient::new(target.channel.clone());
        match tokio::time::timeout(timeout, send(client, request)).await {
            Err(_) => {
                crate::telemetry::federation_call(peer, "out", "timeout");
                Err(Failed(unavailable(
                    peer,
                    format!(
                        "did not answer within {} s (federation.request_timeout_secs)",
                        timeout.as_secs()
                    ),
                )))
            }
            // A status with a source was made here: no connection (refused, TLS
            // handshake failed, certificate not trusted). Its words are for our log; the
            // client hears only that the peer could not be reached.
            Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
                crate::telemetry::federation_call(peer, "out", "unreachable");
                tracing::warn!(
                    peer,
                    endpoint = target.endpoint,
                    "cannot reach the peer: {}",
                    reasons(&status)
                );
                Err(Failed(unavailable(
                    peer,
                    "could not be reached (this server's log says why)".into(),
                )))
            }
            Ok(Err(status)) => Err(Refused(status)),
            Ok(Ok(answer)) => Ok(answer.into_inner()),
        }
    }
}

/// How an outgoing call ended when it did not succeed.
enum CallError {
    /// The peer answered with an error status.
    Refused(tonic::Status),
    /// No answer (timeout) or the call could not be made: the error for our client.
    Failed(Error),
}
use CallError::{Failed, Refused};

/// The result of an outgoing call.
type Outcome<T> = Result<T, CallError>;

/// The error for a homeserver that is not a configured peer.
fn not_a_peer(peer: &str) -> Error {
    Error::FailedPrecondition(format!(
        "homeserver {peer:?} is not a federation peer of this server (config \
         federation.peers), so its users cannot be reached"
    ))
}

/// The error for a peer that did not answer usefully. It names the peer, never its
/// endpoint (the client has no business with this server's network).
fn unavailable(peer: &str, what: String) -> Error {
    Error::Unavailable(format!("homeserver {peer:?} {what}; try again later"))
}

/// The reasons in an error's source chain, outermost first ("transport error: …: invalid
/// peer certificate: UnknownIssuer"), for this server's log.
fn reasons(err: &(dyn std::error::Error + 'static)) -> String {
    let mut words = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !words.ends_with(&next) {
            words = format!("{words}: {next}");
        }
        source = e.source();
    }
    words
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
