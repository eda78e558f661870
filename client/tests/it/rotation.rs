//! Rotation's repairs: an invite that failed for a passing reason is kept and sent at
//! the next sync (the member meanwhile refuses to post with the old keys); a member who
//! joins while a rotation runs gets the new keys from it. Both deterministic: a key fetch
//! made to fail, and the rotation held before its Rekey markers.

use secretd_client::device::posting::PostGate;
use secretd_client::device::{Content, History};
use secretd_client::{Device, Error, user};

use crate::common::{Backend, Server, shared_room};
use crate::on_both_stores;

on_both_stores!(
    a_failed_rotation_invite_is_retried_at_the_next_sync,
    a_member_who_joins_during_a_rotation_gets_the_new_keys,
);

fn texts(events: &[secretd_client::device::Incoming]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.content {
            Ok(Content::Text(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

async fn a_failed_rotation_invite_is_retried_at_the_next_sync(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;

    // The key fetch for Bob fails once, as if the server were briefly away.
    alice.failing_key_fetches = 1;
    let rotation = alice.rotate(&room, vec![]).await.unwrap();
    assert_eq!(rotation.pending, [user::local(bob_id)], "{rotation:?}");
    assert!(rotation.rekeyed.is_empty());
    assert_eq!(
        alice
            .room(&room)
            .unwrap()
            .rekey_pending
            .get(&bob_id.to_string()),
        Some(&1)
    );
    // Bob sees the new generation without its keys and does not post with the old ones.
    let err = bob.send_text(&room, "too early").await.unwrap_err();
    assert!(matches!(err, Error::RotationMissing { .. }), "{err}");

    // Alice's next sync sends it; Bob takes it and posts in the new generation.
    alice.sync_room(&room).await.unwrap();
    assert!(alice.room(&room).unwrap().rekey_pending.is_empty());
    bob.send_text(&room, "with the new keys").await.unwrap();
    assert_eq!(
        bob.room(&room).unwrap().message.newest_generation(),
        Some(1)
    );
    assert_eq!(
        texts(&alice.sync_room(&room).await.unwrap()),
        ["with the new keys"]
    );
    server.stop().await;
}

async fn a_member_who_joins_during_a_rotation_gets_the_new_keys(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let (dave_id, mut dave) = server.new_user("pd").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;

    // Alice's rotation is held just before its Rekey markers: the invites of the new
    // generation are out, to the members listed when it began.
    let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
    let (resume, resume_rx) = tokio::sync::mpsc::unbounded_channel();
    alice.post_gate = Some(PostGate {
        reached: reached_tx,
        resume: resume_rx,
    });
    let rotating = {
        let room = room.clone();
        tokio::spawn(async move {
            let rotation = alice.rotate(&room, vec![]).await;
            (alice, rotation)
        })
    };
    reached
        .recv()
        .await
        .expect("the rotation reaches its first marker");

    // Meanwhile Bob invites Dave with the keys he holds (the old generation).
    bob.invite(&room, &user::local(dave_id), History::FromNow, false)
        .await
        .unwrap();
    // Bob's device noticed the rotation while inviting (its invite was in his inbox):
    // Dave gets the old generation and then the new one.
    let from_bob = dave.accept_invites().await.unwrap();
    assert_eq!(from_bob.len(), 2, "{from_bob:?}");
    assert!(from_bob.iter().all(|a| a.result.is_ok()), "{from_bob:?}");

    drop(resume); // let the rotation go on
    let (mut alice, rotation): (Device, _) = rotating.await.unwrap();
    rotation.unwrap();
    alice.post_gate = None;
    // Dave holds the new generation (from Bob, who saw it while inviting, or from the
    // rotation's second look at the members), reads it, and the others trust him in it.
    let accepted = dave.accept_invites().await.unwrap();
    assert!(accepted.iter().all(|a| a.result.is_ok()), "{accepted:?}");
    assert_eq!(
        dave.room(&room).unwrap().message.newest_generation(),
        Some(1)
    );
    alice.send_text(&room, "after the rotation").await.unwrap();
    assert_eq!(
        texts(&dave.sync_room(&room).await.unwrap()),
        ["after the rotation"]
    );
    dave.send_text(&room, "dave here").await.unwrap();
    let seen = texts(&alice.sync_room(&room).await.unwrap());
    assert_eq!(
        seen.last().map(String::as_str),
        Some("dave here"),
        "{seen:?}"
    );
    server.stop().await;
}
