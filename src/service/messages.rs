//! PostMessage and FetchMessages.

use crate::domain::{Foreign, UserId};
use crate::error::Result;
use crate::proto;
use crate::requests::{FetchMessages, PostMessage};
use crate::service::{AppState, paging};
use crate::store::AppendRequest;
use crate::wire;

pub(super) async fn post_message(
    st: &AppState,
    user: UserId,
    origin: Option<Foreign>,
    r: PostMessage,
) -> Result<proto::PostMessageResponse> {
    let appended = st
        .committer
        .append(AppendRequest {
            stream_id: r.stream.get(),
            sender: user.get(),
            sender_origin: origin,
            counter: r.counter,
            body: r.body,
        })
        .await?;
    Ok(proto::PostMessageResponse {
        event_id: appended.event_id() as u64,
    })
}

pub(super) async fn fetch_messages(
    st: &AppState,
    user: UserId,
    r: FetchMessages,
) -> Result<proto::FetchMessagesResponse> {
    let budget = paging::events_budget(&st.settings);
    let result = st
        .store
        .fetch_events(user, r.stream, r.page, r.limit, budget)
        .await?;
    Ok(proto::FetchMessagesResponse {
        messages: result
            .events
            .into_iter()
            .map(wire::into_posted_message)
            .collect(),
        history_starts_at: crate::store::retention::history_starts_at(
            r.page,
            result.first_event_id,
            result.has_more,
        ),
        has_more: result.has_more,
        head_event_id: result.head_event_id as u64,
    })
}
