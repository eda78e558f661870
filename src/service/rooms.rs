//! GenerateChannelPair, SendInvite, FetchInvites, ListChannelPairs, LeaveChannelPair,
//! RemoveMember.

use crate::domain::UserId;
use crate::error::Result;
use crate::proto;
use crate::requests::{FetchInvites, LeaveChannelPair, ListChannelPairs, RemoveMember, SendInvite};
use crate::service::{AppState, paging};
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

pub(super) async fn send_invite(
    st: &AppState,
    user: UserId,
    r: SendInvite,
) -> Result<proto::SendInviteResponse> {
    let to = r.to.into_local(&st.settings.server_name)?;
    let caps = InviteCaps {
        pending_per_sender: st.settings.max_pending_invites_per_sender,
        members_per_pair: st.settings.max_members_per_pair,
    };
    let invite = st
        .store
        .send_invite(user, r.pair, to, &r.invite, now_micros(), caps)
        .await?;
    st.hub.invite_sent(to);
    Ok(proto::SendInviteResponse {
        invite_id: invite.invite_id as u64,
    })
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
    let page = st.store.list_pairs(user, r.after, r.limit, budget).await?;
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
    let ids = st.store.leave_pair(user, r.pair).await?;
    st.hub.membership_changed(&ids, user);
    Ok(proto::LeaveChannelPairResponse {})
}

pub(super) async fn remove_member(
    st: &AppState,
    user: UserId,
    r: RemoveMember,
) -> Result<proto::RemoveMemberResponse> {
    let ids = st.store.remove_member(user, r.pair, r.user).await?;
    st.hub.membership_changed(&ids, r.user);
    Ok(proto::RemoveMemberResponse {})
}
