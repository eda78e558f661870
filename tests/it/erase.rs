//! Erasing a user (DESIGN §13, README "Erase a user"): DeleteAccount and `secretd admin
//! erase-user` on both backends. Erased events keep their ids and counters and reach
//! readers as markers in order; erasing twice changes nothing; an erased owner's pairs
//! pass to the oldest remaining member; every refusal of DeleteAccount has its code; the
//! user's subscriptions end (on another replica too) while others' go on; an erasure
//! racing the user's own posts leaves every acknowledged id in place, erased.

use serde_json::json;
use tonic::Code;

use crate::auth::{hs, now};
use crate::common::*;
use secretd::proto::*;

/// DeleteAccount of `user` by themself with a fresh token.
async fn delete(s: &TestServer, user: u64, erase_messages: bool) -> DeleteAccountResponse {
    s.client(user)
        .await
        .delete_account(DeleteAccountRequest {
            user_id: user,
            erase_messages,
        })
        .await
        .expect("DeleteAccount")
        .into_inner()
}

/// A pair of `owner` with `guests` invited in this order.
async fn room(s: &TestServer, owner: u64, guests: &[u64]) -> (Client, ChannelPair) {
    let mut o = s.client(owner).await;
    let pair = new_pair(&mut o).await;
    for &g in guests {
        invite(&mut o, &mut s.client(g).await, &pair, g).await;
    }
    (o, pair)
}

/// Every event of `stream`, ascending.
async fn history(c: &mut Client, stream: &str) -> Vec<PostedMessage> {
    let r = c
        .fetch_messages(FetchMessagesRequest {
            stream_id: stream.into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("FetchMessages")
        .into_inner();
    assert!(!r.has_more);
    r.messages
}

/// (event id, counter, erased, ciphertext) of each event.
fn shape(events: &[PostedMessage]) -> Vec<(u64, u64, bool, Vec<u8>)> {
    events
        .iter()
        .map(|m| {
            let body = m.message.clone().unwrap_or_default();
            (m.event_id, body.id, m.erased, body.message)
        })
        .collect()
}

async fn erased_events_keep_ids_and_counters_and_resume_gets_markers(b: Backend) {
    let s = TestServer::start(b).await;
    let (owner, guest) = (random_user(), random_user());
    let (mut o, pair) = room(&s, owner, &[guest]).await;
    let st = pair.message_id.as_str();
    let mut g = s.client(guest).await;
    // A live subscriber fills the server's cached frames with the events before erasure.
    let mut live = Subscription::open(&mut o).await.unwrap();
    live.manage(&[st], &[], &[]);
    assert!(matches!(live.next().await, Event::CaughtUp(_)));
    for c in 1..=4u64 {
        let who = if c % 2 == 1 { &mut o } else { &mut g };
        post(who, st, c, format!("m{c}").as_bytes()).await.unwrap();
    }
    for _ in 0..4 {
        assert!(matches!(live.next().await, Event::Message(_)));
    }
    assert!(delete(&s, guest, true).await.first_erasure);
    let expected = vec![
        (1, 1, false, b"m1".to_vec()),
        (2, 2, true, vec![]),
        (3, 3, false, b"m3".to_vec()),
        (4, 4, true, vec![]),
    ];
    assert_eq!(shape(&history(&mut o, st).await), expected);
    // A subscriber resuming from 0 gets the markers in order, then CaughtUp.
    let mut resumed = Subscription::open(&mut o).await.unwrap();
    resumed.manage(&[], &[], &[(st, 0)]);
    let (events, head) = resumed.until_caught_up(st).await;
    assert_eq!((shape(&events), head), (expected.clone(), 4));
    // Posting goes on with the counter rules unchanged.
    assert_eq!(post(&mut o, st, 5, b"m5").await.unwrap(), 5);
    // Keys out of service, blob gone, the erased user cannot post a key again.
    let mut other = s.client(owner).await;
    let st404 = expect_code(
        other
            .fetch_key(FetchKeyRequest {
                user_id: guest,
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    assert!(st404.message().contains("erased"), "{st404:?}");
    expect_code(
        g.post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await,
        Code::PermissionDenied,
    );
    expect_code(
        g.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::NotFound,
    );
    let blob = PostPrivateKeyRequest {
        key_data: b"sealed".to_vec(),
        expected_version: None,
    };
    expect_code(g.post_private_key(blob).await, Code::PermissionDenied);
    // Erasing twice changes nothing.
    assert!(!delete(&s, guest, true).await.first_erasure);
    let mut again = expected;
    again.push((5, 5, false, b"m5".to_vec()));
    assert_eq!(shape(&history(&mut o, st).await), again);
    s.stop().await;
}

async fn an_erased_owner_passes_the_pair_to_the_oldest_member(b: Backend) {
    let s = TestServer::start(b).await;
    let (owner, first, second) = (random_user(), random_user(), random_user());
    let (mut o, pair) = room(&s, owner, &[first, second]).await;
    let streams = [pair.message_id.as_str(), pair.state_id.as_str()];
    let mut o_sub = Subscription::open(&mut o).await.unwrap();
    o_sub.manage(&streams, &[], &[]);
    let mut f = s.client(first).await;
    let mut f_sub = Subscription::open(&mut f).await.unwrap();
    f_sub.manage(&streams, &[], &[]);
    for sub in [&mut o_sub, &mut f_sub] {
        for _ in 0..2 {
            assert!(matches!(sub.next().await, Event::CaughtUp(_)));
        }
    }
    delete(&s, owner, false).await;
    for _ in 0..2 {
        let e = o_sub.next().await;
        assert!(
            matches!(&e, Event::SubscriptionError(e) if e.code == Code::PermissionDenied as i32),
            "{e:?}"
        );
    }
    let pairs = f
        .list_channel_pairs(ListChannelPairsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pairs;
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].owner, first, "the oldest remaining member owns it");
    assert_eq!(pairs[0].members, {
        let mut m = vec![first, second];
        m.sort();
        m
    });
    // The others' subscriptions go on.
    post(&mut s.client(second).await, streams[0], 1, b"hi")
        .await
        .unwrap();
    assert!(matches!(f_sub.next().await, Event::Message(m) if m.sender == second));
    assert!(o_sub.quiet_for(200).await);
    s.stop().await;
}

async fn delete_account_refusals_have_exact_codes(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, other) = (random_user(), random_user());
    let mut c = s.client(user).await;
    give_key(&mut c).await;
    let ask = |token: String, user_id: u64| {
        let s = &s;
        async move {
            s.client_with_token(token)
                .await
                .delete_account(DeleteAccountRequest {
                    user_id,
                    erase_messages: true,
                })
                .await
        }
    };
    let sub = user.to_string();
    let cases = [
        (
            "no iat",
            hs(json!({"sub": sub, "exp": now() + 600}), SECRET),
            user,
            Code::Unauthenticated,
        ),
        (
            "issued 5 minutes ago",
            hs(
                json!({"sub": sub, "exp": now() + 600, "iat": now() - 300}),
                SECRET,
            ),
            user,
            Code::Unauthenticated,
        ),
        (
            "another user's id",
            s.token(user),
            other,
            Code::PermissionDenied,
        ),
        ("user id 0", s.token(user), 0, Code::InvalidArgument),
        (
            "user id above 2^63-1",
            s.token(user),
            u64::MAX,
            Code::InvalidArgument,
        ),
    ];
    for (why, token, user_id, code) in cases {
        let status = expect_code(ask(token, user_id).await, code);
        assert!(
            status.message().contains("DeleteAccount") || status.message().contains("user_id"),
            "{why}: {status:?}"
        );
    }
    // Nothing was erased: the key is still served.
    c.fetch_key(FetchKeyRequest {
        user_id: user,
        ..Default::default()
    })
    .await
    .expect("still has a key");
    // A token issued 4 minutes ago is fresh enough.
    let fresh = hs(
        json!({"sub": sub, "exp": now() + 600, "iat": now() - 240}),
        SECRET,
    );
    ask(fresh, user).await.expect("fresh token accepted");
    s.stop().await;
}

async fn an_erasure_racing_the_users_posts_leaves_every_acknowledged_id_erased(b: Backend) {
    let s = TestServer::start(b).await;
    let (owner, guest) = (random_user(), random_user());
    let (mut o, pair) = room(&s, owner, &[guest]).await;
    let st = pair.message_id.clone();
    let mut g = s.client(guest).await;
    // The poster tells the test after its 20th acknowledged post, and keeps posting.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let poster = tokio::spawn(async move {
        let (mut acked, mut ready) = (Vec::new(), Some(ready_tx));
        for counter in 1..=2000u64 {
            match post(&mut g, &st, counter, b"racing").await {
                Ok(id) => acked.push(id),
                Err(e) => {
                    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
                    break;
                }
            }
            if acked.len() == 20
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(());
            }
        }
        acked
    });
    ready_rx.await.unwrap();
    delete(&s, guest, true).await;
    let acked = poster.await.unwrap();
    assert!(acked.len() >= 20 && acked.len() < 2000, "{}", acked.len());
    let events = history(&mut o, &pair.message_id).await;
    let ids: Vec<u64> = events.iter().map(|m| m.event_id).collect();
    assert_eq!(ids, (1..=acked.len() as u64).collect::<Vec<_>>());
    assert_eq!(ids, acked, "every acknowledged id is there, dense");
    assert!(events.iter().all(|m| m.erased), "every one erased");
    s.stop().await;
}

async fn admin_erase_user_works_beside_a_running_server(b: Backend) {
    let s = TestServer::start(b.clone()).await;
    let (owner, guest) = (random_user(), random_user());
    let (mut o, pair) = room(&s, owner, &[guest]).await;
    let st = pair.message_id.as_str();
    post(&mut s.client(guest).await, st, 1, b"theirs")
        .await
        .unwrap();
    let url = b.url(s.dir());
    let dir = s.dir().display().to_string();
    let guest_id = guest.to_string();
    let args = [
        "admin",
        "erase-user",
        "--user",
        &guest_id,
        "--erase-messages",
        "--database-url",
        &url,
        "--data-dir",
        &dir,
    ];
    for first in [true, false] {
        let out = run_binary(&args, s.dir(), &[("SECRETD_LOG_FORMAT", "text")]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.contains("erased before"), !first, "{stdout}");
    }
    assert_eq!(
        shape(&history(&mut o, st).await),
        vec![(1, 1, true, vec![])]
    );
    let pairs = o
        .list_channel_pairs(ListChannelPairsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pairs;
    assert_eq!(pairs[0].members, vec![owner]);
    let out = run_binary(
        &[
            "admin",
            "erase-user",
            "--user",
            &guest_id,
            "--homeserver",
            "elsewhere.example",
            "--database-url",
            &url,
            "--data-dir",
            &dir,
        ],
        s.dir(),
        &[("SECRETD_LOG_FORMAT", "text")],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "another homeserver's user: a usage error"
    );
    s.stop().await;
}

both_backends!(
    erased_events_keep_ids_and_counters_and_resume_gets_markers,
    an_erased_owner_passes_the_pair_to_the_oldest_member,
    delete_account_refusals_have_exact_codes,
    an_erasure_racing_the_users_posts_leaves_every_acknowledged_id_erased,
    admin_erase_user_works_beside_a_running_server,
);

/// Postgres, two replicas: the user's subscriptions on replica A end when they are
/// erased on B (by DeleteAccount there, then by the admin command: no replica of its
/// own), the owner's go on, and A serves the erased events as markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
async fn erasure_ends_the_users_subscriptions_on_another_replica() {
    let Some(b) = Backend::postgres() else { return };
    let a = TestServer::start(b.clone()).await;
    let bsrv = TestServer::start(b).await;
    let (owner, guest) = (random_user(), random_user());
    let (mut o, pair) = room(&a, owner, &[guest]).await;
    let streams = [pair.message_id.as_str(), pair.state_id.as_str()];
    let mut g = a.client(guest).await;
    let mut g_sub = Subscription::open(&mut g).await.unwrap();
    g_sub.manage(&streams, &[], &[]);
    let mut o_sub = Subscription::open(&mut o).await.unwrap();
    o_sub.manage(&streams, &[], &[]);
    for sub in [&mut g_sub, &mut o_sub] {
        for _ in 0..2 {
            assert!(matches!(sub.next().await, Event::CaughtUp(_)));
        }
    }
    post(&mut g, streams[0], 1, b"from the guest")
        .await
        .unwrap();
    for sub in [&mut g_sub, &mut o_sub] {
        assert!(matches!(sub.next().await, Event::Message(m) if !m.erased));
    }
    delete(&bsrv, guest, true).await;
    for _ in 0..2 {
        let e = g_sub.next().await;
        assert!(
            matches!(&e, Event::SubscriptionError(e) if e.code == Code::PermissionDenied as i32),
            "{e:?}"
        );
    }
    post(&mut bsrv.client(owner).await, streams[0], 2, b"after")
        .await
        .unwrap();
    assert!(matches!(o_sub.next().await, Event::Message(m) if m.event_id == 2));
    assert!(g_sub.quiet_for(200).await);
    // A resume on A from 0 reads the erased event as a marker (A's cached frame dropped).
    let mut resumed = Subscription::open(&mut a.client(owner).await)
        .await
        .unwrap();
    resumed.manage(&[], &[], &[(streams[0], 0)]);
    let (events, _) = resumed.until_caught_up(streams[0]).await;
    assert_eq!(
        shape(&events),
        vec![(1, 1, true, vec![]), (2, 2, false, b"after".to_vec())]
    );
    bsrv.stop().await;
    a.stop().await;
}
