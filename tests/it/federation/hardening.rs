//! Federation hardening (DESIGN §9a, issue 20), each hole played against real processes:
//! a foreign user spending our budget at a third peer, a foreign caller who holds nothing
//! while the database is locked, rows left by refused requests, a flood of delivered
//! invites, a key rotation behind the key cache, a short-lived token minting a long one,
//! a captured s2s token replayed or used on another method, a shared identity provider
//! without an audience, and peers' endpoints and raw errors shown to clients.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secretd::proto::federation::secret_federation_service_server::{
    SecretFederationService, SecretFederationServiceServer,
};
use secretd::proto::federation::{
    DeliverInviteRequest, DeliverInviteResponse, ExchangeHeadsRequest, ExchangeHeadsResponse,
    FetchUserKeyRequest, FetchUserKeyResponse, ServerKeyRequest, ServerKeyResponse,
};
use secretd::proto::{
    FederateRequest, FetchKeyRequest, ListChannelPairsRequest, PostKeyRequest, SendInviteRequest,
};
use tonic::{Code, Request, Response, Status};

use super::deliver::{b_pair, delivery, fingerprint};
use super::harness::{foreign_client, now};
use super::nodes::{FedClient, Node, NodeKey, PeerSpec, fed_client, peer_client};
use crate::common::*;

fn fetch(user: u64, homeserver: &str) -> FetchKeyRequest {
    FetchKeyRequest {
        user_id: user,
        homeserver: homeserver.into(),
        known_tree_size: 0,
    }
}

/// A client of `addr` acting as peer `key` with a fresh s2s token for a call of `path`.
fn s2s_token(key: &NodeKey, aud: &str, path: &str) -> String {
    secretd::federation::token::mint_s2s(&key.server_key(), &key.name, aud, path)
        .unwrap()
        .0
}

/// A SecretFederationService client of `addr` as peer `key`, for one DeliverInvite.
async fn deliverer(addr: &str, key: &NodeKey, aud: &str) -> FedClient {
    let path = "/protocol.secret.federation.v1.SecretFederationService/DeliverInvite";
    fed_client(addr, Some(s2s_token(key, aud, path))).await
}

/// `count(*)` of `foreign_users` in the SQLite database of the node whose key is `key`.
async fn foreign_rows(key: &NodeKey) -> i64 {
    let path = key.dir.path().join("data/secretd.db");
    let url = format!("sqlite://{}?mode=ro", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM foreign_users")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// A user of b calls FetchKey at a for 20 random users of c, whose limit on a's calls is
/// low (a burst of 12, then one per 100 s): a's budget per (user, peer) (a burst of 5
/// here) stops them at a, so a's own user still fetches a real user of c.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_foreign_user_cannot_spend_our_budget_at_a_third_peer() {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let c = Node::start(
        &kc,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&ka)],
        &[("rate_per_sec", "0.01"), ("rate_burst", "12")],
    )
    .await;
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &b.addr), PeerSpec::at(&kc, &c.addr)],
        &[("outgoing_per_user_burst", "5")],
    )
    .await;
    let carol = random_user();
    c.client(carol)
        .await
        .post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await
        .unwrap();
    let mut mallory_at_a = foreign_client(&b, random_user(), &a, "a.test").await;
    let mut refused = Vec::new();
    for _ in 0..20 {
        match mallory_at_a.fetch_key(fetch(random_user(), "c.test")).await {
            Err(st) if st.code() == Code::NotFound => {}
            Err(st) => refused.push(st),
            Ok(r) => panic!("a random user has a key: {r:?}"),
        }
    }
    let keys = a
        .client(random_user())
        .await
        .fetch_key(fetch(carol, "c.test"))
        .await
        .expect("a's own user still reaches c")
        .into_inner();
    assert_eq!(keys.current_key.unwrap().fingerprint, fingerprint(2));
    assert!(!refused.is_empty(), "mallory was never limited");
    for st in &refused {
        crate::limits::throttled(st, "federation.outgoing_per_user_burst");
        assert!(st.message().contains("c.test"), "{st:?}");
    }
}

/// 200 calls of a foreign user who holds nothing at a, while a transaction holds
/// `foreign_users` locked (ACCESS EXCLUSIVE): each answers within the unary deadline
/// (1 s; the database's own deadline is 4 s), most refused by the rate limit of that user
/// (a burst of 20) before any database work; another user of b keeps their own allowance.
/// Postgres only: on SQLite readers are never blocked by a writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
async fn a_caller_who_holds_nothing_costs_no_database_wait() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    // a has a database of its own (as every node on Postgres): the lock must not stall
    // the other tests.
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start_with_env(
        &ka,
        &Backend::Postgres(url.clone()),
        &[PeerSpec::at(&kb, &b.addr)],
        &[],
        &[
            ("SECRETD_UNARY_TIMEOUT_MS", "1000"),
            ("SECRETD_DB_TIMEOUT_MS", "4000"),
            ("SECRETD_RATE_READS_PER_SEC", "0.01"),
            ("SECRETD_RATE_READS_BURST", "20"),
        ],
    )
    .await;
    let mallory = foreign_client(&b, random_user(), &a, "a.test").await;
    let mut eve = foreign_client(&b, random_user(), &a, "a.test").await;

    let Backend::Postgres(own) = a.backend(&Backend::Postgres(url)) else {
        unreachable!("a stores in Postgres")
    };
    let locker = sqlx::PgPool::connect(&own).await.unwrap();
    let mut lock = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE foreign_users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let listing = || ListChannelPairsRequest {
        after_pair_id: String::new(),
        limit: 10,
        ..Default::default()
    };
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (mut c, slowest) = (mallory.clone(), slowest.clone());
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for _ in 0..20 {
                    let start = Instant::now();
                    let answer = c.list_channel_pairs(listing()).await;
                    let took = start.elapsed();
                    assert!(
                        took < Duration::from_millis(1700),
                        "a call took {took:?}: {answer:?}"
                    );
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                    codes.push(answer.map(|_| ()).map_err(|s| s.code()));
                }
                codes
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.extend(t.await.unwrap());
    }
    let limited = codes
        .iter()
        .filter(|c| **c == Err(Code::ResourceExhausted))
        .count();
    assert!(limited >= 170, "{limited} of 200 limited: {codes:?}");
    // Another user of b has an allowance of their own.
    let st = eve.list_channel_pairs(listing()).await;
    assert!(
        !matches!(&st, Err(s) if s.code() == Code::ResourceExhausted),
        "{st:?}"
    );
    lock.rollback().await.unwrap();
    locker.close().await;
    drop(a);
}

/// Deliveries a refuses (no key, a stale fingerprint) and invites a's user sends that fail
/// (the invitee has no key at b; a pair the inviter is not in) leave `foreign_users` as it
/// was: a foreign user's row is written only with what is stored for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_requests_leave_no_foreign_rows() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(&ka, &Backend::Sqlite, &[PeerSpec::at(&kb, &b.addr)], &[]).await;
    let (alice, keyless, bob) = (random_user(), random_user(), random_user());
    let mut on_a = a.client(alice).await;
    give_key(&mut on_a).await;
    let before = foreign_rows(&ka).await;

    // Deliveries from b into a's inboxes, each refused.
    let pair = b_pair();
    for (from, to, fingerprint_sent) in [
        (("b.test", random_user()), keyless, Vec::new()),
        (("x.test", random_user()), keyless, Vec::new()),
        (("b.test", random_user()), alice, fingerprint(3)),
        (("y.test", random_user()), alice, fingerprint(3)),
    ] {
        let mut request = delivery(&pair, from, to, b"sealed");
        request.key_fingerprint = fingerprint_sent;
        let st = deliverer(&a.addr, &kb, "a.test")
            .await
            .deliver_invite(request)
            .await;
        expect_code(st, Code::FailedPrecondition);
    }
    // Invites from a's user that fail: bob has no key at b; a pair alice is not in.
    let mine = new_pair(&mut on_a).await;
    let invite = |pair_id: &str, user: u64| SendInviteRequest {
        pair_id: pair_id.into(),
        user_id: user,
        homeserver: "b.test".into(),
        invite: b"sealed for bob".to_vec(),
        key_fingerprint: Vec::new(),
    };
    expect_code(
        on_a.send_invite(invite(&mine.pair_id, bob)).await,
        Code::FailedPrecondition,
    );
    let theirs = new_pair(&mut a.client(random_user()).await).await;
    expect_code(
        on_a.send_invite(invite(&theirs.pair_id, random_user()))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        foreign_rows(&ka).await,
        before,
        "no row for a refused request"
    );

    // What is stored writes the row with it.
    give_key(&mut b.client(bob).await).await;
    on_a.send_invite(invite(&mine.pair_id, bob)).await.unwrap();
    assert_eq!(foreign_rows(&ka).await, before + 1);
}

/// 1,000 distinct invites from alice of a to bob of b (rate limits and outgoing budgets
/// off on both sides):
/// b stores 100, the default cap of pending delivered invites per (peer, invitee), and
/// refuses the rest with RESOURCE_EXHAUSTED and a retry hint, which alice's client gets
/// from a, naming b.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_invites_stop_at_the_cap() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(
        &kb,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&ka)],
        &[("rate_per_sec", "0")],
    )
    .await;
    let a = Node::start_with_env(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &b.addr)],
        &[
            ("outgoing_per_user_per_sec", "0"),
            ("outgoing_per_peer_per_sec", "0"),
        ],
        &[("SECRETD_RATE_INVITES_PER_SEC", "0")],
    )
    .await;
    let (alice, bob) = (random_user(), random_user());
    give_key(&mut b.client(bob).await).await;
    let mut on_a = a.client(alice).await;
    let pair = new_pair(&mut on_a).await;
    let mut stored = 0;
    let mut refusals = Vec::new();
    for i in 0..1000u32 {
        let sent = on_a
            .send_invite(SendInviteRequest {
                pair_id: pair.pair_id.clone(),
                user_id: bob,
                homeserver: "b.test".into(),
                invite: format!("sealed for bob, {i}").into_bytes(),
                key_fingerprint: Vec::new(),
            })
            .await;
        match sent {
            Ok(_) => {
                assert!(refusals.is_empty(), "invite {i} stored after a refusal");
                stored += 1;
            }
            Err(st) => refusals.push(st),
        }
    }
    assert_eq!(stored, 100, "{:?}", refusals.first());
    assert_eq!(refusals.len(), 900);
    let st = &refusals[0];
    let wait = crate::limits::throttled(st, "b.test");
    assert!(wait > Duration::from_secs(3600), "{st:?}");
    assert!(!st.message().contains(&b.addr), "{st:?}");
}

/// The cap per peer: with `federation.max_delivered_invites_per_peer` = 3, b's fourth
/// pending delivery (to any of a's users) is RESOURCE_EXHAUSTED naming the key, with a
/// retry hint; a repeated delivery is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_invites_stop_at_the_cap_per_peer() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&kb)],
        &[("max_delivered_invites_per_peer", "3")],
    )
    .await;
    let (x, y) = (random_user(), random_user());
    give_key(&mut a.client(x).await).await;
    give_key(&mut a.client(y).await).await;
    let mut from_b = peer_client(&a.addr, &kb, "a.test").await;
    let pair = b_pair();
    for (to, body) in [(x, "1"), (x, "2"), (y, "1")] {
        let request = delivery(&pair, ("b.test", 5), to, body.as_bytes());
        from_b.deliver_invite(request).await.unwrap();
    }
    let over = from_b
        .deliver_invite(delivery(&pair, ("b.test", 5), y, b"2"))
        .await;
    let st = expect_code(over, Code::ResourceExhausted);
    let wait = crate::limits::throttled(&st, "federation.max_delivered_invites_per_peer");
    assert!(wait > Duration::from_secs(86_000), "{st:?}");
    let again = delivery(&pair, ("b.test", 5), y, b"1");
    from_b.deliver_invite(again).await.expect("a repeat");
}

/// A peer's NOT_FOUND is remembered (ten lookups of one keyless user spend one call of
/// a's budget), key lookups stop short of the share kept for invites
/// (`federation.invite_reserve_percent`), and an invite still goes through then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_found_is_remembered_and_invites_keep_their_reserve() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &b.addr)],
        &[
            ("outgoing_per_user_per_sec", "0"),
            ("outgoing_per_peer_per_sec", "0.001"),
            ("outgoing_per_peer_burst", "10"),
            ("invite_reserve_percent", "50"),
        ],
    )
    .await;
    let (alice, bob, keyless) = (random_user(), random_user(), random_user());
    give_key(&mut b.client(bob).await).await;
    let mut on_a = a.client(alice).await;
    for _ in 0..10 {
        expect_code(
            on_a.fetch_key(fetch(keyless, "b.test")).await,
            Code::NotFound,
        );
    }
    // Lookups may use 5 of the 10: one is spent, four more pass.
    for _ in 0..4 {
        expect_code(
            on_a.fetch_key(fetch(random_user(), "b.test")).await,
            Code::NotFound,
        );
    }
    let st = on_a
        .fetch_key(fetch(random_user(), "b.test"))
        .await
        .unwrap_err();
    crate::limits::throttled(&st, "federation.invite_reserve_percent");
    let pair = new_pair(&mut on_a).await;
    on_a.send_invite(SendInviteRequest {
        pair_id: pair.pair_id.clone(),
        user_id: bob,
        homeserver: "b.test".into(),
        invite: b"sealed for bob".to_vec(),
        key_fingerprint: Vec::new(),
    })
    .await
    .expect("the invite uses the reserve");
}

/// After bob rotates his key on b, an invite encrypted to the old key is refused, and
/// a's FetchKey right after the refusal returns the new key (not the cached old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_fingerprint_refusal_drops_the_cached_key() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &b.addr)],
        &[("key_cache_secs", "300")],
    )
    .await;
    let (alice, bob) = (random_user(), random_user());
    let mut bob_on_b = b.client(bob).await;
    bob_on_b
        .post_key(PostKeyRequest {
            key_data: key_pem(1),
        })
        .await
        .unwrap();
    let mut on_a = a.client(alice).await;
    let pair = new_pair(&mut on_a).await;
    let old = on_a.fetch_key(fetch(bob, "b.test")).await.unwrap();
    assert_eq!(
        old.into_inner().current_key.unwrap().fingerprint,
        fingerprint(1)
    );
    bob_on_b
        .post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await
        .unwrap();
    let st = expect_code(
        on_a.send_invite(SendInviteRequest {
            pair_id: pair.pair_id.clone(),
            user_id: bob,
            homeserver: "b.test".into(),
            invite: b"sealed to the old key".to_vec(),
            key_fingerprint: fingerprint(1),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("b.test"), "{st:?}");
    let new = on_a.fetch_key(fetch(bob, "b.test")).await.unwrap();
    assert_eq!(
        new.into_inner().current_key.unwrap().fingerprint,
        fingerprint(2),
        "the key cache still served the old key"
    );
}

/// A token with 5 seconds left cannot mint an hour-long Federate token: the minted
/// token's exp is at most the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federate_never_outlives_the_callers_token() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let a = Node::start(&ka, &Backend::Sqlite, &[PeerSpec::unreachable(&kb)], &[]).await;
    let short = token(random_user(), 5);
    let caller_exp = {
        use base64::Engine;
        let payload = short.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
        claims["exp"].as_i64().unwrap()
    };
    let fed = client_at(&a.addr, short)
        .await
        .federate(FederateRequest {
            server_id: "b.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let minted = fed.expires_at.unwrap().seconds;
    assert!(
        minted <= caller_exp,
        "minted exp {minted} outlives the caller's {caller_exp} (now {})",
        now()
    );
    // The token itself says so too.
    use base64::Engine;
    let payload = fed.token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert!(claims["exp"].as_i64().unwrap() <= caller_exp, "{claims}");
}

/// Federate says where the peer serves clients: its `client_endpoint`, or its
/// server-to-server `endpoint` when none is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federate_returns_the_peers_client_endpoint() {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let mut b = PeerSpec::at(&kb, "127.0.0.1:9");
    b.client_endpoint = "https://chat.b.test:443".into();
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[b, PeerSpec::at(&kc, "127.0.0.1:10")],
        &[],
    )
    .await;
    let mut on_a = a.client(random_user()).await;
    for (peer, endpoint) in [
        ("b.test", "https://chat.b.test:443"),
        ("c.test", "http://127.0.0.1:10"),
    ] {
        let fed = on_a
            .federate(FederateRequest {
                server_id: peer.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fed.endpoint, endpoint);
    }
}

/// A SecretFederationService that records the tokens it is called with and answers
/// FetchUserKey with NOT_FOUND (user 7: INTERNAL with a detail of its own) and
/// DeliverInvite with FAILED_PRECONDITION carrying raw text.
#[derive(Clone, Default)]
struct Recorder {
    tokens: Arc<Mutex<Vec<String>>>,
}

const PEER_DETAIL: &str = "peer-internal-detail";

impl Recorder {
    fn record<T>(&self, req: &Request<T>) {
        let header = req.metadata().get("authorization").unwrap();
        let token = header.to_str().unwrap().trim_start_matches("Bearer ");
        self.tokens.lock().unwrap().push(token.to_string());
    }

    fn last(&self) -> String {
        self.tokens
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a token")
    }

    async fn serve(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SecretFederationServiceServer::new(self))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }
}

#[tonic::async_trait]
impl SecretFederationService for Recorder {
    async fn server_key(
        &self,
        _: Request<ServerKeyRequest>,
    ) -> Result<Response<ServerKeyResponse>, Status> {
        Err(Status::unimplemented("recorder"))
    }

    async fn fetch_user_key(
        &self,
        req: Request<FetchUserKeyRequest>,
    ) -> Result<Response<FetchUserKeyResponse>, Status> {
        self.record(&req);
        if req.get_ref().user_id == 7 {
            return Err(Status::internal(format!("{PEER_DETAIL} at /var/lib/x")));
        }
        Err(Status::not_found("no such user"))
    }

    async fn deliver_invite(
        &self,
        req: Request<DeliverInviteRequest>,
    ) -> Result<Response<DeliverInviteResponse>, Status> {
        self.record(&req);
        Err(Status::failed_precondition(format!(
            "{PEER_DETAIL}: the key is stale"
        )))
    }

    async fn exchange_heads(
        &self,
        _: Request<ExchangeHeadsRequest>,
    ) -> Result<Response<ExchangeHeadsResponse>, Status> {
        Err(Status::unimplemented("recorder"))
    }
}

/// a calls "b.test" at a recorder, which keeps the s2s tokens a sends. One of them,
/// presented at the real b, passes once and is UNAUTHENTICATED the second time; another,
/// minted for FetchUserKey, is UNAUTHENTICATED on DeliverInvite.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_captured_s2s_token_is_single_use_and_bound_to_its_method() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let recorder = Recorder::default();
    let wire = recorder.clone().serve().await;
    let a = Node::start(&ka, &Backend::Sqlite, &[PeerSpec::at(&kb, &wire)], &[]).await;
    let mut on_a = a.client(random_user()).await;

    expect_code(
        on_a.fetch_key(fetch(random_user(), "b.test")).await,
        Code::NotFound,
    );
    let captured = recorder.last();
    let ask = FetchUserKeyRequest {
        user_id: random_user(),
    };
    let first = fed_client(&b.addr, Some(captured.clone()))
        .await
        .fetch_user_key(ask)
        .await;
    expect_code(first, Code::NotFound);
    let again = fed_client(&b.addr, Some(captured))
        .await
        .fetch_user_key(ask)
        .await;
    let st = expect_code(again, Code::Unauthenticated);
    assert!(st.message().contains("used before"), "{st:?}");

    expect_code(
        on_a.fetch_key(fetch(random_user(), "b.test")).await,
        Code::NotFound,
    );
    let for_fetch = recorder.last();
    let st = expect_code(
        fed_client(&b.addr, Some(for_fetch))
            .await
            .deliver_invite(DeliverInviteRequest::default())
            .await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("mth"), "{st:?}");
}

/// What our client is told about a peer names the peer, never its endpoint or the
/// peer's own error text: a peer that is down, one that answers INTERNAL with details,
/// one that refuses an invite with raw text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_errors_name_the_peer_not_its_endpoint() {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let wire = Recorder::default().serve().await;
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&kb), PeerSpec::at(&kc, &wire)],
        &[("request_timeout_secs", "2")],
    )
    .await;
    let mut on_a = a.client(random_user()).await;
    let clean = |st: &Status, peer: &str| {
        let m = st.message();
        assert!(m.contains(peer), "names {peer}: {st:?}");
        for leak in ["127.0.0.1", "http://", PEER_DETAIL, "/var/lib"] {
            assert!(!m.contains(leak), "shows {leak:?}: {st:?}");
        }
    };
    let st = expect_code(
        on_a.fetch_key(fetch(random_user(), "b.test")).await,
        Code::Unavailable,
    );
    clean(&st, "b.test");
    let st = expect_code(on_a.fetch_key(fetch(7, "c.test")).await, Code::Unavailable);
    clean(&st, "c.test");
    let pair = new_pair(&mut on_a).await;
    let st = expect_code(
        on_a.send_invite(SendInviteRequest {
            pair_id: pair.pair_id.clone(),
            user_id: random_user(),
            homeserver: "c.test".into(),
            invite: b"sealed".to_vec(),
            key_fingerprint: Vec::new(),
        })
        .await,
        Code::FailedPrecondition,
    );
    clean(&st, "c.test");
}

/// With federation on and an asymmetric algorithm (EdDSA, RS256), `jwt_audience` is
/// required: another homeserver sharing the identity provider would accept our users'
/// tokens otherwise. A configuration error (exit 2) naming the key; HS256 does not need it.
#[test]
fn an_asymmetric_jwt_algorithm_needs_an_audience_with_federation_on() {
    let kb = NodeKey::new("b.test");
    let public = fixture("ed25519.pub.pem").display().to_string();
    let run = |top: &str| {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "server_name = \"a.test\"\n{top}\n[federation]\nenabled = true\n\n\
             [[federation.peers]]\nserver_name = \"b.test\"\nendpoint = \"http://127.0.0.1:9\"\n\
             allow_insecure = true\npublic_key = \"{}\"\n",
            kb.public_key
        );
        std::fs::write(dir.path().join("secretd.toml"), toml).unwrap();
        run_binary(
            &[
                "federation-key",
                "--config",
                "secretd.toml",
                "--data-dir",
                "data",
            ],
            dir.path(),
            &[],
        )
    };
    for algorithm in ["EdDSA", "RS256"] {
        let key = if algorithm == "EdDSA" {
            public.clone()
        } else {
            fixture("rsa2048.pub.pem").display().to_string()
        };
        let out = run(&format!(
            "jwt_algorithm = \"{algorithm}\"\njwt_public_key_file = \"{key}\""
        ));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{algorithm}: {stderr}");
        assert!(stderr.contains("jwt_audience"), "{algorithm}: {stderr}");
    }
    let out = run(&format!(
        "jwt_algorithm = \"EdDSA\"\njwt_public_key_file = \"{public}\"\njwt_audience = \"a.test\""
    ));
    assert!(out.status.success(), "{out:?}");
    let out = run("");
    assert!(out.status.success(), "HS256 needs no audience: {out:?}");
}
