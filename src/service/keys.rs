//! PostKey, FetchKey, PostPrivateKey, FetchPrivateKey, and the key transparency reads
//! GetTreeHead and MonitorKey (the proofs are built by `crate::kt`).

use std::time::{Duration, Instant};

use prost::Message;

use crate::auth::Caller;
use crate::domain::UserId;
use crate::error::{Error, Result};
use crate::kt::ProofRequest;
use crate::proto;
use crate::requests::{FetchKey, MonitorKey, PostKey, PostPrivateKey};
use crate::service::{AppState, paging};
use crate::store::{Budget, Paged, PostKeyOutcome, StoredKey, collect_read};
use crate::time::now_micros;
use crate::wire;

/// Entries a PostKey proof is read with (the posted key is almost always the newest).
const POST_KEY_ENTRIES: usize = 8;

/// How long a call may wait for the publisher: the epochs it takes
/// ([`crate::kt::Kt::publish_wait`]), and never more than three quarters of the unary
/// deadline, so the answer (with or without a proof) comes before it.
fn publish_wait(st: &AppState) -> Duration {
    let deadline = Duration::from_millis(st.settings.unary_timeout_ms);
    st.kt.publish_wait().min(deadline * 3 / 4)
}

/// PostKey: stores the key, then waits for its entry to be published and answers with
/// its proof (without one when the log did not take it in time; the key is stored).
pub(super) async fn post_key(
    st: &AppState,
    user: UserId,
    r: PostKey,
) -> Result<proto::PostKeyResponse> {
    refuse_erased(st, user, "public keys").await?;
    let outcome = st.store.post_public_key(user, &r.key, now_micros()).await?;
    let fingerprint = r.key.fingerprint;
    let request = ProofRequest {
        user,
        after_seq: 0,
        max_entries: POST_KEY_ENTRIES,
        known_tree_size: 0,
        newest_stored: false,
    };
    let until = Instant::now() + publish_wait(st);
    let logged = |p: &proto::KeyProof| p.entries.iter().any(|e| e.fingerprint == fingerprint);
    let proof = match st.kt.proof_when(&request, until, logged).await {
        Ok(Some(mut proof)) if logged(&proof) => {
            // From the newest entry down to this key's.
            let at = proof
                .entries
                .iter()
                .position(|e| e.fingerprint == fingerprint);
            proof.entries.truncate(at.map_or(0, |i| i + 1));
            Some(proof)
        }
        Ok(_) => {
            tracing::info!(
                user = user.get(),
                "PostKey: the key is stored but was not logged within {} ms; answering \
                 without a proof",
                publish_wait(st).as_millis()
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                user = user.get(),
                "PostKey: the key is stored but its proof could not be read: {e}"
            );
            None
        }
    };
    Ok(proto::PostKeyResponse {
        fingerprint: fingerprint.to_vec(),
        changed: outcome == PostKeyOutcome::Changed,
        proof,
    })
}

/// FetchKey on behalf of `requester` (the caller's [`Caller::limit_key`]: whose budget a
/// call to another homeserver spends).
pub(super) async fn fetch_key(
    st: &AppState,
    requester: i64,
    r: FetchKey,
) -> Result<proto::FetchKeyResponse> {
    let who = match r.user.resolve(&st.settings.server_name) {
        // Without a proof only as a benchmark's baseline (`kt_proofs_in_fetch_key`).
        Ok(local) if !st.settings.kt_proofs_in_fetch_key => return local_keys(st, local).await,
        Ok(local) => return local_keys_with_proof(st, local, r.known_tree_size).await,
        Err(foreign) => foreign,
    };
    let homeserver = &*who.homeserver;
    // A user of another homeserver: asked over federation (cached).
    let Some(federation) = &st.federation else {
        return Err(Error::FailedPrecondition(format!(
            "federation is off on this server (config key federation.enabled), so users of \
             homeserver {homeserver:?} cannot be reached"
        )));
    };
    federation
        .fetch_user_key(homeserver, who.user, st.settings.max_past_keys, requester)
        .await
}

/// Checks that local user `to` can receive an invite: they have a public key and, when
/// the inviter named the key the invite was encrypted to, it is still their current one.
pub(crate) async fn check_invitee_key(
    st: &AppState,
    to: UserId,
    fingerprint: Option<&[u8]>,
) -> Result<()> {
    let envelope = proto::FetchKeyResponse::default();
    let budget = paging::budget(&st.settings, envelope, wire::key_size);
    let page = st.store.fetch_public_keys(to, 1, budget).await?;
    let Some(current) = page.items.first() else {
        return Err(crate::store::no_public_key(to.get()));
    };
    match fingerprint {
        Some(expected) if expected != current.fingerprint.as_slice() => {
            Err(Error::FailedPrecondition(format!(
                "user {to} has a new public key since the invite was encrypted (key_fingerprint \
                 is not their current key's): fetch their key again (FetchKey), re-encrypt the \
                 invite and send it again"
            )))
        }
        _ => Ok(()),
    }
}

/// FetchKey of a user of this server: their keys, and the proof of the newest logged
/// entries (one per key served) against the newest head — read together, in one
/// statement on Postgres, when the newest head proves them. A current key posted less
/// than [`publish_wait`] ago and not logged yet is waited for, as its PostKey waits. The
/// proof is left out (and why logged) when the user has no logged entry or it cannot be
/// read; only a bad `known_tree_size` refuses the call.
pub(crate) async fn local_keys_with_proof(
    st: &AppState,
    user: UserId,
    known_tree_size: u64,
) -> Result<proto::FetchKeyResponse> {
    let limit = st.settings.max_past_keys.saturating_add(1);
    let mut request = ProofRequest {
        user,
        after_seq: 0,
        max_entries: limit,
        known_tree_size,
        newest_stored: false,
    };
    // The keys (one more than a page, as a page's query asks) and the proof in one read.
    let (keys, proof) = st
        .kt
        .keys_and_proof(&request, limit.saturating_add(1))
        .await?;
    let mut response = match keys_response(user, collect_read(keys, limit, key_budget(st))) {
        Err(Error::NotFound(_)) => return Err(no_keys(st, user).await),
        other => other?,
    };
    let Some(current) = &response.current_key else {
        return Ok(response);
    };
    let fingerprint = current.fingerprint.clone();
    let covers = |p: &proto::KeyProof| {
        p.entries
            .first()
            .is_some_and(|e| e.fingerprint == fingerprint)
    };
    request.max_entries = 1 + response.past_keys.len();
    // The one read proves the answer when every key served has its entry in the proof,
    // in order: the keys and the entries come from one snapshot, but the head they are
    // checked against may lag behind one another replica published since.
    let served: Vec<&[u8]> = std::iter::once(current)
        .chain(&response.past_keys)
        .map(|k| k.fingerprint.as_slice())
        .collect();
    let proves_all = |p: &proto::KeyProof| {
        p.entries.len() >= served.len()
            && served
                .iter()
                .zip(&p.entries)
                .all(|(key, entry)| *key == entry.fingerprint.as_slice())
    };
    response.proof = match proof {
        Some(mut proof) if proves_all(&proof) => {
            proof.entries.truncate(request.max_entries);
            Some(proof)
        }
        _ => {
            // Not proved by that read: read again against the newest stored head,
            // waiting only while the key's own PostKey would — until `publish_wait`
            // after it was posted (keys of a backlog being logged are not waited for).
            request.newest_stored = true;
            let posted_us = current
                .posted_at
                .as_ref()
                .map_or(0, |t| t.seconds.saturating_mul(1_000_000));
            let age = Duration::from_micros(now_micros().saturating_sub(posted_us).max(0) as u64);
            let until = Instant::now() + publish_wait(st).saturating_sub(age);
            match st.kt.proof_when(&request, until, covers).await {
                Ok(Some(proof)) if !proof.entries.is_empty() => Some(proof),
                Ok(_) => {
                    tracing::debug!(
                        user = user.get(),
                        "FetchKey: the user has no logged entry yet"
                    );
                    None
                }
                Err(e) if e.code() == tonic::Code::InvalidArgument => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        user = user.get(),
                        "FetchKey: answering without a key transparency proof: {e}"
                    );
                    None
                }
            }
        }
    };
    // The proof counts against the response's byte budget: the oldest past keys served
    // (and their entries) make room for it. The current key always stays.
    let limit = st.settings.max_response_bytes;
    while wire::GRPC_FRAME_HEADER + response.encoded_len() > limit && !response.past_keys.is_empty()
    {
        response.past_keys.pop();
        response.more_past_keys = true;
        if let Some(proof) = &mut response.proof
            && proof.entries.len() > 1 + response.past_keys.len()
        {
            proof.entries.pop();
        }
    }
    Ok(response)
}

/// The byte budget of FetchKey's keys (the response's, less its envelope).
fn key_budget(st: &AppState) -> Budget<StoredKey> {
    let envelope = proto::FetchKeyResponse {
        current_key: None,
        past_keys: Vec::new(),
        more_past_keys: true,
        proof: None,
    };
    paging::budget(&st.settings, envelope, wire::key_size)
}

/// FetchKey's answer (before its proof) from a page of a user's keys, newest first.
fn keys_response(user: UserId, page: Paged<StoredKey>) -> Result<proto::FetchKeyResponse> {
    let mut keys = page.items.into_iter();
    let current = keys
        .next()
        .ok_or_else(|| Error::NotFound(format!("user {user} has not posted a public key")))?;
    Ok(proto::FetchKeyResponse {
        current_key: Some(wire::key(current)),
        past_keys: keys.map(wire::key).collect(),
        more_past_keys: page.has_more,
        proof: None,
    })
}

/// The current and past keys of a user of this server: FetchKey's answer (before its
/// proof), and FetchUserKey's for peers.
pub(crate) async fn local_keys(st: &AppState, user: UserId) -> Result<proto::FetchKeyResponse> {
    // The current key is the first item of the page (it always comes), then the past
    // keys, newest first, up to the cap.
    let limit = st.settings.max_past_keys.saturating_add(1);
    let page = st
        .store
        .fetch_public_keys(user, limit, key_budget(st))
        .await?;
    match keys_response(user, page) {
        Err(Error::NotFound(_)) => Err(no_keys(st, user).await),
        other => other,
    }
}

/// PERMISSION_DENIED when `user`'s account was erased: an erased id stores no keys again
/// (`what` names them in the sentence).
async fn refuse_erased(st: &AppState, user: UserId, what: &str) -> Result<()> {
    match st.store.erased_at(user).await? {
        Some(at) => Err(Error::PermissionDenied(format!(
            "your account (user {user}) was erased at {}; an erased user id cannot store \
             {what} again",
            crate::time::to_timestamp(at)
        ))),
        None => Ok(()),
    }
}

/// The NOT_FOUND of a user without keys: one who never posted any, or one whose account
/// was erased (said so, with when).
async fn no_keys(st: &AppState, user: UserId) -> Error {
    match st.store.erased_at(user).await {
        Ok(Some(at)) => Error::NotFound(format!(
            "user {user} erased their account at {}; their keys are out of service and \
             nothing can be encrypted to them",
            crate::time::to_timestamp(at)
        )),
        Ok(None) => Error::NotFound(format!("user {user} has not posted a public key")),
        Err(e) => e,
    }
}

/// GetTreeHead: the newest head and the consistency proof from the client's.
pub(super) async fn get_tree_head(
    st: &AppState,
    r: proto::GetTreeHeadRequest,
) -> Result<proto::GetTreeHeadResponse> {
    let mut answer = st.kt.head(r.known_tree_size).await?;
    answer.public_key = st.server_public_key.to_vec();
    Ok(answer)
}

/// MonitorKey: a user's entries after a seq (the newest always), proved.
pub(super) async fn monitor_key(st: &AppState, r: MonitorKey) -> Result<proto::MonitorKeyResponse> {
    let user = r
        .user
        .resolve(&st.settings.server_name)
        .map_err(|foreign| {
            Error::FailedPrecondition(format!(
                "MonitorKey answers for users of this homeserver only; ask homeserver {:?} about \
             its user {}",
                &*foreign.homeserver, foreign.user
            ))
        })?;
    let proof = st
        .kt
        .proof(&ProofRequest {
            user,
            after_seq: r.after_seq,
            max_entries: st.settings.max_past_keys.saturating_add(1),
            known_tree_size: r.known_tree_size,
            // The owner's own audit: never against a head behind another replica's.
            newest_stored: true,
        })
        .await?;
    if proof.entries.is_empty() {
        return Err(Error::NotFound(format!(
            "user {user} has no entry in the key transparency log (no key posted, or posted \
             moments ago and not logged yet)"
        )));
    }
    Ok(proto::MonitorKeyResponse { proof: Some(proof) })
}

pub(super) async fn post_private_key(
    st: &AppState,
    user: UserId,
    r: PostPrivateKey,
) -> Result<proto::PostPrivateKeyResponse> {
    refuse_erased(st, user, "a private key").await?;
    let version = st
        .store
        .post_private_key(user, &r.blob, r.expected_version, now_micros())
        .await?;
    Ok(proto::PostPrivateKeyResponse { version })
}

pub(super) async fn fetch_private_key(
    st: &AppState,
    user: UserId,
) -> Result<proto::FetchPrivateKeyResponse> {
    let (key_data, version) = st.store.fetch_private_key(user).await?.ok_or_else(|| {
        Error::NotFound("no private key is stored for you yet; PostPrivateKey stores one".into())
    })?;
    Ok(proto::FetchPrivateKeyResponse { key_data, version })
}

/// Federate: a "fed-user" token for the caller to present at the peer `server_id`, and
/// where that peer serves clients. The token never outlives the caller's own
/// (`caller.expires_at` is its `exp` plus the leeway): at most an hour, less when the
/// caller's token expires sooner.
pub(super) fn federate(
    st: &AppState,
    caller: Caller,
    r: proto::FederateRequest,
) -> Result<proto::FederateResponse> {
    let user = caller.user;
    use crate::federation::token::{self, TokenType};
    let target = r.server_id.trim();
    if target.is_empty() {
        return Err(Error::invalid(
            "server_id is required: the server name of the homeserver the token is for",
        ));
    }
    if target == st.settings.server_name {
        return Err(Error::invalid(format!(
            "server_id {target:?} is this server; use your ordinary token here"
        )));
    }
    let Some(federation) = &st.federation else {
        return Err(Error::FailedPrecondition(
            "federation is off on this server (config key federation.enabled)".into(),
        ));
    };
    let Some(peer) = federation.settings.peer(target) else {
        return Err(Error::FailedPrecondition(format!(
            "homeserver {target:?} is not a federation peer of this server (config \
             federation.peers)"
        )));
    };
    let callers_exp = caller.expires_at.saturating_sub(crate::auth::LEEWAY_SECS);
    let now = u64::try_from(now_micros() / 1_000_000).unwrap_or(0);
    if callers_exp <= now {
        return Err(Error::FailedPrecondition(
            "your token expires now: get a fresh one from your homeserver's auth service and \
             call Federate again (a federation token never outlives the token it is minted \
             from)"
                .into(),
        ));
    }
    let ttl = TokenType::FedUser
        .max_lifetime_secs()
        .min(callers_exp - now);
    let (token, exp) = token::mint(
        &federation.key,
        &federation.server_name,
        target,
        TokenType::FedUser,
        Some(user.get() as u64),
        ttl,
    )
    .map_err(|e| Error::Internal(format!("cannot sign a federation token: {e}")))?;
    Ok(proto::FederateResponse {
        token,
        expires_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(exp).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        endpoint: peer.client_endpoint().to_string(),
    })
}
