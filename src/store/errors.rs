//! The store's client-facing errors, shared by both backends so the messages are
//! identical.

use crate::error::{Error, Result};

/// The one error for "no such stream, or not yours": both look the same so that ids of
/// other users' rooms leak nothing.
pub fn stream_denied() -> Error {
    Error::PermissionDenied(
        "you are not a member of a channel pair with this stream (or it does not exist)".into(),
    )
}

/// The one error for "no such pair, or not yours" (see [`stream_denied`]).
pub fn pair_denied() -> Error {
    Error::PermissionDenied(
        "you are not a member of this channel pair (or it does not exist)".into(),
    )
}

/// The error for a ListChannelPairs cursor that names no pair of the caller (unknown,
/// someone else's, or left since): the same for all, like [`pair_denied`].
pub fn cursor_denied() -> Error {
    Error::PermissionDenied(
        "after_pair_id is not a channel pair you are a member of (you may have left it \
         while paging, or it does not exist); list again from the start with an empty \
         after_pair_id"
            .into(),
    )
}

/// The error for a compare-and-set on the private key that lost.
pub fn version_mismatch(expected: u64, current: Option<u64>) -> Error {
    match current {
        Some(current) => Error::Aborted(format!(
            "expected_version is {expected} but the stored private key is at version \
             {current}; fetch it, reconcile, and retry with expected_version {current}"
        )),
        None => Error::Aborted(format!(
            "expected_version is {expected} but no private key is stored yet; retry with \
             expected_version 0 (or leave it unset)"
        )),
    }
}

/// The error for reposting a key the user already replaced.
pub fn retired_key() -> Error {
    Error::AlreadyExists(
        "this key is one of your past keys; a retired key never becomes current again: \
         generate a new key pair"
            .into(),
    )
}

/// The error for an invitee without a public key.
pub fn no_public_key(user: i64) -> Error {
    Error::FailedPrecondition(format!(
        "user {user} has not posted a public key yet, so an invite cannot be encrypted to \
         them; ask them to sign in on a device first"
    ))
}

/// The error for inviting a new member into a full pair.
pub fn too_many_members(cap: u64) -> Error {
    Error::ResourceExhausted(format!(
        "this channel pair already has {cap} members, the most a pair may have (config key \
         max_members_per_pair); the owner must remove a member (or someone must leave) before \
         a new member can be invited"
    ))
}

/// The error for an inviter with too many invites pending to one invitee.
pub fn too_many_pending(to: i64, cap: u64) -> Error {
    Error::ResourceExhausted(format!(
        "you already have {cap} pending invites to user {to}, the most one user may have \
         pending to another (config key max_pending_invites_per_sender; an invite is pending \
         while its invitee is a member of its pair): they must leave some of those pairs \
         before you can invite them again"
    ))
}

/// The error for removing someone who is not a member.
pub fn not_a_member(user: i64) -> Error {
    Error::NotFound(format!("user {user} is not a member of this channel pair"))
}

/// Checks that `caller` (a member, the pair's owner being `owner`) may remove `target`.
pub fn check_removal(caller: i64, owner: i64, target: i64) -> Result<()> {
    if caller == target {
        return Err(Error::invalid(
            "you cannot remove yourself; use LeaveChannelPair to leave the pair",
        ));
    }
    if caller != owner {
        return Err(Error::PermissionDenied(
            "only the owner of the channel pair may remove members".into(),
        ));
    }
    Ok(())
}

/// The error for a delivery over a cap on delivered invites.
pub fn too_many_delivered(
    peer: &str,
    to: crate::domain::UserId,
    cap: u64,
    window_secs: i64,
    per_peer: bool,
    retry_after_ms: u64,
) -> Error {
    let (what, key) = if per_peer {
        (
            "pending invites from your homeserver in total".to_string(),
            "federation.max_delivered_invites_per_peer",
        )
    } else {
        (
            format!("pending invites from your homeserver for user {to}"),
            "federation.max_delivered_invites_per_invitee",
        )
    };
    Error::Throttled {
        message: format!(
            "this server already holds {cap} {what}, the most it keeps (config key {key}; \
             an invite is pending for federation.delivered_invites_window_secs = \
             {window_secs} s after its delivery), so homeserver {peer:?} must wait: retry in \
             {retry_after_ms} ms"
        ),
        retry_after_ms,
    }
}
