//! Key transparency across homeservers (DESIGN §12, docs/kt.md §9), part 2: ExchangeHeads.
//! A fork of c — two c processes with c's key and name on two databases, one known to a,
//! the other to b — is caught when a and b exchange heads; and every refusal of an
//! ExchangeHeads call, with its exact status.

use std::time::{Duration, Instant};

use secretd::proto::federation::ExchangeHeadsRequest;
use secretd::proto::{FetchKeyRequest, PostKeyRequest, TreeHead};
use tonic::Code;

use super::nodes::{Node, NodeKey, PeerSpec, fed_client, peer_client};
use super::transparency::{now_ms, raw_key, resign};
use crate::common::*;

both_backends!(a_fork_is_caught_by_exchanging_heads);

/// A second data directory for server `key` with the same federation key (a clone that
/// signs as it does).
pub(super) fn twin(key: &NodeKey) -> NodeKey {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::copy(
        key.dir.path().join("data/federation-key"),
        dir.path().join("data/federation-key"),
    )
    .unwrap();
    NodeKey {
        name: key.name.clone(),
        dir,
        key_id: key.key_id.clone(),
        public_key: key.public_key.clone(),
    }
}

/// Where a node's database is (its own on Postgres, the file of its data directory on
/// SQLite).
fn database(node: &Node, key: &NodeKey) -> String {
    match &node.db {
        Some(db) => db.backend.url(&key.dir.path().join("data")),
        None => format!(
            "sqlite://{}",
            key.dir.path().join("data/secretd.db").display()
        ),
    }
}

/// c1 and c2 are c (one key, one name) on two databases; each logs a different key for
/// user u, so both sign a head of tree size 1 with different roots. a knows c at c1, b
/// knows c at c2; a and b exchange heads every 200 ms. Within a few rounds both hold
/// the evidence: a stores it, counts it, and FetchKey of u of c is FAILED_PRECONDITION
/// naming c and the evidence. a and b store in `backend`; the c's in SQLite.
async fn a_fork_is_caught_by_exchanging_heads(backend: Backend) {
    let (ka, kb, kc1) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let kc2 = twin(&kc1);
    let c1 = Node::start(&kc1, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let c2 = Node::start(&kc2, &Backend::Sqlite, &[PeerSpec::unreachable(&kb)], &[]).await;
    let u = random_user();
    for (c, n) in [(&c1, 1), (&c2, 2)] {
        c.client(u)
            .await
            .post_key(PostKeyRequest {
                key_data: key_pem(n),
            })
            .await
            .unwrap();
    }
    let fast = [("exchange_heads_ms", "200")];
    let b = Node::start(
        &kb,
        &backend,
        &[PeerSpec::unreachable(&ka), PeerSpec::at(&kc2, &c2.addr)],
        &fast,
    )
    .await;
    let metrics = format!("127.0.0.1:{}", unused_port());
    let a = Node::start_with_env(
        &ka,
        &backend,
        &[PeerSpec::at(&kb, &b.addr), PeerSpec::at(&kc1, &c1.addr)],
        &fast,
        &[("SECRETD_METRICS_LISTEN", metrics.as_str())],
    )
    .await;
    let mut on_a = a.client(random_user()).await;
    let ask = || FetchKeyRequest {
        user_id: u,
        homeserver: "c.test".into(),
        known_tree_size: 0,
    };
    // Poll until a refuses c's users (at most 20 s: rounds are every 200 ms).
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match on_a.fetch_key(ask()).await {
            Err(st) if st.code() == Code::FailedPrecondition => break st,
            Err(st) => panic!("a answered {st:?} before it found the fork"),
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => panic!("a did not catch c's fork within 20 s"),
        }
    };
    let m = refused.message();
    assert!(
        m.contains("homeserver \"c.test\" equivocated")
            && m.contains("two heads of tree size 1 with different roots")
            && m.contains("kt_evidence"),
        "{refused:?}"
    );
    let rows = crate::kt::sql_i64(
        &database(&a, &ka),
        "SELECT count(*) FROM kt_evidence WHERE homeserver = 'c.test' AND kind = 'fork' \
         AND a_tree_size = 1 AND b_tree_size = 1",
    )
    .await;
    assert!(rows >= 1, "{rows} rows of evidence on a");
    let counted = metric(
        &metrics,
        "secretd_kt_equivocations_total{server=\"c.test\"}",
    )
    .await;
    assert_eq!(counted, 1.0);
    // b, exchanging with a, caught it too.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut on_b = b.client(random_user()).await;
    loop {
        match on_b.fetch_key(ask()).await {
            Err(st) if st.code() == Code::FailedPrecondition => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("b did not catch c's fork within 20 s: {other:?}"),
        }
    }
    // Users of an honest peer are still served.
    let bob = random_user();
    give_key(&mut b.client(bob).await).await;
    on_a.fetch_key(FetchKeyRequest {
        user_id: bob,
        homeserver: "b.test".into(),
        known_tree_size: 0,
    })
    .await
    .expect("b's users are served");
}

/// a's newest head, as b would receive it: signed by a's key now.
fn head_of(ka: &NodeKey, size: u64) -> TreeHead {
    let mut head = TreeHead {
        server_name: ka.name.clone(),
        tree_size: size,
        log_root: vec![7; 32],
        map_root: vec![8; 32],
        timestamp_ms: 0,
        signature: Vec::new(),
        key_id: ka.key_id.clone(),
    };
    resign(&mut head, ka, |h| h.timestamp_ms = now_ms());
    head
}

/// ExchangeHeads at b: without a token, with a token for another method, with no own
/// head, with a head of another server, badly signed, stale, or with too many seen heads
/// it is refused with its exact code; a good call answers b's own head, signed by b; a
/// peer's calls beyond b's rate limit are RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exchange_heads_refusals() {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let b = Node::start(
        &kb,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&ka), PeerSpec::unreachable(&kc)],
        &[("exchange_heads_ms", "0")],
    )
    .await;
    let request = |own: Option<TreeHead>, seen: Vec<TreeHead>| ExchangeHeadsRequest {
        own_head: own,
        seen_heads: seen,
        known_tree_size: 0,
    };
    let good = || request(Some(head_of(&ka, 5)), vec![head_of(&kc, 3)]);

    let st = expect_code(
        fed_client(&b.addr, None).await.exchange_heads(good()).await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("authorization"), "{st:?}");
    let (for_fetch, _) = secretd::federation::token::mint_s2s(
        &ka.server_key(),
        "a.test",
        "b.test",
        secretd::federation::FETCH_USER_KEY_PATH,
    )
    .unwrap();
    let st = expect_code(
        fed_client(&b.addr, Some(for_fetch))
            .await
            .exchange_heads(good())
            .await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("mth"), "{st:?}");

    let mut as_a = peer_client(&b.addr, &ka, "b.test").await;
    let stale = {
        let mut h = head_of(&ka, 5);
        resign(&mut h, &ka, |h| h.timestamp_ms = now_ms() - 11 * 60 * 1000);
        h
    };
    let forged = {
        let mut h = head_of(&ka, 5);
        resign(&mut h, &kc, |_| {});
        h
    };
    for (what, req, says) in [
        ("no own head", request(None, vec![]), "own_head is missing"),
        (
            "c's head as a's own",
            request(Some(head_of(&kc, 5)), vec![]),
            "names server \"c.test\"",
        ),
        (
            "signed by another key",
            request(Some(forged), vec![]),
            "does not verify",
        ),
        ("stale", request(Some(stale), vec![]), "stale head replayed"),
        (
            "too many seen heads",
            request(Some(head_of(&ka, 5)), vec![head_of(&kc, 1); 1001]),
            "at most 1000",
        ),
    ] {
        let st = expect_code(as_a.exchange_heads(req).await, Code::InvalidArgument);
        assert!(
            st.message()
                .contains("ExchangeHeads from homeserver \"a.test\" refused")
                && st.message().contains(says),
            "{what}: {st:?}"
        );
    }

    let answer = as_a.exchange_heads(good()).await.unwrap().into_inner();
    let own = answer.own_head.expect("b's own head");
    crate::kt::check_head(&own, "b.test", &raw_key(&kb));
    // b now relays what it saw: a's head and c's.
    let again = as_a.exchange_heads(good()).await.unwrap().into_inner();
    let mut names: Vec<_> = again
        .seen_heads
        .iter()
        .map(|h| h.server_name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["a.test", "c.test"]);
}

/// ExchangeHeads passes b's per-peer rate limit like every federation call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exchange_heads_is_rate_limited_per_peer() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(
        &kb,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&ka)],
        &[
            ("exchange_heads_ms", "0"),
            ("rate_per_sec", "0.01"),
            ("rate_burst", "1"),
        ],
    )
    .await;
    let mut as_a = peer_client(&b.addr, &ka, "b.test").await;
    let req = || ExchangeHeadsRequest {
        own_head: Some(head_of(&ka, 1)),
        seen_heads: vec![],
        known_tree_size: 0,
    };
    as_a.exchange_heads(req()).await.expect("the first call");
    let st = expect_code(as_a.exchange_heads(req()).await, Code::ResourceExhausted);
    assert!(st.metadata().get("retry-after-ms").is_some(), "{st:?}");
}
