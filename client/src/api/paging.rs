//! Paging helpers: whole lists from paged RPCs (FetchInvites, ListChannelPairs,
//! FetchMessages), each stopping when the server says no more follow.

#![allow(clippy::needless_update)]

use super::{Api, PAGE_LIMIT, unary};
use crate::error::Result;
use crate::proto::secret::{self as pb, ChannelPairInfo, PostedMessage, ReceivedInvite};

impl Api {
    /// Every invite with an id above `after`, oldest first (all pages).
    pub async fn fetch_invites_after(&self, mut after: u64) -> Result<Vec<ReceivedInvite>> {
        let mut out = Vec::new();
        loop {
            let req = pb::FetchInvitesRequest {
                after_invite_id: after,
                limit: PAGE_LIMIT,
                ..Default::default()
            };
            let mut stub = self.stub();
            let page = unary("FetchInvites", stub.fetch_invites(req)).await?;
            let Some(last) = page.invites.last().map(|i| i.invite_id) else {
                return Ok(out);
            };
            after = last;
            out.extend(page.invites);
            if !page.has_more {
                return Ok(out);
            }
        }
    }

    /// Every channel pair the caller belongs to (all pages) and, with
    /// `include_departed`, those they left or were removed from (each with `departed`
    /// set).
    pub async fn list_channel_pairs(&self, include_departed: bool) -> Result<Vec<ChannelPairInfo>> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let req = pb::ListChannelPairsRequest {
                after_pair_id: after.clone(),
                limit: PAGE_LIMIT,
                include_departed,
                ..Default::default()
            };
            let mut stub = self.stub();
            let page = unary("ListChannelPairs", stub.list_channel_pairs(req)).await?;
            let last = page
                .pairs
                .last()
                .and_then(|p| p.pair.as_ref())
                .map(|p| p.pair_id.clone());
            out.extend(page.pairs);
            match last {
                Some(last) if page.has_more && last != after => after = last,
                _ => return Ok(out),
            }
        }
    }

    /// Every event of a stream after `after` (all pages), ascending.
    pub async fn fetch_messages_after(
        &self,
        stream_id: &str,
        after: u64,
    ) -> Result<Vec<PostedMessage>> {
        Ok(self.fetch_history_after(stream_id, after).await?.0)
    }

    /// Every event of a stream after `after` (all pages), ascending, and where the
    /// stream's history starts when the room's retention removed events after `after`
    /// (the server's `history_starts_at`; 0 = nothing asked for was removed).
    pub async fn fetch_history_after(
        &self,
        stream_id: &str,
        mut after: u64,
    ) -> Result<(Vec<PostedMessage>, u64)> {
        let mut out = Vec::new();
        let mut starts_at = 0;
        loop {
            let page = self
                .fetch_messages_page(stream_id, after, PAGE_LIMIT)
                .await?;
            starts_at = starts_at.max(page.history_starts_at);
            let Some(last) = page.messages.last().map(|m| m.event_id) else {
                return Ok((out, starts_at));
            };
            after = last;
            out.extend(page.messages);
            if !page.has_more {
                return Ok((out, starts_at));
            }
        }
    }
}
