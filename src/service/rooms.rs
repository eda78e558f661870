//! GenerateChannelPair, SendInvite, FetchInvites, ListChannelPairs, LeaveChannelPair,
//! RemoveMember.

use crate::error::Result;
use crate::proto;
use crate::service::{AppState, check_blob, check_local, page_limit};
use crate::store::{InviteCaps, PairIds};
use crate::time::now_micros;
use crate::wire::{self, parse_id, parse_user_id};

pub(super) async fn generate_channel_pair(st: &AppState, user: i64) -> Result<proto::ChannelPair> {
    let ids = PairIds::generate();
    st.store.create_pair(user, &ids, now_micros()).await?;
    Ok(wire::channel_pair(&ids))
}

pub(super) async fn send_invite(
    st: &AppState,
    user: i64,
    r: proto::SendInviteRequest,
) -> Result<proto::SendInviteResponse> {
    let pair = parse_id("pair_id", &r.pair_id)?;
    let to = parse_user_id("user_id", r.user_id)?;
    check_local(&st.settings, &r.homeserver)?;
    check_blob("invite", r.invite.len())?;
    let caps = InviteCaps {
        pending_per_sender: st.settings.max_pending_invites_per_sender,
        members_per_pair: st.settings.max_members_per_pair,
    };
    let invite = st
        .store
        .send_invite(user, pair, to, &r.invite, now_micros(), caps)
        .await?;
    st.hub.invite_sent(to);
    Ok(proto::SendInviteResponse {
        invite_id: invite.invite_id as u64,
    })
}

pub(super) async fn fetch_invites(
    st: &AppState,
    user: i64,
    r: proto::FetchInvitesRequest,
) -> Result<proto::FetchInvitesResponse> {
    let limit = page_limit(r.limit);
    let after = i64::try_from(r.after_invite_id).unwrap_or(i64::MAX);
    let mut invites = st.store.fetch_invites(user, after, limit + 1).await?;
    let has_more = invites.len() > limit;
    invites.truncate(limit);
    Ok(proto::FetchInvitesResponse {
        invites: invites.into_iter().map(wire::received_invite).collect(),
        has_more,
    })
}

pub(super) async fn list_channel_pairs(
    st: &AppState,
    user: i64,
) -> Result<proto::ListChannelPairsResponse> {
    let pairs = st.store.list_pairs(user).await?;
    Ok(proto::ListChannelPairsResponse {
        pairs: pairs
            .into_iter()
            .map(|p| proto::ChannelPairInfo {
                pair: Some(wire::channel_pair(&p.ids)),
                owner: p.owner as u64,
                members: p.members.into_iter().map(|m| m as u64).collect(),
            })
            .collect(),
    })
}

pub(super) async fn leave_channel_pair(
    st: &AppState,
    user: i64,
    r: proto::LeaveChannelPairRequest,
) -> Result<proto::LeaveChannelPairResponse> {
    let pair = parse_id("pair_id", &r.pair_id)?;
    let ids = st.store.leave_pair(user, pair).await?;
    st.hub.membership_changed(&ids, user);
    Ok(proto::LeaveChannelPairResponse {})
}

pub(super) async fn remove_member(
    st: &AppState,
    user: i64,
    r: proto::RemoveMemberRequest,
) -> Result<proto::RemoveMemberResponse> {
    let pair = parse_id("pair_id", &r.pair_id)?;
    let target = parse_user_id("user_id", r.user_id)?;
    let ids = st.store.remove_member(user, pair, target).await?;
    st.hub.membership_changed(&ids, target);
    Ok(proto::RemoveMemberResponse {})
}
