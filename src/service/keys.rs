//! PostKey, FetchKey, PostPrivateKey, FetchPrivateKey.

use crate::auth::Caller;
use crate::domain::UserId;
use crate::error::{Error, Result};
use crate::proto;
use crate::requests::{FetchKey, PostKey, PostPrivateKey};
use crate::service::{AppState, paging};
use crate::store::PostKeyOutcome;
use crate::time::now_micros;
use crate::wire;

pub(super) async fn post_key(
    st: &AppState,
    user: UserId,
    r: PostKey,
) -> Result<proto::PostKeyResponse> {
    let outcome = st.store.post_public_key(user, &r.key, now_micros()).await?;
    Ok(proto::PostKeyResponse {
        fingerprint: r.key.fingerprint.to_vec(),
        changed: outcome == PostKeyOutcome::Changed,
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
        Ok(local) => return local_keys(st, local).await,
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

/// The current and past keys of a user of this server: FetchKey's answer, and
/// FetchUserKey's for peers.
pub(crate) async fn local_keys(st: &AppState, user: UserId) -> Result<proto::FetchKeyResponse> {
    // The current key is the first item of the page (it always comes), then the past
    // keys, newest first, up to the cap.
    let envelope = proto::FetchKeyResponse {
        current_key: None,
        past_keys: Vec::new(),
        more_past_keys: true,
    };
    let budget = paging::budget(&st.settings, envelope, wire::key_size);
    let limit = st.settings.max_past_keys.saturating_add(1);
    let page = st.store.fetch_public_keys(user, limit, budget).await?;
    let mut keys = page.items.into_iter();
    let current = keys
        .next()
        .ok_or_else(|| Error::NotFound(format!("user {user} has not posted a public key")))?;
    Ok(proto::FetchKeyResponse {
        current_key: Some(wire::key(current)),
        past_keys: keys.map(wire::key).collect(),
        more_past_keys: page.has_more,
    })
}

pub(super) async fn post_private_key(
    st: &AppState,
    user: UserId,
    r: PostPrivateKey,
) -> Result<proto::PostPrivateKeyResponse> {
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
