//! Invites: a forged re-invite into a room the victim holds, signed with a key the server
//! lists as the owner's past key, is refused; so is an epoch inflated by a member (not the
//! next generation) before that member's removal, while the owner's real rotation is
//! taken; an invite from a member the room does not trust brings nothing.

use secretd_client::crypto::identity::Identity;
use secretd_client::device::History;

use super::{Db, fixed_parts, forge_invite, fresh_chain, identity_of, local, pair_of, served_key};
use crate::common::{Backend, Server, shared_room};
use crate::on_both_stores;

on_both_stores!(
    a_forged_reinvite_signed_with_a_past_key_is_refused,
    an_inflated_epoch_is_refused_and_the_real_rotation_taken,
);

async fn a_forged_reinvite_signed_with_a_past_key_is_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (alice_id, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    bob.sync_room(&room).await.unwrap();
    let before = fixed_parts(&bob, &room);
    let head = bob.room(&room).unwrap().message.last_counter;

    // The server makes a key, lists it as one of Alice's past keys (and logs it), and
    // re-invites Bob "from Alice" with a top generation it knows the seeds of.
    let evil = Identity::generate().unwrap();
    db.add_past_key(alice_id, evil.public().spki()).await;
    let chains = (
        vec![fresh_chain(u32::MAX, head)],
        vec![fresh_chain(u32::MAX, head)],
    );
    let bob_key = served_key(&bob, bob_id).await;
    let forged = forge_invite(
        bob.room(&room).unwrap(),
        &local(alice_id),
        &evil,
        &local(bob_id),
        &bob_key,
        chains.clone(),
    );
    db.deliver_invite(bob_id, &pair_of(bob.room(&room).unwrap()), alice_id, forged)
        .await;
    let refused = bob.accept_invites().await.unwrap();
    assert_eq!(refused.len(), 1);
    let why = refused[0].result.as_ref().unwrap_err();
    // To be served to a verifying client the key must be in the log, where it can only
    // be appended: it is Alice's newest entry, not the current key served (DESIGN §12).
    assert!(
        why.contains(&format!("for user {alice_id}, but the log of"))
            && why.contains("the served key is not in the log"),
        "{why}"
    );
    assert_eq!(fixed_parts(&bob, &room), before, "nothing taken");

    // Even as Alice's current key, the pin Bob holds refuses it.
    db.set_current_key(alice_id, evil.public().spki()).await;
    let forged = forge_invite(
        bob.room(&room).unwrap(),
        &local(alice_id),
        &evil,
        &local(bob_id),
        &bob_key,
        chains,
    );
    db.deliver_invite(bob_id, &pair_of(bob.room(&room).unwrap()), alice_id, forged)
        .await;
    let refused = bob.accept_invites().await.unwrap();
    let why = refused[0].result.as_ref().unwrap_err();
    assert!(
        why.starts_with(&format!(
            "the server now serves a different key for user {alice_id}"
        )),
        "{why}"
    );
    assert_eq!(fixed_parts(&bob, &room), before, "nothing taken");

    // A real user with a real key, but not a member the room trusts (here the server's
    // accomplice), brings the next generation: refused, the invite never vouches for
    // itself.
    let (mallory_id, mallory) = server.new_user("pm").await;
    let next = (vec![fresh_chain(1, head)], vec![fresh_chain(1, head)]);
    let forged = forge_invite(
        bob.room(&room).unwrap(),
        &local(mallory_id),
        &identity_of(&mallory),
        &local(bob_id),
        &bob_key,
        next,
    );
    db.deliver_invite(
        bob_id,
        &pair_of(bob.room(&room).unwrap()),
        mallory_id,
        forged,
    )
    .await;
    let refused = bob.accept_invites().await.unwrap();
    let why = refused[0].result.as_ref().unwrap_err();
    assert!(
        why.contains(&format!(
            "user {mallory_id} (key {}) is not trusted in room [r], so their invite into it is refused",
            secretd_client::crypto::identity::fingerprint_hex(&mallory.fingerprint())
        )),
        "{why}"
    );
    assert_eq!(fixed_parts(&bob, &room), before, "nothing taken");

    // Bob still posts in the real epoch, which the server cannot read.
    let sent = bob.send_text(&room, "still ours").await.unwrap();
    assert!(sent.event_id > 0);
    server.stop().await;
}

async fn an_inflated_epoch_is_refused_and_the_real_rotation_taken(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let (carol_id, mut carol) = server.new_user("pc").await;
    let room = alice.create_room("r", vec![], "").await.unwrap();
    for who in [bob_id, carol_id] {
        alice
            .invite(&room, &local(who), History::All, false)
            .await
            .unwrap();
    }
    bob.accept_invites().await.unwrap();
    carol.accept_invites().await.unwrap();
    bob.sync_room(&room).await.unwrap();
    carol.sync_room(&room).await.unwrap();
    let before = fixed_parts(&bob, &room);

    // Carol, a trusted member about to be removed, invites Bob into a generation she
    // made up: one far ahead (she would stay current forever), then the same generation
    // Bob holds under another epoch id.
    let bob_key = served_key(&bob, bob_id).await;
    let head = carol.room(&room).unwrap().message.last_counter;
    for (generation, wanted) in [
        (
            u32::MAX,
            "announces generation 4294967295, but this room is at generation 0",
        ),
        (0, "a second epoch of generation 0"),
    ] {
        let chains = (
            vec![fresh_chain(generation, head)],
            vec![fresh_chain(generation, head)],
        );
        let invite = forge_invite(
            carol.room(&room).unwrap(),
            &local(carol_id),
            &identity_of(&carol),
            &local(bob_id),
            &bob_key,
            chains,
        );
        // Sent through the server as any member's invite.
        let pair = pair_of(carol.room(&room).unwrap());
        carol
            .api()
            .send_invite(&pair.pair_id, bob_id, "", invite)
            .await
            .unwrap();
        let refused = bob.accept_invites().await.unwrap();
        let why = refused[0].result.as_ref().unwrap_err();
        assert!(why.contains(wanted), "{why}");
        assert_eq!(fixed_parts(&bob, &room), before);
    }

    // The owner removes Carol and rotates: the next generation, from a trusted member,
    // is taken; Carol gets nothing and reads nothing new.
    let invites_of_carol = db.invites_of(carol_id).await;
    alice.remove_member(&room, &local(carol_id)).await.unwrap();
    assert_eq!(db.invites_of(carol_id).await, invites_of_carol);
    let accepted = bob.accept_invites().await.unwrap();
    assert!(accepted.iter().all(|a| a.result.is_ok()), "{accepted:?}");
    assert_eq!(
        bob.room(&room).unwrap().message.newest_generation(),
        Some(1)
    );
    bob.send_text(&room, "after the rotation").await.unwrap();
    let seen = alice.sync_room(&room).await.unwrap();
    assert!(
        seen.iter().any(|e| matches!(&e.content, Ok(secretd_client::device::Content::Text(t)) if t == "after the rotation")),
        "{seen:?}"
    );
    server.stop().await;
}
