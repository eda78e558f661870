//! PostMessage and FetchMessages: counter rules, exactly-once retries, limits, history
//! paging both ways — on SQLite and Postgres.

use std::time::Duration;

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

both_backends!(
    posts_get_dense_ids_and_come_back_exactly,
    counter_rules_name_the_head,
    counter_gap_is_configurable,
    exact_retries_return_the_original_event,
    post_rejections,
    fetch_rejections_and_limits,
    pages_forward_and_backward_across_boundaries,
    retry_after_timeout_is_exactly_once,
    streams_are_independent,
);

fn fetch(stream: &str, after: u64, before: u64, limit: u32) -> FetchMessagesRequest {
    FetchMessagesRequest {
        stream_id: stream.into(),
        after_event_id: after,
        before_event_id: before,
        limit,
    }
}

async fn posts_get_dense_ids_and_come_back_exactly(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, bb) = (random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cb = s.client(bb).await;
    let pair = new_pair(&mut ca).await;
    invite(&mut ca, &mut cb, &pair, bb).await;
    let body: Vec<u8> = (0..=255u8).collect();
    assert_eq!(post(&mut ca, &pair.message_id, 1, &body).await.unwrap(), 1);
    assert_eq!(post(&mut cb, &pair.message_id, 5, b"b").await.unwrap(), 2);
    assert_eq!(post(&mut ca, &pair.message_id, 6, &[0u8]).await.unwrap(), 3);
    let page = cb
        .fetch_messages(fetch(&pair.message_id, 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.head_event_id, 3);
    assert!(!page.has_more);
    let got: Vec<(u64, u64, u64, Vec<u8>, String)> = page
        .messages
        .iter()
        .map(|m| {
            (
                m.event_id,
                m.message.as_ref().unwrap().id,
                m.sender,
                m.message.as_ref().unwrap().message.clone(),
                m.stream_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 1, a, body, pair.message_id.clone()),
            (2, 5, bb, b"b".to_vec(), pair.message_id.clone()),
            (3, 6, a, vec![0u8], pair.message_id.clone()),
        ]
    );
    let times: Vec<i64> = page
        .messages
        .iter()
        .map(|m| m.posted_at.unwrap().seconds)
        .collect();
    assert!(times.iter().all(|&t| t > 1_700_000_000));
    s.stop().await;
}

/// Asserts the one counter refusal: FAILED_PRECONDITION naming the counter and the head in
/// the message and the head in the trailers.
#[track_caller]
fn assert_counter_refused(
    result: Result<u64, tonic::Status>,
    counter: u64,
    head_counter: u64,
    head_event_id: u64,
) {
    let status = expect_code(result, Code::FailedPrecondition);
    let text = status.message();
    assert!(text.contains(&format!("counter {counter} ")), "{text}");
    let head = format!("head counter is {head_counter} (head event id {head_event_id})");
    assert!(text.contains(&head), "{text}");
    let trailer = |k: &str| {
        status
            .metadata()
            .get(k)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        trailer("secretd-head-counter"),
        Some(head_counter.to_string())
    );
    assert_eq!(
        trailer("secretd-head-event-id"),
        Some(head_event_id.to_string())
    );
}

async fn counter_rules_name_the_head(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let st = &pair.message_id;
    assert_eq!(post(&mut c, st, 10, b"a").await.unwrap(), 1);
    assert_eq!(post(&mut c, st, 11, b"b").await.unwrap(), 2);
    for bad in [1u64, 9, 2 + 1024 + 11] {
        let status = post(&mut c, st, bad, b"late").await;
        assert_counter_refused(status, bad, 11, 2);
    }
    // The largest allowed jump is accepted, one more is not.
    assert_eq!(post(&mut c, st, 11 + 1024, b"far").await.unwrap(), 3);
    expect_code(
        post(&mut c, st, 11 + 1024 + 1025, b"too far").await,
        Code::FailedPrecondition,
    );
    // Refused posts left nothing behind.
    let all = fetch_all(&mut c, st).await;
    assert_eq!(
        all.iter()
            .map(|m| m.message.as_ref().unwrap().id)
            .collect::<Vec<_>>(),
        vec![10, 11, 1035]
    );
    s.stop().await;
}

async fn counter_gap_is_configurable(b: Backend) {
    let s = TestServer::start_with(b, |st| st.max_counter_gap = 3).await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    expect_code(
        post(&mut c, &pair.state_id, 4, b"x").await,
        Code::FailedPrecondition,
    );
    assert_eq!(post(&mut c, &pair.state_id, 3, b"x").await.unwrap(), 1);
    let st = expect_code(
        post(&mut c, &pair.state_id, 7, b"x").await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("4 ..= 6"), "{}", st.message());
    s.stop().await;
}

async fn exact_retries_return_the_original_event(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, bb) = (random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cb = s.client(bb).await;
    let pair = new_pair(&mut ca).await;
    invite(&mut ca, &mut cb, &pair, bb).await;
    let st = &pair.message_id;
    assert_eq!(post(&mut ca, st, 1, b"one").await.unwrap(), 1);
    assert_eq!(post(&mut ca, st, 2, b"two").await.unwrap(), 2);
    // Exact retries, of the head and of an older event: the original id, nothing new.
    assert_eq!(post(&mut ca, st, 2, b"two").await.unwrap(), 2);
    assert_eq!(post(&mut ca, st, 1, b"one").await.unwrap(), 1);
    // Same counter, other bytes or other sender: the one counter refusal,
    // FAILED_PRECONDITION naming the head (never ALREADY_EXISTS, which client libraries
    // often take for success: the message would be lost).
    for (user, counter, body) in [(a, 2, &b"TWO"[..]), (bb, 2, b"two"), (bb, 1, b"one")] {
        let status = post(&mut s.client(user).await, st, counter, body).await;
        assert_counter_refused(status, counter, 2, 2);
    }
    let all = fetch_all(&mut ca, st).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].message.as_ref().unwrap().message, b"two");
    assert_eq!(post(&mut cb, st, 3, b"three").await.unwrap(), 3);
    s.stop().await;
}

async fn post_rejections(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let st = pair.message_id.clone();
    expect_code(post(&mut c, &st, 1, b"").await, Code::InvalidArgument);
    let e = expect_code(
        post(&mut c, &st, 1, &vec![1u8; 64 * 1024 + 1]).await,
        Code::InvalidArgument,
    );
    assert!(e.message().contains("65536"));
    expect_code(post(&mut c, &st, 0, b"x").await, Code::InvalidArgument);
    expect_code(
        post(&mut c, &st, 1u64 << 63, b"x").await,
        Code::InvalidArgument,
    );
    let no_message = c
        .post_message(PostMessageRequest {
            stream_id: st.clone(),
            message: None,
        })
        .await;
    expect_code(no_message, Code::InvalidArgument);
    let u = uuid::Uuid::parse_str(&st).unwrap();
    for bad in [
        String::new(),
        "garbage".into(),
        st.to_uppercase(),
        u.simple().to_string(),
        format!("{{{st}}}"),
        format!(" {st}"),
    ] {
        expect_code(post(&mut c, &bad, 1, b"x").await, Code::InvalidArgument);
    }
    expect_code(
        post(&mut c, &uuid::Uuid::new_v4().to_string(), 1, b"x").await,
        Code::PermissionDenied,
    );
    // None of it was stored; the largest ciphertext is accepted as the first event.
    assert!(fetch_all(&mut c, &st).await.is_empty());
    assert_eq!(
        post(&mut c, &st, 1, &vec![2u8; 64 * 1024]).await.unwrap(),
        1
    );
    s.stop().await;
}

async fn fetch_rejections_and_limits(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let st = pair.message_id.clone();
    expect_code(
        c.fetch_messages(fetch(&st, 1, 5, 10)).await,
        Code::InvalidArgument,
    );
    expect_code(
        c.fetch_messages(fetch("nope", 0, 0, 10)).await,
        Code::InvalidArgument,
    );
    expect_code(
        c.fetch_messages(fetch(&uuid::Uuid::new_v4().to_string(), 0, 0, 10))
            .await,
        Code::PermissionDenied,
    );
    // An empty stream.
    let empty = c
        .fetch_messages(fetch(&st, 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (empty.messages.len(), empty.has_more, empty.head_event_id),
        (0, false, 0)
    );
    // 1005 events: limit 0 gives 100, a huge limit is clamped to 1000.
    for i in 1..=1005u64 {
        post(&mut c, &st, i, &i.to_be_bytes()).await.unwrap();
    }
    let p = c
        .fetch_messages(fetch(&st, 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (p.messages.len(), p.has_more, p.head_event_id),
        (100, true, 1005)
    );
    let p = c
        .fetch_messages(fetch(&st, 0, 0, 5000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.messages.len(), p.has_more), (1000, true));
    let p = c
        .fetch_messages(fetch(&st, 0, u64::MAX, 5000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.messages.len(), p.has_more), (1000, true));
    assert_eq!(p.messages.last().unwrap().event_id, 1005);
    s.stop().await;
}

async fn pages_forward_and_backward_across_boundaries(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let st = pair.state_id.clone();
    for i in 1..=250u64 {
        post(&mut c, &st, i * 2, format!("event {i}").as_bytes())
            .await
            .unwrap();
    }
    let ids = |p: &FetchMessagesResponse| p.messages.iter().map(|m| m.event_id).collect::<Vec<_>>();
    // Forward.
    let mut after = 0;
    let mut shapes = Vec::new();
    let mut all = Vec::new();
    loop {
        let p = c
            .fetch_messages(fetch(&st, after, 0, 100))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.head_event_id, 250);
        shapes.push((p.messages.len(), p.has_more));
        all.extend(ids(&p));
        after = p.messages.last().map_or(after, |m| m.event_id);
        if !p.has_more {
            break;
        }
    }
    assert_eq!(shapes, vec![(100, true), (100, true), (50, false)]);
    assert_eq!(all, (1..=250).collect::<Vec<_>>());
    // Backward (scroll-back): pages still ascending.
    let p = c
        .fetch_messages(fetch(&st, 0, 251, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ids(&p), p.has_more), ((151..=250).collect(), true));
    let p = c
        .fetch_messages(fetch(&st, 0, 151, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ids(&p), p.has_more), ((51..=150).collect(), true));
    let p = c
        .fetch_messages(fetch(&st, 0, 51, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ids(&p), p.has_more), ((1..=50).collect(), false));
    let p = c
        .fetch_messages(fetch(&st, 0, 1, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ids(&p).len(), p.has_more), (0, false));
    // An exact boundary: 100 events before 101 leaves nothing older.
    let p = c
        .fetch_messages(fetch(&st, 0, 101, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ids(&p), p.has_more), ((1..=100).collect(), false));
    // A before beyond the head gives the newest page.
    let p = c
        .fetch_messages(fetch(&st, 0, 1_000_000, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&p), (241..=250).collect::<Vec<_>>());
    // Forward from the head: nothing more.
    let p = c
        .fetch_messages(fetch(&st, 250, 0, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ids(&p).len(), p.has_more, p.head_event_id),
        (0, false, 250)
    );
    // Exactly the bytes, counters and order.
    let p = c
        .fetch_messages(fetch(&st, 99, 0, 1))
        .await
        .unwrap()
        .into_inner();
    let m = &p.messages[0];
    assert_eq!((m.event_id, m.message.as_ref().unwrap().id), (100, 200));
    assert_eq!(m.message.as_ref().unwrap().message, b"event 100");
    s.stop().await;
}

async fn retry_after_timeout_is_exactly_once(b: Backend) {
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = s.client(user).await;
    let pair = new_pair(&mut c).await;
    let st = pair.message_id.clone();
    for counter in 1..=12u64 {
        let body = format!("message {counter}").into_bytes();
        // A connection whose answers get lost: the request reaches the server, the
        // response never reaches the client, which gives up after a timeout.
        let proxy = Proxy::start(s.addr).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut lossy =
            secretd::proto::secret_service_client::SecretServiceClient::with_interceptor(
                channel,
                Bearer(Some(s.token(user))),
            );
        lossy
            .fetch_messages(fetch(&st, 0, 0, 1))
            .await
            .expect("the proxy works before the loss");
        proxy.swallow_responses();
        let attempt = tokio::time::timeout(
            Duration::from_millis(400),
            post(&mut lossy, &st, counter, &body),
        )
        .await;
        assert!(attempt.is_err(), "the response must have been lost");
        drop(lossy);
        drop(proxy);
        // The server did commit it...
        let head = c
            .fetch_messages(fetch(&st, 0, 0, 1))
            .await
            .unwrap()
            .into_inner()
            .head_event_id;
        assert_eq!(head, counter, "the lost post was committed");
        // ...so the client's retry gets the original event id and adds nothing.
        assert_eq!(
            post(&mut c, &st, counter, &body).await.unwrap(),
            counter,
            "retry of {counter}"
        );
        // Retrying once more (another timeout, say) changes nothing either.
        assert_eq!(post(&mut c, &st, counter, &body).await.unwrap(), counter);
    }
    let all = fetch_all(&mut c, &st).await;
    assert_eq!(all.len(), 12);
    for (i, m) in all.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!((m.event_id, m.message.as_ref().unwrap().id), (n, n));
        assert_eq!(
            m.message.as_ref().unwrap().message,
            format!("message {n}").into_bytes()
        );
    }
    s.stop().await;
}

async fn streams_are_independent(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let p1 = new_pair(&mut c).await;
    let p2 = new_pair(&mut c).await;
    assert_eq!(post(&mut c, &p1.message_id, 100, b"x").await.unwrap(), 1);
    // Another stream has its own head counter and its own ids.
    assert_eq!(post(&mut c, &p2.message_id, 1, b"y").await.unwrap(), 1);
    assert_eq!(post(&mut c, &p1.state_id, 1, b"z").await.unwrap(), 1);
    assert_eq!(post(&mut c, &p2.message_id, 2, b"y").await.unwrap(), 2);
    s.stop().await;
}
