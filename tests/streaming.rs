//! StreamMessagePosting: live delivery, gapless resume, isolation, removal, invites,
//! limits and slow consumers, on SQLite and Postgres.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use secretd::proto::*;
use tonic::Code;

both_backends!(
    headers_arrive_before_anything_is_sent,
    live_subscription_delivers_in_order,
    resume_replays_history_then_goes_live,
    resume_during_writes_is_gapless_and_exactly_once,
    bad_subscriptions_fail_alone,
    removal_and_leaving_end_subscriptions,
    invites_arrive_on_the_open_call,
    unsubscribe_and_resubscribe,
    subscription_and_connection_limits,
    slow_reader_never_slows_others_and_loses_nothing,
);

async fn headers_arrive_before_anything_is_sent(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    // No ManageStream is ever sent: the call must still be established at once.
    let opened = tokio::time::timeout(Duration::from_secs(3), Subscription::open(&mut c)).await;
    let mut sub = opened.expect("headers within 3 s").expect("call accepted");
    assert!(sub.quiet_for(200).await, "nothing to say yet");
    s.stop().await;
}

async fn live_subscription_delivers_in_order(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, reader) = (random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cr = s.client(reader).await;
    let pair = new_pair(&mut ca).await;
    invite(&mut ca, &mut cr, &pair, reader).await;
    post(&mut ca, &pair.message_id, 1, b"before").await.unwrap();
    let mut sub = Subscription::open(&mut cr).await.unwrap();
    sub.manage(&[&pair.message_id], &[], &[]);
    // Live from now: CaughtUp at the current head, then only new events.
    let (backlog, head) = sub.until_caught_up(&pair.message_id).await;
    assert!(backlog.is_empty());
    assert_eq!(head, 1);
    for (i, body) in [&b"one"[..], b"two", b"three"].iter().enumerate() {
        post(&mut ca, &pair.message_id, i as u64 + 2, body)
            .await
            .unwrap();
    }
    for (i, body) in [&b"one"[..], b"two", b"three"].iter().enumerate() {
        let Event::Message(m) = sub.next().await else {
            panic!("expected a message")
        };
        assert_eq!(m.event_id, i as u64 + 2);
        assert_eq!(m.stream_id, pair.message_id);
        assert_eq!(m.sender, a);
        let em = m.message.unwrap();
        assert_eq!((em.id, em.message.as_slice()), (i as u64 + 2, *body));
        assert!(m.posted_at.unwrap().seconds > 1_700_000_000);
    }
    // Events on the other stream of the pair are not delivered to this subscription.
    post(&mut ca, &pair.state_id, 1, b"state").await.unwrap();
    assert!(sub.quiet_for(300).await);
    s.stop().await;
}

async fn resume_replays_history_then_goes_live(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let st = pair.message_id.clone();
    post_all(&mut c, &st, (0..700u32).map(|i| i.to_be_bytes().to_vec())).await;
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[], &[], &[(&st, 0)]);
    let (events, head) = sub.until_caught_up(&st).await;
    assert_eq!(head, 700);
    assert_eq!(
        events.iter().map(|m| m.event_id).collect::<Vec<_>>(),
        (1..=700).collect::<Vec<_>>()
    );
    // From the middle, on a second call.
    let mut sub2 = Subscription::open(&mut c).await.unwrap();
    sub2.manage(&[], &[], &[(&st, 650)]);
    let (events, head) = sub2.until_caught_up(&st).await;
    assert_eq!(head, 700);
    assert_eq!(
        events.iter().map(|m| m.event_id).collect::<Vec<_>>(),
        (651..=700).collect::<Vec<_>>()
    );
    // From the head: nothing, then live.
    let mut sub3 = Subscription::open(&mut c).await.unwrap();
    sub3.manage(&[], &[], &[(&st, 700)]);
    assert!(sub3.until_caught_up(&st).await.0.is_empty());
    post(&mut c, &st, 701, b"live").await.unwrap();
    for sub in [&mut sub, &mut sub2, &mut sub3] {
        let Event::Message(m) = sub.next().await else {
            panic!()
        };
        assert_eq!(m.event_id, 701);
    }
    // A cursor beyond the head is refused for that stream only.
    sub3.manage(&[], &[], &[(&st, 10_000)]);
    let Event::SubscriptionError(e) = sub3.next().await else {
        panic!()
    };
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(e.message.contains("beyond"), "{}", e.message);
    s.stop().await;
}

async fn resume_during_writes_is_gapless_and_exactly_once(b: Backend) {
    let s = TestServer::start(b).await;
    let owner = random_user();
    let mut co = s.client(owner).await;
    let pair = new_pair(&mut co).await;
    let st = pair.message_id.clone();
    const POSTERS: usize = 4;
    const EACH: usize = 600;
    const TOTAL: u64 = (POSTERS * EACH) as u64;
    let mut poster_clients = Vec::new();
    for _ in 0..POSTERS {
        let u = random_user();
        let mut cu = s.client(u).await;
        invite(&mut co, &mut cu, &pair, u).await;
        poster_clients.push(cu);
    }
    // A reader that resumes from 0 before anything is written.
    let early = spawn_reader(s.client(owner).await, st.clone(), Some(0), TOTAL);
    let mut posters = Vec::new();
    for (who, mut cu) in poster_clients.into_iter().enumerate() {
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
    // Readers that join while the posters are busy: from 0, from the middle, and live.
    let mut late = Vec::new();
    let mut probe = s.client(owner).await;
    loop {
        let head = probe
            .fetch_messages(FetchMessagesRequest {
                stream_id: st.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .head_event_id;
        if head >= TOTAL / 4 {
            late.push(spawn_reader(
                s.client(owner).await,
                st.clone(),
                Some(0),
                TOTAL,
            ));
            late.push(spawn_reader(
                s.client(owner).await,
                st.clone(),
                Some(head / 2),
                TOTAL,
            ));
            late.push(spawn_reader(s.client(owner).await, st.clone(), None, TOTAL));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut acked = HashSet::new();
    for p in posters {
        for id in p.await.unwrap() {
            assert!(acked.insert(id), "event id {id} acknowledged twice");
        }
    }
    assert_eq!(acked.len() as u64, TOTAL);
    let stored = fetch_all(&mut probe, &st).await;
    assert_eq!(stored.len() as u64, TOTAL);
    for reader in std::iter::once(early).chain(late) {
        let (start, events) = reader.await.unwrap();
        // Exactly the stream's events after the cursor, in order, each once.
        let expected: Vec<u64> = (start + 1..=TOTAL).collect();
        let got: Vec<u64> = events.iter().map(|m| m.event_id).collect();
        assert_eq!(got, expected, "reader from {start}");
        for m in &events {
            assert_eq!(
                Some(m),
                stored.get(m.event_id as usize - 1),
                "event {} matches the store",
                m.event_id
            );
        }
    }
    s.stop().await;
}

/// Reads `stream` from `after` (None = live) until `last` is delivered; returns the start
/// cursor and the events.
fn spawn_reader(
    mut c: Client,
    stream: String,
    after: Option<u64>,
    last: u64,
) -> tokio::task::JoinHandle<(u64, Vec<PostedMessage>)> {
    tokio::spawn(async move {
        let mut sub = Subscription::open(&mut c).await.unwrap();
        match after {
            Some(a) => sub.manage(&[], &[], &[(&stream, a)]),
            None => sub.manage(&[&stream], &[], &[]),
        }
        let mut events = Vec::new();
        let mut start = after;
        let mut caught_up = 0;
        while events
            .last()
            .map_or(start.unwrap_or(0), |m: &PostedMessage| m.event_id)
            < last
            || start.is_none()
        {
            match sub.next_within(60).await.unwrap().unwrap() {
                Event::Message(m) => events.push(m),
                Event::CaughtUp(c) => {
                    caught_up += 1;
                    match start {
                        // Live subscription: it starts at the head it reports.
                        None => {
                            start = Some(c.head_event_id);
                            assert!(events.is_empty());
                        }
                        Some(s) => {
                            let prev = events.last().map_or(s, |m| m.event_id);
                            assert_eq!(
                                c.head_event_id, prev,
                                "CaughtUp names the last delivered id"
                            );
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(caught_up, 1, "one CaughtUp per subscription");
        (start.unwrap(), events)
    })
}

async fn bad_subscriptions_fail_alone(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, reader) = (random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cr = s.client(reader).await;
    let mine = new_pair(&mut cr).await;
    let theirs = new_pair(&mut ca).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let mut sub = Subscription::open(&mut cr).await.unwrap();
    sub.manage(
        &[&theirs.message_id, "NOT-A-UUID", &mine.message_id, &unknown],
        &[],
        &[(&theirs.state_id, 0), ("", 0)],
    );
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
        (String::new(), Code::InvalidArgument as i32),
    ];
    expected.sort();
    assert_eq!(errors, expected);
    assert_eq!(caught, vec![mine.message_id.clone()]);
    // The good subscription and the call go on; the foreign stream's posts never arrive.
    post(&mut ca, &theirs.message_id, 1, b"secret")
        .await
        .unwrap();
    post(&mut cr, &mine.message_id, 1, b"mine").await.unwrap();
    let Event::Message(m) = sub.next().await else {
        panic!()
    };
    assert_eq!(m.stream_id, mine.message_id);
    assert!(sub.quiet_for(300).await);
    s.stop().await;
}

async fn removal_and_leaving_end_subscriptions(b: Backend) {
    let s = TestServer::start(b).await;
    let (owner, removed, leaver) = (random_user(), random_user(), random_user());
    let mut co = s.client(owner).await;
    let mut cr = s.client(removed).await;
    let mut cl = s.client(leaver).await;
    let pair = new_pair(&mut co).await;
    let other = new_pair(&mut cr).await;
    invite(&mut co, &mut cr, &pair, removed).await;
    invite(&mut co, &mut cl, &pair, leaver).await;
    let mut sub_r = Subscription::open(&mut cr).await.unwrap();
    sub_r.manage(
        &[&pair.message_id, &pair.state_id, &other.message_id],
        &[],
        &[],
    );
    let mut sub_l = Subscription::open(&mut cl).await.unwrap();
    sub_l.manage(&[&pair.message_id], &[], &[]);
    for _ in 0..3 {
        assert!(matches!(sub_r.next().await, Event::CaughtUp(_)));
    }
    assert!(matches!(sub_l.next().await, Event::CaughtUp(_)));
    post(&mut co, &pair.message_id, 1, b"for everyone")
        .await
        .unwrap();
    assert!(matches!(sub_r.next().await, Event::Message(_)));
    assert!(matches!(sub_l.next().await, Event::Message(_)));
    // Removal ends both of the removed member's subscriptions to the pair, at once.
    co.remove_member(RemoveMemberRequest {
        pair_id: pair.pair_id.clone(),
        user_id: removed,
    })
    .await
    .unwrap();
    let mut ended = Vec::new();
    for _ in 0..2 {
        let Event::SubscriptionError(e) = sub_r.next().await else {
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
    // Later posts reach the leaver but not the removed member, whose other pair still works.
    post(&mut co, &pair.message_id, 2, b"after removal")
        .await
        .unwrap();
    assert!(matches!(sub_l.next().await, Event::Message(m) if m.event_id == 2));
    post(&mut cr, &other.message_id, 1, b"mine").await.unwrap();
    let Event::Message(m) = sub_r.next().await else {
        panic!()
    };
    assert_eq!(m.stream_id, other.message_id);
    // Leaving (from another device of the same user) ends the subscription too.
    let mut cl2 = s.client(leaver).await;
    cl2.leave_channel_pair(LeaveChannelPairRequest {
        pair_id: pair.pair_id.clone(),
    })
    .await
    .unwrap();
    let Event::SubscriptionError(e) = sub_l.next().await else {
        panic!()
    };
    assert_eq!(
        (e.stream_id.as_str(), e.code),
        (pair.message_id.as_str(), Code::PermissionDenied as i32)
    );
    post(&mut co, &pair.message_id, 3, b"after leaving")
        .await
        .unwrap();
    assert!(sub_l.quiet_for(300).await);
    assert!(sub_r.quiet_for(100).await);
    // Resubscribing is refused.
    sub_r.manage(&[&pair.message_id], &[], &[(&pair.state_id, 0)]);
    for _ in 0..2 {
        assert!(
            matches!(sub_r.next().await, Event::SubscriptionError(e) if e.code == Code::PermissionDenied as i32)
        );
    }
    s.stop().await;
}

async fn invites_arrive_on_the_open_call(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, bb) = (random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cb = s.client(bb).await;
    give_key(&mut cb).await;
    let p0 = new_pair(&mut ca).await;
    ca.send_invite(SendInviteRequest {
        pair_id: p0.pair_id.clone(),
        user_id: bb,
        homeserver: String::new(),
        invite: b"old".to_vec(),
    })
    .await
    .unwrap();
    let mut sub = Subscription::open(&mut cb).await.unwrap();
    let mut sub2 = Subscription::open(&mut cb).await.unwrap();
    // Invites sent before the call opened are fetched with FetchInvites, not pushed.
    assert!(sub.quiet_for(300).await);
    let p1 = new_pair(&mut ca).await;
    let r = ca
        .send_invite(SendInviteRequest {
            pair_id: p1.pair_id.clone(),
            user_id: bb,
            homeserver: String::new(),
            invite: b"sealed".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    for s in [&mut sub, &mut sub2] {
        let Event::Invite(i) = s.next().await else {
            panic!("expected the invite")
        };
        assert_eq!(i.invite_id, r.invite_id);
        assert_eq!(i.pair.as_ref(), Some(&p1));
        assert_eq!((i.from_user, i.invite.as_slice()), (a, &b"sealed"[..]));
    }
    // The invitee can subscribe to the new pair's streams right away.
    sub.manage(&[&p1.message_id], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    s.stop().await;
}

async fn unsubscribe_and_resubscribe(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let st = pair.message_id.clone();
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[&st], &[], &[]);
    sub.until_caught_up(&st).await;
    post(&mut c, &st, 1, b"1").await.unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.event_id == 1));
    sub.manage(&[], &[&st], &[]);
    // Unsubscribing is quiet; posts no longer arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    post(&mut c, &st, 2, b"2").await.unwrap();
    post(&mut c, &st, 3, b"3").await.unwrap();
    assert!(sub.quiet_for(300).await);
    // Subscribing twice is a no-op; resuming from our cursor fills the gap exactly.
    sub.manage(&[], &[], &[(&st, 1)]);
    sub.manage(&[&st], &[], &[]);
    let (events, head) = sub.until_caught_up(&st).await;
    assert_eq!(
        events.iter().map(|m| m.event_id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(head, 3);
    post(&mut c, &st, 4, b"4").await.unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.event_id == 4));
    assert!(
        sub.quiet_for(200).await,
        "no duplicate from the second subscribe"
    );
    // Unsubscribing a malformed id is an error for that id only.
    sub.manage(&[], &["nope"], &[]);
    assert!(
        matches!(sub.next().await, Event::SubscriptionError(e) if e.code == Code::InvalidArgument as i32)
    );
    s.stop().await;
}

async fn subscription_and_connection_limits(b: Backend) {
    let s = TestServer::start_with(b, |st| {
        st.max_subscriptions_per_connection = 3;
        st.max_connections_per_user = 2;
    })
    .await;
    let user = random_user();
    let mut c = s.client(user).await;
    let pairs = [new_pair(&mut c).await, new_pair(&mut c).await];
    let streams = [
        &pairs[0].message_id,
        &pairs[0].state_id,
        &pairs[1].message_id,
        &pairs[1].state_id,
    ];
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&streams.map(|s| s.as_str()), &[], &[]);
    let mut caught = 0;
    let mut refused = Vec::new();
    while caught + refused.len() < 4 {
        match sub.next().await {
            Event::CaughtUp(_) => caught += 1,
            Event::SubscriptionError(e) => refused.push(e),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(caught, 3);
    assert_eq!(refused[0].code, Code::ResourceExhausted as i32);
    assert!(
        refused[0]
            .message
            .contains("max_subscriptions_per_connection"),
        "{}",
        refused[0].message
    );
    // Two calls per user; the third is refused as a whole, naming the limit.
    let second = Subscription::open(&mut c).await.unwrap();
    let third = Subscription::open(&mut c).await;
    let st = expect_code(third.map(|_| ()), Code::ResourceExhausted);
    assert!(
        st.message().contains("max_connections_per_user"),
        "{}",
        st.message()
    );
    // Another user is not affected; closing a call frees its slot.
    let mut other = s.client(random_user()).await;
    assert!(Subscription::open(&mut other).await.is_ok());
    drop(second);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(s) = Subscription::open(&mut c).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "a closed call frees its slot");
    // The first call still works.
    post(&mut c, &pairs[0].message_id, 1, b"x").await.unwrap();
    assert!(matches!(sub.next().await, Event::Message(_)));
    s.stop().await;
}

async fn slow_reader_never_slows_others_and_loses_nothing(b: Backend) {
    let s = TestServer::start(b).await;
    let owner = random_user();
    let mut c = s.client(owner).await;
    let pair = new_pair(&mut c).await;
    let st = pair.message_id.clone();
    const N: u64 = 2000;
    let mut slow = Subscription::open(&mut c).await.unwrap();
    slow.manage(&[&st], &[], &[]);
    assert!(matches!(slow.next().await, Event::CaughtUp(_)));
    // A fast reader on another call of the same user.
    let fast = spawn_reader(s.client(owner).await, st.clone(), Some(0), N);
    let body = vec![0x5au8; 4096];
    post_all(
        &mut c,
        &st,
        (0..N).map(|i| [i.to_be_bytes().to_vec(), body.clone()].concat()),
    )
    .await;
    let (_, got) = tokio::time::timeout(Duration::from_secs(60), fast)
        .await
        .expect("fast reader done")
        .unwrap();
    assert_eq!(got.len() as u64, N);
    // The slow reader, who read nothing so far, now gets everything, in order.
    for expected in 1..=N {
        match slow.next_within(30).await.unwrap().unwrap() {
            Event::Message(m) => {
                assert_eq!(m.event_id, expected);
                assert_eq!(
                    m.message.unwrap().message[..8],
                    expected.checked_sub(1).unwrap().to_be_bytes()
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(slow.quiet_for(200).await);
    s.stop().await;
}
