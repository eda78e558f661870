//! PostKey, FetchKey, PostPrivateKey, FetchPrivateKey.

use crate::error::{Error, Result};
use crate::keycheck;
use crate::proto;
use crate::service::{AppState, check_blob, check_local};
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
    let mut keys = st.store.fetch_public_keys(user).await?.into_iter();
    let current = keys
        .next()
        .ok_or_else(|| Error::NotFound(format!("user {user} has not posted a public key")))?;
    Ok(proto::FetchKeyResponse {
        current_key: Some(wire::key(current)),
        past_keys: keys.map(wire::key).collect(),
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
