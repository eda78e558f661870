//! Every page fits a stock client: FetchMessages, FetchInvites, FetchKey and
//! ListChannelPairs stop at `max_response_bytes` (always at least one item) and say
//! exactly whether more exist — on SQLite and Postgres.

use std::collections::BTreeMap;

use prost::Message;

use crate::common::*;
use secretd::proto::secret_service_client::SecretServiceClient;
use secretd::proto::*;
use tonic::Code;
use tonic::transport::Channel;

both_backends!(
    stock_client_pages_through_large_events,
    stock_client_pages_through_large_invites,
    an_item_larger_than_the_budget_comes_alone,
    list_channel_pairs_pages_through_2500_pairs,
    list_channel_pairs_stops_at_the_budget,
    list_channel_pairs_cursor_rejections,
    fetch_key_caps_past_keys,
    fetch_key_past_keys_stop_at_the_budget,
);

/// A stock gRPC client's receive limit (tonic, grpc-go, grpcio, @grpc/grpc-js).
const STOCK_LIMIT: usize = 4 * 1024 * 1024;
/// The size of each large event or invite.
const BIG: usize = 60 * 1024;
/// The default `max_response_bytes`.
const DEFAULT_BUDGET: usize = 3 * 1024 * 1024;

/// A client with the stock 4 MiB receive limit, stated explicitly so that the test does
/// not depend on the harness's defaults.
fn stock_client(channel: Channel, token: String) -> Client {
    SecretServiceClient::with_interceptor(channel, Bearer(Some(token)))
        .max_decoding_message_size(STOCK_LIMIT)
}

/// 60 KiB that differ for every `n`.
fn big_body(n: u64) -> Vec<u8> {
    let mut body = vec![(n % 251) as u8; BIG];
    body[..8].copy_from_slice(&n.to_be_bytes());
    body
}

fn fetch(stream: &str, after: u64, before: u64, limit: u32) -> FetchMessagesRequest {
    FetchMessagesRequest {
        stream_id: stream.into(),
        after_event_id: after,
        before_event_id: before,
        limit,
    }
}

/// Asserts that a response of `items` items stays within `budget` bytes on the wire (a
/// single item may exceed it: the first item always comes).
#[track_caller]
fn assert_within(response: &impl prost::Message, items: usize, budget: usize) {
    let wire = 5 + response.encoded_len();
    assert!(
        wire <= budget || items == 1,
        "{items} items take {wire} bytes, over the budget of {budget}"
    );
}

/// Walks a stream forward with `limit`, checking every page's `has_more` and size;
/// returns the event ids and bodies in the order received, and the number of pages.
async fn walk_forward(
    c: &mut Client,
    stream: &str,
    limit: u32,
    total: u64,
    budget: usize,
) -> (Vec<(u64, Vec<u8>)>, usize) {
    let mut got = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = c
            .fetch_messages(fetch(stream, after, 0, limit))
            .await
            .expect("a forward page fits the stock client")
            .into_inner();
        pages += 1;
        assert!(!page.messages.is_empty(), "a page holds at least one event");
        assert_within(&page, page.messages.len(), budget);
        assert_eq!(page.head_event_id, total);
        let last = page.messages.last().unwrap().event_id;
        assert_eq!(page.has_more, last < total, "has_more after event {last}");
        after = last;
        got.extend(
            page.messages
                .into_iter()
                .map(|m| (m.event_id, m.message.unwrap().message)),
        );
        if !page.has_more {
            return (got, pages);
        }
    }
}

/// Walks a stream backward from its end with `limit`; returns the events ascending.
async fn walk_backward(
    c: &mut Client,
    stream: &str,
    limit: u32,
    total: u64,
    budget: usize,
) -> (Vec<(u64, Vec<u8>)>, usize) {
    let mut pages_desc: Vec<Vec<(u64, Vec<u8>)>> = Vec::new();
    let mut before = u64::MAX;
    loop {
        let page = c
            .fetch_messages(fetch(stream, 0, before, limit))
            .await
            .expect("a backward page fits the stock client")
            .into_inner();
        assert!(!page.messages.is_empty(), "a page holds at least one event");
        assert_within(&page, page.messages.len(), budget);
        let ids: Vec<u64> = page.messages.iter().map(|m| m.event_id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending: {ids:?}");
        let first = ids[0];
        assert!(*ids.last().unwrap() < before.min(total + 1));
        assert_eq!(page.has_more, first > 1, "has_more before event {first}");
        before = first;
        pages_desc.push(
            page.messages
                .into_iter()
                .map(|m| (m.event_id, m.message.unwrap().message))
                .collect(),
        );
        if !page.has_more {
            let pages = pages_desc.len();
            return (pages_desc.into_iter().rev().flatten().collect(), pages);
        }
    }
}

async fn stock_client_pages_through_large_events(b: Backend) {
    const EVENTS: u64 = 100;
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = stock_client(s.channel().await, s.token(user));
    let pair = new_pair(&mut c).await;
    for n in 1..=EVENTS {
        let id = post(&mut c, &pair.message_id, n, &big_body(n))
            .await
            .expect("post");
        assert_eq!(id, n);
    }
    let expected: Vec<(u64, Vec<u8>)> = (1..=EVENTS).map(|n| (n, big_body(n))).collect();

    let (forward, pages) =
        walk_forward(&mut c, &pair.message_id, 1000, EVENTS, DEFAULT_BUDGET).await;
    assert_eq!(forward.len(), expected.len());
    assert!(forward == expected, "every event exactly once, in order");
    assert!(pages >= 2, "6 MB cannot come in one page");

    let (backward, pages) =
        walk_backward(&mut c, &pair.message_id, 1000, EVENTS, DEFAULT_BUDGET).await;
    assert!(
        backward == expected,
        "every event exactly once, scrolling back"
    );
    assert!(pages >= 2);

    // A small limit still applies, and the server is fine afterwards.
    let page = c
        .fetch_messages(fetch(&pair.message_id, 0, 0, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 10);
    assert!(page.has_more);
    s.stop().await;
}

/// An invite as the test compares it: (inviter, pair id, bytes).
type Invite = (u64, String, Vec<u8>);

/// Walks the caller's invites with `limit`, checking every page's `has_more` and size;
/// returns them by invite id, and the number of pages.
async fn walk_invites(
    c: &mut Client,
    limit: u32,
    total: u64,
    budget: usize,
) -> (BTreeMap<u64, Invite>, usize) {
    let mut got = BTreeMap::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = c
            .fetch_invites(FetchInvitesRequest {
                after_invite_id: after,
                limit,
            })
            .await
            .expect("an invite page fits the stock client")
            .into_inner();
        pages += 1;
        assert!(!page.invites.is_empty(), "a page holds at least one invite");
        assert_within(&page, page.invites.len(), budget);
        let last = page.invites.last().unwrap().invite_id;
        assert_eq!(page.has_more, last < total, "has_more after invite {last}");
        for i in page.invites {
            assert!(i.invite_id > after, "oldest first, after the cursor");
            after = i.invite_id;
            let pair = i.pair.unwrap().pair_id;
            assert!(
                got.insert(i.invite_id, (i.from_user, pair, i.invite))
                    .is_none()
            );
        }
        if !page.has_more {
            return (got, pages);
        }
    }
}

/// Sends `count` invites of 60 KiB to `invitee` (who has a key), each from a new inviter
/// with a pair of their own, so that no per-inviter cap applies; returns them by id.
async fn send_big_invites(
    s: &TestServer,
    channel: &Channel,
    invitee: u64,
    count: u64,
) -> BTreeMap<u64, Invite> {
    let mut sent = BTreeMap::new();
    for n in 1..=count {
        let inviter = random_user();
        let mut ci = stock_client(channel.clone(), s.token(inviter));
        let pair = new_pair(&mut ci).await;
        let id = ci
            .send_invite(SendInviteRequest {
                pair_id: pair.pair_id.clone(),
                user_id: invitee,
                homeserver: String::new(),
                invite: big_body(n),
                ..Default::default()
            })
            .await
            .expect("invite")
            .into_inner()
            .invite_id;
        sent.insert(id, (inviter, pair.pair_id, big_body(n)));
    }
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        (1..=count).collect::<Vec<_>>()
    );
    sent
}

async fn stock_client_pages_through_large_invites(b: Backend) {
    const INVITES: u64 = 80;
    let s = TestServer::start(b).await;
    let channel = s.channel().await;
    let invitee = random_user();
    let mut c = stock_client(channel.clone(), s.token(invitee));
    give_key(&mut c).await;
    let sent = send_big_invites(&s, &channel, invitee, INVITES).await;
    let (got, pages) = walk_invites(&mut c, 1000, INVITES, DEFAULT_BUDGET).await;
    assert!(got == sent, "every invite exactly once");
    assert!(pages >= 2, "4.8 MB cannot come in one page");
    s.stop().await;
}

async fn an_item_larger_than_the_budget_comes_alone(b: Backend) {
    const SMALL: usize = 16 * 1024;
    let s = TestServer::start_with(b, |st| st.max_response_bytes = SMALL).await;
    let channel = s.channel().await;
    let user = random_user();
    let mut c = stock_client(channel.clone(), s.token(user));
    give_key(&mut c).await;
    let pair = new_pair(&mut c).await;
    // Three events of 60 KiB (each alone over the budget), then ten of 1,000 bytes (which
    // share a page).
    let mut expected = Vec::new();
    for n in 1..=13u64 {
        let body = if n <= 3 {
            big_body(n)
        } else {
            vec![n as u8; 1000]
        };
        post(&mut c, &pair.message_id, n, &body)
            .await
            .expect("post");
        expected.push((n, body));
    }
    let (forward, pages) = walk_forward(&mut c, &pair.message_id, 1000, 13, SMALL).await;
    assert!(forward == expected);
    assert_eq!(
        pages, 4,
        "three large events alone, then the small ones together"
    );
    let (backward, pages) = walk_backward(&mut c, &pair.message_id, 1000, 13, SMALL).await;
    assert!(backward == expected);
    assert_eq!(
        pages, 4,
        "the small ones together, then three large events alone"
    );

    let sent = send_big_invites(&s, &channel, user, 3).await;
    let (got, pages) = walk_invites(&mut c, 1000, 3, SMALL).await;
    assert!(got == sent);
    assert_eq!(pages, 3, "one invite per page");
    s.stop().await;
}

/// Lists every pair of the caller with `limit`, checking each page's size, length and
/// `has_more`; returns the pairs in the order received and the number of pages.
async fn list_all(
    c: &mut Client,
    limit: u32,
    total: usize,
    budget: usize,
) -> (Vec<ChannelPairInfo>, usize) {
    let effective = match limit {
        0 => 100,
        n => n.min(1000) as usize,
    };
    let mut got: Vec<ChannelPairInfo> = Vec::new();
    let mut pages = 0;
    loop {
        let after = got
            .last()
            .map(|p| p.pair.as_ref().unwrap().pair_id.clone())
            .unwrap_or_default();
        let page = c
            .list_channel_pairs(ListChannelPairsRequest {
                after_pair_id: after,
                limit,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(!page.pairs.is_empty(), "a page holds at least one pair");
        assert!(page.pairs.len() <= effective);
        assert_within(&page, page.pairs.len(), budget);
        got.extend(page.pairs);
        assert_eq!(
            page.has_more,
            got.len() < total,
            "has_more after {}",
            got.len()
        );
        if !page.has_more {
            return (got, pages);
        }
    }
}

fn pair_ids(pairs: &[ChannelPairInfo]) -> Vec<String> {
    pairs
        .iter()
        .map(|p| p.pair.as_ref().unwrap().pair_id.clone())
        .collect()
}

async fn list_channel_pairs_pages_through_2500_pairs(b: Backend) {
    // Pairs are created in 100 waves of 25 concurrent calls: a wave starts when the one
    // before has finished, so the listing must show the waves in order (within a wave
    // the order is the server's: creation time, then pair id).
    const WAVES: usize = 100;
    const PER_WAVE: usize = 25;
    const TOTAL: usize = WAVES * PER_WAVE;
    // One user creates 2,500 pairs: far past the pair-creation rate limit.
    let s = TestServer::start_with(b, crate::limits::no_rate_limits).await;
    let user = random_user();
    let c = s.client(user).await;
    let mut wave_of = std::collections::HashMap::new();
    for wave in 0..WAVES {
        let pairs = futures_util::future::join_all((0..PER_WAVE).map(|_| {
            let mut c = c.clone();
            async move { new_pair(&mut c).await }
        }))
        .await;
        for p in pairs {
            wave_of.insert(p.pair_id, wave);
        }
    }
    let mut c = c;
    let mut listings = Vec::new();
    for (limit, expected_pages) in [(7, TOTAL.div_ceil(7)), (1000, 3), (0, 25), (5000, 3)] {
        let (pairs, pages) = list_all(&mut c, limit, TOTAL, DEFAULT_BUDGET).await;
        assert_eq!(pages, expected_pages, "limit {limit}");
        for p in &pairs {
            assert_eq!(p.owner, user);
            assert_eq!(p.members, vec![user]);
        }
        let ids = pair_ids(&pairs);
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            TOTAL,
            "every pair exactly once (limit {limit})"
        );
        let waves: Vec<usize> = ids.iter().map(|id| wave_of[id]).collect();
        assert!(
            waves.windows(2).all(|w| w[0] <= w[1]),
            "oldest first (limit {limit})"
        );
        listings.push(ids);
    }
    assert!(listings.windows(2).all(|w| w[0] == w[1]), "one order");
    s.stop().await;
}

async fn list_channel_pairs_stops_at_the_budget(b: Backend) {
    const SMALL: usize = 1024;
    let s = TestServer::start_with(b, |st| st.max_response_bytes = SMALL).await;
    let channel = s.channel().await;
    let user = random_user();
    let mut c = stock_client(channel.clone(), s.token(user));
    let mut created = Vec::new();
    for _ in 0..30 {
        created.push(new_pair(&mut c).await.pair_id);
    }
    // One pair with 130 members: its entry alone is over the budget.
    let crowded = created[14].clone();
    let crowd: Vec<u64> = (0..130).map(|_| random_user()).collect();
    for &member in &crowd {
        let mut cm = stock_client(channel.clone(), s.token(member));
        give_key(&mut cm).await;
        c.send_invite(SendInviteRequest {
            pair_id: crowded.clone(),
            user_id: member,
            homeserver: String::new(),
            invite: b"sealed".to_vec(),
            ..Default::default()
        })
        .await
        .expect("invite");
    }
    let (pairs, pages) = list_all(&mut c, 1000, 30, SMALL).await;
    assert_eq!(pair_ids(&pairs), created, "every pair once, oldest first");
    assert!(pages >= 5, "30 pairs do not fit 1 KiB: {pages} pages");
    let big = pairs
        .iter()
        .find(|p| p.pair.as_ref().unwrap().pair_id == crowded)
        .unwrap();
    let mut members = crowd.clone();
    members.push(user);
    members.sort_unstable();
    assert_eq!(big.members, members);
    // Its page holds it alone.
    let page = c
        .list_channel_pairs(ListChannelPairsRequest {
            after_pair_id: created[13].clone(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pair_ids(&page.pairs), vec![crowded]);
    assert!(page.has_more);
    s.stop().await;
}

async fn list_channel_pairs_cursor_rejections(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, other) = (random_user(), random_user());
    let mut c = s.client(user).await;
    let mut co = s.client(other).await;
    let mine: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(new_pair(&mut c).await.pair_id);
        }
        v
    };
    let theirs = new_pair(&mut co).await.pair_id;
    let list = |after: String| ListChannelPairsRequest {
        after_pair_id: after,
        limit: 0,
        ..Default::default()
    };
    for bad in ["not-a-uuid".to_string(), mine[0].to_uppercase()] {
        let st = expect_code(
            c.list_channel_pairs(list(bad.clone())).await,
            Code::InvalidArgument,
        );
        assert!(st.message().contains("after_pair_id"), "{bad}: {st:?}");
    }
    let unknown = expect_code(
        c.list_channel_pairs(list(uuid::Uuid::new_v4().to_string()))
            .await,
        Code::PermissionDenied,
    );
    assert!(unknown.message().contains("after_pair_id"), "{unknown:?}");
    let foreign = expect_code(
        c.list_channel_pairs(list(theirs)).await,
        Code::PermissionDenied,
    );
    assert_eq!(foreign.message(), unknown.message(), "leaks nothing");
    // Leaving the cursor's pair while paging: the same answer; starting over works.
    let page = c.list_channel_pairs(list(mine[0].clone())).await.unwrap();
    assert_eq!(pair_ids(&page.into_inner().pairs), mine[1..].to_vec());
    c.leave_channel_pair(LeaveChannelPairRequest {
        pair_id: mine[0].clone(),
    })
    .await
    .unwrap();
    let left = expect_code(
        c.list_channel_pairs(list(mine[0].clone())).await,
        Code::PermissionDenied,
    );
    assert_eq!(left.message(), unknown.message());
    let page = c
        .list_channel_pairs(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pair_ids(&page.pairs), mine[1..].to_vec());
    assert!(!page.has_more);
    // The last pair as cursor: an empty page, nothing more.
    let page = c
        .list_channel_pairs(list(mine[2].clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(page.pairs.is_empty());
    assert!(!page.has_more);
    s.stop().await;
}

/// The four key fixtures, oldest first: three 4096-bit keys and an 8192-bit one.
fn four_keys() -> Vec<Vec<u8>> {
    vec![
        key_pem(1),
        key_pem(2),
        key_pem(3),
        fixture_bytes("rsa8192.pub.pem"),
    ]
}

/// Posts `keys` in order as the client's user; returns their fingerprints, newest first.
async fn post_keys(c: &mut Client, keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut fingerprints = Vec::new();
    for k in keys {
        let r = c
            .post_key(PostKeyRequest {
                key_data: k.clone(),
            })
            .await
            .expect("post key")
            .into_inner();
        assert!(r.changed);
        fingerprints.insert(0, r.fingerprint);
    }
    fingerprints
}

async fn fetch_key(c: &mut Client, user: u64) -> FetchKeyResponse {
    c.fetch_key(FetchKeyRequest {
        user_id: user,
        homeserver: String::new(),
        known_tree_size: 0,
    })
    .await
    .expect("fetch key")
    .into_inner()
}

fn fingerprints(k: &FetchKeyResponse) -> (Vec<u8>, Vec<Vec<u8>>) {
    (
        k.current_key.as_ref().unwrap().fingerprint.clone(),
        k.past_keys.iter().map(|k| k.fingerprint.clone()).collect(),
    )
}

async fn fetch_key_caps_past_keys(b: Backend) {
    // Cap → (past keys returned of the three, more_past_keys).
    for (cap, returned, more) in [(0, 0, true), (2, 2, true), (3, 3, false), (100, 3, false)] {
        let s = TestServer::start_with(b.clone(), |st| st.max_past_keys = cap).await;
        let (user, reader) = (random_user(), random_user());
        let mut c = s.client(user).await;
        let fps = post_keys(&mut c, &four_keys()).await;
        let k = fetch_key(&mut s.client(reader).await, user).await;
        let (current, past) = fingerprints(&k);
        assert_eq!(current, fps[0], "cap {cap}");
        assert_eq!(
            past,
            fps[1..1 + returned].to_vec(),
            "newest first, cap {cap}"
        );
        assert_eq!(k.more_past_keys, more, "cap {cap}");
        // A user with one key has no past keys, whatever the cap.
        let single = random_user();
        post_keys(&mut s.client(single).await, &four_keys()[..1]).await;
        let k = fetch_key(&mut c, single).await;
        assert!(k.past_keys.is_empty());
        assert!(!k.more_past_keys, "cap {cap}");
        s.stop().await;
    }
}

async fn fetch_key_past_keys_stop_at_the_budget(b: Backend) {
    // The current key is the 8192-bit one (about 1,116 bytes on the wire), the three past
    // keys 4096-bit ones (about 604 bytes each), the rest of the response 7 bytes, and the
    // key transparency proof a few hundred bytes (a head of about 180, a map path of 34 a
    // level, about 95 per entry, one entry per key served): its size depends on how many
    // users share the log, so each page is checked against what would have fitted.
    let mut most = 0;
    for budget in [1024, 1500, 2300, 3200, 8192] {
        let s = TestServer::start_with(b.clone(), |st| st.max_response_bytes = budget).await;
        let user = random_user();
        let mut c = s.client(user).await;
        let fps = post_keys(&mut c, &four_keys()).await;
        let k = fetch_key(&mut c, user).await;
        let (current, past) = fingerprints(&k);
        let returned = past.len();
        assert_eq!(current, fps[0], "the current key always comes");
        assert_eq!(past, fps[1..1 + returned].to_vec(), "budget {budget}");
        assert_eq!(k.more_past_keys, returned < 3, "budget {budget}");
        assert_within(&k, 1 + returned, budget);
        if let Some(proof) = &k.proof {
            assert_eq!(proof.entries.len(), 1 + returned, "an entry per key served");
        }
        if returned < 3 {
            // One more past key (604 bytes) and its entry would not have fitted.
            assert!(
                5 + k.encoded_len() + 604 + 90 > budget,
                "budget {budget}: {} bytes with {returned} past keys",
                5 + k.encoded_len()
            );
        }
        assert!(returned >= most, "a larger budget serves as many keys");
        most = returned;
        s.stop().await;
    }
    assert_eq!(most, 3);
}

#[tokio::test]
async fn budget_keys_have_environment_twins_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secretd"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("SECRETD_JWT_SECRET", SECRET)
        .env("SECRETD_MAX_RESPONSE_BYTES", "100")
        .output()
        .expect("run secretd");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_response_bytes is 100"), "{err}");

    let mut p = spawn_binary(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("SECRETD_JWT_SECRET", SECRET),
            ("SECRETD_MAX_RESPONSE_BYTES", "1700"),
            ("SECRETD_MAX_PAST_KEYS", "0"),
        ],
        dir.path(),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let user = random_user();
    let mut c = stock_client(channel, token(user, 60));
    // max_past_keys = 0: no past key, although two would fit 1,700 bytes.
    let fps = post_keys(&mut c, &four_keys()[..2]).await;
    let k = fetch_key(&mut c, user).await;
    assert_eq!(fingerprints(&k), (fps[0].clone(), vec![]));
    assert!(k.more_past_keys);
    // max_response_bytes = 1,700: events of 1,000 bytes come one per page.
    let pair = new_pair(&mut c).await;
    for n in 1..=2 {
        post(&mut c, &pair.message_id, n, &[1u8; 1000])
            .await
            .expect("post");
    }
    let page = c
        .fetch_messages(fetch(&pair.message_id, 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    assert!(page.has_more);
    p.child.kill().await.unwrap();
}
