//! One room on homeserver a with users of a, b and c, through the library: invites
//! across homeservers (b's user invites c's), everyone posting and reading, senders named
//! as each reader's homeserver names them, and a removal of c's user with a rotation
//! that b's user takes and c's user cannot read.

use secretd_client::device::{Content, History, Incoming};
use secretd_client::user::{self, UserRef};
use secretd_client::{Device, Error};

use super::{Trio, user_on};

fn on(homeserver: &str, user_id: u64) -> UserRef {
    UserRef {
        homeserver: homeserver.into(),
        user_id,
    }
}

fn said(events: &[Incoming]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.content {
            Ok(Content::Text(t)) => Some((user::display(&e.sender), t.clone())),
            _ => None,
        })
        .collect()
}

async fn reads(device: &mut Device, room: &str) -> Vec<(String, String)> {
    said(&device.sync_room(room).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_homeservers_one_room() {
    let trio = Trio::start().await;
    let (alice_id, mut alice) = user_on(&trio.a).await;
    let (bob_id, mut bob) = user_on(&trio.b).await;
    let (carol_id, mut carol) = user_on(&trio.c).await;
    let room = alice.create_room("across", vec![], "").await.unwrap();

    // Alice (a) invites Bob (b): the invite lands on b; Bob's device follows the room on a.
    alice
        .invite(&room, &on("b.test", bob_id), History::All, false)
        .await
        .unwrap();
    let accepted = bob.accept_invites().await.unwrap();
    assert!(
        accepted[0].result.is_ok() && accepted[0].new_room,
        "{accepted:?}"
    );
    assert_eq!(accepted[0].from, on("a.test", alice_id));
    assert_eq!(bob.room(&room).unwrap().homeserver, "a.test");
    // Bob's key reached Alice with b's own proof, which her device checked against the key
    // it pinned from b itself (docs/kt.md §5 step 8), keeping b's heads apart from a's.
    let b_log = alice
        .state()
        .peer_logs
        .get("b.test")
        .expect("b's log is pinned");
    let b_key = trio
        .b
        .api(bob_id)
        .await
        .tree_head(0)
        .await
        .unwrap()
        .public_key;
    assert_eq!(b_log.public_key, hex::encode(&b_key));
    assert_eq!(b_log.head.as_ref().unwrap().server_name, "b.test");
    assert_ne!(
        b_log.public_key,
        alice.state().home_log.as_ref().unwrap().public_key,
        "two homeservers, two keys"
    );
    // A device that pinned another key for b (as if a had shown it a b of its own) refuses
    // b's proofs: nothing is sent.
    let mut misled = alice.state().clone();
    misled.peer_logs.get_mut("b.test").unwrap().public_key = hex::encode([7u8; 32]);
    let mut misled = Device::from_state(trio.a.api(alice_id).await, misled).unwrap();
    let other = misled.create_room("misled", vec![], "").await.unwrap();
    let err = misled
        .invite(&other, &on("b.test", bob_id), History::All, false)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the tree head of b.test at size"),
        "{err}"
    );
    bob.send_text(&room, "hi from b").await.unwrap();
    assert_eq!(
        reads(&mut alice, &room).await,
        [(format!("{bob_id}@b.test"), "hi from b".to_string())]
    );

    // Bob (b) invites Carol (c) into the room on a.
    bob.invite(&room, &on("c.test", carol_id), History::FromNow, false)
        .await
        .unwrap();
    let accepted = carol.accept_invites().await.unwrap();
    assert!(accepted[0].result.is_ok(), "{accepted:?}");
    assert_eq!(accepted[0].from, on("b.test", bob_id));
    carol.send_text(&room, "hi from c").await.unwrap();
    alice.send_text(&room, "hello all").await.unwrap();
    let carol_name = format!("{carol_id}@c.test");
    assert_eq!(
        reads(&mut alice, &room).await,
        [
            (carol_name.clone(), "hi from c".to_string()),
            (alice_id.to_string(), "hello all".to_string())
        ]
    );
    assert_eq!(
        reads(&mut bob, &room).await,
        [
            (bob_id.to_string(), "hi from b".to_string()),
            (carol_name.clone(), "hi from c".to_string()),
            (format!("{alice_id}@a.test"), "hello all".to_string())
        ]
    );
    assert_eq!(
        reads(&mut carol, &room).await,
        [
            (carol_id.to_string(), "hi from c".to_string()),
            (format!("{alice_id}@a.test"), "hello all".to_string())
        ]
    );

    // Alice removes Carol: the rotation reaches Bob on b, not Carol.
    let rotation = alice
        .remove_member(&room, &on("c.test", carol_id))
        .await
        .unwrap();
    assert_eq!(rotation.rekeyed, [on("b.test", bob_id)], "{rotation:?}");
    bob.accept_invites().await.unwrap();
    alice.send_text(&room, "after carol").await.unwrap();
    assert_eq!(
        reads(&mut bob, &room).await.last().map(|(_, t)| t.clone()),
        Some("after carol".to_string())
    );
    bob.send_text(&room, "bob after carol").await.unwrap();
    let cut = carol.sync_room(&room).await.unwrap_err();
    assert!(matches!(cut, Error::RoomLost { .. }), "{cut}");
    assert!(
        cut.to_string().starts_with(&format!(
            "you were removed from [across] by {alice_id}@a.test at "
        )),
        "{cut}"
    );
    trio.stop().await;
}
