//! StreamMessagePosting subscriptions: per-stream errors, removal and leaving, live
//! invites, unsubscribe, limits — on SQLite and Postgres.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

both_backends!(
    bad_subscriptions_fail_alone,
    removal_and_leaving_end_subscriptions,
    invites_arrive_on_the_open_call,
    unsubscribe_and_resubscribe,
    subscription_and_connection_limits,
    stream_ids_per_message_are_capped,
    invites_after_closes_the_gap_after_fetch_invites,
);

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
        ..Default::default()
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
        ..Default::default()
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
            ..Default::default()
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

async fn invites_after_closes_the_gap_after_fetch_invites(b: Backend) {
    let s = TestServer::start(b).await;
    let (owner, guest) = (random_user(), random_user());
    let mut co = s.client(owner).await;
    let mut cg = s.client(guest).await;
    give_key(&mut cg).await;
    let mut sent = Vec::new();
    let mut send = async |co: &mut Client, body: &str| {
        let pair = new_pair(co).await;
        let id = co
            .send_invite(SendInviteRequest {
                pair_id: pair.pair_id,
                user_id: guest,
                homeserver: String::new(),
                invite: body.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .invite_id;
        sent.push((id, body.to_string()));
        id
    };
    send(&mut co, "first").await;
    send(&mut co, "second").await;
    // The guest's device pages its inbox...
    let fetched = cg
        .fetch_invites(FetchInvitesRequest {
            after_invite_id: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .invites;
    let last = fetched.last().unwrap().invite_id;
    // ...an invite arrives before it opens its stream...
    let third = send(&mut co, "third").await;
    let mut sub = Subscription::open(&mut cg).await.unwrap();
    sub.send(ManageStream {
        invites_after: Some(last),
        ..Default::default()
    });
    // ...and is delivered first, then new ones live, each once.
    let Event::Invite(i) = sub.next().await else {
        panic!("the invite after the cursor")
    };
    assert_eq!((i.invite_id, i.invite.as_slice()), (third, &b"third"[..]));
    let fourth = send(&mut co, "fourth").await;
    assert!(matches!(sub.next().await, Event::Invite(i) if i.invite_id == fourth));
    assert!(sub.quiet_for(300).await);
    // Asking again from 0 sends only the invites this call has not sent, oldest first.
    sub.send(ManageStream {
        invites_after: Some(0),
        ..Default::default()
    });
    let mut again = Vec::new();
    for _ in 0..2 {
        let Event::Invite(i) = sub.next().await else {
            panic!("an invite")
        };
        again.push((i.invite_id, String::from_utf8(i.invite).unwrap()));
    }
    assert_eq!(again, sent[..2].to_vec());
    assert!(sub.quiet_for(300).await, "nothing twice");
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

async fn stream_ids_per_message_are_capped(b: Backend) {
    // Making 1,000 pairs at once is over the pair-creation rate limit; the subscription
    // limits under test keep their defaults.
    let s = TestServer::start_with(b, |st| st.rate_pairs_per_sec = 0.0).await;
    let user = random_user();
    // A client resuming 1,000 streams in one message passes with the defaults.
    let mut makers = Vec::new();
    for _ in 0..8 {
        let mut c = s.client(user).await;
        makers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..125 {
                ids.push(new_pair(&mut c).await.message_id);
            }
            ids
        }));
    }
    let mut streams = Vec::new();
    for m in makers {
        streams.extend(m.await.unwrap());
    }
    let mut c = s.client(user).await;
    post(&mut c, &streams[0], 1, b"one").await.unwrap();
    let mut sub = Subscription::open(&mut c).await.unwrap();
    let cursors: Vec<(&str, u64)> = streams.iter().map(|s| (s.as_str(), 0)).collect();
    sub.manage(&[], &[], &cursors);
    let mut caught = HashSet::new();
    let mut messages = 0;
    while caught.len() < streams.len() {
        match sub.next().await {
            Event::CaughtUp(c) => assert!(caught.insert(c.stream_id)),
            Event::Message(m) => {
                assert_eq!((m.stream_id.as_str(), m.event_id), (streams[0].as_str(), 1));
                messages += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(messages, 1);
    // One id over the cap ends the call with INVALID_ARGUMENT naming the key.
    let max = s.settings.max_stream_ids_per_message;
    let too_many: Vec<String> = (0..=max)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    sub.send(ManageStream {
        unsubscribe_to: too_many,
        ..Default::default()
    });
    let end = sub.next_within(10).await;
    assert!(
        !matches!(end, Ok(Some(_))),
        "nothing more but the end: {end:?}"
    );
    let st = expect_code(end, Code::InvalidArgument);
    assert!(
        st.message().contains("max_stream_ids_per_message")
            && st.message().contains(&format!("{}", max + 1)),
        "{}",
        st.message()
    );
    // The server is up; a new call works, and exactly the cap is accepted.
    let mut sub = Subscription::open(&mut c).await.unwrap();
    let mut ids: Vec<String> = (2..max).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    ids.push(streams[0].clone());
    sub.send(ManageStream {
        unsubscribe_to: ids,
        subscribe_to: vec![streams[0].clone()],
        ..Default::default()
    });
    assert!(matches!(sub.next().await, Event::CaughtUp(c) if c.stream_id == streams[0]));
    post(&mut c, &streams[0], 2, b"two").await.unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.event_id == 2));
    s.stop().await;
}

/// The database fails while a subscription is being set up: the call ends with
/// UNAVAILABLE and releases every watch it took (the real binary's metrics show it), and
/// the server serves new subscriptions once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_failure_during_subscribe_releases_everything() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let proxy = PgProxy::start(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", unused_port());
    let p = spawn_binary(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &proxy.url,
            "--metrics-listen",
            &metrics,
        ],
        &[("SECRETD_JWT_SECRET", SECRET)],
        dir.path(),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let user = random_user();
    let mut c = secretd::proto::secret_service_client::SecretServiceClient::with_interceptor(
        channel,
        Bearer(Some(token(user, 3600))),
    );
    let pair = new_pair(&mut c).await;
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[&pair.message_id], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    const GAUGE: &str = "secretd_subscriptions";
    assert_eq!(metric(&metrics, GAUGE).await, 1.0);
    // The database goes away; the next subscription's access check fails.
    proxy.fail();
    sub.manage(&[&pair.state_id], &[], &[]);
    let end = sub.next_within(30).await;
    assert!(!matches!(end, Ok(Some(_))), "the call ends: {end:?}");
    expect_code(end, Code::Unavailable);
    assert_eq!(
        metric_becomes(&metrics, GAUGE, 0.0, 10).await,
        0.0,
        "every watch of the ended call is released"
    );
    // The database is back: subscriptions work, and their watches are counted once.
    proxy.heal();
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[&pair.message_id, &pair.state_id], &[], &[]);
    for _ in 0..2 {
        assert!(matches!(
            sub.next_within(30).await.unwrap().unwrap(),
            Event::CaughtUp(_)
        ));
    }
    assert_eq!(metric(&metrics, GAUGE).await, 2.0);
    drop(sub);
    assert_eq!(metric_becomes(&metrics, GAUGE, 0.0, 10).await, 0.0);
    let mut p = p;
    p.child.kill().await.unwrap();
}

/// A client that vanishes without closing its connection is noticed by HTTP/2 keepalive:
/// its call ends and frees its slot.
#[tokio::test]
async fn keepalive_notices_a_dead_client() {
    let s = TestServer::start_with(Backend::Sqlite, |st| {
        st.keepalive_interval_secs = 1;
        st.keepalive_timeout_secs = 1;
        st.max_connections_per_user = 1;
    })
    .await;
    let user = random_user();
    let mut c = s.client(user).await;
    let pair = new_pair(&mut c).await;
    let proxy = Proxy::start(s.addr).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut doomed = secretd::proto::secret_service_client::SecretServiceClient::with_interceptor(
        channel,
        Bearer(Some(s.token(user))),
    );
    let mut sub = Subscription::open(&mut doomed).await.unwrap();
    sub.manage(&[&pair.message_id], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    // The client goes silent: nothing the server sends (pings included) gets answered.
    proxy.swallow_responses();
    let st = expect_code(
        Subscription::open(&mut c).await.map(|_| ()),
        Code::ResourceExhausted,
    );
    assert!(st.message().contains("max_connections_per_user"));
    let mut freed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Subscription::open(&mut c).await.is_ok() {
            freed = true;
            break;
        }
    }
    assert!(
        freed,
        "the dead client's call still holds its slot after 10 s"
    );
    drop(sub);
    s.stop().await;
}
