//! The limits and ends of a Subscribe call: the ids cap, calls per user, the rate limit,
//! token expiry and shutdown (checked before or apart from storage: SQLite only).

use std::collections::HashSet;
use std::time::Duration;

use super::request;
use crate::common::*;
use secretd::proto::*;
use tonic::Code;

/// The ids cap applies to the request as a whole: one over is INVALID_ARGUMENT before
/// anything is sent, exactly the cap is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_ids_are_capped() {
    let s = TestServer::start_with(Backend::Sqlite, |st| st.max_stream_ids_per_message = 3).await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let other = new_pair(&mut c).await;
    let too_many = request(
        &[(&pair.message_id, 0), (&pair.state_id, 0)],
        &[&other.message_id, &other.state_id],
    );
    let refused = Subscription::subscribe(&mut c, too_many).await.map(|_| ());
    let st = expect_code(refused, Code::InvalidArgument);
    assert_eq!(
        st.message(),
        "the Subscribe request named 4 stream ids; at most 3 are accepted in one call \
         (max_stream_ids_per_message): split the streams over several Subscribe calls"
    );
    let mut sub = Subscription::subscribe(
        &mut c,
        request(
            &[(&pair.message_id, 0)],
            &[&pair.state_id, &other.message_id],
        ),
    )
    .await
    .unwrap();
    let mut caught = HashSet::new();
    while caught.len() < 3 {
        let Event::CaughtUp(cu) = sub.next().await else {
            panic!("CaughtUp for each stream")
        };
        caught.insert(cu.stream_id);
    }
    s.stop().await;
}

/// Subscribe calls count against the same per-user cap as StreamMessagePosting calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_per_user_are_capped_together() {
    let s = TestServer::start_with(Backend::Sqlite, |st| st.max_connections_per_user = 1).await;
    let mut c = s.client(random_user()).await;
    let bidi = Subscription::open(&mut c).await.unwrap();
    let refused = Subscription::subscribe(&mut c, SubscribeRequest::default())
        .await
        .map(|_| ());
    let st = expect_code(refused, Code::ResourceExhausted);
    assert!(
        st.message().contains("max_connections_per_user"),
        "{}",
        st.message()
    );
    drop(bidi);
    // The closed call frees its place (the server notices the reset shortly).
    let mut opened = None;
    for _ in 0..100 {
        match Subscription::subscribe(&mut c, SubscribeRequest::default()).await {
            Ok(sub) => {
                opened = Some(sub);
                break;
            }
            Err(st) if st.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(opened.is_some(), "a closed call frees its place");
    s.stop().await;
}

/// Opening a Subscribe call is one subscription attempt and each stream it names one
/// more: past the burst a stream fails alone, then the next call is refused with
/// `retry-after-ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_attempts_are_rate_limited() {
    let s = TestServer::start_with(Backend::Sqlite, |st| {
        st.rate_pairs_per_sec = 0.0;
        st.rate_subscriptions_per_sec = 1.0;
        st.rate_subscriptions_burst = 3;
    })
    .await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let third = new_pair(&mut c).await.message_id;
    let mut sub = Subscription::subscribe(
        &mut c,
        request(&[], &[&pair.message_id, &pair.state_id, &third]),
    )
    .await
    .unwrap();
    let mut caught = 0;
    let mut refused = Vec::new();
    while caught + refused.len() < 3 {
        match sub.next().await {
            Event::CaughtUp(_) => caught += 1,
            Event::SubscriptionError(e) => refused.push(e),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(caught, 2);
    assert_eq!(
        (refused[0].stream_id.as_str(), refused[0].code),
        (third.as_str(), Code::ResourceExhausted as i32)
    );
    assert!(
        refused[0].message.contains("rate_subscriptions_per_sec"),
        "{:?}",
        refused[0]
    );
    let call = Subscription::subscribe(&mut c, SubscribeRequest::default())
        .await
        .map(|_| ());
    let st = expect_code(call, Code::ResourceExhausted);
    assert!(
        st.message().contains("rate_subscriptions_per_sec"),
        "{}",
        st.message()
    );
    assert!(
        st.metadata().get("retry-after-ms").is_some(),
        "the delay is in the trailers"
    );
    s.stop().await;
}

/// A Subscribe call ends with UNAUTHENTICATED when its token expires (exp plus the
/// leeway); events posted before the end arrive first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_call_ends_when_its_token_expires() {
    let s = TestServer::start(Backend::Sqlite).await;
    let user = random_user();
    let mut c = s.client(user).await;
    let st = new_pair(&mut c).await.message_id;
    let ttl = 2 - secretd::auth::LEEWAY_SECS as i64;
    let mut short = s.client_with_token(token(user, ttl)).await;
    let mut sub = Subscription::subscribe(&mut short, request(&[], &[&st]))
        .await
        .unwrap();
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    post(&mut c, &st, 1, b"before").await.unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.event_id == 1));
    let end = sub.next_within(15).await;
    let status = expect_code(end, Code::Unauthenticated);
    assert!(
        status.message().contains("expired") && status.message().contains("resume"),
        "{}",
        status.message()
    );
    s.stop().await;
}

/// Shutting the server down ends an open Subscribe call with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_ends_the_call_with_unavailable() {
    let s = TestServer::start(Backend::Sqlite).await;
    let mut c = s.client(random_user()).await;
    let st = new_pair(&mut c).await.message_id;
    let mut sub = Subscription::subscribe(&mut c, request(&[], &[&st]))
        .await
        .unwrap();
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    let stopping = tokio::spawn(s.stop());
    let end = sub.next_within(15).await;
    let status = expect_code(end, Code::Unavailable);
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    stopping.await.unwrap();
}
