//! Outgoing calls to peers and the cache of users' keys fetched from them.
//!
//! FetchKey of a user of peer `b`: served from the cache while the entry is younger than
//! `federation.key_cache_secs`, else `b`'s `FetchUserKey` is called with a fresh "s2s"
//! token within `federation.request_timeout_secs`. Every key received is re-validated
//! as if it were posted here (`keycheck`: RSA 4096–8192 bits, e = 65537, SPKI DER) and
//! its fingerprint recomputed; a peer that sends anything else is answered as
//! UNAVAILABLE naming the peer (and counted), never passed on. The key transparency
//! proof that comes with the keys is verified against the peer's pinned key (`proofs.rs`)
//! before anything is served, and a peer caught equivocating (`heads.rs`) is refused
//! before anything is asked. Only good answers are cached; `b`'s NOT_FOUND becomes
//! NOT_FOUND naming the user and server, and is remembered for
//! `federation.not_found_cache_secs`.
//!
//! Budgets (DESIGN §9a, [`Outgoing`]): every call that leaves for a peer on a user's
//! behalf passes that (user, peer)'s budget (`federation.outgoing_per_user_*`) and the
//! peer's (`federation.outgoing_per_peer_*`), of which key lookups may use only what
//! `federation.invite_reserve_percent` leaves: one user cannot spend what the peer allows
//! us, and lookups cannot crowd out invites. Over a budget the call is RESOURCE_EXHAUSTED
//! naming it, with `retry-after-ms`, and nothing is sent. Counted per replica.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use tonic::Code;
use tonic::transport::Channel;

use super::Federation;
use super::token;
use crate::config::FederationSettings;
use crate::domain::UserId;
use crate::error::Error;
use crate::proto;
use crate::proto::federation::secret_federation_service_client::SecretFederationServiceClient;
use crate::proto::federation::{DeliverInviteRequest, FetchUserKeyRequest};

/// Users' keys fetched from peers, by (peer, user), with the time they were fetched; and
/// the users peers answered NOT_FOUND for.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<(String, i64), (Instant, proto::FetchKeyResponse)>>,
    not_found: Mutex<HashMap<(String, i64), Instant>>,
}

impl KeyCache {
    /// Whether `peer` answered NOT_FOUND for `user` less than `ttl` ago.
    fn known_missing(&self, peer: &str, user: UserId, ttl: Duration) -> bool {
        let missing = self.not_found.lock().unwrap_or_else(|p| p.into_inner());
        missing
            .get(&(peer.to_string(), user.get()))
            .is_some_and(|at| at.elapsed() < ttl)
    }

    /// Remembers that `peer` answered NOT_FOUND for `user`.
    fn put_missing(&self, peer: &str, user: UserId, ttl: Duration) {
        let mut missing = self.not_found.lock().unwrap_or_else(|p| p.into_inner());
        if missing.len() >= 100_000 {
            missing.retain(|_, at| at.elapsed() < ttl);
            if missing.len() >= 100_000 {
                missing.clear();
            }
        }
        missing.insert((peer.to_string(), user.get()), Instant::now());
    }

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

    /// Drops the cached keys of `user` of `peer` (the peer refused an invite for them).
    pub fn forget(&self, peer: &str, user: UserId) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&(peer.to_string(), user.get()));
    }

    /// Drops every cached key of `peer` (it was caught equivocating).
    pub fn forget_peer(&self, peer: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(p, _), _| p != peer);
    }

    /// Drops a remembered NOT_FOUND of `user` of `peer` (the peer took an invite for them).
    fn forget_missing(&self, peer: &str, user: UserId) {
        let mut missing = self.not_found.lock().unwrap_or_else(|p| p.into_inner());
        missing.remove(&(peer.to_string(), user.get()));
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

/// One budget of outgoing calls and the figures its refusals quote.
struct Budget<K: std::hash::Hash + Eq + Clone> {
    rate: f64,
    burst: u32,
    keyed: DefaultKeyedRateLimiter<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Budget<K> {
    /// A budget of `rate` per second after `burst`; `None` when the rate is 0 (off).
    fn new(rate: f64, burst: u32) -> Option<Self> {
        let burst = NonZeroU32::new(burst)?;
        if rate <= 0.0 {
            return None;
        }
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))?.allow_burst(burst);
        Some(Budget {
            rate,
            burst: burst.get(),
            keyed: RateLimiter::keyed(quota),
        })
    }

    /// Takes one call of `key`'s budget, or the milliseconds to wait.
    fn take(&self, key: &K) -> Result<(), u64> {
        self.keyed.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            u64::try_from(wait.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u64::MAX)
                .max(1)
        })
    }
}

/// The budgets of outgoing calls (see the module doc), per replica.
pub struct Outgoing {
    /// Per (requesting user's [`crate::auth::Caller::limit_key`], peer).
    per_user: Option<Budget<(i64, String)>>,
    /// Per peer, every call.
    per_peer: Option<Budget<String>>,
    /// Per peer, key lookups: the peer's budget less the invite reserve.
    lookups: Option<Budget<String>>,
    /// Calls since the per-user budget last forgot users whose budget is full again.
    calls: std::sync::atomic::AtomicU32,
}

impl Outgoing {
    /// The budgets the `[federation]` table sets.
    pub fn from_settings(s: &FederationSettings) -> Self {
        let share = f64::from(100 - s.invite_reserve_percent.min(90)) / 100.0;
        let lookup_burst = ((f64::from(s.outgoing_per_peer_burst) * share).floor() as u32).max(1);
        Outgoing {
            per_user: Budget::new(s.outgoing_per_user_per_sec, s.outgoing_per_user_burst),
            per_peer: Budget::new(s.outgoing_per_peer_per_sec, s.outgoing_per_peer_burst),
            lookups: Budget::new(s.outgoing_per_peer_per_sec * share, lookup_burst),
            calls: Default::default(),
        }
    }

    /// Takes one call to `peer` on behalf of `requester` from every budget it passes
    /// (`lookup`: a key lookup, which may not use the invite reserve).
    fn take(&self, requester: i64, peer: &str, lookup: bool) -> Result<(), Error> {
        if let Some(budget) = &self.per_user {
            budget.take(&(requester, peer.to_string())).map_err(|ms| {
                throttled(
                    format!(
                        "you are sending more calls to homeserver {peer:?} than this server \
                         makes on one user's behalf: {} per second after a burst of {} (config \
                         keys federation.outgoing_per_user_per_sec and \
                         federation.outgoing_per_user_burst, counted per server)",
                        budget.rate, budget.burst
                    ),
                    ms,
                )
            })?;
            // Users whose budget is full again are forgotten now and then.
            let calls = self
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if calls % 4096 == 4095 {
                budget.keyed.retain_recent();
            }
        }
        if lookup && let Some(budget) = &self.lookups {
            budget.take(&peer.to_string()).map_err(|ms| {
                throttled(
                    format!(
                        "this server is asking homeserver {peer:?} for keys as fast as it may: {} \
                         per second after a burst of {} (config keys \
                         federation.outgoing_per_peer_per_sec and \
                         federation.outgoing_per_peer_burst, less \
                         federation.invite_reserve_percent kept for invites)",
                        budget.rate, budget.burst
                    ),
                    ms,
                )
            })?;
        }
        if let Some(budget) = &self.per_peer {
            budget.take(&peer.to_string()).map_err(|ms| {
                throttled(
                    format!(
                        "this server is calling homeserver {peer:?} as fast as it may: {} per \
                         second after a burst of {} (config keys \
                         federation.outgoing_per_peer_per_sec and \
                         federation.outgoing_per_peer_burst)",
                        budget.rate, budget.burst
                    ),
                    ms,
                )
            })?;
        }
        Ok(())
    }
}

/// A refusal by an outgoing budget: `what` names it; the delay is appended.
fn throttled(what: String, retry_after_ms: u64) -> Error {
    Error::Throttled {
        message: format!("{what}; retry in {retry_after_ms} ms"),
        retry_after_ms,
    }
}

impl Federation {
    /// The keys of user `user` of homeserver `peer` (not this server), for FetchKey on
    /// behalf of `requester` (the caller's [`crate::auth::Caller::limit_key`]).
    /// `max_past_keys` caps the past keys as for a local user.
    pub async fn fetch_user_key(
        &self,
        peer: &str,
        user: UserId,
        max_past_keys: usize,
        requester: i64,
    ) -> Result<proto::FetchKeyResponse, Error> {
        let Some(target) = self.peers.get(peer) else {
            return Err(not_a_peer(peer));
        };
        self.refuse_equivocator(peer)?;
        let ttl = Duration::from_secs(self.settings.key_cache_secs);
        if let Some(keys) = self.cache.get(peer, user, ttl) {
            return Ok(keys);
        }
        let missing_ttl = Duration::from_secs(self.settings.not_found_cache_secs);
        let not_found = || {
            Error::NotFound(format!(
                "user {user} of homeserver {peer:?} has not posted a public key"
            ))
        };
        if self.cache.known_missing(peer, user, missing_ttl) {
            return Err(not_found());
        }
        self.outgoing.take(requester, peer, true)?;
        let request = FetchUserKeyRequest {
            user_id: user.get() as u64,
        };
        let answer = match self
            .call(
                peer,
                super::FETCH_USER_KEY_PATH,
                request,
                |mut client, request| async move { client.fetch_user_key(request).await },
            )
            .await
        {
            Err(Refused(status)) if status.code() == Code::NotFound => {
                crate::telemetry::federation_call(peer, "out", "not_found");
                if !missing_ttl.is_zero() {
                    self.cache.put_missing(peer, user, missing_ttl);
                }
                return Err(not_found());
            }
            Err(Refused(status)) => {
                crate::telemetry::federation_call(peer, "out", "unavailable");
                log_refusal(peer, &target.endpoint, "FetchUserKey", &status);
                return Err(unavailable(
                    peer,
                    format!(
                        "could not be asked for the key of user {user}: {}",
                        refusal(status.code())
                    ),
                ));
            }
            Err(Failed(error)) => return Err(error),
            Ok(answer) => answer,
        };
        let proof = answer.proof.clone();
        let mut keys = match validate(answer, max_past_keys) {
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
        keys.proof = self.check_fetched_proof(peer, user, &keys, proof).await?;
        crate::telemetry::federation_call(peer, "out", "ok");
        self.cache.put(peer, user, keys.clone());
        Ok(keys)
    }

    /// Delivers an invite to user `to` of homeserver `peer` (SecretFederationService
    /// .DeliverInvite); the invite's id in their inbox. The peer's refusals that a client
    /// can act on (no key or a stale fingerprint, bad argument, a cap or rate limit with
    /// its retry hint) come back with their code in our own words, naming the peer (its
    /// own text goes to our log only); a refusal for the invitee's key also drops our
    /// cached key of them, so that the next FetchKey asks again. A peer that is down, slow
    /// or answers anything else is UNAVAILABLE naming it.
    ///
    /// The call is made on behalf of `requester` (the inviter's
    /// [`crate::auth::Caller::limit_key`]) and passes the outgoing budgets.
    pub async fn deliver_invite(
        &self,
        peer: &str,
        request: DeliverInviteRequest,
        requester: i64,
    ) -> Result<u64, Error> {
        let Some(target) = self.peers.get(peer) else {
            return Err(not_a_peer(peer));
        };
        self.outgoing.take(requester, peer, false)?;
        let to = request.to_user_id;
        match self
            .call(
                peer,
                super::DELIVER_INVITE_PATH,
                request,
                |mut client, request| async move { client.deliver_invite(request).await },
            )
            .await
        {
            Ok(answer) if answer.invite_id > 0 => {
                crate::telemetry::federation_call(peer, "out", "ok");
                if let Ok(user) = UserId::parse("to_user_id", to) {
                    // They have a key after all: no NOT_FOUND is remembered for them.
                    self.cache.forget_missing(peer, user);
                }
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
                log_refusal(peer, &target.endpoint, "DeliverInvite", &status);
                let outcome = match status.code() {
                    Code::NotFound => "not_found",
                    Code::InvalidArgument => "invalid_argument",
                    Code::FailedPrecondition | Code::PermissionDenied | Code::ResourceExhausted => {
                        "refused"
                    }
                    _ => "unavailable",
                };
                crate::telemetry::federation_call(peer, "out", outcome);
                let said = |why: &str| {
                    format!("homeserver {peer:?} refused the invite for its user {to}: {why}")
                };
                Err(match status.code() {
                    Code::FailedPrecondition => {
                        if let Ok(user) = UserId::parse("to_user_id", to) {
                            self.cache.forget(peer, user);
                        }
                        Error::FailedPrecondition(said(
                            "they have no public key there, or key_fingerprint is not their \
                             current key; fetch their key again (FetchKey), re-encrypt the \
                             invite and send it again",
                        ))
                    }
                    Code::NotFound => Error::NotFound(said("it does not know that user")),
                    Code::InvalidArgument => {
                        Error::InvalidArgument(said("it found the request malformed"))
                    }
                    Code::PermissionDenied => {
                        Error::PermissionDenied(said("it does not accept it from this server"))
                    }
                    Code::ResourceExhausted => match retry_after_ms(&status) {
                        Some(retry_after_ms) => Error::Throttled {
                            message: said(&format!(
                                "it holds as many invites for that user, or from this server, \
                                 as it takes for now (its caps on delivered invites or its rate \
                                 limit); retry in {retry_after_ms} ms"
                            )),
                            retry_after_ms,
                        },
                        None => Error::ResourceExhausted(said(
                            "it holds as many invites for that user, or from this server, as \
                             it takes",
                        )),
                    },
                    code => unavailable(
                        peer,
                        format!(
                            "could not take the invite for its user {to}: {}",
                            refusal(code)
                        ),
                    ),
                })
            }
            Err(Failed(error)) => Err(error),
        }
    }

    /// Calls `peer`'s `method` (its full path) with a fresh "s2s" token bound to it, within
    /// `federation.request_timeout_secs`.
    /// A timeout is counted and answered as UNAVAILABLE ([`Outcome::Failed`]); the peer's
    /// own error status is left to the caller ([`Outcome::Refused`]).
    pub(super) async fn call<Req, Resp, F, Fut>(
        &self,
        peer: &str,
        method: &str,
        message: Req,
        send: F,
    ) -> Outcome<Resp>
    where
        F: FnOnce(SecretFederationServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let Some(target) = self.peers.get(peer) else {
            return Err(Failed(not_a_peer(peer)));
        };
        let (bearer, _) =
            token::mint_s2s(&self.key, &self.server_name, peer, method).map_err(|e| {
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
pub(super) enum CallError {
    /// The peer answered with an error status.
    Refused(tonic::Status),
    /// No answer (timeout) or the call could not be made: the error for our client.
    Failed(Error),
}
use CallError::{Failed, Refused};

/// The result of an outgoing call.
pub(super) type Outcome<T> = Result<T, CallError>;

/// The error for a homeserver that is not a configured peer.
fn not_a_peer(peer: &str) -> Error {
    Error::FailedPrecondition(format!(
        "homeserver {peer:?} is not a federation peer of this server (config \
         federation.peers), so its users cannot be reached"
    ))
}

/// The error for a peer that did not answer usefully: it names the peer, never its
/// endpoint or the peer's own words (those go to our log, see [`log_refusal`]).
pub(super) fn unavailable(peer: &str, what: String) -> Error {
    Error::Unavailable(format!("homeserver {peer:?} {what}; try again later"))
}

/// What a peer's error code says, in our words, for our client.
fn refusal(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "it is down or cannot be reached",
        Code::DeadlineExceeded => "it did not answer in time",
        Code::ResourceExhausted => "it is limiting this server's calls",
        Code::Unauthenticated | Code::PermissionDenied => {
            "it does not accept this server's credentials (check both servers' pinned keys)"
        }
        _ => "it failed to answer",
    }
}

/// Logs a peer's refusal with what our client is not shown: the endpoint and the peer's
/// own message.
fn log_refusal(peer: &str, endpoint: &str, method: &str, status: &tonic::Status) {
    tracing::warn!(
        peer,
        endpoint,
        method,
        code = ?status.code(),
        detail = status.message(),
        "a federation peer refused a call"
    );
}

/// The `retry-after-ms` a peer sent with a refusal, if any.
fn retry_after_ms(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
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
        proof: None,
    })
}
