//! GenerateChannelPair, SendInvite, FetchInvites, ListChannelPairs, LeaveChannelPair,
//! RemoveMember.

use crate::domain::{Foreign, UserId};
use crate::error::{Error, Result};
use crate::proto;
use crate::proto::federation::DeliverInviteRequest;
use crate::requests::{FetchInvites, LeaveChannelPair, ListChannelPairs, RemoveMember, SendInvite};
use crate::service::{AppState, keys, paging};
use crate::store::{InviteCaps, PairIds};
use crate::time::now_micros;
use crate::wire;

pub(super) async fn generate_channel_pair(
    st: &AppState,
    user: UserId,
) -> Result<proto::ChannelPair> {
    let ids = PairIds::generate();
    st.store.create_pair(user, &ids, now_micros()).await?;
    Ok(wire::channel_pair(&ids))
}

/// The caller of SendInvite.
pub(super) struct Inviter {
    /// Their id here.
    pub user: UserId,
    /// Who they are when they are a user of another homeserver.
    pub origin: Option<Foreign>,
    /// Their [`crate::auth::Caller::limit_key`]: whose budget a delivery spends.
    pub requester: i64,
}

pub(super) async fn send_invite(
    st: &AppState,
    who: Inviter,
    r: SendInvite,
) -> Result<proto::SendInviteResponse> {
    let Inviter {
        user,
        origin,
        requester,
    } = who;
    let caps = InviteCaps {
        pending_per_sender: st.settings.max_pending_invites_per_sender,
        members_per_pair: st.settings.max_members_per_pair,
    };
    let to = match r.to.clone().resolve(&st.settings.server_name) {
        Ok(local) => local,
        Err(foreign) => {
            let who = Inviter {
                user,
                origin,
                requester,
            };
            return invite_foreign(st, who, foreign, r, caps).await;
        }
    };
    if r.key_fingerprint.is_some() {
        keys::check_invitee_key(st, to, r.key_fingerprint.as_deref()).await?;
    }
    let invite = st
        .store
        .send_invite(user, r.pair, to, &r.invite, now_micros(), caps)
        .await?;
    st.hub.invite_sent(to);
    Ok(proto::SendInviteResponse {
        invite_id: invite.invite_id as u64,
    })
}

/// SendInvite to a user of another homeserver (DESIGN §9): the inviter's membership and
/// the member cap are checked, the invite is delivered to the invitee's homeserver (which
/// refuses it when the invitee has no key or a different one), and only then does the
/// invitee become a member here. A failed delivery changes nothing; a retry after a
/// failure in between delivers again (idempotent there) and adds the member.
async fn invite_foreign(
    st: &AppState,
    who: Inviter,
    to: Foreign,
    r: SendInvite,
    caps: InviteCaps,
) -> Result<proto::SendInviteResponse> {
    let Inviter {
        user,
        origin,
        requester,
    } = who;
    let homeserver = &*to.homeserver;
    let Some(federation) = &st.federation else {
        return Err(Error::FailedPrecondition(format!(
            "federation is off on this server (config key federation.enabled), so users of \
             homeserver {homeserver:?} cannot be invited"
        )));
    };
    if federation.peers.get(homeserver).is_none() {
        return Err(Error::FailedPrecondition(format!(
            "homeserver {homeserver:?} is not a federation peer of this server (config \
             federation.peers), so its users cannot be invited"
        )));
    }
    // No id is given to the invitee before the invite is delivered and they become a
    // member: a refused invite leaves no row.
    let ids = st.store.check_new_member(user, r.pair, &to, caps).await?;
    // The inviter as the invitee's homeserver names them: our server name for our users.
    let from = match &origin {
        Some(f) => proto::UserRef {
            homeserver: f.homeserver.to_string(),
            user_id: f.wire_id(),
        },
        None => proto::UserRef {
            homeserver: st.settings.server_name.clone(),
            user_id: user.get() as u64,
        },
    };
    let invite_id = federation
        .deliver_invite(
            homeserver,
            DeliverInviteRequest {
                pair: Some(wire::channel_pair(&ids)),
                pair_homeserver: st.settings.server_name.clone(),
                from: Some(from),
                to_user_id: to.wire_id(),
                invite: r.invite,
                key_fingerprint: r.key_fingerprint.unwrap_or_default(),
            },
            requester,
        )
        .await?;
    let (_, member) = st
        .store
        .add_member(user, r.pair, &to, caps, now_micros())
        .await?;
    federation.ids.remember(&to, member);
    Ok(proto::SendInviteResponse { invite_id })
}

pub(super) async fn fetch_invites(
    st: &AppState,
    user: UserId,
    r: FetchInvites,
) -> Result<proto::FetchInvitesResponse> {
    let budget = paging::invites_budget(&st.settings);
    let page = st
        .store
        .fetch_invites(user, r.after, r.limit, budget)
        .await?;
    Ok(proto::FetchInvitesResponse {
        invites: page.items.into_iter().map(wire::received_invite).collect(),
        has_more: page.has_more,
    })
}

pub(super) async fn list_channel_pairs(
    st: &AppState,
    user: UserId,
    r: ListChannelPairs,
) -> Result<proto::ListChannelPairsResponse> {
    let envelope = proto::ListChannelPairsResponse {
        pairs: Vec::new(),
        has_more: true,
    };
    let budget = paging::budget(&st.settings, envelope, wire::pair_info_size);
    let page = st
        .store
        .list_pairs(user, r.after, r.include_departed, r.limit, budget)
        .await?;
    Ok(proto::ListChannelPairsResponse {
        pairs: page.items.into_iter().map(wire::pair_info).collect(),
        has_more: page.has_more,
    })
}

pub(super) async fn leave_channel_pair(
    st: &AppState,
    user: UserId,
    r: LeaveChannelPair,
) -> Result<proto::LeaveChannelPairResponse> {
    let ids = st.store.leave_pair(user, r.pair, now_micros()).await?;
    st.hub.membership_changed(&ids, user);
    Ok(proto::LeaveChannelPairResponse {})
}

pub(super) async fn remove_member(
    st: &AppState,
    user: UserId,
    r: RemoveMember,
) -> Result<proto::RemoveMemberResponse> {
    let (target, foreign) = match r.user.resolve(&st.settings.server_name) {
        Ok(local) => (Some(local), None),
        Err(foreign) => {
            let id = match &st.federation {
                Some(federation) => federation.ids.get(&st.store, &foreign).await?,
                None => st.store.foreign_user(&foreign).await?,
            };
            (id, Some(foreign))
        }
    };
    // A foreign user is named as the request named them, never by their id here.
    let not_member = |e: Error| match (&foreign, e) {
        (Some(f), Error::NotFound(_)) => Error::NotFound(format!(
            "user {} of homeserver {:?} is not a member of this channel pair",
            f.user, f.homeserver
        )),
        (_, e) => e,
    };
    let target = target.ok_or_else(|| not_member(Error::NotFound(String::new())))?;
    let ids = st
        .store
        .remove_member(user, r.pair, target, now_micros())
        .await
        .map_err(not_member)?;
    st.hub.membership_changed(&ids, target);
    Ok(proto::RemoveMemberResponse {})
}
