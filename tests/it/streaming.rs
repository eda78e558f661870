//! StreamMessagePosting: live delivery, gapless resume, isolation, removal, invites,
//! limits and slow consumers, on SQLite and Postgres.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

both_backends!(
    headers_arrive_before_anything_is_sent,
    live_subscription_delivers_in_order,
    resume_replays_history_then_goes_live,
    resume_during_writes_is_gapless_and_exactly_once,
    slow_reader_never_slows_others_and_loses_nothing,
    a_tiny_ring_budget_still_delivers_everything_once_in_order,
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
    let head = wait_for_head(&mut probe, &st, TOTAL / 4).await;
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

async fn a_tiny_ring_budget_still_delivers_everything_once_in_order(b: Backend) {
    // Room for a handful of frames in all rings together: most events are not kept in
    // memory, and readers fetch them from the database.
    let s = TestServer::start_with(b, |st| st.fanout_ring_budget_bytes = 600).await;
    let owner = random_user();
    let mut co = s.client(owner).await;
    let pairs = [new_pair(&mut co).await, new_pair(&mut co).await];
    const EACH: usize = 150;
    const POSTERS: usize = 2;
    const TOTAL: u64 = (EACH * POSTERS) as u64;
    let mut readers = Vec::new();
    for p in &pairs {
        let st = &p.message_id;
        readers.push(spawn_reader(s.client(owner).await, st.clone(), None, TOTAL));
        readers.push(spawn_reader(
            s.client(owner).await,
            st.clone(),
            Some(0),
            TOTAL,
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut posters = Vec::new();
    for p in &pairs {
        for who in 0..POSTERS {
            let mut c = s.client(owner).await;
            let st = p.message_id.clone();
            posters.push(tokio::spawn(async move {
                post_all(
                    &mut c,
                    &st,
                    (0..EACH).map(|i| format!("{who}/{i}").into_bytes()),
                )
                .await
            }));
        }
    }
    // One more reader per stream joins from the middle while posts go on.
    wait_for_head(&mut co, &pairs[0].message_id, 7).await;
    readers.push(spawn_reader(
        s.client(owner).await,
        pairs[0].message_id.clone(),
        Some(7),
        TOTAL,
    ));
    readers.push(spawn_reader(
        s.client(owner).await,
        pairs[1].message_id.clone(),
        None,
        TOTAL,
    ));
    for p in posters {
        assert_eq!(p.await.unwrap().len(), EACH);
    }
    for r in readers {
        let (start, events) = r.await.unwrap();
        let got: Vec<u64> = events.iter().map(|m| m.event_id).collect();
        assert_eq!(
            got,
            (start + 1..=TOTAL).collect::<Vec<_>>(),
            "reader from {start}"
        );
        let stream = &events.first().expect("events").stream_id;
        assert!(events.iter().all(|m| &m.stream_id == stream));
    }
    s.stop().await;
}

/// A call ends with UNAUTHENTICATED when its token expires (exp plus the leeway), and the
/// client resumes with a fresh token by cursor, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_ends_when_its_token_expires() {
    let s = TestServer::start(Backend::Sqlite).await;
    let user = random_user();
    let mut c = s.client(user).await;
    let pair = new_pair(&mut c).await;
    let st = pair.message_id.clone();
    // Accepted now (within the leeway), no longer accepted in about 3 s.
    let ttl = 3 - secretd::auth::LEEWAY_SECS as i64;
    let expires_at = std::time::SystemTime::now() + Duration::from_secs(3);
    let mut short = s.client_with_token(token(user, ttl)).await;
    let mut sub = Subscription::open(&mut short).await.unwrap();
    sub.manage(&[&st], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    post(&mut c, &st, 1, b"before").await.unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.event_id == 1));
    let end = loop {
        match sub.next_within(15).await {
            // Events posted before the end still arrive.
            Ok(Some(Event::Message(_))) => continue,
            other => break other,
        }
    };
    let ended_at = std::time::SystemTime::now();
    let st_ = expect_code(end, Code::Unauthenticated);
    assert!(
        st_.message().contains("expired") && st_.message().contains("resume"),
        "{}",
        st_.message()
    );
    // Not before the expiry (exp has whole seconds: allow one), and not long after.
    assert!(
        ended_at + Duration::from_secs(1) >= expires_at,
        "ended {:?} before the token expired",
        expires_at.duration_since(ended_at).unwrap_or_default()
    );
    assert!(
        ended_at.duration_since(expires_at).unwrap_or_default() < Duration::from_secs(5),
        "ended long after the token expired"
    );
    // Posts go on meanwhile; a fresh token resumes by cursor and gets them all.
    post(&mut c, &st, 2, b"meanwhile").await.unwrap();
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[], &[], &[(&st, 1)]);
    let (events, head) = sub.until_caught_up(&st).await;
    assert_eq!(
        events.iter().map(|m| m.event_id).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(head, 2);
    s.stop().await;
}

/// A Postgres server whose database connections pass a [`PgProxy`] (None when the
/// Postgres tests are off), a user's client and one of the user's streams.
async fn through_proxy() -> Option<(PgProxy, TestServer, u64, Client, String)> {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return None;
    };
    let proxy = PgProxy::start(&url).await;
    // The key transparency publisher runs at start only: its COMMITs would mix with the
    // ones these tests lose.
    let s = TestServer::start_with(Backend::Postgres(proxy.url.clone()), |s| {
        s.kt_epoch_ms = 60_000
    })
    .await;
    let user = random_user();
    let mut c = s.client(user).await;
    let stream = new_pair(&mut c).await.message_id;
    Some((proxy, s, user, c, stream))
}

/// A post whose COMMIT succeeded but whose answer never reached the server (the
/// connection dropped right after) still reaches local live subscribers, and the client's
/// retry is answered with the original event id without a second delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_post_whose_commit_answer_was_lost_is_still_delivered_live() {
    let Some((proxy, s, _user, mut c, st)) = through_proxy().await else {
        return;
    };
    post(&mut c, &st, 1, b"one").await.unwrap();
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[&st], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(h) if h.head_event_id == 1));
    proxy.lose_next_commit_answer();
    let lost = post(&mut c, &st, 2, b"two").await;
    assert!(
        !proxy.commit_answer_pending(),
        "the COMMIT's answer was lost"
    );
    expect_code(lost, Code::Unavailable);
    // Committed all the same: the subscriber gets it live.
    match sub.next().await {
        Event::Message(m) => assert_eq!(
            (m.event_id, m.message.unwrap().message),
            (2, b"two".to_vec())
        ),
        other => panic!("unexpected {other:?}"),
    }
    // The client's retry is the same event, delivered once.
    assert_eq!(post(&mut c, &st, 2, b"two").await.unwrap(), 2);
    post(&mut c, &st, 3, b"three").await.unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.event_id == 3));
    assert!(sub.quiet_for(200).await);
    s.stop().await;
}

/// The same, when queries keep failing for a while after the lost answer (the change
/// listener stays connected, so no listener repair helps): the event reaches live
/// subscribers once the database answers again, though the client gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_commit_answer_during_an_outage_is_delivered_after_it() {
    let Some((proxy, s, user, mut c, st)) = through_proxy().await else {
        return;
    };
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[&st], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    // The outage starts in the same step as the lost answer: a re-read by the writer
    // in between (it used to win that race under load) cannot happen.
    proxy.lose_next_commit_answer_then_fail_queries();
    let poster = {
        let mut c = s.client(user).await;
        let st = st.clone();
        tokio::spawn(async move { post(&mut c, &st, 1, b"one").await })
    };
    expect_code(poster.await.unwrap(), Code::Unavailable);
    assert!(
        sub.quiet_for(1000).await,
        "nothing can be read while the database is away"
    );
    proxy.heal();
    match sub.next_within(30).await.unwrap().unwrap() {
        Event::Message(m) => assert_eq!(m.event_id, 1),
        other => panic!("unexpected {other:?}"),
    }
    assert!(sub.quiet_for(200).await);
    s.stop().await;
}
