//! PostMessage and FetchMessages.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::proto;
use crate::service::{AppState, check_blob, page_limit, paging};
use crate::store::{AppendRequest, Page};
use crate::wire::{self, parse_id};

pub(super) async fn post_message(
    st: &AppState,
    user: i64,
    r: proto::PostMessageRequest,
) -> Result<proto::PostMessageResponse> {
    let stream = parse_id("stream_id", &r.stream_id)?;
    let message = r.message.ok_or_else(|| {
        Error::invalid("message is required (the ciphertext and its ratchet counter)")
    })?;
    check_blob("message.message", message.message.len())?;
    let counter = match i64::try_from(message.id) {
        Ok(c) if c >= 1 => c,
        _ => {
            return Err(Error::invalid(format!(
                "message.id (the ratchet counter) is {}; it must be between 1 and 2^63-1",
                message.id
            )));
        }
    };
    let appended = st
        .committer
        .append(AppendRequest {
            stream_id: stream,
            sender: user,
            counter,
            body: Bytes::from(message.message),
        })
        .await?;
    Ok(proto::PostMessageResponse {
        event_id: appended.event_id() as u64,
    })
}

pub(super) async fn fetch_messages(
    st: &AppState,
    user: i64,
    r: proto::FetchMessagesRequest,
) -> Result<proto::FetchMessagesResponse> {
    let stream = parse_id("stream_id", &r.stream_id)?;
    if r.after_event_id != 0 && r.before_event_id != 0 {
        return Err(Error::invalid(
            "set after_event_id (page forward) or before_event_id (page backward), not both",
        ));
    }
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let page = if r.before_event_id != 0 {
        Page::Before(clamp(r.before_event_id))
    } else {
        Page::After(clamp(r.after_event_id))
    };
    let budget = paging::events_budget(&st.settings);
    let result = st
        .store
        .fetch_events(user, stream, page, page_limit(r.limit), budget)
        .await?;
    Ok(proto::FetchMessagesResponse {
        messages: result
            .events
            .into_iter()
            .map(wire::into_posted_message)
            .collect(),
        has_more: result.has_more,
        head_event_id: result.head_event_id as u64,
    })
}
