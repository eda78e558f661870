//! Retention (README "Retention"): SetRetention's refusals, the sweeper keeping the last
//! `max_events` or the events younger than `max_age_secs` (never the head), readers below
//! the horizon told so (`history_starts_at`), posting and subscriptions unaffected — on
//! SQLite and Postgres. The sweeper runs every 10 ms here (`retention_sweep_ms`); tests
//! poll for its effect with a deadline.

use std::time::{Duration, Instant};

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

both_backends!(
    retention_keeps_the_last_max_events,
    retention_by_age_keeps_the_head,
    retention_refusals_have_exact_codes,
);

mod sweeping;

pub(super) fn policy(
    pair: &ChannelPair,
    max_age_secs: u64,
    max_events: u64,
) -> SetRetentionRequest {
    SetRetentionRequest {
        pair_id: pair.pair_id.clone(),
        max_age_secs,
        max_events,
    }
}

pub(super) fn page(stream: &str, after: u64, before: u64, limit: u32) -> FetchMessagesRequest {
    FetchMessagesRequest {
        stream_id: stream.into(),
        after_event_id: after,
        before_event_id: before,
        limit,
    }
}

/// A server whose sweeper runs every 10 ms in batches of `batch`.
pub(super) async fn sweeping_server(b: Backend, batch: u64) -> TestServer {
    TestServer::start_with(b, |s| {
        s.retention_sweep_ms = 10;
        s.retention_batch = batch;
    })
    .await
}

/// Polls until the stream's history starts at `horizon` (30 s at most); that page.
pub(super) async fn wait_for_horizon(
    c: &mut Client,
    stream: &str,
    horizon: u64,
) -> FetchMessagesResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = c
            .fetch_messages(page(stream, 0, 0, 1000))
            .await
            .expect("fetch")
            .into_inner();
        if p.history_starts_at == horizon {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the sweeper did not reach horizon {horizon}: history starts at {}",
            p.history_starts_at
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn ids(ms: &[PostedMessage]) -> Vec<u64> {
    ms.iter().map(|m| m.event_id).collect()
}

async fn retention_keeps_the_last_max_events(b: Backend) {
    let s = sweeping_server(b, 97).await;
    let (owner, reader) = (random_user(), random_user());
    let mut co = s.client(owner).await;
    let mut cr = s.client(reader).await;
    let pair = new_pair(&mut co).await;
    invite(&mut co, &mut cr, &pair, reader).await;
    co.set_retention(policy(&pair, 0, 10))
        .await
        .expect("owner sets retention");
    let stream = pair.message_id.as_str();
    let acked = post_all(
        &mut co,
        stream,
        (1..=1000).map(|i| format!("m{i}").into_bytes()),
    )
    .await;
    assert_eq!(acked, (1..=1000).collect::<Vec<_>>());

    // A reader from 0 gets the last 10 and is told where history starts.
    let kept = wait_for_horizon(&mut cr, stream, 991).await;
    assert_eq!(ids(&kept.messages), (991..=1000).collect::<Vec<_>>());
    let counters: Vec<u64> = kept
        .messages
        .iter()
        .map(|m| m.message.as_ref().unwrap().id)
        .collect();
    assert_eq!(counters, (991..=1000).collect::<Vec<_>>());
    assert_eq!((kept.head_event_id, kept.has_more), (1000, false));
    // Above the horizon: nothing was removed from what was asked.
    let above = cr
        .fetch_messages(page(stream, 995, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ids(&above.messages), above.history_starts_at),
        ((996..=1000).collect(), 0)
    );
    // Scrolling back reaches the horizon and says so; a page short of it does not.
    let back = cr
        .fetch_messages(page(stream, 0, 995, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ids(&back.messages), back.history_starts_at),
        ((991..=994).collect(), 991)
    );
    let short = cr
        .fetch_messages(page(stream, 0, 995, 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ids(&short.messages), short.history_starts_at),
        (vec![993, 994], 0)
    );

    // A subscriber resuming below the horizon starts at it, and CaughtUp says so.
    let mut sub = Subscription::open(&mut cr).await.unwrap();
    sub.manage(&[], &[], &[(stream, 0)]);
    let (events, caught_up) = until_caught_up_full(&mut sub, stream).await;
    assert_eq!(ids(&events), (991..=1000).collect::<Vec<_>>());
    assert_eq!(
        (caught_up.head_event_id, caught_up.history_starts_at),
        (1000, 991)
    );
    // From above the horizon: no gap, nothing said.
    sub.manage(&[], &[], &[(stream, 996)]);
    let (events, caught_up) = until_caught_up_full(&mut sub, stream).await;
    assert_eq!(ids(&events), (997..=1000).collect::<Vec<_>>());
    assert_eq!(caught_up.history_starts_at, 0);

    // Counter rules unchanged: a deleted event's exact retry and a counter not above the
    // head are refused as before, naming the head; the next counter goes on.
    let retry = expect_code(
        post(&mut co, stream, 5, b"m5").await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        retry.metadata().get("secretd-head-counter").unwrap(),
        "1000"
    );
    expect_code(
        post(&mut co, stream, 1000, b"again").await,
        Code::FailedPrecondition,
    );
    assert_eq!(post(&mut co, stream, 1001, b"next").await.unwrap(), 1001);
    let mut live = Vec::new();
    while live.is_empty() {
        if let Event::Message(m) = sub.next().await {
            live.push(m.event_id);
        }
    }
    assert_eq!(live, vec![1001], "the subscription goes on live");
    let kept = wait_for_horizon(&mut cr, stream, 992).await;
    assert_eq!(ids(&kept.messages), (992..=1001).collect::<Vec<_>>());
    // The state stream had no events: nothing to remove.
    let state = cr
        .fetch_messages(page(&pair.state_id, 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((state.head_event_id, state.history_starts_at), (0, 0));
    s.stop().await;
}

/// Reads until CaughtUp for `stream`: the events before it and the CaughtUp.
async fn until_caught_up_full(
    sub: &mut Subscription,
    stream: &str,
) -> (Vec<PostedMessage>, CaughtUp) {
    let mut events = Vec::new();
    loop {
        match sub.next().await {
            Event::Message(m) => events.push(m),
            Event::CaughtUp(c) if c.stream_id == stream => return (events, c),
            other => panic!("unexpected {other:?} before CaughtUp"),
        }
    }
}

async fn retention_by_age_keeps_the_head(b: Backend) {
    let s = sweeping_server(b, 500).await;
    let owner = random_user();
    let mut co = s.client(owner).await;
    let pair = new_pair(&mut co).await;
    let stream = pair.message_id.as_str();
    post_all(&mut co, stream, (1..=5).map(|i| vec![i])).await;
    co.set_retention(policy(&pair, 1, 0))
        .await
        .expect("owner sets retention");
    // Once all five are older than a second, only the head is left: never the head.
    let kept = wait_for_horizon(&mut co, stream, 5).await;
    assert_eq!(ids(&kept.messages), vec![5]);
    // A new post is young: the old head goes once it has expired, the new one stays.
    assert_eq!(post(&mut co, stream, 6, b"young").await.unwrap(), 6);
    let kept = wait_for_horizon(&mut co, stream, 6).await;
    assert_eq!(ids(&kept.messages), vec![6]);
    s.stop().await;
}

async fn retention_refusals_have_exact_codes(b: Backend) {
    // A maximum of one day; the sweeper never runs during this test.
    let s = TestServer::start_with(b, |s| {
        s.max_retention_days = 1;
        s.retention_days = 1;
        s.retention_sweep_ms = 86_400_000;
    })
    .await;
    let (owner, member, stranger) = (random_user(), random_user(), random_user());
    let mut co = s.client(owner).await;
    let mut cm = s.client(member).await;
    let mut cs = s.client(stranger).await;
    let pair = new_pair(&mut co).await;
    invite(&mut co, &mut cm, &pair, member).await;

    let st = expect_code(
        cm.set_retention(policy(&pair, 3600, 0)).await,
        Code::PermissionDenied,
    );
    assert!(st.message().contains("only the owner"), "{st:?}");
    let st = expect_code(
        cs.set_retention(policy(&pair, 3600, 0)).await,
        Code::PermissionDenied,
    );
    assert!(st.message().contains("not a member"), "{st:?}");
    let unknown = ChannelPair {
        pair_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    expect_code(
        co.set_retention(policy(&unknown, 3600, 0)).await,
        Code::PermissionDenied,
    );
    let malformed = ChannelPair {
        pair_id: "not-a-uuid".into(),
        ..Default::default()
    };
    expect_code(
        co.set_retention(policy(&malformed, 3600, 0)).await,
        Code::InvalidArgument,
    );
    let st = expect_code(
        co.set_retention(policy(&pair, 86_401, 0)).await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("max_retention_days"), "{st:?}");
    assert!(st.message().contains("between 1 and 86400"), "{st:?}");
    let st = expect_code(
        co.set_retention(policy(&pair, 0, 10)).await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("keep forever"), "{st:?}");
    let st = expect_code(
        co.set_retention(policy(&pair, 60, 1 << 63)).await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("max_events"), "{st:?}");
    expect_code(
        s.anonymous()
            .await
            .set_retention(policy(&pair, 60, 0))
            .await,
        Code::Unauthenticated,
    );
    // Within the maximum: accepted, and set again (replaced).
    co.set_retention(policy(&pair, 86_400, 0))
        .await
        .expect("at the maximum");
    co.set_retention(policy(&pair, 60, 5))
        .await
        .expect("replaced");
    // A member who left is a stranger again.
    cm.leave_channel_pair(LeaveChannelPairRequest {
        pair_id: pair.pair_id.clone(),
    })
    .await
    .unwrap();
    expect_code(
        cm.set_retention(policy(&pair, 60, 0)).await,
        Code::PermissionDenied,
    );
    s.stop().await;
}
