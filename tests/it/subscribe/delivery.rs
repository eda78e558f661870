//! What a Subscribe call delivers: ordering, gapless resume, CaughtUp, per-stream errors,
//! removal and invites — on SQLite and Postgres.

use super::request;
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
        ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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
