//! Store contract tests: the [`Store`] trait called directly on both backends, one test
//! per shared method (the SQL of `sql.rs`), each asserting the same answers on SQLite and
//! on Postgres. Postgres runs when `DATABASE_URL` is set (users are random, so runs
//! share the database).

use std::sync::atomic::{AtomicI64, Ordering};

use super::*;
use crate::error::Error;
use crate::keycheck::{CanonicalKey, canonicalize};

/// A store on a fresh SQLite file (kept alive by the returned directory).
async fn sqlite() -> (DynStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("contract.db").display());
    (open(&url, 2, Uuid::new_v4()).await.unwrap(), dir)
}

/// A store on the Postgres of `DATABASE_URL`, or None when it is not set.
async fn postgres() -> Option<DynStore> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    Some(open(&url, 2, Uuid::new_v4()).await.unwrap())
}

/// A user id no other test run uses.
fn user() -> UserId {
    static NEXT: AtomicI64 = AtomicI64::new(0);
    let base = i64::from(rand::random::<u32>()) * 1_000_000;
    UserId::trusted(3_000_000_000_000 + base + NEXT.fetch_add(1, Ordering::Relaxed))
}

fn key(fixture: &str) -> CanonicalKey {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    canonicalize(&std::fs::read(path).unwrap()).unwrap()
}

fn pair_id(ids: &PairIds) -> PairId {
    PairId::parse("pair_id", &ids.pair_id.hyphenated().to_string()).unwrap()
}

fn unlimited<T>() -> Budget<T> {
    Budget::new(usize::MAX, |_| 1)
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> tonic::Code {
    r.map(|v| panic!("expected an error, got {v:?}"))
        .unwrap_err()
        .code()
}

/// Runs `$name(store)` as `sqlite::$name` and `postgres::$name`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _dir) = super::sqlite().await;
                    super::$name(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
                async fn $name() {
                    if let Some(store) = super::postgres().await {
                        super::$name(&store).await;
                    }
                }
            )*
        }
    };
}

on_both!(
    public_keys,
    private_keys,
    invites,
    pairs_and_membership,
    stream_access,
    foreign_users,
    retention
);

#[path = "retention_contract.rs"]
mod retention_contract;
use retention_contract::retention;

/// post_public_key, fetch_public_keys (newest first, limit, has_more), a retired key.
async fn public_keys(store: &DynStore) {
    let u = user();
    assert!(
        store
            .fetch_public_keys(u, 10, unlimited())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let (a, b) = (key("rsa4096_1.pub.pem"), key("rsa4096_2.pub.pem"));
    let changed = store.post_public_key(u, &a, 1).await.unwrap();
    assert_eq!(changed, PostKeyOutcome::Changed);
    assert_eq!(
        store.post_public_key(u, &a, 2).await.unwrap(),
        PostKeyOutcome::Unchanged
    );
    store.post_public_key(u, &b, 3).await.unwrap();
    let page = store.fetch_public_keys(u, 10, unlimited()).await.unwrap();
    let fingerprints: Vec<_> = page.items.iter().map(|k| k.fingerprint.clone()).collect();
    assert_eq!(
        fingerprints,
        [b.fingerprint.to_vec(), a.fingerprint.to_vec()]
    );
    assert_eq!(page.items[0].posted_at, 3);
    assert_eq!(page.items[0].spki_der, b.spki_der);
    assert!(!page.has_more);
    let first = store.fetch_public_keys(u, 1, unlimited()).await.unwrap();
    assert_eq!(first.items.len(), 1);
    assert!(first.has_more);
    assert_eq!(
        code(store.post_public_key(u, &a, 4).await),
        tonic::Code::AlreadyExists
    );
}

/// post_private_key (compare-and-set), fetch_private_key.
async fn private_keys(store: &DynStore) {
    let u = user();
    assert_eq!(store.fetch_private_key(u).await.unwrap(), None);
    assert_eq!(
        store.post_private_key(u, b"one", Some(0), 1).await.unwrap(),
        1
    );
    assert_eq!(
        code(store.post_private_key(u, b"two", Some(0), 2).await),
        tonic::Code::Aborted
    );
    assert_eq!(
        store.post_private_key(u, b"two", Some(1), 2).await.unwrap(),
        2
    );
    assert_eq!(
        store.post_private_key(u, b"three", None, 3).await.unwrap(),
        3
    );
    assert_eq!(
        store.fetch_private_key(u).await.unwrap(),
        Some((b"three".to_vec(), 3))
    );
}

/// send_invite (key needed, caps), fetch_invites (cursor, limit), last_invite_id.
async fn invites(store: &DynStore) {
    let (owner, invitee, stranger) = (user(), user(), user());
    let ids = PairIds::generate();
    let pair = pair_id(&ids);
    store.create_pair(owner, &ids, 1).await.unwrap();
    let caps = InviteCaps::default();
    assert_eq!(
        code(store.send_invite(owner, pair, invitee, b"x", 2, caps).await),
        tonic::Code::FailedPrecondition,
        "an invitee without a key"
    );
    store
        .post_public_key(invitee, &key("rsa4096_3.pub.pem"), 2)
        .await
        .unwrap();
    assert_eq!(
        code(
            store
                .send_invite(stranger, pair, invitee, b"x", 2, caps)
                .await
        ),
        tonic::Code::PermissionDenied,
        "an inviter who is not a member"
    );
    assert_eq!(store.last_invite_id(invitee).await.unwrap(), 0);
    for n in 1..=3u8 {
        let sent = store
            .send_invite(owner, pair, invitee, &[n], i64::from(n), caps)
            .await
            .unwrap();
        assert_eq!(sent.invite_id, i64::from(n));
        assert_eq!(sent.pair, ids);
    }
    let capped = InviteCaps {
        pending_per_sender: 3,
        members_per_pair: 0,
    };
    assert_eq!(
        code(
            store
                .send_invite(owner, pair, invitee, b"x", 4, capped)
                .await
        ),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(store.last_invite_id(invitee).await.unwrap(), 3);
    let page = store
        .fetch_invites(invitee, 1, 1, unlimited())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.has_more);
    let i = &page.items[0];
    assert_eq!((i.invite_id, i.from_user, i.sent_at), (2, owner.get(), 2));
    assert_eq!((i.pair, i.body.as_slice()), (ids, &[2u8][..]));
    let rest = store
        .fetch_invites(invitee, 2, 10, unlimited())
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(!rest.has_more);
}

/// list_pairs (cursor), leave_pair, remove_member: who may, and what they get.
async fn pairs_and_membership(store: &DynStore) {
    let (owner, member, other) = (user(), user(), user());
    let first = PairIds::generate();
    let second = PairIds::generate();
    store.create_pair(owner, &first, 1).await.unwrap();
    store.create_pair(owner, &second, 2).await.unwrap();
    store
        .post_public_key(member, &key("rsa4096_1.pub.pem"), 2)
        .await
        .unwrap();
    let (p1, p2) = (pair_id(&first), pair_id(&second));
    for p in [p1, p2] {
        store
            .send_invite(owner, p, member, b"x", 3, InviteCaps::default())
            .await
            .unwrap();
    }
    let all = store
        .list_pairs(owner, None, false, 10, unlimited())
        .await
        .unwrap();
    let listed: Vec<_> = all.items.iter().map(|p| p.ids).collect();
    assert_eq!(listed, [first, second]);
    let mut members = vec![owner.get(), member.get()];
    members.sort();
    assert_eq!(all.items[0].members, members);
    assert_eq!(all.items[0].owner, owner.get());
    let after = store
        .list_pairs(owner, Some(p1), false, 10, unlimited())
        .await
        .unwrap();
    assert_eq!(after.items.len(), 1);
    assert_eq!(after.items[0].ids, second);
    assert_eq!(
        code(
            store
                .list_pairs(other, Some(p1), false, 10, unlimited())
                .await
        ),
        tonic::Code::PermissionDenied,
        "a cursor the caller is not a member of"
    );

    // Removal: only the owner, only members, never oneself.
    assert_eq!(
        code(store.remove_member(member, p1, owner, 4).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(store.remove_member(owner, p1, other, 4).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(store.remove_member(owner, p1, owner, 4).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        store.remove_member(owner, p1, member, 4).await.unwrap(),
        first
    );
    assert_eq!(
        code(store.leave_pair(member, p1, 5).await),
        tonic::Code::PermissionDenied
    );

    // Leaving: the owner's pair passes to the remaining member.
    assert_eq!(store.leave_pair(owner, p2, 5).await.unwrap(), second);
    let left = store
        .list_pairs(member, None, false, 10, unlimited())
        .await
        .unwrap();
    assert_eq!(left.items.len(), 1);
    assert_eq!(left.items[0].owner, member.get());
    assert_eq!(left.items[0].members, [member.get()]);
    assert_eq!(left.items[0].departed, None);

    // Departures: listed only when asked, in pair order, with who and when, and nothing
    // about the pair's members; the cursor may be a departed pair then, only then.
    let with_departed = |u: UserId, after: Option<PairId>| {
        let store = store.clone();
        async move {
            store
                .list_pairs(u, after, true, 10, unlimited())
                .await
                .unwrap()
                .items
        }
    };
    let member_view = with_departed(member, None).await;
    assert_eq!(member_view.len(), 2);
    assert_eq!(member_view[0].ids, first);
    assert_eq!(
        member_view[0].departed,
        Some(Departure {
            removed_by: Some(owner.get()),
            at: 4
        })
    );
    assert_eq!((member_view[0].owner, member_view[0].members.len()), (0, 0));
    assert_eq!(member_view[1].departed, None);
    let owner_view = with_departed(owner, None).await;
    assert_eq!(
        owner_view.len(),
        2,
        "the owner's pairs, both departed or not"
    );
    assert_eq!(owner_view[0].departed, None);
    assert_eq!(
        owner_view[1].departed,
        Some(Departure {
            removed_by: None,
            at: 5
        })
    );
    assert_eq!(with_departed(member, Some(p1)).await.len(), 1);
    assert_eq!(
        code(
            store
                .list_pairs(member, Some(p1), false, 10, unlimited())
                .await
        ),
        tonic::Code::PermissionDenied,
        "a departed pair is a cursor only when departed pairs are listed"
    );
    assert!(with_departed(other, None).await.is_empty());

    // Invited back, the user is a member again and the departure is not listed.
    assert_eq!(
        code(
            store
                .send_invite(member, p2, owner, b"y", 6, InviteCaps::default())
                .await
        ),
        tonic::Code::FailedPrecondition,
        "no key posted yet: refused, and the departure stays"
    );
    assert_eq!(with_departed(owner, None).await[1].departed.unwrap().at, 5);
    store
        .post_public_key(owner, &key("rsa4096_2.pub.pem"), 6)
        .await
        .unwrap();
    store
        .send_invite(member, p2, owner, b"y", 7, InviteCaps::default())
        .await
        .unwrap();
    let back = with_departed(owner, None).await;
    assert_eq!(back.len(), 2);
    assert_eq!(back[1].departed, None);
    assert_eq!(back[1].members.len(), 2);
    // Leaving again replaces the earlier departure.
    store.leave_pair(owner, p2, 8).await.unwrap();
    assert_eq!(
        with_departed(owner, None).await[1].departed,
        Some(Departure {
            removed_by: None,
            at: 8
        })
    );
}

/// stream_access: members see the head and epoch; others, and unknown streams, are
/// refused alike.
async fn stream_access(store: &DynStore) {
    let (owner, other) = (user(), user());
    let ids = PairIds::generate();
    store.create_pair(owner, &ids, 1).await.unwrap();
    let stream = StreamId::trusted(ids.message_id);
    let access = store.stream_access(owner, stream).await.unwrap();
    assert_eq!(access.head_event_id, 0);
    let appended = store
        .append_batch(
            &[AppendRequest {
                stream_id: ids.message_id,
                sender: owner.get(),
                sender_origin: None,
                counter: 1,
                body: Bytes::from_static(b"x"),
            }],
            10,
            2,
        )
        .await
        .unwrap();
    assert!(matches!(appended[..], [Ok(Appended::New { .. })]));
    let access = store.stream_access(owner, stream).await.unwrap();
    assert_eq!(access.head_event_id, 1);
    let denied: Error = store.stream_access(other, stream).await.unwrap_err();
    let unknown = store
        .stream_access(owner, StreamId::trusted(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(denied.to_string(), unknown.to_string(), "nothing leaks");
}

/// foreign_user (one id per (homeserver, user), negative, stable), add_member and
/// check_new_member, deliver_invite (idempotent, merged with local invites by id), and
/// the names read back with events, invites and pair listings.
async fn foreign_users(store: &DynStore) {
    let n = user().get();
    let who = |hs: &str, u: i64| Foreign {
        homeserver: hs.into(),
        user: UserId::trusted(u),
    };
    let (bob, bob_on_c) = (who("b.test", n), who("c.test", n));
    assert_eq!(store.foreign_user(&bob).await.unwrap(), None);

    let (owner, stranger) = (user(), user());
    let ids = PairIds::generate();
    let pair = pair_id(&ids);
    store.create_pair(owner, &ids, 1).await.unwrap();
    let caps = InviteCaps {
        pending_per_sender: 0,
        members_per_pair: 2,
    };
    assert_eq!(
        code(store.check_new_member(stranger, pair, &bob, caps).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(store.add_member(stranger, pair, &bob, caps, 2).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        store.foreign_user(&bob).await.unwrap(),
        None,
        "no id for a refused member"
    );
    assert_eq!(
        store
            .check_new_member(owner, pair, &bob, caps)
            .await
            .unwrap(),
        ids
    );
    assert_eq!(store.foreign_user(&bob).await.unwrap(), None);
    let (added, b) = store.add_member(owner, pair, &bob, caps, 2).await.unwrap();
    assert_eq!(added, ids);
    assert!(b.is_foreign(), "{b}");
    assert_eq!(store.foreign_user(&bob).await.unwrap(), Some(b));
    let (_, again) = store.add_member(owner, pair, &bob, caps, 3).await.unwrap(); // already one
    assert_eq!(again, b, "one id per (homeserver, user), stable");
    assert_eq!(
        code(store.add_member(owner, pair, &bob_on_c, caps, 3).await),
        tonic::Code::ResourceExhausted,
        "the member cap counts foreign members"
    );
    assert_eq!(store.foreign_user(&bob_on_c).await.unwrap(), None);
    // User n of c is another user than user n of b.
    let ids2 = PairIds::generate();
    store.create_pair(owner, &ids2, 100).await.unwrap();
    let (_, c) = store
        .add_member(owner, pair_id(&ids2), &bob_on_c, caps, 3)
        .await
        .unwrap();
    assert!(
        c.is_foreign() && c != b,
        "user {n} of b and of c are two users"
    );
    let listed = store
        .list_pairs(owner, None, false, 10, unlimited())
        .await
        .unwrap();
    assert_eq!(listed.items[0].members, vec![b.get(), owner.get()]);
    assert_eq!(listed.items[0].foreign, vec![(b.get(), bob.clone())]);

    // The foreign member posts; the event names them, read back or fresh.
    let post = AppendRequest {
        stream_id: ids.message_id,
        sender: b.get(),
        sender_origin: Some(bob.clone()),
        counter: 1,
        body: bytes::Bytes::from_static(b"hi"),
    };
    let appended = store.append_batch(&[post], 10, 4).await.unwrap();
    match appended.into_iter().next().unwrap().unwrap() {
        Appended::New { event, .. } => assert_eq!(event.sender_origin, Some(bob.clone())),
        other => panic!("{other:?}"),
    }
    let stream = StreamId::trusted(ids.message_id);
    let page = store
        .fetch_events(owner, stream, Page::After(0), 10, unlimited())
        .await
        .unwrap();
    assert_eq!(page.events[0].sender, b.get());
    assert_eq!(page.events[0].sender_origin, Some(bob.clone()));
    let run = store.read_events(stream, 0, 1, 10).await.unwrap();
    assert_eq!(run.events[0].sender_origin, Some(bob.clone()));

    // A local user's inbox: an invite from the foreign member into our pair, then one
    // delivered by b.test into its own pair, then the same delivery again.
    let invitee = user();
    store
        .post_public_key(invitee, &key("rsa4096_3.pub.pem"), 5)
        .await
        .unwrap();
    let local = store
        .send_invite(b, pair, invitee, b"ours", 5, InviteCaps::default())
        .await
        .unwrap();
    assert_eq!(local.invite_id, 1);
    let remote_pair = PairIds::generate();
    let off = DeliveryCaps::default();
    let first = store
        .deliver_invite(
            invitee,
            Delivery {
                pair_homeserver: "b.test",
                pair: &remote_pair,
                from: Inviter::Foreign(&bob),
                body: b"theirs",
            },
            6,
            off,
        )
        .await
        .unwrap();
    assert_eq!(first.from_user, b.get());
    let again = store
        .deliver_invite(
            invitee,
            Delivery {
                pair_homeserver: "b.test",
                pair: &remote_pair,
                from: Inviter::Foreign(&bob),
                body: b"theirs",
            },
            7,
            off,
        )
        .await
        .unwrap();
    assert_eq!((first.invite_id, again.invite_id, again.sent_at), (2, 2, 6));
    let other = store
        .deliver_invite(
            invitee,
            Delivery {
                pair_homeserver: "b.test",
                pair: &remote_pair,
                from: Inviter::Foreign(&bob),
                body: b"other bytes",
            },
            8,
            DeliveryCaps::default(),
        )
        .await
        .unwrap();
    assert_eq!(other.invite_id, 3);
    assert_eq!(store.last_invite_id(invitee).await.unwrap(), 3);
    let inbox = store
        .fetch_invites(invitee, 0, 10, unlimited())
        .await
        .unwrap();
    let seen: Vec<_> = inbox
        .items
        .iter()
        .map(|i| {
            (
                i.invite_id,
                i.pair.pair_id,
                i.pair_homeserver.as_str(),
                i.from_origin.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, ids.pair_id, "", Some(bob.clone())),
            (2, remote_pair.pair_id, "b.test", Some(bob.clone())),
            (3, remote_pair.pair_id, "b.test", Some(bob.clone())),
        ]
    );
    assert_eq!(inbox.items[1].pair, remote_pair);
    let paged = store
        .fetch_invites(invitee, 1, 1, unlimited())
        .await
        .unwrap();
    assert_eq!((paged.items[0].invite_id, paged.has_more), (2, true));

    // The caps on delivered invites: 2 pending per invitee, 3 per peer, pending for 10 s.
    let caps = DeliveryCaps {
        per_invitee: 2,
        per_peer: 3,
        window_micros: 10_000_000,
    };
    let peer = format!("caps{n}.test");
    let (x, y) = (user(), user());
    let deliver = |to: UserId, body: &'static [u8], now: i64| {
        let (store, peer, bob) = (store.clone(), peer.clone(), bob.clone());
        async move {
            store
                .deliver_invite(
                    to,
                    Delivery {
                        pair_homeserver: &peer,
                        pair: &remote_pair,
                        from: Inviter::Foreign(&bob),
                        body,
                    },
                    now,
                    caps,
                )
                .await
        }
    };
    deliver(x, b"1", 1_000_000).await.unwrap();
    deliver(x, b"2", 2_000_000).await.unwrap();
    let refused = deliver(x, b"3", 3_000_000).await.unwrap_err();
    let Error::Throttled {
        message,
        retry_after_ms,
    } = refused
    else {
        panic!("{refused:?}");
    };
    assert_eq!(retry_after_ms, 8_000, "the first stops counting at 11 s");
    assert!(
        message.contains("max_delivered_invites_per_invitee"),
        "{message}"
    );
    // A repeated delivery is still answered, over the cap.
    assert_eq!(
        deliver(x, b"2", 3_000_000).await.unwrap().sent_at,
        2_000_000
    );
    deliver(y, b"1", 3_000_000).await.unwrap();
    let refused = deliver(y, b"2", 4_000_000).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("max_delivered_invites_per_peer"),
        "{refused}"
    );
    // Past the window the first ones no longer count.
    deliver(x, b"3", 12_000_000).await.unwrap();
}
