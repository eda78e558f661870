//! Deliveries and invites racing each other: a client's retries of one SendInvite to a
//! user of another homeserver all at once (both backends), and two identical deliveries
//! held at the invitee's inbox row by a test transaction (Postgres, deterministic).

use secretd::federation::token;
use secretd::proto::{GenerateChannelPairRequest, PostKeyRequest, SendInviteRequest};

use super::deliver::{as_b, b_pair, delivery, fingerprint, inbox, summary};
use super::nodes::{Node, NodeKey, PeerSpec, fed_client};
use crate::common::*;

both_backends!(racing_retries_of_one_invite_land_once);

/// Eight identical SendInvites from alice of a to bob of b, at once (a client retrying
/// while its first attempts are in flight): a gives bob one id (eight racing creations of
/// his row), b stores one invite (eight racing deliveries), every call answers its id,
/// and a lists bob once. Then eight different invites at once: dense ids, each once.
async fn racing_retries_of_one_invite_land_once(backend: Backend) {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &backend, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(&ka, &backend, &[PeerSpec::at(&kb, &b.addr)], &[]).await;
    let (alice, bob) = (random_user(), random_user());
    let mut bob_at_b = b.client(bob).await;
    bob_at_b
        .post_key(PostKeyRequest {
            key_data: key_pem(1),
        })
        .await
        .unwrap();
    let mut alice_at_a = a.client(alice).await;
    let pair = alice_at_a
        .generate_channel_pair(GenerateChannelPairRequest {})
        .await
        .unwrap()
        .into_inner();
    let invite = |body: &[u8]| SendInviteRequest {
        pair_id: pair.pair_id.clone(),
        user_id: bob,
        homeserver: "b.test".into(),
        invite: body.to_vec(),
        key_fingerprint: fingerprint(1),
    };
    let send_all = |bodies: Vec<Vec<u8>>| {
        let addr = a.addr.clone();
        let requests: Vec<_> = bodies.iter().map(|b| invite(b)).collect();
        async move {
            let calls = requests.into_iter().map(|r| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let mut c = client_at(&addr, token(alice, 600)).await;
                    c.send_invite(r).await.map(|r| r.into_inner().invite_id)
                })
            });
            let mut ids = Vec::new();
            for call in futures_util::future::join_all(calls).await {
                ids.push(call.unwrap().unwrap());
            }
            ids
        }
    };
    let ids = send_all(vec![b"the same".to_vec(); 8]).await;
    assert_eq!(ids, vec![1; 8], "every retry answers the one invite");
    let listed = alice_at_a
        .list_channel_pairs(secretd::proto::ListChannelPairsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let refs: Vec<_> = listed.pairs[0]
        .member_refs
        .iter()
        .map(|r| (r.homeserver.as_str(), r.user_id))
        .collect();
    assert_eq!(refs, vec![("b.test", bob), ("", alice)]);
    assert_eq!(inbox(&mut bob_at_b).await.len(), 1);

    let bodies: Vec<Vec<u8>> = (0..8u8).map(|n| vec![n; 3]).collect();
    let mut ids = send_all(bodies.clone()).await;
    ids.sort();
    assert_eq!(ids, (2..=9).collect::<Vec<u64>>(), "dense, each once");
    let got = inbox(&mut bob_at_b).await;
    assert_eq!(got.len(), 9);
    let mut seen: Vec<Vec<u8>> = got[1..].iter().map(|i| i.invite.clone()).collect();
    seen.sort();
    assert_eq!(seen, bodies);
}

/// Two identical deliveries held at the invitee's inbox row by a test transaction (so
/// both are in flight at once, every time), then let go: one invite, both answered its
/// id. A delivery that looked for an earlier copy before taking the inbox row would let
/// both pass the look and store two (Postgres: SQLite's single writer serialises them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_held_identical_deliveries_store_one_invite() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let a = Node::start(&ka, &backend, &[PeerSpec::unreachable(&kb)], &[]).await;
    let carol = random_user();
    let mut carol_at_a = a.client(carol).await;
    carol_at_a
        .post_key(PostKeyRequest {
            key_data: key_pem(1),
        })
        .await
        .unwrap();
    let pair = b_pair();
    // A first invite makes carol's inbox row exist.
    let mut b = as_b(&a.addr, &kb).await;
    b.deliver_invite(delivery(&pair, ("b.test", 5), carol, b"first"))
        .await
        .unwrap();

    let pool = crate::faults::direct_pool(&a.backend(&backend)).await;
    let mut held = pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM inboxes WHERE user_id = $1 FOR UPDATE")
        .bind(carol as i64)
        .execute(&mut *held)
        .await
        .unwrap();
    let racing: Vec<_> = (0..2)
        .map(|_| {
            let (addr, request) = (
                a.addr.clone(),
                delivery(&pair, ("b.test", 5), carol, b"same"),
            );
            let kb_key = kb.server_key();
            tokio::spawn(async move {
                let (s2s, _) = token::mint_s2s(
                    &kb_key,
                    "b.test",
                    "a.test",
                    secretd::federation::DELIVER_INVITE_PATH,
                )
                .unwrap();
                let mut client = fed_client(&addr, Some(s2s)).await;
                client
                    .deliver_invite(request)
                    .await
                    .map(|r| r.into_inner().invite_id)
            })
        })
        .collect();
    // Both wait: the first for the held row, the second behind the first (Postgres queues
    // it on the first waiter's tuple lock), so count waiters up to two hops from `pid`.
    for _ in 0..3000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity w WHERE EXISTS (SELECT 1 FROM \
             unnest(pg_blocking_pids(w.pid)) AS x(p) \
             WHERE x.p = $1 OR $1 = ANY(pg_blocking_pids(x.p)))",
        )
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting >= 2 || racing.iter().any(|r| r.is_finished()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    held.rollback().await.unwrap();
    let mut ids = Vec::new();
    for call in racing {
        ids.push(call.await.unwrap().unwrap());
    }
    assert_eq!(ids, vec![2, 2], "both answer the one invite");
    let got: Vec<_> = inbox(&mut carol_at_a).await.iter().map(summary).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].5, b"same".to_vec());
}
