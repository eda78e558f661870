//! A database that stops answering without closing its connections: every RPC answers
//! UNAVAILABLE within the deadline, nothing half-done is written, the pool replaces its
//! dead connections, and a COMMIT whose answer is lost is stored once.

use super::*;
use crate::common::*;
use secretd::proto::*;
use tonic::{Code, Status};

/// One RPC of each kind a client can make.
const CALLS: [&str; 11] = [
    "PostMessage",
    "FetchMessages",
    "GenerateChannelPair",
    "PostKey",
    "FetchKey",
    "SendInvite",
    "FetchInvites",
    "ListChannelPairs",
    "PostPrivateKey",
    "FetchPrivateKey",
    "LeaveChannelPair",
];

/// Makes the call named `name` (one of [`CALLS`]) as `user`, a member of `pair`.
async fn call(name: &str, mut c: Client, user: u64, pair: ChannelPair) -> Result<(), Status> {
    let (st, pair_id) = (pair.message_id, pair.pair_id);
    match name {
        "PostMessage" => post(&mut c, &st, 4, b"four").await.map(drop),
        "FetchMessages" => c
            .fetch_messages(FetchMessagesRequest {
                stream_id: st,
                ..Default::default()
            })
            .await
            .map(drop),
        "GenerateChannelPair" => c
            .generate_channel_pair(GenerateChannelPairRequest {})
            .await
            .map(drop),
        "PostKey" => c
            .post_key(PostKeyRequest {
                key_data: key_pem(2),
            })
            .await
            .map(drop),
        "FetchKey" => c
            .fetch_key(FetchKeyRequest {
                user_id: user,
                ..Default::default()
            })
            .await
            .map(drop),
        "SendInvite" => c
            .send_invite(SendInviteRequest {
                pair_id,
                user_id: user,
                invite: b"sealed".to_vec(),
                ..Default::default()
            })
            .await
            .map(drop),
        "FetchInvites" => c
            .fetch_invites(FetchInvitesRequest::default())
            .await
            .map(drop),
        "ListChannelPairs" => c
            .list_channel_pairs(ListChannelPairsRequest::default())
            .await
            .map(drop),
        "PostPrivateKey" => c
            .post_private_key(PostPrivateKeyRequest {
                key_data: b"wrapped".to_vec(),
                expected_version: Some(0),
            })
            .await
            .map(drop),
        "FetchPrivateKey" => c
            .fetch_private_key(FetchPrivateKeyRequest {})
            .await
            .map(drop),
        "LeaveChannelPair" => c
            .leave_channel_pair(LeaveChannelPairRequest { pair_id })
            .await
            .map(drop),
        other => unreachable!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_is_unavailable_while_the_database_is_silent_and_recovers_after() {
    let Some(b) = Backend::postgres() else { return };
    let (proxy, url) = postgres_behind_proxy(&b).await;
    let s = TestServer::start_with(b.clone(), behind(&url)).await;
    let user = random_user();
    let mut c = s.client(user).await;
    give_key(&mut c).await;
    let pair = new_pair(&mut c).await;
    let st = pair.message_id.clone();
    for k in 1..=3 {
        assert_eq!(post(&mut c, &st, k, b"before").await.unwrap(), k);
    }

    // Calls in flight when the path to Postgres goes silent: a post and a leave, held
    // in Postgres (a test transaction locks the pair's stream rows) until both are
    // waiting there; then every open connection stalls, and the lock goes.
    let db = direct_pool(&b).await;
    let (lock, pid) = hold_stream_rows(&db, pair.pair_id.parse().unwrap()).await;
    let in_flight: Vec<_> = ["PostMessage", "LeaveChannelPair"]
        .into_iter()
        .map(|name| {
            (
                name,
                tokio::spawn(call(name, c.clone(), user, pair.clone())),
            )
        })
        .collect();
    until_blocked_by(&db, pid, 2, || {
        in_flight.iter().any(|(_, t)| t.is_finished())
    })
    .await;
    proxy.stall_existing();
    lock.rollback().await.unwrap();
    // Postgres answers them; the answers never arrive. Each call answers UNAVAILABLE at
    // its deadline (db_timeout_ms; 20 s would be a hang), and what they began is rolled
    // back by Postgres (idle_in_transaction_session_timeout).
    for (name, task) in in_flight {
        let status = within(20, name, task).await.unwrap().expect_err(name);
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        assert!(
            status.message().contains("db_timeout_ms"),
            "{name}: {status:?}"
        );
    }

    // Now Postgres stops answering altogether (new connections included).
    proxy.stall_all();
    // Every kind of call at once, more of them than the pool has connections: each one
    // answers UNAVAILABLE, about db_timeout_ms later (20 s would be a hang).
    let answers = futures_util::future::join_all(CALLS.into_iter().map(|name| {
        let attempt = call(name, c.clone(), user, pair.clone());
        async move { (name, within(20, name, attempt).await) }
    }))
    .await;
    for (name, answer) in answers {
        let status = answer.expect_err(name);
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        assert!(status.message().contains("retry"), "{name}: {status:?}");
    }

    // The path heals (the stalled connections stay half-open for good): the server
    // replaces its dead connections by itself, and a client's retry goes through.
    proxy.heal();
    let retried = retry_unavailable("the post's retry", async || {
        post(&mut c, &st, 4, b"four").await
    })
    .await;
    assert_eq!(retried, 4);
    // Nothing of the calls that timed out was written.
    let pairs = retry_unavailable("ListChannelPairs", async || {
        c.list_channel_pairs(ListChannelPairsRequest::default())
            .await
    })
    .await
    .into_inner()
    .pairs;
    assert_eq!(
        pairs.len(),
        1,
        "the timed-out GenerateChannelPair stored nothing"
    );
    assert_eq!(pairs[0].members, vec![user], "no invite, no leave");
    expect_code(
        c.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::NotFound,
    );
    let keys = c
        .fetch_key(FetchKeyRequest {
            user_id: user,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        keys.past_keys.is_empty(),
        "the timed-out PostKey stored nothing"
    );
    let all = fetch_all(&mut c, &st).await;
    assert_eq!(all.len(), 4);
    db.close().await;
    drop(proxy);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_whose_answer_is_lost_is_unavailable_and_its_retry_gets_the_original_id() {
    let Some(b) = Backend::postgres() else { return };
    let (proxy, a, other) = replicas_one_behind_proxy(&b).await;
    let user = random_user();
    let mut on_a = a.client(user).await;
    let pair = new_pair(&mut on_a).await;
    let st = pair.message_id.clone();
    // A subscriber on another replica, which hears of each commit through Postgres.
    let mut sub = Subscription::open(&mut other.client(user).await)
        .await
        .unwrap();
    sub.manage(&[&st], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(c) if c.head_event_id == 0));
    assert_eq!(post(&mut on_a, &st, 1, b"one").await.unwrap(), 1);

    let db = direct_pool(&b).await;
    let stream: uuid::Uuid = st.parse().unwrap();
    // More rounds than the pool has connections: each stalled connection must be
    // dropped, not kept (its return-to-pool check would never be answered).
    for k in 2..=4u64 {
        let body = format!("post {k}").into_bytes();
        proxy.stall_after_next_commit();
        let lost = within(20, "the post", post(&mut on_a, &st, k, &body)).await;
        let status = lost.expect_err("the answer of the COMMIT never arrives");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1 AND counter = $2")
                .bind(stream)
                .bind(k as i64)
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(stored, 1, "the database did commit post {k}");
        // The client retries: the original event id, and no second copy.
        let retried =
            retry_unavailable("the retry", async || post(&mut on_a, &st, k, &body).await).await;
        assert_eq!(retried, k);
        assert_eq!(post(&mut on_a, &st, k, &body).await.unwrap(), k);
    }
    let all = fetch_all(&mut on_a, &st).await;
    let counters: Vec<(u64, u64)> = all
        .iter()
        .map(|m| (m.event_id, m.message.as_ref().unwrap().id))
        .collect();
    assert_eq!(counters, vec![(1, 1), (2, 2), (3, 3), (4, 4)]);
    // The other replica's subscriber got every committed post once, in order.
    for k in 1..=4 {
        expect_message(&mut sub, k).await;
    }
    assert!(sub.quiet_for(300).await, "nothing more");
    db.close().await;
    drop(proxy);
    a.stop().await;
    other.stop().await;
}
