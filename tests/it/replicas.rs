//! Several secretd processes on one Postgres behave as one: a post on one reaches
//! subscribers on all, invites and removals cross replicas, and a dropped change listener
//! reconnects and repairs every local subscription from the database.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

fn pg() -> Option<Backend> {
    Backend::postgres()
}

/// Reads `stream` from `after` until event `last`, returning the event ids in order.
async fn read_until(sub: &mut Subscription, last: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.last().copied().unwrap_or(0) < last {
        match sub.next_within(60).await.unwrap().unwrap() {
            Event::Message(m) => ids.push(m.event_id),
            Event::CaughtUp(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    ids
}

/// The owner removes `user` from the pair.
async fn remove(owner: &mut Client, pair: &ChannelPair, user: u64) {
    owner
        .remove_member(RemoveMemberRequest {
            pair_id: pair.pair_id.clone(),
            user_id: user,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn kill_listener(server: &TestServer) -> usize {
    let Backend::Postgres(url) = &server.backend else {
        unreachable!()
    };
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let name = secretd::replica::listener_name(server.replica_id());
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(name)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    killed.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posts_on_one_replica_reach_subscribers_on_another_across_a_listener_drop() {
    let Some(b) = pg() else { return };
    let _serial = SERIAL.lock().await;
    let a = TestServer::start(b.clone()).await;
    let bsrv = TestServer::start(b).await;
    let owner = random_user();
    let mut on_a = a.client(owner).await;
    let pair = new_pair(&mut on_a).await;
    let st = pair.message_id.clone();
    const POSTERS: usize = 3;
    const EACH: usize = 500;
    const TOTAL: u64 = (POSTERS * EACH) as u64;
    // Subscribers on replica A: one live, one resuming from 0, one from the middle later.
    let mut live = Subscription::open(&mut on_a).await.unwrap();
    live.manage(&[&st], &[], &[]);
    assert!(matches!(live.next().await, Event::CaughtUp(c) if c.head_event_id == 0));
    let mut from0 = Subscription::open(&mut a.client(owner).await)
        .await
        .unwrap();
    from0.manage(&[], &[], &[(&st, 0)]);
    // Posters on replica B.
    let mut posters = Vec::new();
    for who in 0..POSTERS {
        let u = random_user();
        let mut cu = bsrv.client(u).await;
        invite(&mut bsrv.client(owner).await, &mut cu, &pair, u).await;
        let st = st.clone();
        posters.push(tokio::spawn(async move {
            post_all(
                &mut cu,
                &st,
                (0..EACH).map(|i| format!("{who}/{i}").into_bytes()),
            )
            .await
        }));
    }
    // In the middle of the writes, cut A's listener connection.
    let mut probe = a.client(owner).await;
    wait_for_head(&mut probe, &st, TOTAL / 3).await;
    assert_eq!(
        kill_listener(&a).await,
        1,
        "A's listener connection was found and cut"
    );
    let mut middle = Subscription::open(&mut a.client(owner).await)
        .await
        .unwrap();
    middle.manage(&[], &[], &[(&st, TOTAL / 4)]);
    let mut acked = HashSet::new();
    for p in posters {
        acked.extend(p.await.unwrap());
    }
    assert_eq!(acked.len() as u64, TOTAL);
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(
        read_until(&mut live, TOTAL).await,
        expected,
        "live subscriber on A"
    );
    assert_eq!(
        read_until(&mut from0, TOTAL).await,
        expected,
        "resume from 0 on A"
    );
    assert_eq!(
        read_until(&mut middle, TOTAL).await,
        (TOTAL / 4 + 1..=TOTAL).collect::<Vec<_>>()
    );
    // After the repair the listener is back: a new post on B arrives live on A.
    post(&mut bsrv.client(owner).await, &st, 1_000_000, b"after")
        .await
        .unwrap_err();
    let head_counter = fetch_all(&mut probe, &st)
        .await
        .last()
        .unwrap()
        .message
        .as_ref()
        .unwrap()
        .id;
    post(
        &mut bsrv.client(owner).await,
        &st,
        head_counter + 1,
        b"after",
    )
    .await
    .unwrap();
    let Event::Message(m) = live.next().await else {
        panic!()
    };
    assert_eq!(m.event_id, TOTAL + 1);
    assert!(live.quiet_for(200).await);
    bsrv.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invites_and_removals_cross_replicas() {
    let Some(b) = pg() else { return };
    let _serial = SERIAL.lock().await;
    let a = TestServer::start(b.clone()).await;
    let bsrv = TestServer::start(b).await;
    let (owner, guest) = (random_user(), random_user());
    let mut owner_b = bsrv.client(owner).await;
    let mut guest_a = a.client(guest).await;
    give_key(&mut guest_a).await;
    let pair = new_pair(&mut owner_b).await;
    // The guest's call is on A; the invite is sent on B.
    let mut sub = Subscription::open(&mut guest_a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    owner_b
        .send_invite(SendInviteRequest {
            pair_id: pair.pair_id.clone(),
            user_id: guest,
            homeserver: String::new(),
            invite: b"welcome".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let Event::Invite(i) = sub.next().await else {
        panic!("invite expected on A")
    };
    assert_eq!(i.invite, b"welcome");
    sub.manage(&[&pair.message_id, &pair.state_id], &[], &[]);
    for _ in 0..2 {
        assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    }
    post(&mut owner_b, &pair.state_id, 1, b"state")
        .await
        .unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.stream_id == pair.state_id));
    // Removed on B: the subscriptions on A end, and later posts never reach A's guest.
    remove(&mut owner_b, &pair, guest).await;
    for _ in 0..2 {
        assert!(
            matches!(sub.next().await, Event::SubscriptionError(e) if e.code == Code::PermissionDenied as i32)
        );
    }
    post(&mut owner_b, &pair.message_id, 1, b"private")
        .await
        .unwrap();
    assert!(sub.quiet_for(300).await);
    bsrv.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_committed_while_the_listener_is_down_are_repaired() {
    let Some(b) = pg() else { return };
    let Backend::Postgres(url) = &b else {
        unreachable!()
    };
    let _serial = SERIAL.lock().await;
    let a = TestServer::start(b.clone()).await;
    let bsrv = TestServer::start(b.clone()).await;
    let owner = random_user();
    let mut on_b = bsrv.client(owner).await;
    let pair = new_pair(&mut on_b).await;
    let st = pair.message_id.clone();
    let mut sub = Subscription::open(&mut a.client(owner).await)
        .await
        .unwrap();
    sub.manage(&[&st], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    post_all(&mut on_b, &st, (0..10u8).map(|i| vec![i])).await;
    assert_eq!(read_until(&mut sub, 10).await, (1..=10).collect::<Vec<_>>());
    // Fill B's connection pool now: during the outage it cannot open new connections.
    let mut warm = Vec::new();
    for _ in 0..16 {
        let mut c = bsrv.client(owner).await;
        let st = st.clone();
        warm.push(tokio::spawn(async move { fetch_all(&mut c, &st).await }));
    }
    for w in warm {
        w.await.unwrap();
    }
    // Keep A's listener out: no new connections to the database, then cut it.
    let db: String = {
        let p = sqlx::PgPool::connect(url).await.unwrap();
        let db = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&p)
            .await
            .unwrap();
        p.close().await;
        db
    };
    // A database cannot close itself to connections: do it from the maintenance database.
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let admin = sqlx::PgPool::connect_with(opts.database("postgres"))
        .await
        .unwrap();
    let mut conn = admin.acquire().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let outage = async {
        let name = secretd::replica::listener_name(a.replica_id());
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert_eq!(killed.len(), 1);
        // Posts committed on B while nobody on A can hear about them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (counter, i) in (11..).zip(0..20u8) {
            post(&mut on_b, &st, counter, &[100 + i]).await.unwrap();
        }
        assert!(
            sub.quiet_for(500).await,
            "nothing can arrive while the listener is down"
        );
    };
    use futures_util::FutureExt;
    let result = std::panic::AssertUnwindSafe(outage).catch_unwind().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    // The listener reconnects and repairs: the 20 missed events arrive, in order, once.
    assert_eq!(
        read_until(&mut sub, 30).await,
        (11..=30).collect::<Vec<_>>()
    );
    assert!(sub.quiet_for(300).await);
    drop(conn);
    admin.close().await;
    bsrv.stop().await;
    a.stop().await;
}

/// A real secretd process on the shared Postgres (with a metrics endpoint when given).
async fn replica(url: &str, metrics: Option<&str>) -> (ServerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--database-url", url];
    if let Some(m) = metrics {
        args.extend(["--metrics-listen", m]);
    }
    let p = spawn_binary(&args, &[("SECRETD_JWT_SECRET", SECRET)], dir.path()).await;
    (p, dir)
}

async fn client_at(p: &ServerProcess, user: u64) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    secret_service_client::SecretServiceClient::with_interceptor(
        channel,
        Bearer(Some(token(user, 3600))),
    )
}

/// A post on another replica is read from the database once by this replica and served
/// to every local subscriber from memory, even on a stream with a long history (the
/// slot's head is seeded from the subscribers' own reads, not 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_post_is_read_once_per_replica_on_a_stream_with_history() {
    let Some(Backend::Postgres(url)) = pg() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let metrics = format!("127.0.0.1:{}", unused_port());
    let (mut a, _da) = replica(&url, Some(&metrics)).await;
    let (mut b, _db) = replica(&url, None).await;
    let owner = random_user();
    let mut on_a = client_at(&a, owner).await;
    let mut on_b = client_at(&b, owner).await;
    let pair = new_pair(&mut on_b).await;
    let (st, marker) = (pair.message_id.clone(), pair.state_id.clone());
    const HISTORY: u64 = 300; // more than the hub reads for one notification
    post_all(
        &mut on_b,
        &st,
        (0..HISTORY).map(|i| i.to_be_bytes().to_vec()),
    )
    .await;
    // Once A delivers a later post from B, it has heard of all of these (notifications
    // arrive in commit order), so none of them is read after this point.
    let mut m = Subscription::open(&mut on_a).await.unwrap();
    m.manage(&[&marker], &[], &[]);
    assert!(matches!(m.next().await, Event::CaughtUp(_)));
    post(&mut on_b, &marker, 1, b"marker").await.unwrap();
    assert!(matches!(m.next().await, Event::Message(_)));
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut sub = Subscription::open(&mut on_a).await.unwrap();
        sub.manage(&[&st], &[], &[]);
        assert!(matches!(sub.next().await, Event::CaughtUp(c) if c.head_event_id == HISTORY));
        subs.push(sub);
    }
    const READ: &str = "secretd_fanout_events_read_total";
    const PAGES: &str = "secretd_catchup_pages_total";
    let (read0, pages0) = (metric(&metrics, READ).await, metric(&metrics, PAGES).await);
    post(&mut on_b, &st, HISTORY + 1, b"new").await.unwrap();
    for sub in &mut subs {
        assert!(matches!(sub.next().await, Event::Message(m) if m.event_id == HISTORY + 1));
    }
    let (read1, pages1) = (metric(&metrics, READ).await, metric(&metrics, PAGES).await);
    assert_eq!(
        read1 - read0,
        1.0,
        "A read the new event from the database once"
    );
    assert_eq!(
        pages1 - pages0,
        0.0,
        "no subscriber on A read the database on its own"
    );
    a.child.kill().await.unwrap();
    b.child.kill().await.unwrap();
}

/// A member removed on another replica while this replica's change listener was away
/// loses their live subscriptions here once the listener is back: the repair re-checks
/// membership, not only heads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_missed_while_the_listener_was_away_ends_subscriptions_after_repair() {
    let Some(Backend::Postgres(url)) = pg() else {
        return;
    };
    let proxy = PgProxy::start(&url).await;
    let a = TestServer::start(Backend::Postgres(proxy.url.clone())).await;
    let b = TestServer::start(Backend::Postgres(url)).await;
    let (owner, guest, other) = (random_user(), random_user(), random_user());
    let mut owner_b = b.client(owner).await;
    let pair = new_pair(&mut owner_b).await;
    let mut guest_a = a.client(guest).await;
    invite(&mut owner_b, &mut guest_a, &pair, guest).await;
    let mut other_a = a.client(other).await;
    invite(&mut owner_b, &mut other_a, &pair, other).await;
    let mut sub = Subscription::open(&mut guest_a).await.unwrap();
    sub.manage(&[&pair.message_id, &pair.state_id], &[], &[]);
    let mut kept = Subscription::open(&mut other_a).await.unwrap();
    kept.manage(&[&pair.message_id], &[], &[]);
    for _ in 0..2 {
        assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    }
    assert!(matches!(kept.next().await, Event::CaughtUp(_)));
    // A's listener goes away; the guest is removed on B meanwhile (A misses the news).
    proxy.fail_listener();
    remove(&mut owner_b, &pair, guest).await;
    assert!(sub.quiet_for(300).await, "A cannot know yet");
    proxy.heal();
    // The listener reconnects and repairs: the guest's subscriptions end on A.
    for _ in 0..2 {
        match sub.next_within(20).await.unwrap().unwrap() {
            Event::SubscriptionError(e) => assert_eq!(e.code, Code::PermissionDenied as i32),
            other => panic!("unexpected {other:?}"),
        }
    }
    // A remaining member's subscription goes on.
    post(&mut owner_b, &pair.message_id, 1, b"still here")
        .await
        .unwrap();
    assert!(
        matches!(kept.next_within(20).await.unwrap().unwrap(), Event::Message(m) if m.event_id == 1)
    );
    assert!(sub.quiet_for(300).await);
    b.stop().await;
    a.stop().await;
}

/// The outage test blocks new connections to the shared database; the other tests of
/// this file wait for it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
