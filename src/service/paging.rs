//! Byte budgets of paged responses (FetchMessages, FetchInvites, FetchKey,
//! ListChannelPairs): the whole encoded response, gRPC frame header included, stays
//! within `max_response_bytes`, so a stock client's 4 MiB receive limit is never hit.

use crate::config::Settings;
use crate::proto;
use crate::store::{Budget, InviteRecord, StoredEvent};
use crate::wire::{self, GRPC_FRAME_HEADER};

/// The budget for the items of a response whose other fields, at their largest, are
/// `envelope` (the response with no items); each item weighs `size(item)`, its encoded
/// length as an element of the response's repeated field.
pub fn budget<T>(
    settings: &Settings,
    envelope: impl prost::Message,
    size: fn(&T) -> usize,
) -> Budget<T> {
    let overhead = GRPC_FRAME_HEADER + envelope.encoded_len();
    Budget::new(settings.max_response_bytes.saturating_sub(overhead), size)
}

/// The budget for a page of events: FetchMessages, and each database page of a
/// subscription's catch-up (which bounds what one catch-up holds in memory).
pub fn events_budget(settings: &Settings) -> Budget<StoredEvent> {
    let envelope = proto::FetchMessagesResponse {
        messages: Vec::new(),
        has_more: true,
        head_event_id: u64::MAX,
        history_starts_at: u64::MAX,
    };
    budget(settings, envelope, wire::posted_message_size)
}

/// The budget for a page of invites: FetchInvites, and each database page of the
/// invites a streaming call delivers.
pub fn invites_budget(settings: &Settings) -> Budget<InviteRecord> {
    let envelope = proto::FetchInvitesResponse {
        invites: Vec::new(),
        has_more: true,
    };
    budget(settings, envelope, wire::received_invite_size)
}
