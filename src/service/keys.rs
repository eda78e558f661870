//! PostKey, FetchKey, PostPrivateKey, FetchPrivateKey.

use crate::error::{Error, Result};
use crate::keycheck;
use crate::proto;
use crate::service::{AppState, check_blob, check_local, paging};
use crate::store::PostKeyOutcome;
use crate::time::now_micros;
use crate::wire;

pub(super) async fn post_key(
    st: &AppState,
    user: i64,
    r: proto::PostKeyRequest,
) -> Result<proto::PostKeyResponse> {
    let key = keycheck::canonicalize(&r.key_data)?;
    let outcome = st.store.post_public_key(user, &key, now_micros()).await?;
    Ok(proto::PostKeyResponse {
        fingerprint: key.fingerprint.to_vec(),
        changed: outcome == PostKeyOutcome::Changed,
    })
}

pub(super) async fn fetch_key(
    st: &AppState,
    r: proto::FetchKeyRequest,
) -> Result<proto::FetchKeyResponse> {
    let user = wire::parse_user_id("user_id", r.user_id)?;
    check_local(&st.settings, &r.homeserver)?;
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
    user: i64,
    r: proto::PostPrivateKeyRequest,
) -> Result<proto::PostPrivateKeyResponse> {
    check_blob("key_data", r.key_data.len())?;
    let version = st
        .store
        .post_private_key(user, &r.key_data, r.expected_version, now_micros())
        .await?;
    Ok(proto::PostPrivateKeyResponse { version })
}

pub(super) async fn fetch_private_key(
    st: &AppState,
    user: i64,
) -> Result<proto::FetchPrivateKeyResponse> {
    let (key_data, version) = st.store.fetch_private_key(user).await?.ok_or_else(|| {
        Error::NotFound("no private key is stored for you yet; PostPrivateKey stores one".into())
    })?;
    Ok(proto::FetchPrivateKeyResponse { key_data, version })
}
