//! The retention horizon, attacked (DESIGN §11, §13; docs/e2ee.md on
//! `history_starts_at`). When the server says history was removed (`history_starts_at`
//! above the reader's cursor + 1) the reader shows a "history before event N was removed"
//! notice and lets the first kept event move its ratchet by `max_gap` per removed event
//! (and for itself), within 2^22 steps in all. The server writes that horizon, so:
//!
//! - A far horizon (2^40 events "removed") followed by an event 2^26 steps ahead does not
//!   make the reader hash for long: the event is refused at the 2^22 cap, at once, and
//!   the reader's chain state stays where it was; honest events go on decrypting.
//! - The cap is exact: a real sender driven (by the server's refusal trailer) 2^22
//!   counters ahead posts twice; served first after a horizon, its event 2^22 + 1 ahead
//!   is refused, and (after another horizon) its event exactly 2^22 ahead is accepted.
//! - Events deleted in the middle of a stream, the horizon left where it was, are no
//!   retention: no retention notice; each hole is reported as events the server withheld
//!   or deleted (event ids are dense on an honest server), and only the usual gap limit
//!   applies to the events after it — a jump above it is refused (the stream stays stuck
//!   for this reader, who at least sees why), a jump within it decrypts.
//! - A horizon claimed in a room whose owner never set retention cannot be told from
//!   real retention by the reader: the deletion is at least shown, with the first kept
//!   event's id, never silent.

use std::time::{Duration, Instant};

use secretd_client::Device;
use secretd_client::device::{Content, Incoming, StreamKind};

use super::{Db, fixed_parts};
use crate::chat::texts;
use crate::common::{Backend, Server, shared_room};
use crate::on_both_stores;

on_both_stores!(
    a_far_horizon_cannot_make_the_reader_hash_for_long,
    the_horizon_allowance_is_capped_at_exactly_two_to_the_22,
    a_silent_gap_is_reported_not_taken_for_a_horizon,
    a_horizon_without_retention_is_shown,
);

/// The cap on the ratchet steps the first event after a horizon may take.
const CAP: u64 = 1 << 22;

/// The message stream's events among `events`.
fn messages(events: Vec<Incoming>) -> Vec<Incoming> {
    events
        .into_iter()
        .filter(|e| e.stream == StreamKind::Message)
        .collect()
}

/// What must not move when an event is refused: the stream's counters and every epoch's
/// cursor (and the room's epochs, trust and name).
fn chain_state(device: &Device, room: &str) -> String {
    let s = &device.room(room).unwrap().message;
    let cursors: Vec<String> = s
        .epochs
        .iter()
        .map(|(id, e)| format!("{id}:{}:{}", e.cursor.counter, hex::encode(e.cursor.key)))
        .collect();
    format!(
        "{} {} {cursors:?} {}",
        s.accepted_counter,
        s.last_counter,
        fixed_parts(device, room)
    )
}

fn is_notice(e: &Incoming, event_id: u64) -> bool {
    matches!(e.content, Ok(Content::HistoryRemoved)) && e.event_id == event_id
}

async fn a_far_horizon_cannot_make_the_reader_hash_for_long(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    let sent = alice.send_text(&room, "before").await.unwrap();
    assert_eq!(
        texts(&messages(bob.sync_room(&room).await.unwrap())),
        ["before"]
    );
    let stream = bob.room(&room).unwrap().message.stream_id.clone();
    let before = chain_state(&bob, &room);

    // 2^40 events "removed": at max_gap per event the allowance would be 2^50 steps.
    let far: u64 = 1 << 40;
    let body = db.event_body(&stream, sent.event_id).await;
    db.delete_events(&stream, 0, far as i64).await;
    db.set_horizon(&stream, far, far - 1).await;
    // 2^26 steps: a reader without the cap would hash for tens of seconds (and the
    // derivation runs on the task, so only the clock after it returns can tell).
    let jump = 1 << 26;
    let planted = db
        .inject_event(&stream, sent.counter + jump, alice.me().user_id, body)
        .await;
    assert_eq!(planted, far);

    let started = Instant::now();
    let seen = bob.sync_room(&room).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not hashed for: {:?}",
        started.elapsed()
    );
    let seen = messages(seen);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(is_notice(&seen[0], far), "the notice first: {seen:?}");
    assert_eq!(seen[1].event_id, far);
    assert_eq!(
        seen[1].content,
        Err(format!(
            "counter {} is {jump} steps past the ratchet (limit {CAP}); refusing to derive \
             that far",
            sent.counter + jump
        ))
    );
    assert_eq!(
        chain_state(&bob, &room),
        before,
        "nothing derived, nothing moved"
    );
    assert_eq!(bob.room(&room).unwrap().message.last_event_id, far);

    // The honest sender goes on from its own counter; the reader decrypts it (the usual
    // gap limit again, from the counter it last accepted).
    let next = tokio::time::timeout(Duration::from_secs(20), alice.send_text(&room, "after"))
        .await
        .expect("the sender is not made to hash either")
        .unwrap();
    assert_eq!(next.counter, sent.counter + 1);
    assert_eq!(next.event_id, far + 1);
    assert_eq!(
        texts(&messages(bob.sync_room(&room).await.unwrap())),
        ["after"]
    );
    server.stop().await;
}

async fn the_horizon_allowance_is_capped_at_exactly_two_to_the_22(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    let sent = alice.send_text(&room, "before").await.unwrap();
    assert_eq!(
        texts(&messages(bob.sync_room(&room).await.unwrap())),
        ["before"]
    );
    let stream = bob.room(&room).unwrap().message.stream_id.clone();
    let c0 = sent.counter;

    // A real member driven far ahead: the server names a head counter 2^22 - 1 above its
    // own in the refusal of its post, and a sender with a gap limit that high follows.
    db.set_head_counter(&stream, c0 + CAP - 1).await;
    alice.max_gap = 2 * CAP;
    let exact = alice.send_text(&room, "exactly at the cap").await.unwrap();
    assert_eq!(exact.counter, c0 + CAP);
    let above = alice.send_text(&room, "one above the cap").await.unwrap();
    assert_eq!(above.counter, c0 + CAP + 1);

    // The one above is served first, after a horizon far enough that max_gap per removed
    // event is well past the cap; the one at the cap is kept out of sight for now.
    let (h1, h2) = (above.event_id + (1 << 20), above.event_id + (2 << 20));
    db.renumber_event(&stream, exact.event_id as i64, -1).await;
    db.renumber_event(&stream, above.event_id as i64, h1 as i64)
        .await;
    db.set_horizon(&stream, h1, h1).await;
    let before = chain_state(&bob, &room);
    let seen = messages(bob.sync_room(&room).await.unwrap());
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(is_notice(&seen[0], h1), "{seen:?}");
    assert_eq!(
        seen[1].content,
        Err(format!(
            "counter {} is {} steps past the ratchet (limit {CAP}); refusing to derive that far",
            c0 + CAP + 1,
            CAP + 1
        ))
    );
    assert_eq!(chain_state(&bob, &room), before, "nothing moved");

    // Another horizon, and the event exactly at the cap behind it: accepted.
    db.delete_events(&stream, h1 as i64, h1 as i64).await;
    db.renumber_event(&stream, -1, h2 as i64).await;
    db.set_horizon(&stream, h2, h2).await;
    let seen = messages(bob.sync_room(&room).await.unwrap());
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(is_notice(&seen[0], h2), "{seen:?}");
    assert_eq!(texts(&seen[1..]), ["exactly at the cap"]);
    let s = &bob.room(&room).unwrap().message;
    assert_eq!((s.accepted_counter, s.last_counter), (c0 + CAP, c0 + CAP));

    // And the sender's next event, with the usual gap limit.
    let next = alice.send_text(&room, "after").await.unwrap();
    assert_eq!(next.counter, c0 + CAP + 2);
    assert_eq!(
        texts(&messages(bob.sync_room(&room).await.unwrap())),
        ["after"]
    );
    server.stop().await;
}

async fn a_silent_gap_is_reported_not_taken_for_a_horizon(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    alice.send_text(&room, "m0").await.unwrap();
    assert_eq!(
        texts(&messages(bob.sync_room(&room).await.unwrap())),
        ["m0"]
    );
    let stream = bob.room(&room).unwrap().message.stream_id.clone();
    bob.max_gap = 4;
    let mut sent = Vec::new();
    for i in 1..=12 {
        sent.push(alice.send_text(&room, &format!("m{i}")).await.unwrap());
    }
    // A gap within the limit: m2, m3 gone (a jump of 3 counters). A gap above it: m5 to
    // m9 gone (a jump of 6). The horizon is not moved: no history_starts_at.
    db.delete_events(&stream, sent[1].event_id as i64, sent[2].event_id as i64)
        .await;
    db.delete_events(&stream, sent[4].event_id as i64, sent[8].event_id as i64)
        .await;
    let seen = messages(bob.sync_room(&room).await.unwrap());
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e.content, Ok(Content::HistoryRemoved))),
        "no retention notice: {seen:?}"
    );
    let ids: Vec<u64> = seen.iter().map(|e| e.event_id).collect();
    let at = |i: usize| sent[i - 1].event_id;
    assert_eq!(ids, [at(1), at(2), at(4), at(5), at(10), at(11), at(12)]);
    // Each hole is reported where it starts: event ids are dense on an honest server.
    assert_eq!(
        seen[1].content,
        Err(format!(
            "events {} to {} are missing: the server withheld or deleted them without a \
             retention horizon (event ids have no gaps on an honest server)",
            at(2),
            at(3)
        ))
    );
    assert_eq!(
        seen[3].content,
        Err(format!(
            "events {} to {} are missing: the server withheld or deleted them without a \
             retention horizon (event ids have no gaps on an honest server)",
            at(5),
            at(9)
        ))
    );
    // Within the gap limit the events around the hole decrypt.
    assert_eq!(texts(&[seen[0].clone(), seen[2].clone()]), ["m1", "m4"]);
    // Above it the usual limit (4), not the horizon's allowance, refuses m10, and every
    // later event is measured from m4's counter too.
    let c4 = sent[3].counter;
    let refusals: Vec<_> = seen[4..].iter().map(|e| e.content.clone()).collect();
    let refused = |i: usize| {
        let c = sent[i - 1].counter;
        Err(format!(
            "counter {c} is {} steps past the ratchet (limit 4); refusing to derive that far",
            c - c4
        ))
    };
    assert_eq!(refusals, [refused(10), refused(11), refused(12)]);
    let s = &bob.room(&room).unwrap().message;
    assert_eq!((s.accepted_counter, s.last_counter), (c4, c4));
    server.stop().await;
}

async fn a_horizon_without_retention_is_shown(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    alice.send_text(&room, "m0").await.unwrap();
    assert_eq!(
        texts(&messages(bob.sync_room(&room).await.unwrap())),
        ["m0"]
    );
    let stream = bob.room(&room).unwrap().message.stream_id.clone();
    bob.max_gap = 4;
    let mut sent = Vec::new();
    for i in 1..=9 {
        sent.push(alice.send_text(&room, &format!("m{i}")).await.unwrap());
    }
    // The owner never called SetRetention; the server deletes m1..m6 and moves the
    // horizon to m7 as the sweeper would.
    let first = sent[6].event_id;
    db.delete_events(&stream, 0, first as i64 - 1).await;
    db.set_horizon(&stream, first, 0).await;
    let seen = messages(bob.sync_room(&room).await.unwrap());
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        is_notice(&seen[0], first),
        "the deletion is shown, at the first kept event {first}: {seen:?}"
    );
    assert_eq!(texts(&seen[1..]), ["m7", "m8", "m9"]);
    server.stop().await;
}
