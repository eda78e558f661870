//! Federation part 2 (DESIGN §9), foreign members of a pair: real secretd processes a, b
//! (and c) with each other's keys pinned; a is the pair's homeserver.
//!
//! - a user of b, invited into a pair of a, lists it, subscribes to it (Subscribe and
//!   StreamMessagePosting) and posts on it at a with a "fed-user" token from b's
//!   `Federate`; every event carries `sender_homeserver`; the counter rules and
//!   exactly-once retries are unchanged; LeaveChannelPair ends it;
//! - RemoveMember of (bob, "b.test") ends bob's open subscription at once; (bob, "") and
//!   (bob, "a.test") name a user of a, who is not a member: NOT_FOUND, bob stays;
//! - user X of b is never user X of a, before and after X of b is invited;
//! - tokens at a's SecretService: b's own HS256 token, a "fed-user" token for c, an
//!   expired one, an over-long one, one without `sub`, one signed by the wrong server, one
//!   from an unknown issuer (the s2s token at SecretService and the fed-user token at
//!   FetchUserKey are in `tokens.rs`);
//! - the RPCs that belong to the user's own homeserver are PERMISSION_DENIED naming it.
//!
//! Shared with `invites.rs`: [`trio`], [`shared_room`], [`foreign_client`],
//! [`fed_user_token`], [`pair_info`], [`refs`].

use secretd::federation::token::{self, TokenType};
use secretd::proto::{
    ChannelPair, ChannelPairInfo, FederateRequest, FetchInvitesRequest, FetchKeyRequest,
    FetchMessagesRequest, FetchPrivateKeyRequest, GenerateChannelPairRequest,
    LeaveChannelPairRequest, ListChannelPairsRequest, PostKeyRequest, PostPrivateKeyRequest,
    RemoveMemberRequest, SendInviteRequest, StreamCursor, SubscribeRequest,
};
use tonic::{Code, Status};

use super::nodes::{Node, NodeKey, PeerSpec};
use crate::common::*;

both_backends!(
    a_user_of_b_posts_and_subscribes_on_a_pair_of_a,
    removing_a_foreign_member_ends_his_subscription,
    user_x_of_b_is_never_user_x_of_a,
);

/// Homeservers a, b and c: b and c only know a's key (a calls them, they never call
/// anyone); a has both pinned at their addresses. a and b store in `backend`, c in SQLite.
/// The keys hold the data directories: they live as long as the nodes.
#[allow(dead_code)]
pub(super) struct Trio {
    pub ka: NodeKey,
    pub kb: NodeKey,
    pub kc: NodeKey,
    pub a: Node,
    pub b: Node,
    pub c: Node,
}

pub(super) async fn trio(backend: &Backend) -> Trio {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let b = Node::start(&kb, backend, &[PeerSpec::unreachable(&ka)], &[]).await;
    let c = Node::start(&kc, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(
        &ka,
        backend,
        &[PeerSpec::at(&kb, &b.addr), PeerSpec::at(&kc, &c.addr)],
        &[],
    )
    .await;
    Trio {
        ka,
        kb,
        kc,
        a,
        b,
        c,
    }
}

pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client at `at` (server name `at_name`) acting as `user` of `home`, with the token
/// `home`'s Federate gives `user`.
pub(super) async fn foreign_client(home: &Node, user: u64, at: &Node, at_name: &str) -> Client {
    let fed = home
        .client(user)
        .await
        .federate(FederateRequest {
            server_id: at_name.into(),
        })
        .await
        .expect("federate")
        .into_inner();
    let expires = fed.expires_at.expect("expires_at").seconds as u64;
    assert!(expires > now() && expires <= now() + 3600 + 5, "{expires}");
    client_at(&at.addr, fed.token).await
}

/// A "fed-user" token signed with `key` (of `iss`) for `user`, for `aud`, valid 10 min.
pub(super) fn fed_user_token(key: &NodeKey, iss: &str, aud: &str, user: u64) -> String {
    token::mint(
        &key.server_key(),
        iss,
        aud,
        TokenType::FedUser,
        Some(user),
        600,
    )
    .unwrap()
    .0
}

/// The pair `pair_id` as `c` lists it (None if it is not listed).
pub(super) async fn pair_info(c: &mut Client, pair_id: &str) -> Option<ChannelPairInfo> {
    let pairs = list(c).await;
    pairs
        .into_iter()
        .find(|p| p.pair.as_ref().is_some_and(|p| p.pair_id == pair_id))
}

/// Every pair `c` is a member of (one page: tests have few).
pub(super) async fn list(c: &mut Client) -> Vec<ChannelPairInfo> {
    let page = c
        .list_channel_pairs(ListChannelPairsRequest {
            after_pair_id: String::new(),
            limit: 1000,
        })
        .await
        .expect("list")
        .into_inner();
    assert!(!page.has_more);
    page.pairs
}

/// The pair's `member_refs` as sorted (homeserver, user) pairs.
pub(super) async fn refs(c: &mut Client, pair_id: &str) -> Vec<(String, u64)> {
    let info = pair_info(c, pair_id).await.expect("the pair is listed");
    let mut refs: Vec<(String, u64)> = info
        .member_refs
        .iter()
        .map(|r| (r.homeserver.clone(), r.user_id))
        .collect();
    refs.sort();
    refs
}

/// Sorted (homeserver, user) pairs.
pub(super) fn sorted(refs: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = refs.iter().map(|(h, u)| (h.to_string(), *u)).collect();
    v.sort();
    v
}

/// SendInvite of `user` of `homeserver` into `pair`.
pub(super) async fn send_invite(
    inviter: &mut Client,
    pair: &ChannelPair,
    user: u64,
    homeserver: &str,
    body: &[u8],
) -> Result<u64, Status> {
    inviter
        .send_invite(SendInviteRequest {
            pair_id: pair.pair_id.clone(),
            user_id: user,
            homeserver: homeserver.into(),
            invite: body.to_vec(),
            key_fingerprint: Vec::new(),
        })
        .await
        .map(|r| r.into_inner().invite_id)
}

/// alice of a opens a pair and invites bob of b (who posts a key on b first). Returns
/// alice's client at a, the pair and bob's client at a (a token from b's Federate).
pub(super) async fn shared_room(t: &Trio, alice: u64, bob: u64) -> (Client, ChannelPair, Client) {
    let mut on_a = t.a.client(alice).await;
    let pair = new_pair(&mut on_a).await;
    give_key(&mut t.b.client(bob).await).await;
    send_invite(&mut on_a, &pair, bob, "b.test", b"sealed for bob")
        .await
        .expect("invite bob of b");
    let bob_at_a = foreign_client(&t.b, bob, &t.a, "a.test").await;
    (on_a, pair, bob_at_a)
}

fn resume(stream: &str) -> SubscribeRequest {
    SubscribeRequest {
        resume_from: vec![StreamCursor {
            stream_id: stream.into(),
            after_event_id: 0,
        }],
        ..Default::default()
    }
}

/// The next event must be a posted message; returns it.
async fn next_message(sub: &mut Subscription) -> secretd::proto::PostedMessage {
    match sub.next().await {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Bob of b lists a's pair, follows it live, posts on it; senders carry their homeserver.
async fn a_user_of_b_posts_and_subscribes_on_a_pair_of_a(backend: Backend) {
    let t = trio(&backend).await;
    let (alice, bob) = (random_user(), random_user());
    let (mut on_a, pair, mut bob_at_a) = shared_room(&t, alice, bob).await;
    let stream = pair.message_id.as_str();

    // Bob sees the pair at a, as a lists it: alice local and owner, bob of b.
    let seen = list(&mut bob_at_a).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].pair.as_ref(), Some(&pair));
    assert_eq!(
        (seen[0].owner, seen[0].owner_homeserver.as_str()),
        (alice, "")
    );
    assert_eq!(
        refs(&mut bob_at_a, &pair.pair_id).await,
        sorted(&[("", alice), ("b.test", bob)])
    );

    // Both follow the message stream (bob with Subscribe, alice with StreamMessagePosting).
    let mut bob_sub = Subscription::subscribe(&mut bob_at_a, resume(stream))
        .await
        .unwrap();
    assert_eq!(bob_sub.until_caught_up(stream).await, (vec![], 0));
    let mut alice_sub = Subscription::open(&mut on_a).await.unwrap();
    alice_sub.manage(&[], &[], &[(stream, 0)]);
    assert_eq!(alice_sub.until_caught_up(stream).await, (vec![], 0));

    assert_eq!(post(&mut on_a, stream, 1, b"from alice").await.unwrap(), 1);
    let m = next_message(&mut bob_sub).await;
    assert_eq!(
        (m.event_id, m.sender, m.sender_homeserver.as_str()),
        (1, alice, "")
    );
    assert_eq!(m.message.unwrap().message, b"from alice");
    assert_eq!(next_message(&mut alice_sub).await.event_id, 1);

    let e2 = post(&mut bob_at_a, stream, 2, b"from bob").await.unwrap();
    assert_eq!(e2, 2);
    for sub in [&mut alice_sub, &mut bob_sub] {
        let m = next_message(sub).await;
        assert_eq!(
            (m.event_id, m.sender, m.sender_homeserver.as_str()),
            (2, bob, "b.test")
        );
        let body = m.message.unwrap();
        assert_eq!((body.id, body.message.as_slice()), (2, &b"from bob"[..]));
    }

    // History, read by either, says who is of which homeserver.
    for reader in [&mut on_a, &mut bob_at_a] {
        let all = fetch_all(reader, stream).await;
        let senders: Vec<(u64, u64, &str)> = all
            .iter()
            .map(|m| (m.event_id, m.sender, m.sender_homeserver.as_str()))
            .collect();
        assert_eq!(senders, vec![(1, alice, ""), (2, bob, "b.test")]);
    }

    // Counter rules unchanged: counter 2 with other bytes is refused, naming the head...
    let st = expect_code(
        post(&mut bob_at_a, stream, 2, b"other bytes").await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        st.metadata()
            .get("secretd-head-counter")
            .map(|v| v.to_str().unwrap()),
        Some("2"),
        "{st:?}"
    );
    // ... and the identical retry is the same event.
    assert_eq!(
        post(&mut bob_at_a, stream, 2, b"from bob").await.unwrap(),
        e2
    );
    // Bob of b and alice of a are different senders: alice's identical bytes at counter 2
    // are not bob's retry.
    expect_code(
        post(&mut on_a, stream, 2, b"from bob").await,
        Code::FailedPrecondition,
    );
    // The state stream is bob's too.
    assert_eq!(
        post(&mut bob_at_a, &pair.state_id, 1, b"trust")
            .await
            .unwrap(),
        1
    );
    assert!(bob_sub.quiet_for(300).await, "each event once");

    // Bob leaves: he can post no more, and the pair is alice's alone.
    bob_at_a
        .leave_channel_pair(LeaveChannelPairRequest {
            pair_id: pair.pair_id.clone(),
        })
        .await
        .unwrap();
    expect_code(
        post(&mut bob_at_a, stream, 3, b"after leaving").await,
        Code::PermissionDenied,
    );
    expect_code(
        bob_at_a
            .fetch_messages(FetchMessagesRequest {
                stream_id: stream.into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(list(&mut bob_at_a).await.is_empty());
    assert_eq!(refs(&mut on_a, &pair.pair_id).await, sorted(&[("", alice)]));
    assert_eq!(post(&mut on_a, stream, 3, b"alone").await.unwrap(), 3);
}

/// RemoveMember of (bob, "b.test") ends bob's subscription at once; (bob, "") is another
/// user (of a), not a member.
async fn removing_a_foreign_member_ends_his_subscription(backend: Backend) {
    let t = trio(&backend).await;
    let (alice, bob) = (random_user(), random_user());
    let (mut on_a, pair, mut bob_at_a) = shared_room(&t, alice, bob).await;
    let stream = pair.message_id.as_str();
    let remove = |user: u64, homeserver: &str| RemoveMemberRequest {
        pair_id: pair.pair_id.clone(),
        user_id: user,
        homeserver: homeserver.into(),
    };

    // bob of a (a user of a with bob's number) is not a member; our own name is local.
    for local in ["", "a.test"] {
        let st = expect_code(on_a.remove_member(remove(bob, local)).await, Code::NotFound);
        assert!(st.message().contains(&bob.to_string()), "{st:?}");
    }
    assert_eq!(
        refs(&mut on_a, &pair.pair_id).await,
        sorted(&[("", alice), ("b.test", bob)])
    );
    // Only the owner removes: bob (a member, not the owner) cannot remove alice.
    expect_code(
        bob_at_a.remove_member(remove(alice, "")).await,
        Code::PermissionDenied,
    );

    // Bob follows the stream at a (StreamMessagePosting) and gets alice's first post.
    let mut sub = Subscription::open(&mut bob_at_a).await.unwrap();
    sub.manage(&[], &[], &[(stream, 0)]);
    assert_eq!(sub.until_caught_up(stream).await, (vec![], 0));
    post(&mut on_a, stream, 1, b"before").await.unwrap();
    let m = next_message(&mut sub).await;
    assert_eq!((m.event_id, m.sender), (1, alice));

    on_a.remove_member(remove(bob, "b.test")).await.unwrap();
    // The subscription ends at once: a per-stream error 7, or the call ends.
    let call_open = match sub.next_within(10).await {
        Ok(Some(Event::SubscriptionError(e))) => {
            assert_eq!(e.code, Code::PermissionDenied as i32, "{e:?}");
            assert_eq!(e.stream_id, stream);
            true
        }
        Ok(None) => false,
        Err(st) => {
            assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
            false
        }
        Ok(Some(other)) => panic!("expected the subscription to end, got {other:?}"),
    };
    post(&mut on_a, stream, 2, b"after").await.unwrap();
    if call_open {
        assert!(sub.quiet_for(300).await, "nothing after the removal");
    }
    expect_code(
        post(&mut bob_at_a, stream, 3, b"still here?").await,
        Code::PermissionDenied,
    );
    expect_code(
        bob_at_a
            .fetch_messages(FetchMessagesRequest {
                stream_id: stream.into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(list(&mut bob_at_a).await.is_empty());
    assert_eq!(refs(&mut on_a, &pair.pair_id).await, sorted(&[("", alice)]));
    // Removing him again: he is not a member.
    expect_code(
        on_a.remove_member(remove(bob, "b.test")).await,
        Code::NotFound,
    );
}

/// Alice (id X) of a and X of b are two users: X of b gets nothing of alice's, and once
/// invited is a second member next to her.
async fn user_x_of_b_is_never_user_x_of_a(backend: Backend) {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    // b on SQLite: on one shared Postgres b's user X and a's user X would share rows.
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(&ka, &backend, &[PeerSpec::at(&kb, &b.addr)], &[]).await;
    let x = random_user();
    let mut alice = a.client(x).await;
    let pair = new_pair(&mut alice).await;
    post(&mut alice, &pair.message_id, 1, b"alice's")
        .await
        .unwrap();
    let mut x_of_b = client_at(&a.addr, fed_user_token(&kb, "b.test", "a.test", x)).await;

    assert!(list(&mut x_of_b).await.is_empty());
    expect_code(
        x_of_b
            .fetch_messages(FetchMessagesRequest {
                stream_id: pair.message_id.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        post(&mut x_of_b, &pair.message_id, 2, b"impostor").await,
        Code::PermissionDenied,
    );
    expect_code(
        post(&mut x_of_b, &pair.state_id, 1, b"impostor").await,
        Code::PermissionDenied,
    );
    let local = random_user();
    give_key(&mut a.client(local).await).await;
    expect_code(
        send_invite(&mut x_of_b, &pair, local, "", b"impostor").await,
        Code::PermissionDenied,
    );
    expect_code(
        x_of_b
            .leave_channel_pair(LeaveChannelPairRequest {
                pair_id: pair.pair_id.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    let mut sub = Subscription::subscribe(&mut x_of_b, resume(&pair.message_id))
        .await
        .unwrap();
    match sub.next().await {
        Event::SubscriptionError(e) => {
            assert_eq!(e.code, Code::PermissionDenied as i32, "{e:?}");
            assert_eq!(e.stream_id, pair.message_id);
        }
        other => panic!("expected a subscription error, got {other:?}"),
    }
    drop(sub);
    let info = pair_info(&mut alice, &pair.pair_id).await.unwrap();
    assert_eq!(info.members, vec![x]);
    assert_eq!(refs(&mut alice, &pair.pair_id).await, sorted(&[("", x)]));
    assert_eq!(
        fetch_all(&mut alice, &pair.message_id).await.len(),
        1,
        "nothing posted by X of b"
    );

    // Alice invites X of b: two members with one number, told apart by homeserver.
    b.client(x)
        .await
        .post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await
        .unwrap();
    send_invite(&mut alice, &pair, x, "b.test", b"for x of b")
        .await
        .unwrap();
    let info = pair_info(&mut alice, &pair.pair_id).await.unwrap();
    assert_eq!(info.members, vec![x], "local members only");
    assert_eq!(
        refs(&mut alice, &pair.pair_id).await,
        sorted(&[("", x), ("b.test", x)])
    );
    assert_eq!(
        post(&mut x_of_b, &pair.message_id, 2, b"x of b")
            .await
            .unwrap(),
        2
    );
    // The same counter and bytes from X of a are not X of b's retry.
    expect_code(
        post(&mut alice, &pair.message_id, 2, b"x of b").await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        post(&mut x_of_b, &pair.message_id, 2, b"x of b")
            .await
            .unwrap(),
        2
    );
    let senders: Vec<(u64, String)> = fetch_all(&mut alice, &pair.message_id)
        .await
        .into_iter()
        .map(|m| (m.sender, m.sender_homeserver))
        .collect();
    assert_eq!(senders, vec![(x, String::new()), (x, "b.test".into())]);
    // Removing X of b leaves alice; (X, "") is alice herself: use LeaveChannelPair.
    alice
        .remove_member(RemoveMemberRequest {
            pair_id: pair.pair_id.clone(),
            user_id: x,
            homeserver: "b.test".into(),
        })
        .await
        .unwrap();
    assert_eq!(refs(&mut alice, &pair.pair_id).await, sorted(&[("", x)]));
    expect_code(
        alice
            .remove_member(RemoveMemberRequest {
                pair_id: pair.pair_id.clone(),
                user_id: x,
                homeserver: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        post(&mut x_of_b, &pair.message_id, 3, b"removed").await,
        Code::PermissionDenied,
    );
    assert_eq!(
        post(&mut alice, &pair.message_id, 3, b"alice's again")
            .await
            .unwrap(),
        3
    );
}

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
