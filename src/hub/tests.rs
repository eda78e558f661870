//! Unit tests of the hub.

use super::*;
use crate::domain::UserId;
use bytes::Bytes;

fn hub() -> Arc<Hub> {
    hub_with_budget(1 << 20)
}

/// A hub of 4-event rings sharing `budget` bytes, never shut down.
fn hub_with_budget(budget: usize) -> Arc<Hub> {
    Hub::new(4, budget, crate::shutdown::channel().1)
}

/// The encoded size of the test events.
fn frame_len() -> usize {
    Frame::encode(&event(Uuid::new_v4(), 1), 0).bytes.len()
}

/// A stored event with a 100-byte body (also used by the streaming unit tests).
pub(crate) fn event(stream: Uuid, id: i64) -> StoredEvent {
    StoredEvent {
        stream_id: stream,
        event_id: id,
        counter: id,
        sender: 1,
        sender_origin: None,
        posted_at: 0,
        body: Bytes::from(vec![id as u8; 100]),
    }
}

#[tokio::test]
async fn one_encoding_is_shared_by_every_watcher() {
    let hub = hub();
    let stream = Uuid::new_v4();
    let g1 = hub.register(UserId::trusted(1), 10).unwrap();
    let g2 = hub.register(UserId::trusted(2), 10).unwrap();
    let s1 = hub.watch(g1.connection(), stream);
    let s2 = hub.watch(g2.connection(), stream);
    hub.publish_committed([(&event(stream, 1), 0), (&event(stream, 2), 0)]);
    let (Read::Frames(a), Read::Frames(b)) = (s1.read_after(0, 10), s2.read_after(0, 10)) else {
        panic!("frames expected");
    };
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            x.bytes.0.as_ptr(),
            y.bytes.0.as_ptr(),
            "same buffer, encoded once"
        );
    }
    // Both connections were woken for the stream.
    for g in [&g1, &g2] {
        let mut live = StreamSet::default();
        g.connection().swap_live(&mut live);
        assert!(live.contains(&stream));
    }
}

#[tokio::test]
async fn the_ring_is_bounded_and_gaps_send_readers_to_the_database() {
    let hub = hub();
    let stream = Uuid::new_v4();
    let g = hub.register(UserId::trusted(1), 10).unwrap();
    let slot = hub.watch(g.connection(), stream);
    let events: Vec<StoredEvent> = (1..=10).map(|i| event(stream, i)).collect();
    hub.publish_committed(events.iter().map(|e| (e, 0)));
    // Ring of 4: events 7..=10 are in memory, a cursor before that reads the database.
    assert!(matches!(
        slot.read_after(2, 10),
        Read::FromDatabase { head: 10 }
    ));
    let Read::Frames(f) = slot.read_after(6, 10) else {
        panic!()
    };
    assert_eq!(
        f.iter().map(|f| f.event_id).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    assert!(matches!(slot.read_after(10, 10), Read::UpToDate));
    // A gap (events 11..=12 committed elsewhere, unseen) empties the ring.
    hub.publish_committed([(&event(stream, 13), 0)]);
    assert!(matches!(
        slot.read_after(10, 10),
        Read::FromDatabase { head: 13 }
    ));
    // Re-publishing old events changes nothing.
    hub.publish_committed([(&event(stream, 12), 0)]);
    assert_eq!(slot.head(), 13);
    // The slot goes with its last watcher.
    drop(slot);
    assert!(!hub.is_watched(&stream));
}

#[tokio::test]
async fn connection_limit_is_per_user() {
    let hub = hub();
    let a = hub.register(UserId::trusted(7), 2).unwrap();
    let _b = hub.register(UserId::trusted(7), 2).unwrap();
    assert!(hub.register(UserId::trusted(7), 2).is_none());
    assert!(hub.register(UserId::trusted(8), 2).is_some());
    drop(a);
    assert!(hub.register(UserId::trusted(7), 2).is_some());
}

#[tokio::test]
async fn a_watch_racing_the_last_unwatch_joins_a_live_slot() {
    let hub = hub();
    let stream = Uuid::new_v4();
    let old = hub.register(UserId::trusted(1), 10).unwrap();
    let new = hub.register(UserId::trusted(1), 10).unwrap();
    let old_slot = hub.watch(old.connection(), stream);
    // A reconnect: the new call subscribes while the old one (the stream's last watcher)
    // tears down, exactly between the new watch taking the slot and joining it.
    *lock(&hub.watch_hook) = Some(Box::new(move || drop(old_slot)));
    let slot = hub.watch(new.connection(), stream);
    assert!(hub.is_watched(&stream), "the stream is still watched");
    hub.publish_committed([(&event(stream, 1), 0)]);
    let mut live = StreamSet::default();
    new.connection().swap_live(&mut live);
    assert!(live.contains(&stream), "the new watcher is woken");
    let Read::Frames(f) = slot.read_after(0, 10) else {
        panic!("the new watcher's slot receives what is published")
    };
    assert_eq!(f.len(), 1);
}

fn ring_bytes(slot: &Slot) -> usize {
    lock(&slot.state).ring.bytes()
}

fn ids(read: Read) -> Vec<i64> {
    match read {
        Read::Frames(f) => f.iter().map(|f| f.event_id).collect(),
        other => panic!("frames expected, got {other:?}"),
    }
}

#[tokio::test]
async fn rings_share_a_global_byte_budget() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let len = frame_len();
    // Room for three frames in all rings together.
    let hub = hub_with_budget(3 * len);
    let g = hub.register(UserId::trusted(1), 10).unwrap();
    let wa = hub.watch(g.connection(), a);
    let wb = hub.watch(g.connection(), b);
    hub.publish_committed([(&event(a, 1), 0), (&event(a, 2), 0)]);
    hub.publish_committed([(&event(b, 1), 0)]);
    assert_eq!(hub.budget.used(), 3 * len);
    assert_eq!(ids(wa.read_after(0, 10)), vec![1, 2]);
    // The budget is spent: b's next frame is kept only by giving up b's older ones.
    hub.publish_committed([(&event(b, 2), 0)]);
    assert_eq!(wb.head(), 2, "the head still moves");
    assert_eq!(ids(wb.read_after(1, 10)), vec![2]);
    assert!(matches!(
        wb.read_after(0, 10),
        Read::FromDatabase { head: 2 }
    ));
    assert_eq!(
        ids(wa.read_after(0, 10)),
        vec![1, 2],
        "other rings keep theirs"
    );
    assert_eq!(hub.budget.used(), ring_bytes(&wa) + ring_bytes(&wb));
    assert!(hub.budget.used() <= 3 * len);
    // Dropping a watch gives its ring's bytes back.
    drop(wa);
    assert_eq!(hub.budget.used(), len);
    drop(wb);
    assert_eq!(hub.budget.used(), 0);
}

#[tokio::test]
async fn a_frame_larger_than_the_budget_is_not_kept_and_readers_go_to_the_database() {
    let s = Uuid::new_v4();
    let hub = hub_with_budget(frame_len() - 1);
    let g = hub.register(UserId::trusted(1), 10).unwrap();
    let w = hub.watch(g.connection(), s);
    hub.publish_committed([(&event(s, 1), 0), (&event(s, 2), 0)]);
    assert_eq!(hub.budget.used(), 0);
    assert!(matches!(
        w.read_after(0, 10),
        Read::FromDatabase { head: 2 }
    ));
    assert!(matches!(
        w.read_after(1, 10),
        Read::FromDatabase { head: 2 }
    ));
    assert!(matches!(w.read_after(2, 10), Read::UpToDate));
    let mut live = StreamSet::default();
    g.connection().swap_live(&mut live);
    assert!(live.contains(&s), "watchers are still woken");
}

#[tokio::test]
async fn frames_from_before_an_erasure_are_not_cached_after_it() {
    let hub = hub();
    let stream = Uuid::new_v4();
    let g = hub.register(UserId::trusted(1), 10).unwrap();
    let w = hub.watch(g.connection(), stream);
    hub.publish_committed([(&event(stream, 1), 3)]);
    // The erasure (epoch 4) is applied before event 2, appended at epoch 3, is published.
    hub.forget_frames(&stream, 4);
    assert!(matches!(
        w.read_after(0, 10),
        Read::FromDatabase { head: 1 }
    ));
    hub.publish_committed([(&event(stream, 2), 3)]);
    let from_database = |cursor| matches!(w.read_after(cursor, 10), Read::FromDatabase { head: 2 });
    assert!(from_database(0) && from_database(1));
    // Later events are cached again.
    hub.publish_committed([(&event(stream, 3), 4)]);
    assert!(matches!(w.read_after(2, 10), Read::Frames(f) if f.len() == 1));
}
