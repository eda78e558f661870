//! GenerateChannelPair, SendInvite, FetchInvites, ListChannelPairs, LeaveChannelPair,
//! RemoveMember.

use crate::error::Result;
use crate::proto;
use crate::service::{AppState, check_blob, check_local, page_limit, paging};
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
    let after = i64::try_from(r.after_invite_id).unwrap_or(i64::MAX);
    let budget = paging::invites_budget(&st.settings);
    let page = st
        .store
        .fetch_invites(user, after, page_limit(r.limit), budget)
        .await?;
    Ok(proto::FetchInvitesResponse {
        invites: page.items.into_iter().map(wire::received_invite).collect(),
        has_more: page.has_more,
    })
}

pub(super) async fn list_channel_pairs(
    st: &AppState,
    user: i64,
    r: proto::ListChannelPairsRequest,
) -> Result<proto::ListChannelPairsResponse> {
    let after = match r.after_pair_id.as_str() {
        "" => None,
        id => Some(parse_id("after_pair_id", id)?),
    };
    let envelope = proto::ListChannelPairsResponse {
        pairs: Vec::new(),
        has_more: true,
    };
    let budget = paging::budget(&st.settings, envelope, wire::pair_info_size);
    let page = st
        .store
        .list_pairs(user, after, page_limit(r.limit), budget)
        .await?;
    Ok(proto::ListChannelPairsResponse {
        pairs: page.items.into_iter().map(wire::pair_info).collect(),
        has_more: page.has_more,
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
