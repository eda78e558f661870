//! Removal with key rotation: the removed member keeps what it could read before, and can
//! decrypt nothing posted after the rotation; everyone else moves to the new epoch, on
//! every device, including a device that had not heard of the rotation.

use secretd_client::device::{Content, History, Incoming};
use secretd_client::{Device, Error};
use tonic::Code;

use crate::chat::marker;
use crate::common::{Backend, Server, rewound};

fn texts(events: &[Incoming]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.content {
            Ok(Content::Text(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

async fn removed_member_reads_nothing_after_rotation(backend: Backend) {
    let server = Server::start(backend).await;
    let secret = marker();
    let (alice_id, mut alice) = server.new_user("pw a").await;
    let (bob_id, mut bob) = server.new_user("pw b").await;
    let (carol_id, mut carol) = server.new_user("pw c").await;
    let bob_ref = secretd_client::user::local(bob_id);
    let carol_ref = secretd_client::user::local(carol_id);
    let room = alice.create_room("team", vec![], "").await.unwrap();
    alice
        .invite(&room, &bob_ref, History::All, false)
        .await
        .unwrap();
    alice
        .invite(&room, &carol_ref, History::All, false)
        .await
        .unwrap();
    bob.accept_invites().await.unwrap();
    carol.accept_invites().await.unwrap();
    alice.send_text(&room, "before removal").await.unwrap();
    assert_eq!(
        texts(&carol.sync_room(&room).await.unwrap()),
        ["before removal"]
    );
    let carol_seen = carol.room(&room).unwrap().message.last_event_id;
    assert_eq!(
        texts(&bob.sync_room(&room).await.unwrap()),
        ["before removal"]
    );
    let bob_before_rotation = bob.state().clone();

    alice.remove_member(&room, &carol_ref).await.unwrap();
    alice
        .send_text(&room, &format!("after removal {secret}"))
        .await
        .unwrap();

    // Bob learns the new epoch from his invite and reads on.
    let after = bob.sync_room(&room).await.unwrap();
    assert_eq!(texts(&after), [format!("after removal {secret}")]);
    assert!(
        after.iter().all(|e| e.content.is_ok() && !e.stale_epoch),
        "{after:?}"
    );
    let rekeys = after
        .iter()
        .filter(|e| matches!(&e.content, Ok(Content::Rekey { generation: 1, removed }) if removed == std::slice::from_ref(&carol_ref)))
        .count();
    assert_eq!(rekeys, 2, "one Rekey marker per stream: {after:?}");

    // A device of Bob's that missed the rotation posts in the new epoch: its catch-up meets
    // the unknown epoch, fetches the rotation invite, and moves on.
    let mut stale_bob = Device::from_state(server.api(bob_id).await, bob_before_rotation).unwrap();
    stale_bob
        .send_text(&room, &format!("stale device {secret}"))
        .await
        .unwrap();
    let seen = alice.sync_room(&room).await.unwrap();
    let post = seen
        .iter()
        .find(|e| texts(std::slice::from_ref(e)) == [format!("stale device {secret}")]);
    assert!(
        !post.expect("alice reads it").stale_epoch,
        "posted in the retired epoch"
    );

    // Carol is cut off by the server...
    let cut = carol.sync_room(&room).await.unwrap_err();
    assert!(
        matches!(&cut, secretd_client::Error::RoomLost { .. }),
        "{cut}"
    );
    assert!(
        cut.to_string()
            .starts_with(&format!("you were removed from [team] by {alice_id} at ")),
        "{cut}"
    );
    // ...and even with the ciphertexts in hand (a leak, a colluding operator) her keys
    // open nothing posted after the rotation.
    let stream_id = alice.room(&room).unwrap().message.stream_id.clone();
    let leaked = alice
        .api()
        .fetch_messages_after(&stream_id, carol_seen)
        .await
        .unwrap();
    assert!(leaked.len() >= 3, "{leaked:?}");
    for m in leaked {
        for e in carol.receive(m).await.unwrap() {
            let why = e
                .content
                .as_ref()
                .expect_err("Carol decrypted a post-rotation event");
            assert!(why.starts_with("no keys for epoch"), "{why}");
        }
    }
    // What removal does not undo: what she could read before.
    let mut replay = Device::from_state(carol.api().clone(), rewound(&carol, &room)).unwrap();
    let page = alice
        .api()
        .fetch_messages_page(&stream_id, 0, 1)
        .await
        .unwrap();
    let first = replay.receive(page.messages[0].clone()).await.unwrap();
    assert_eq!(texts(&first), ["before removal"]);

    // New devices restore both epochs from the password.
    let bob2 = Device::login(server.api(bob_id).await, "pw b").await;
    let mut bob2 = bob2.unwrap();
    let all = texts(&bob2.history(&room).await.unwrap().events);
    assert_eq!(
        all,
        [
            "before removal".to_string(),
            format!("after removal {secret}"),
            format!("stale device {secret}")
        ]
    );
    let alice_id = alice.me().user_id;
    let mut alice2 = Device::login(server.api(alice_id).await, "pw a")
        .await
        .unwrap();
    assert_eq!(texts(&alice2.history(&room).await.unwrap().events), all);

    // Only the owner rotates by removal; Bob's attempt is refused and changes nothing.
    let refused = bob
        .remove_member(&room, &secretd_client::user::local(alice_id))
        .await;
    assert!(
        matches!(&refused, Err(Error::Rpc { status, .. }) if status.code() == Code::PermissionDenied),
        "{refused:?}"
    );
    server.stop().await;
}

crate::on_both_stores!(removed_member_reads_nothing_after_rotation);
