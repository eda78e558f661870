//! Federation (DESIGN §9): real secretd processes a, b and c on 127.0.0.1 with each
//! other's keys pinned in their config files. Here: FetchKey from a of users of b, the
//! key cache, federation off.
//!
//! - `nodes.rs`: a homeserver process with its config file, a federation-service client;
//! - `fake_peer.rs`: a tiny SecretFederationService that answers bad keys;
//! - `tokens.rs`: s2s tokens presented where they do not belong, `federation-key`, config;
//! - `invites.rs`: SendInvite a→b end to end and, by a member from b, a→c;
//! - `harness.rs`: three servers in order, a pair with a member from b, foreign clients;
//! - `members.rs`: foreign members posting, subscribing, leaving, removed; identity;
//! - `callers.rs`: fed-user tokens; the RPCs that belong to a user's own homeserver;
//! - `deliver.rs`: DeliverInvite called directly (every refusal), a peer answering
//!   garbage; `deliver_races.rs`: racing retries, deliveries held at the inbox row;
//! - `tls.rs`: a peer whose certificate is not trusted, `http://` peers and
//!   `allow_insecure` (the three-server tests themselves run over TLS);
//! - `transparency.rs`: a peer's key transparency proof passed on and verified, a
//!   rewriting stand-in for a peer; `equivocation.rs`: a fork caught by ExchangeHeads
//!   between three servers, ExchangeHeads' refusals; `consistency.rs`: a peer's head
//!   that does not extend the one held of it.
//!
//! On Postgres each node has a database of its own (`nodes.rs`): one database is one
//! homeserver's key transparency log.

mod callers;
mod consistency;
mod deliver;
mod deliver_races;
mod equivocation;
mod fake_peer;
mod hardening;
mod harness;
mod invites;
mod members;
pub(crate) mod nodes;
mod tls;
mod tokens;
mod transparency;

use std::time::Duration;

use secretd::proto::{FederateRequest, FetchKeyRequest, PostKeyRequest};
use tonic::Code;

use crate::common::*;
use nodes::{Node, NodeKey, PeerSpec};

both_backends!(fetch_key_across_servers_and_the_cache);

fn fetch(user: u64, homeserver: &str) -> FetchKeyRequest {
    FetchKeyRequest {
        user_id: user,
        homeserver: homeserver.into(),
        known_tree_size: 0,
    }
}

/// The fingerprint of a fixture key as the server computes it.
fn fingerprint(n: usize) -> Vec<u8> {
    use sha2::Digest;
    let (_, der) = rsa::pkcs8::der::pem::decode_vec(&key_pem(n)).unwrap();
    sha2::Sha256::digest(der).to_vec()
}

/// a → b: found, NOT_FOUND, our own name as local, unknown peer, and the cached key
/// served while b is down. b's store is `backend`; a's is SQLite.
async fn fetch_key_across_servers_and_the_cache(backend: Backend) {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &backend, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &b.addr)],
        &[("key_cache_secs", "300")],
    )
    .await;
    let (alice, bob, keyless) = (random_user(), random_user(), random_user());
    let mut on_b = b.client(bob).await;
    on_b.post_key(PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .unwrap();
    let mut on_a = a.client(alice).await;

    let keys = on_a
        .fetch_key(fetch(bob, "b.test"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.current_key.unwrap().fingerprint, fingerprint(1));
    assert!(keys.past_keys.is_empty());

    let st = expect_code(
        on_a.fetch_key(fetch(keyless, "b.test")).await,
        Code::NotFound,
    );
    assert!(
        st.message().contains(&keyless.to_string()) && st.message().contains("b.test"),
        "{st:?}"
    );
    // Our own name is this server: user `alice` of a.test is a's own user.
    on_a.post_key(PostKeyRequest {
        key_data: key_pem(2),
    })
    .await
    .unwrap();
    let own = on_a
        .fetch_key(fetch(alice, "a.test"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.current_key.unwrap().fingerprint, fingerprint(2));
    // ... and bob is not a user of a.
    expect_code(on_a.fetch_key(fetch(bob, "")).await, Code::NotFound);
    let st = expect_code(
        on_a.fetch_key(fetch(bob, "z.test")).await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("not a federation peer"), "{st:?}");

    // Federate: a token for a configured peer only.
    let fed = on_a
        .federate(FederateRequest {
            server_id: "b.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fed.token.split('.').count(), 3);
    let st = expect_code(
        on_a.federate(FederateRequest {
            server_id: "z.test".into(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("z.test"), "{st:?}");
    expect_code(
        on_a.federate(FederateRequest {
            server_id: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );

    // b goes away: the cached key is still served.
    b.kill().await;
    let cached = on_a
        .fetch_key(fetch(bob, "b.test"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cached.current_key.unwrap().fingerprint, fingerprint(1));
    // b's NOT_FOUND is remembered (federation.not_found_cache_secs) ...
    expect_code(
        on_a.fetch_key(fetch(keyless, "b.test")).await,
        Code::NotFound,
    );
    // ... and a user a never asked for is not cached: UNAVAILABLE naming b.
    let st = expect_code(
        on_a.fetch_key(fetch(random_user(), "b.test")).await,
        Code::Unavailable,
    );
    assert!(st.message().contains("b.test"), "{st:?}");
}

/// With a 1 s cache: a rotation on b is seen once the entry is older than the TTL, and
/// with b down an expired entry is not served: UNAVAILABLE naming b.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_expiry_rotation_and_outage() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &b.addr)],
        &[("key_cache_secs", "1"), ("request_timeout_secs", "2")],
    )
    .await;
    let bob = random_user();
    let mut on_b = b.client(bob).await;
    let mut on_a = a.client(random_user()).await;
    on_b.post_key(PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .unwrap();
    let first = on_a
        .fetch_key(fetch(bob, "b.test"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.current_key.unwrap().fingerprint, fingerprint(1));

    on_b.post_key(PostKeyRequest {
        key_data: key_pem(2),
    })
    .await
    .unwrap();
    // Wait out the cache's TTL (a fixed, configured lifetime, not a race).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = on_a
        .fetch_key(fetch(bob, "b.test"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.current_key.unwrap().fingerprint, fingerprint(2));
    assert_eq!(rotated.past_keys.len(), 1);
    assert_eq!(rotated.past_keys[0].fingerprint, fingerprint(1));

    b.kill().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let st = expect_code(
        on_a.fetch_key(fetch(bob, "b.test")).await,
        Code::Unavailable,
    );
    assert!(st.message().contains("b.test"), "{st:?}");
}

/// Federation off: FetchKey of another homeserver and Federate are FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federation_off_is_a_failed_precondition() {
    let s = TestServer::start(Backend::Sqlite).await;
    let mut c = s.client(random_user()).await;
    let st = expect_code(
        c.fetch_key(fetch(5, "b.test")).await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("federation.enabled"), "{st:?}");
    let st = expect_code(
        c.federate(FederateRequest {
            server_id: "b.test".into(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("federation.enabled"), "{st:?}");
    s.stop().await;
}
