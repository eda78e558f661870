//! Rotations: a withheld rotation invite leaves the member unable to post with the old
//! keys (fail closed) until the keys arrive; a removed member whom the server lists again
//! during the rotation, and a stranger it adds, get nothing; old epochs close where the
//! next generation starts.

use secretd_client::Error;
use secretd_client::device::{Content, History};

use super::{Db, local};
use crate::common::{Backend, Server, shared_room};
use crate::on_both_stores;

on_both_stores!(
    a_withheld_rotation_invite_stops_posting_with_old_keys,
    the_removed_and_strangers_listed_by_the_server_get_nothing,
);

async fn a_withheld_rotation_invite_stops_posting_with_old_keys(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    bob.send_text(&room, "before").await.unwrap();
    let seen_invites = bob.state().invites_after;

    // Alice rotates; the server withholds Bob's new keys.
    alice.rotate(&room, vec![]).await.unwrap();
    assert_eq!(db.withhold_invites(bob_id, seen_invites).await, 1);
    let stream = bob.room(&room).unwrap().message.stream_id.clone();
    let head = db.head(&stream).await;
    let err = bob.send_text(&room, "with the old keys").await.unwrap_err();
    assert!(matches!(&err, Error::RotationMissing { .. }), "{err}");
    assert!(
        err.to_string().starts_with(
            "the keys of room [r] were rotated and this device has not received the new ones"
        ),
        "{err}"
    );
    assert_eq!(db.head(&stream).await, head, "nothing posted");

    // A fresh invite from the owner brings the next generation: Bob posts in it.
    alice
        .invite(&room, &local(bob_id), History::FromNow, false)
        .await
        .unwrap();
    bob.send_text(&room, "with the new keys").await.unwrap();
    let texts: Vec<String> = alice
        .history(&room)
        .await
        .unwrap()
        .events
        .into_iter()
        .filter_map(|e| match e.content {
            Ok(Content::Text(t)) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["before", "with the new keys"]);
    server.stop().await;
}

async fn the_removed_and_strangers_listed_by_the_server_get_nothing(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let (carol_id, mut carol) = server.new_user("pc").await;
    let (mallory_id, _mallory) = server.new_user("pm").await;
    let room = alice.create_room("r", vec![], "").await.unwrap();
    for who in [bob_id, carol_id] {
        alice
            .invite(&room, &local(who), History::All, false)
            .await
            .unwrap();
    }
    bob.accept_invites().await.unwrap();
    carol.accept_invites().await.unwrap();
    carol.sync_room(&room).await.unwrap();

    // The server removes Carol when asked, then lists her again (and Mallory, whom no
    // one invited) while Alice rotates.
    let pair = alice.room(&room).unwrap().pair_id.clone();
    alice
        .api()
        .remove_member(&pair, carol_id, "")
        .await
        .unwrap();
    db.add_member(&pair, carol_id).await;
    db.add_member(&pair, mallory_id).await;
    let before = (
        db.invites_of(carol_id).await,
        db.invites_of(mallory_id).await,
    );
    let rotation = alice.rotate(&room, vec![local(carol_id)]).await.unwrap();
    assert_eq!(rotation.rekeyed, [local(bob_id)], "{rotation:?}");
    let skipped: Vec<(u64, &str)> = rotation
        .skipped
        .iter()
        .map(|(u, why)| (u.user_id, why.as_str()))
        .collect();
    assert!(skipped.contains(&(carol_id, "removed")), "{skipped:?}");
    assert!(
        skipped
            .iter()
            .any(|(u, why)| *u == mallory_id && why.starts_with("not trusted in this room")),
        "{skipped:?}"
    );
    assert_eq!(
        (
            db.invites_of(carol_id).await,
            db.invites_of(mallory_id).await
        ),
        before,
        "no invite to either"
    );

    // Carol, listed by the server, reads the stream but opens nothing of the new epoch.
    alice.send_text(&room, "not for carol").await.unwrap();
    let seen = carol.sync_room(&room).await.unwrap();
    assert!(
        seen.iter()
            .all(|e| !matches!(&e.content, Ok(Content::Text(t)) if t == "not for carol")),
        "{seen:?}"
    );
    // Bob reads it.
    let seen = bob.sync_room(&room).await.unwrap();
    assert!(
        seen.iter()
            .any(|e| matches!(&e.content, Ok(Content::Text(t)) if t == "not for carol")),
        "{seen:?}"
    );
    // Carol's device fails closed: it saw the new generation it was not given.
    let err = carol.send_text(&room, "x").await.unwrap_err();
    assert!(matches!(err, Error::RotationMissing { .. }), "{err}");
    server.stop().await;
}
