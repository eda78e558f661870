//! Federation part 2 (DESIGN §9), foreign members of a pair: real secretd processes a, b
//! (and c) with each other's keys pinned; a is the pair's homeserver.
//!
//! - a user of b, invited into a pair of a, lists it, subscribes to it (Subscribe and
//!   StreamMessagePosting) and posts on it at a with a "fed-user" token from b's
//!   `Federate`; every event carries `sender_homeserver`; the counter rules and
//!   exactly-once retries are unchanged; LeaveChannelPair ends it;
//! - RemoveMember of (bob, "b.test") ends bob's open subscription at once; (bob, "") and
//!   (bob, "a.test") name a user of a, who is not a member: NOT_FOUND, bob stays;
//! - user X of b is never user X of a, before and after X of b is invited.
//!
//! Tokens of foreign callers and the RPCs of their own homeserver: `callers.rs`.

use secretd::proto::{
    ChannelPair, FetchMessagesRequest, LeaveChannelPairRequest, PostKeyRequest,
    RemoveMemberRequest, StreamCursor, SubscribeRequest,
};
use tonic::Code;

use super::harness::*;
use super::nodes::{Node, NodeKey, PeerSpec};
use crate::common::*;

both_backends!(
    a_user_of_b_posts_and_subscribes_on_a_pair_of_a,
    removing_a_foreign_member_ends_his_subscription,
    user_x_of_b_is_never_user_x_of_a,
);

fn resume(stream: &str) -> SubscribeRequest {
    SubscribeRequest {
        resume_from: vec![StreamCursor {
            stream_id: stream.into(),
            after_event_id: 0,
        }],
        ..Default::default()
    }
}

/// Bob (at a) can no longer post, read or list the pair, and a lists alice alone.
async fn lost_access(
    bob_at_a: &mut Client,
    on_a: &mut Client,
    pair: &ChannelPair,
    alice: u64,
    body: &[u8],
) {
    let stream = pair.message_id.as_str();
    expect_code(
        post(bob_at_a, stream, 3, body).await,
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
    assert!(list(bob_at_a).await.is_empty());
    assert_eq!(refs(on_a, &pair.pair_id).await, sorted(&[("", alice)]));
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
    lost_access(&mut bob_at_a, &mut on_a, &pair, alice, b"after leaving").await;
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
    lost_access(&mut bob_at_a, &mut on_a, &pair, alice, b"still here?").await;
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
