//! Per-user rate limits: for every class, a burst is served, the next call is
//! RESOURCE_EXHAUSTED naming the class's keys with `retry-after-ms`, another user is
//! unaffected, and after the delay the same user is served again.
//!
//! Rate limits are checked before any storage is touched, so these run on SQLite only.

use std::future::Future;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use secretd::limits::RateClass;
use secretd::proto;
use tonic::{Code, Status};

use super::{no_rate_limits, pairs_of, rate_of, throttled};
use crate::common::*;

/// A server where only `class` is limited: one call per second after a burst of `burst`.
async fn server_limiting(class: RateClass, burst: u32) -> TestServer {
    TestServer::start_with(Backend::Sqlite, |s| {
        no_rate_limits(s);
        let (rate, b) = rate_of(s, class);
        (*rate, *b) = (1.0, burst);
    })
    .await
}

/// Clients of two users.
async fn two_users(server: &TestServer) -> [Client; 2] {
    [
        server.client(random_user()).await,
        server.client(random_user()).await,
    ]
}

/// Calls `call(who, n)` as user 0 until refused, then checks the refusal, that user 1
/// is served meanwhile, and that user 0 is served again after the delay. Returns the
/// number `n` of the refused call (user 0's calls 1 .. n-1 and n+1 were served).
async fn burst_then_refusal<F, Fut>(key: &str, burst: u64, mut call: F) -> u64
where
    F: FnMut(usize, u64) -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    let mut n = 0;
    let refusal = loop {
        n += 1;
        match call(0, n).await {
            // One call per second refills the allowance: a burst of calls is refused as
            // soon as it goes past `burst` (a little later on a very slow machine).
            Ok(()) => assert!(n <= burst + 5, "{key}: no refusal after {n} calls"),
            Err(status) => break status,
        }
    };
    assert!(
        n > burst,
        "{key}: refused after {} calls, the burst is {burst}",
        n - 1
    );
    let wait = throttled(&refusal, key);
    assert!(
        wait.as_millis() <= 1000,
        "{key}: one call per second: {wait:?}"
    );
    call(1, 1).await.expect("another user is not limited");
    tokio::time::sleep(wait).await;
    call(0, n + 1).await.expect("served again after the delay");
    n
}

fn ok<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

#[tokio::test]
async fn pair_creation_is_rate_limited() {
    let server = server_limiting(RateClass::Pairs, 3).await;
    let clients = two_users(&server).await;
    let refused = burst_then_refusal("rate_pairs_per_sec", 3, |who, _| {
        let mut c = clients[who].clone();
        async move {
            ok(
                c.generate_channel_pair(proto::GenerateChannelPairRequest {})
                    .await,
            )
        }
    })
    .await;
    // Nothing half-made: user 0 owns exactly the pairs they were told about.
    assert_eq!(
        pairs_of(&mut clients[0].clone()).await.len() as u64,
        refused
    );
    server.stop().await;
}

#[tokio::test]
async fn invites_are_rate_limited() {
    let server = server_limiting(RateClass::Invites, 3).await;
    let users = [random_user(), random_user()];
    let mut clients = Vec::new();
    let mut pairs = Vec::new();
    for &u in &users {
        let mut c = server.client(u).await;
        give_key(&mut c).await;
        pairs.push(new_pair(&mut c).await.pair_id);
        clients.push(c);
    }
    // Self-invites (a user's other devices): not capped, but rate limited like any invite.
    let refused = burst_then_refusal("rate_invites_per_sec", 3, |who, _| {
        let mut c = clients[who].clone();
        let req = proto::SendInviteRequest {
            pair_id: pairs[who].clone(),
            user_id: users[who],
            homeserver: String::new(),
            invite: b"keys for my other device".to_vec(),
            ..Default::default()
        };
        async move { ok(c.send_invite(req).await) }
    })
    .await;
    // The refused invite left no trace: the ids of the stored ones are dense.
    let invites = clients[0]
        .fetch_invites(proto::FetchInvitesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .invites;
    let ids: Vec<u64> = invites.iter().map(|i| i.invite_id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    assert_eq!(ids.len() as u64, refused);
    server.stop().await;
}

#[tokio::test]
async fn key_posts_are_rate_limited() {
    let server = server_limiting(RateClass::Keys, 3).await;
    let clients = two_users(&server).await;
    burst_then_refusal("rate_keys_per_sec", 3, |who, _| {
        let mut c = clients[who].clone();
        let key_data = key_pem(1);
        async move { ok(c.post_key(proto::PostKeyRequest { key_data }).await) }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn private_key_posts_are_rate_limited() {
    let server = server_limiting(RateClass::PrivateKeys, 3).await;
    let clients = two_users(&server).await;
    let refused = burst_then_refusal("rate_private_keys_per_sec", 3, |who, _| {
        let mut c = clients[who].clone();
        let req = proto::PostPrivateKeyRequest {
            key_data: b"sealed private key".to_vec(),
            expected_version: None,
        };
        async move { ok(c.post_private_key(req).await) }
    })
    .await;
    // Only the accepted posts made versions.
    let stored = clients[0]
        .clone()
        .fetch_private_key(proto::FetchPrivateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.version, refused);
    server.stop().await;
}

#[tokio::test]
async fn posts_are_rate_limited() {
    let server = server_limiting(RateClass::Posts, 3).await;
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut c = server.client(random_user()).await;
        streams.push(new_pair(&mut c).await.message_id);
        clients.push(c);
    }
    // Counter n for the n-th call: the refused post leaves a gap the next one may jump.
    let refused = burst_then_refusal("rate_posts_per_sec", 3, |who, n| {
        let mut c = clients[who].clone();
        let stream = streams[who].clone();
        async move { post(&mut c, &stream, n, b"ciphertext").await.map(|_| ()) }
    })
    .await;
    let events = fetch_all(&mut clients[0], &streams[0]).await;
    let counters: Vec<u64> = events
        .iter()
        .map(|e| e.message.as_ref().unwrap().id)
        .collect();
    let expected: Vec<u64> = (1..refused).chain([refused + 1]).collect();
    assert_eq!(
        counters, expected,
        "the refused post's counter was not stored"
    );
    server.stop().await;
}

#[tokio::test]
async fn history_reads_share_one_limit() {
    let server = server_limiting(RateClass::Reads, 5).await;
    let mut users = Vec::new();
    for _ in 0..2 {
        let u = random_user();
        let mut c = server.client(u).await;
        give_key(&mut c).await;
        let stream = new_pair(&mut c).await.message_id;
        users.push((u, c, stream));
    }
    // The seven read methods, in turn: all draw on the same allowance.
    let read = |c: &mut Client, user: u64, stream: String, n: u64| -> BoxFuture<'static, _> {
        let mut c = c.clone();
        match n % 7 {
            1 => async move {
                ok(c.fetch_messages(proto::FetchMessagesRequest {
                    stream_id: stream,
                    ..Default::default()
                })
                .await)
            }
            .boxed(),
            2 => async move { ok(c.fetch_invites(proto::FetchInvitesRequest::default()).await) }
                .boxed(),
            3 => async move {
                ok(
                    c.list_channel_pairs(proto::ListChannelPairsRequest::default())
                        .await,
                )
            }
            .boxed(),
            4 => async move {
                ok(c.fetch_key(proto::FetchKeyRequest {
                    user_id: user,
                    homeserver: String::new(),
                    known_tree_size: 0,
                })
                .await)
            }
            .boxed(),
            5 => async move { ok(c.get_tree_head(proto::GetTreeHeadRequest::default()).await) }
                .boxed(),
            6 => async move {
                ok(c.monitor_key(proto::MonitorKeyRequest {
                    user_id: user,
                    ..Default::default()
                })
                .await)
            }
            .boxed(),
            _ => async move {
                // Nothing stored: NOT_FOUND is a served read.
                match c.fetch_private_key(proto::FetchPrivateKeyRequest {}).await {
                    Err(s) if s.code() == Code::NotFound => Ok(()),
                    other => ok(other),
                }
            }
            .boxed(),
        }
    };
    burst_then_refusal("rate_reads_per_sec", 5, |who, n| {
        let (u, c, stream) = &mut users[who];
        read(c, *u, stream.clone(), n)
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn subscription_attempts_are_rate_limited() {
    let server = server_limiting(RateClass::Subscriptions, 3).await;
    let mut c = server.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    let third = new_pair(&mut c).await.message_id;
    // Opening the call is one attempt, each named stream one more.
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[&pair.message_id, &pair.state_id], &[], &[]);
    for _ in 0..2 {
        assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    }
    sub.manage(&[&third], &[], &[]);
    let refusal = match sub.next().await {
        Event::SubscriptionError(e) => e,
        other => panic!("expected a SubscriptionError, got {other:?}"),
    };
    assert_eq!(refusal.stream_id, third);
    assert_eq!(refusal.code, Code::ResourceExhausted as i32);
    assert!(
        refusal.message.contains("rate_subscriptions_per_sec"),
        "{refusal:?}"
    );
    assert!(refusal.message.contains("retry in"), "{refusal:?}");
    // Opening another call now is refused too, with the delay in the trailers.
    let refused = Subscription::open(&mut c).await.err().expect("refused");
    let wait = throttled(&refused, "rate_subscriptions_per_sec");
    // Another user subscribes freely.
    let mut other = server.client(random_user()).await;
    let theirs = new_pair(&mut other).await.message_id;
    let mut their_sub = Subscription::open(&mut other).await.unwrap();
    their_sub.manage(&[&theirs], &[], &[]);
    assert!(matches!(their_sub.next().await, Event::CaughtUp(_)));
    // The refused stream alone failed: the others are still live.
    post(&mut c, &pair.message_id, 1, b"still live")
        .await
        .unwrap();
    match sub.next().await {
        Event::Message(m) => assert_eq!(m.stream_id, pair.message_id),
        other => panic!("expected the live event, got {other:?}"),
    }
    tokio::time::sleep(wait).await;
    sub.manage(&[&third], &[], &[]);
    match sub.next().await {
        Event::CaughtUp(c) => assert_eq!(c.stream_id, third),
        other => panic!("expected CaughtUp after the delay, got {other:?}"),
    }
    server.stop().await;
}
