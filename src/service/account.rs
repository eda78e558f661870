//! DeleteAccount (DESIGN §13): the user erases their own account, with a fresh token.

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::proto;
use crate::service::AppState;
use crate::time::now_micros;

/// How recently DeleteAccount's token must have been issued (its `iat`), in seconds.
pub const FRESH_TOKEN_SECS: u64 = 5 * 60;

/// DeleteAccount: checks that the caller erases themself with a fresh token, erases them
/// (`store::erase`), tells the local hub (the other replicas learn it from the store's
/// notifications), and writes the audit line and metric.
pub(super) async fn delete_account(
    st: &AppState,
    caller: Caller,
    foreign: bool,
    r: proto::DeleteAccountRequest,
) -> Result<proto::DeleteAccountResponse> {
    if foreign {
        return Err(Error::PermissionDenied(
            "DeleteAccount erases accounts of this homeserver only; ask your own homeserver \
             to erase yours"
                .into(),
        ));
    }
    let now_secs = (now_micros() / 1_000_000).max(0) as u64;
    match caller.issued_at {
        None => {
            return Err(Error::Unauthenticated(
                "DeleteAccount needs a token that says when it was issued (an `iat` claim) \
                 less than 5 minutes ago; sign in again and call at once with the new token"
                    .into(),
            ));
        }
        Some(iat) if now_secs.saturating_sub(iat) >= FRESH_TOKEN_SECS => {
            return Err(Error::Unauthenticated(format!(
                "DeleteAccount needs a token issued less than 5 minutes ago and this one was \
                 issued {} s ago; sign in again and call at once with the new token",
                now_secs - iat
            )));
        }
        Some(_) => {}
    }
    if r.user_id == 0 || r.user_id > i64::MAX as u64 {
        return Err(Error::invalid(
            "user_id must be your own user id (between 1 and 2^63-1), repeated to confirm \
             the erasure",
        ));
    }
    let user = caller.user;
    if r.user_id != user.get() as u64 {
        return Err(Error::PermissionDenied(format!(
            "user_id {} is not your own id ({user}); DeleteAccount erases only the caller's \
             account, and user_id repeats the caller's id to confirm",
            r.user_id
        )));
    }
    let done = st
        .store
        .erase_user(user, r.erase_messages, now_micros())
        .await?;
    for pair in &done.left {
        st.hub.membership_changed(pair, user);
    }
    for (stream, epoch) in &done.rewritten {
        st.hub.forget_frames(stream, *epoch);
    }
    crate::telemetry::erasure(
        "rpc",
        user.get(),
        r.erase_messages,
        done.first,
        done.left.len(),
        done.events_erased,
    );
    Ok(proto::DeleteAccountResponse {
        first_erasure: done.first,
    })
}
