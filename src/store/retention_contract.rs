//! Store contract test of retention (run on both backends by `contract.rs`): a pair's
//! setting by its owner only, the streams a policy asks to sweep, and horizons that move
//! with their deletions, idempotently and never past the head.

use super::*;
use crate::store::retention::Retention;

/// Appends `n` events (counters 1..=n) at times 1..=n µs.
async fn fill(store: &DynStore, owner: UserId, stream: Uuid, n: i64) {
    for c in 1..=n {
        let post = AppendRequest {
            stream_id: stream,
            sender: owner.get(),
            sender_origin: None,
            counter: c,
            body: Bytes::from_static(b"x"),
        };
        let r = store.append_batch(&[post], 10, c).await.unwrap();
        assert!(matches!(r[..], [Ok(Appended::New { .. })]));
    }
}

async fn first_kept(store: &DynStore, owner: UserId, stream: Uuid) -> (i64, i64) {
    let page = store
        .fetch_events(
            owner,
            StreamId::trusted(stream),
            Page::After(0),
            100,
            unlimited(),
        )
        .await
        .unwrap();
    (page.first_event_id, page.events[0].event_id)
}

/// set_retention, sweep_targets, advance_horizon.
pub(super) async fn retention(store: &DynStore) {
    let (owner, other) = (user(), user());
    let ids = PairIds::generate();
    store.create_pair(owner, &ids, 1).await.unwrap();
    let stream = ids.message_id;
    fill(store, owner, stream, 10).await;
    let keep3 = Retention {
        max_age_secs: 0,
        max_events: 3,
    };
    let denied = store.set_retention(other, pair_id(&ids), keep3, 1).await;
    assert_eq!(code(denied), tonic::Code::PermissionDenied);
    store
        .set_retention(owner, pair_id(&ids), keep3, 1)
        .await
        .unwrap();
    let mine =
        |targets: Vec<retention::SweepTarget>| targets.into_iter().find(|t| t.stream == stream);
    let t = mine(
        store
            .sweep_targets(Retention::default(), 20, 100_000)
            .await
            .unwrap(),
    );
    assert_eq!(t.map(|t| (t.first, t.target)), Some((0, 8)));
    // A batch, then the same again (another replica): deleted once.
    assert_eq!(store.advance_horizon(stream, 0, 5).await.unwrap(), 4);
    assert_eq!(store.advance_horizon(stream, 0, 5).await.unwrap(), 0);
    assert_eq!(first_kept(store, owner, stream).await, (5, 5));
    // Never past the head.
    assert_eq!(store.advance_horizon(stream, 5, 11).await.unwrap(), 0);
    assert_eq!(first_kept(store, owner, stream).await, (5, 5));
    assert_eq!(store.advance_horizon(stream, 5, 8).await.unwrap(), 3);
    let t = mine(
        store
            .sweep_targets(Retention::default(), 20, 100_000)
            .await
            .unwrap(),
    );
    assert_eq!(t, None, "within its policy");
    // An age limit: everything expired but the head.
    let old = Retention {
        max_age_secs: 1,
        max_events: 0,
    };
    store
        .set_retention(owner, pair_id(&ids), old, 2)
        .await
        .unwrap();
    let t = mine(
        store
            .sweep_targets(Retention::default(), 10_000_000, 100_000)
            .await
            .unwrap(),
    );
    assert_eq!(t.map(|t| (t.first, t.target)), Some((8, 10)));
    // Not yet expired at time 20 µs.
    let t = mine(
        store
            .sweep_targets(Retention::default(), 20, 100_000)
            .await
            .unwrap(),
    );
    assert_eq!(t, None);
}
