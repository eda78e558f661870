//! PostKey, FetchKey, PostPrivateKey, FetchPrivateKey.

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

pub(super) async fn fetch_key(st: &AppState, r: FetchKey) -> Result<proto::FetchKeyResponse> {
    let user = r.user.into_local(&st.settings.server_name)?;
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

/// Federate: federation is not wired yet (step 4 of issue 11).
pub(super) fn federate(
    _st: &AppState,
    _user: UserId,
    _r: proto::FederateRequest,
) -> Result<proto::FederateResponse> {
    Err(Error::FailedPrecondition(
        "federation is off on this server (config key federation.enabled)".into(),
    ))
}
