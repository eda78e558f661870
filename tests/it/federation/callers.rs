//! Foreign callers at a's SecretService: only good "fed-user" tokens pass (b's own HS256
//! token, a token for c, an expired one, an over-long one, one without `sub`, one signed by
//! the wrong server and one from an unknown issuer are refused; the s2s token at
//! SecretService and the fed-user token at FetchUserKey are in `tokens.rs`), and the RPCs
//! that belong to the user's own homeserver are PERMISSION_DENIED naming it.

use secretd::federation::token::{self, TokenType};
use secretd::proto::{
    FederateRequest, FetchInvitesRequest, FetchKeyRequest, FetchPrivateKeyRequest,
    GenerateChannelPairRequest, ListChannelPairsRequest, PostKeyRequest, PostPrivateKeyRequest,
};
use tonic::Code;

use super::harness::*;
use super::nodes::{Node, NodeKey, PeerSpec};
use crate::common::*;

/// At a's SecretService only a's own HS256 tokens and "fed-user" tokens of a pinned peer,
/// for a, signed by that peer, unexpired and within the lifetime, with a user, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_good_fed_user_tokens_pass_at_secret_service() {
    const B_SECRET: &str = "b-has-its-own-secret-0123456789abcdef012345";
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let b = Node::start_with_env(
        &kb,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&ka)],
        &[],
        &[("SECRETD_JWT_SECRET", B_SECRET)],
    )
    .await;
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &b.addr), PeerSpec::unreachable(&kc)],
        &[],
    )
    .await;
    let bob = random_user();
    let listing = || ListChannelPairsRequest::default();

    // b's own token is bob's at b, and b's Federate turns it into one a accepts.
    let b_token = secretd::auth::sign_hs256(B_SECRET.as_bytes(), bob, 3600, "", "").unwrap();
    let mut at_b = client_at(&b.addr, b_token.clone()).await;
    at_b.list_channel_pairs(listing()).await.unwrap();
    let fed = at_b
        .federate(FederateRequest {
            server_id: "a.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ok = client_at(&a.addr, fed.token)
        .await
        .list_channel_pairs(listing())
        .await
        .unwrap()
        .into_inner();
    assert!(ok.pairs.is_empty());
    // A minted one passes too (the refusals below differ from it in one thing each).
    client_at(&a.addr, fed_user_token(&kb, "b.test", "a.test", bob))
        .await
        .list_channel_pairs(listing())
        .await
        .unwrap();

    let (b_key, c_key) = (kb.server_key(), kc.server_key());
    let fed_at = |key: &secretd::federation::key::ServerKey,
                  iss: &str,
                  aud: &str,
                  sub: Option<u64>,
                  iat: u64,
                  ttl: u64| {
        token::mint_at(key, iss, aud, TokenType::FedUser, sub, iat, ttl)
            .unwrap()
            .0
    };
    let t = now();
    for (what, bad) in [
        ("b's own HS256 token", b_token),
        (
            "for c",
            fed_at(&b_key, "b.test", "c.test", Some(bob), t, 600),
        ),
        (
            "expired an hour ago",
            fed_at(&b_key, "b.test", "a.test", Some(bob), t - 7200, 3600),
        ),
        (
            "lives two hours",
            fed_at(&b_key, "b.test", "a.test", Some(bob), t, 7200),
        ),
        (
            "without sub",
            fed_at(&b_key, "b.test", "a.test", None, t, 600),
        ),
        (
            "says b, signed by c",
            fed_at(&c_key, "b.test", "a.test", Some(bob), t, 600),
        ),
        (
            "from a server a does not know",
            fed_at(&b_key, "z.test", "a.test", Some(bob), t, 600),
        ),
        (
            "says a, signed by b",
            fed_at(&b_key, "a.test", "a.test", Some(bob), t, 600),
        ),
    ] {
        let r = client_at(&a.addr, bad)
            .await
            .list_channel_pairs(listing())
            .await;
        match r {
            Err(st) if st.code() == Code::Unauthenticated => {}
            other => panic!("{what}: expected UNAUTHENTICATED, got {other:?}"),
        }
    }
    // a still serves its own users.
    let mut alice = a.client(random_user()).await;
    new_pair(&mut alice).await;
}

/// PostKey, PostPrivateKey, FetchPrivateKey, GenerateChannelPair, FetchInvites and
/// Federate belong to the user's homeserver: a refuses them to bob of b, naming b.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpcs_of_the_users_own_homeserver_are_refused_to_foreign_users() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let a = Node::start(&ka, &Backend::Sqlite, &[PeerSpec::unreachable(&kb)], &[]).await;
    let bob = random_user();
    let mut foreign = client_at(&a.addr, fed_user_token(&kb, "b.test", "a.test", bob)).await;
    // The token itself is good.
    assert!(list(&mut foreign).await.is_empty());

    let mut refused = Vec::new();
    refused.push((
        "PostKey",
        foreign
            .post_key(PostKeyRequest {
                key_data: key_pem(1),
            })
            .await
            .map(|_| ()),
    ));
    refused.push((
        "PostPrivateKey",
        foreign
            .post_private_key(PostPrivateKeyRequest {
                key_data: b"blob".to_vec(),
                expected_version: None,
            })
            .await
            .map(|_| ()),
    ));
    refused.push((
        "FetchPrivateKey",
        foreign
            .fetch_private_key(FetchPrivateKeyRequest {})
            .await
            .map(|_| ()),
    ));
    refused.push((
        "GenerateChannelPair",
        foreign
            .generate_channel_pair(GenerateChannelPairRequest {})
            .await
            .map(|_| ()),
    ));
    refused.push((
        "FetchInvites",
        foreign
            .fetch_invites(FetchInvitesRequest::default())
            .await
            .map(|_| ()),
    ));
    refused.push((
        "Federate",
        foreign
            .federate(FederateRequest {
                server_id: "b.test".into(),
            })
            .await
            .map(|_| ()),
    ));
    for (rpc, r) in refused {
        match r {
            Err(st) if st.code() == Code::PermissionDenied => {
                assert!(st.message().contains("b.test"), "{rpc}: {st:?}");
            }
            other => panic!("{rpc}: expected PERMISSION_DENIED, got {other:?}"),
        }
    }
    assert!(list(&mut foreign).await.is_empty(), "no pair was made");

    // Nothing landed on a's user with bob's number, and a serves its users as before.
    let mut local_bob = a.client(bob).await;
    expect_code(
        local_bob
            .fetch_key(FetchKeyRequest {
                user_id: bob,
                homeserver: String::new(),
                known_tree_size: 0,
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        local_bob.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::NotFound,
    );
    let mut alice = a.client(random_user()).await;
    alice
        .post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await
        .unwrap();
    alice
        .post_private_key(PostPrivateKeyRequest {
            key_data: b"alice's blob".to_vec(),
            expected_version: None,
        })
        .await
        .unwrap();
    new_pair(&mut alice).await;
    assert!(
        alice
            .fetch_invites(FetchInvitesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .invites
            .is_empty()
    );
    alice
        .federate(FederateRequest {
            server_id: "b.test".into(),
        })
        .await
        .unwrap();
}
