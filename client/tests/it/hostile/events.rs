//! Events: a replayed message and a replayed RoomState are refused and reported (the
//! name does not roll back); counters near 2^64 and huge jumps are refused without a
//! hang and do not move the device's idea of the head; a state event on the message
//! stream is refused; an event of a closed epoch is refused.

use std::time::Duration;

use secretd_client::device::{Content, StreamKind};
use secretd_client::event::{Kind, TrustKey};

use super::{Db, fixed_parts, local};
use crate::common::{Backend, Server, shared_room};
use crate::on_both_stores;

on_both_stores!(
    replays_are_refused,
    huge_counters_are_refused_without_a_hang,
    state_events_on_the_message_stream_are_refused,
);

async fn room_of_two(
    server: &Server,
) -> (secretd_client::Device, secretd_client::Device, u64, String) {
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    alice.rename(&room, "first name").await.unwrap();
    (alice, bob, bob_id, room)
}

fn rejected(events: &[secretd_client::device::Incoming]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.content.as_ref().err().cloned())
        .collect()
}

async fn replays_are_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (mut alice, mut bob, _, room) = room_of_two(&server).await;
    let sent = alice.send_text(&room, "pay 10").await.unwrap();
    alice.rename(&room, "second name").await.unwrap();
    bob.sync_room(&room).await.unwrap();
    assert_eq!(bob.room(&room).unwrap().name, "second name");
    let (message, state) = {
        let r = bob.room(&room).unwrap();
        (r.message.stream_id.clone(), r.state.stream_id.clone())
    };
    // The first RoomState (the room's creation) and the message, served again.
    let first_state = 1; // the RoomState of the room's creation
    let body = db.event_body(&state, first_state).await;
    assert!(!body.is_empty());
    db.replay_event(&state, first_state).await;
    db.replay_event(&message, sent.event_id).await;
    let before = fixed_parts(&bob, &room);
    let seen = bob.sync_room(&room).await.unwrap();
    let why = rejected(&seen);
    assert_eq!(why.len(), 2, "{seen:?}");
    assert!(
        why.iter()
            .all(|w| w.starts_with("protocol violation: replayed or out of order")),
        "{why:?}"
    );
    assert_eq!(
        fixed_parts(&bob, &room),
        before,
        "the name did not roll back"
    );
    assert_eq!(bob.room(&room).unwrap().name, "second name");
    let history = bob.history(&room).await.unwrap();
    let texts: Vec<&Content> = history
        .events
        .iter()
        .filter_map(|e| e.content.as_ref().ok())
        .collect();
    assert_eq!(texts, [&Content::Text("pay 10".into())], "paid once");
    server.stop().await;
}

async fn huge_counters_are_refused_without_a_hang(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (mut alice, mut bob, bob_id, room) = room_of_two(&server).await;
    let sent = alice.send_text(&room, "real").await.unwrap();
    let message = bob.room(&room).unwrap().message.stream_id.clone();
    let body = db.event_body(&message, sent.event_id).await;
    let alice_id = alice.me().user_id;
    db.inject_event(&message, u64::MAX, alice_id, body.clone())
        .await;
    db.inject_event(&message, sent.counter + 1_000_000_000, alice_id, body)
        .await;
    let seen = tokio::time::timeout(Duration::from_secs(20), bob.sync_room(&room))
        .await
        .expect("no hang")
        .unwrap();
    let why = rejected(&seen);
    assert_eq!(why.len(), 2, "{seen:?}");
    assert!(
        why.iter().all(|w| w.contains("steps past the ratchet")),
        "{why:?}"
    );
    // Posting after it derives nothing far: the server's real head is where it was.
    let posted = tokio::time::timeout(Duration::from_secs(20), bob.send_text(&room, "next"))
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(posted.counter, sent.counter + 1);
    let _ = bob_id;
    server.stop().await;
}

async fn state_events_on_the_message_stream_are_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let (mut alice, mut bob, _, room) = room_of_two(&server).await;
    bob.sync_room(&room).await.unwrap();
    let before = fixed_parts(&bob, &room);
    let planted = TrustKey {
        user: Some(local(999)),
        fingerprint: vec![7; 32],
    };
    alice
        .post_raw(&room, StreamKind::Message, Kind::TrustKey(planted))
        .await
        .unwrap();
    let seen = bob.sync_room(&room).await.unwrap();
    assert_eq!(
        rejected(&seen),
        [
            "protocol violation: a TrustKey event on the message stream: it belongs on the state stream"
        ]
    );
    assert_eq!(fixed_parts(&bob, &room), before, "user 999 is not trusted");
    server.stop().await;
}
