//! Subscribe, the server-streaming twin of StreamMessagePosting for a fixed set of streams:
//! ordering, gapless resume, CaughtUp, per-stream errors, removal, invites, limits, token
//! expiry and shutdown — on SQLite and Postgres where storage matters.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

both_backends!(
    resume_then_live_in_order_each_once,
    resume_during_writes_is_gapless,
    bad_streams_fail_alone,
    removal_ends_that_stream_and_the_call_goes_on,
    invites_after_then_live_invites,
);

/// A request resuming `resume` and following `live` from now.
fn request(resume: &[(&str, u64)], live: &[&str]) -> SubscribeRequest {
    SubscribeRequest {
        resume_from: resume
            .iter()
            .map(|(s, a)| StreamCursor {
                stream_id: s.to_string(),
                after_event_id: *a,
            })
            .collect(),
        subscribe_to: live.iter().map(|s| s.to_string()).collect(),
        invites_after: None,
    }
}

async fn resume_then_live_in_order_each_once(b: Backend) {
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = s.client(user).await;
    let pair = new_pair(&mut c).await;
    let (msgs, state) = (pair.message_id.clone(), pair.state_id.clone());
    for n in 1..=5 {
        post(&mut c, &msgs, n, format!("m{n}").as_bytes())
            .await
            .unwrap();
    }
    post(&mut c, &state, 1, b"s1").await.unwrap();
    // The request side is closed at once (one message): the call goes on regardless.
    let mut sub = Subscription::subscribe(&mut c, request(&[(&msgs, 2)], &[&state]))
        .await
        .unwrap();
    let mut backlog = Vec::new();
    let mut caught = Vec::new();
    while caught.len() < 2 {
        match sub.next().await {
            Event::Message(m) => backlog.push((m.event_id, m.message.unwrap().message)),
            Event::CaughtUp(cu) => caught.push((cu.stream_id, cu.head_event_id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<(u64, Vec<u8>)> =
        (3..=5).map(|n| (n, format!("m{n}").into_bytes())).collect();
    assert_eq!(backlog, expected, "the events after the cursor, in order");
    caught.sort();
    let mut want = vec![(msgs.clone(), 5), (state.clone(), 1)];
    want.sort();
    assert_eq!(caught, want, "CaughtUp names each stream's head");
    // Live from here on, on both streams, in event-id order.
    for n in 6..=8 {
        post(&mut c, &msgs, n, b"live").await.unwrap();
    }
    post(&mut c, &state, 2, b"s2").await.unwrap();
    let mut live = Vec::new();
    for _ in 0..4 {
        let Event::Message(m) = sub.next().await else {
            panic!("expected live events")
        };
        live.push((m.stream_id, m.event_id, m.sender));
    }
    let on_msgs: Vec<u64> = live
        .iter()
        .filter(|(st, _, _)| *st == msgs)
        .map(|(_, id, _)| *id)
        .collect();
    assert_eq!(on_msgs, vec![6, 7, 8]);
    assert!(live.contains(&(state.clone(), 2, user)));
    assert!(sub.quiet_for(300).await, "each event once");
    s.stop().await;
}

async fn resume_during_writes_is_gapless(b: Backend) {
    let s = TestServer::start(b).await;
    let owner = random_user();
    let mut co = s.client(owner).await;
    let pair = new_pair(&mut co).await;
    let st = pair.message_id.clone();
    const POSTERS: usize = 2;
    const EACH: usize = 200;
    const TOTAL: u64 = (POSTERS * EACH) as u64;
    let mut posters = Vec::new();
    for who in 0..POSTERS {
        let u = random_user();
        let mut cu = s.client(u).await;
        invite(&mut co, &mut cu, &pair, u).await;
        let st = st.clone();
        posters.push(tokio::spawn(async move {
            post_all(
                &mut cu,
                &st,
                (0..EACH).map(|i| format!("{who}:{i}").into_bytes()),
            )
            .await
        }));
    }
    // Readers that subscribe while the posters are busy: from 0 and from the middle.
    let mut probe = s.client(owner).await;
    let head = wait_for_head(&mut probe, &st, TOTAL / 4).await;
    let mut readers = Vec::new();
    for from in [0, head / 2] {
        let mut c = s.client(owner).await;
        let st = st.clone();
        readers.push(tokio::spawn(async move {
            let mut sub = Subscription::subscribe(&mut c, request(&[(&st, from)], &[]))
                .await
                .unwrap();
            let mut ids = Vec::new();
            let mut caught_up = 0;
            while ids.last().copied().unwrap_or(from) < TOTAL {
                match sub.next_within(60).await.unwrap().unwrap() {
                    Event::Message(m) => ids.push(m.event_id),
                    Event::CaughtUp(cu) => {
                        caught_up += 1;
                        assert_eq!(cu.head_event_id, ids.last().copied().unwrap_or(from));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(caught_up, 1, "one CaughtUp");
            (from, ids)
        }));
    }
    for p in posters {
        p.await.unwrap();
    }
    for r in readers {
        let (from, ids) = r.await.unwrap();
        assert_eq!(
            ids,
            (from + 1..=TOTAL).collect::<Vec<_>>(),
            "reader from {from}"
        );
    }
    s.stop().await;
}

async fn bad_streams_fail_alone(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, reader) = (random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cr = s.client(reader).await;
    let mine = new_pair(&mut cr).await;
    let theirs = new_pair(&mut ca).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    post(&mut cr, &mine.message_id, 1, b"one").await.unwrap();
    let mut sub = Subscription::subscribe(
        &mut cr,
        request(
            &[(&theirs.state_id, 0), (&mine.message_id, 5)],
            &[&theirs.message_id, "NOT-A-UUID", &mine.state_id, &unknown],
        ),
    )
    .await
    .unwrap();
    let mut errors = Vec::new();
    let mut caught = Vec::new();
    while errors.len() + caught.len() < 6 {
        match sub.next().await {
            Event::SubscriptionError(e) => errors.push((e.stream_id, e.code)),
            Event::CaughtUp(c) => caught.push(c.stream_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    errors.sort();
    let mut expected = vec![
        (theirs.message_id.clone(), Code::PermissionDenied as i32),
        (theirs.state_id.clone(), Code::PermissionDenied as i32),
        ("NOT-A-UUID".to_string(), Code::InvalidArgument as i32),
        (unknown.clone(), Code::PermissionDenied as i32),
        // A cursor beyond the head.
        (mine.message_id.clone(), Code::InvalidArgument as i32),
    ];
    expected.sort();
    assert_eq!(errors, expected);
    assert_eq!(caught, vec![mine.state_id.clone()]);
    // The good subscription goes on; the foreign stream's posts never arrive.
    post(&mut ca, &theirs.message_id, 1, b"secret")
        .await
        .unwrap();
    post(&mut cr, &mine.state_id, 1, b"mine").await.unwrap();
    let Event::Message(m) = sub.next().await else {
        panic!()
    };
    assert_eq!(m.stream_id, mine.state_id);
    assert!(sub.quiet_for(300).await);
    s.stop().await;
}

async fn removal_ends_that_stream_and_the_call_goes_on(b: Backend) {
    let s = TestServer::start(b).await;
    let (owner, removed) = (random_user(), random_user());
    let mut co = s.client(owner).await;
    let mut cr = s.client(removed).await;
    let pair = new_pair(&mut co).await;
    invite(&mut co, &mut cr, &pair, removed).await;
    let mut sub = Subscription::subscribe(
        &mut cr,
        request(&[(&pair.message_id, 0)], &[&pair.state_id]),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    }
    post(&mut co, &pair.message_id, 1, b"for everyone")
        .await
        .unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.event_id == 1));
    co.remove_member(RemoveMemberRequest {
        pair_id: pair.pair_id.clone(),
        user_id: removed,
    })
    .await
    .unwrap();
    let mut ended = Vec::new();
    for _ in 0..2 {
        let Event::SubscriptionError(e) = sub.next().await else {
            panic!("expected the subscription to end")
        };
        assert_eq!(e.code, Code::PermissionDenied as i32);
        assert!(e.message.contains("no longer a member"), "{}", e.message);
        ended.push(e.stream_id);
    }
    ended.sort();
    let mut both = vec![pair.message_id.clone(), pair.state_id.clone()];
    both.sort();
    assert_eq!(ended, both);
    post(&mut co, &pair.message_id, 2, b"after removal")
        .await
        .unwrap();
    assert!(sub.quiet_for(300).await, "nothing after the removal");
    // Every stream has ended, yet the call stays open: it still carries invites.
    let again = new_pair(&mut co).await;
    let sent = co
        .send_invite(SendInviteRequest {
            pair_id: again.pair_id.clone(),
            user_id: removed,
            homeserver: String::new(),
            invite: b"come back".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let Event::Invite(i) = sub.next().await else {
        panic!("expected the invite on the call")
    };
    assert_eq!(
        (i.invite_id, i.pair.as_ref()),
        (sent.invite_id, Some(&again))
    );
    s.stop().await;
}

async fn invites_after_then_live_invites(b: Backend) {
    let s = TestServer::start(b).await;
    let (owner, guest) = (random_user(), random_user());
    let mut co = s.client(owner).await;
    let mut cg = s.client(guest).await;
    give_key(&mut cg).await;
    let send = async |co: &mut Client, body: &str| {
        let pair = new_pair(co).await;
        co.send_invite(SendInviteRequest {
            pair_id: pair.pair_id,
            user_id: guest,
            homeserver: String::new(),
            invite: body.as_bytes().to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .invite_id
    };
    send(&mut co, "first").await;
    let second = send(&mut co, "second").await;
    // The guest pages its inbox; an invite arrives before it subscribes.
    let fetched = cg
        .fetch_invites(FetchInvitesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .invites;
    assert_eq!(fetched.last().unwrap().invite_id, second);
    let third = send(&mut co, "third").await;
    let mut sub = Subscription::subscribe(
        &mut cg,
        SubscribeRequest {
            invites_after: Some(second),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let Event::Invite(i) = sub.next().await else {
        panic!("the invite after the cursor")
    };
    assert_eq!((i.invite_id, i.invite.as_slice()), (third, &b"third"[..]));
    let fourth = send(&mut co, "fourth").await;
    assert!(matches!(sub.next().await, Event::Invite(i) if i.invite_id == fourth));
    assert!(sub.quiet_for(300).await, "each invite once");
    // Without invites_after only new invites come.
    let mut plain = Subscription::subscribe(&mut cg, SubscribeRequest::default())
        .await
        .unwrap();
    assert!(plain.quiet_for(300).await);
    let fifth = send(&mut co, "fifth").await;
    assert!(matches!(plain.next().await, Event::Invite(i) if i.invite_id == fifth));
    s.stop().await;
}

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
