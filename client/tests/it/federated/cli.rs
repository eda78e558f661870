//! Three people on three homeservers chat with `secretd-chat`: Alice (a) creates a room
//! and invites Bob (b); Bob chats in it live (on a, with a token from b); Bob invites
//! Carol (c); everyone posts; Alice removes Carol and the keys rotate; Carol reads
//! nothing new and is told she was removed; Bob leaves.

use crate::cli::{Live, chat, fails, ok, texts};
use crate::common::{fresh_user, token};

use super::Trio;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_people_on_three_homeservers_chat() {
    let trio = Trio::start().await;
    let home = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, c_dir) = (
        home.path().join("alice"),
        home.path().join("bob"),
        home.path().join("carol"),
    );
    let (alice, bob, carol) = (fresh_user(), fresh_user(), fresh_user());
    for (dir, pw, server, user) in [
        (&a_dir, "pa", &trio.a, alice),
        (&b_dir, "pb", &trio.b, bob),
        (&c_dir, "pc", &trio.c, carol),
    ] {
        ok(chat(
            dir,
            pw,
            &["init", "--server", &server.url(), "--token", &token(user)],
        ))
        .await;
    }
    let (bob_at_b, carol_at_c) = (format!("{bob}@b.test"), format!("{carol}@c.test"));
    ok(chat(&a_dir, "pa", &["create", "across"])).await;
    ok(chat(
        &a_dir,
        "pa",
        &["invite", "across", &bob_at_b, "--history", "all"],
    ))
    .await;
    let joined = ok(chat(&b_dir, "pb", &["accept"])).await;
    assert_eq!(joined[0]["room_name"], "across");
    assert_eq!(joined[0]["from"], format!("{alice}@a.test"));
    let rooms = ok(chat(&b_dir, "pb", &["rooms"])).await;
    assert_eq!(rooms[0]["homeserver"], "a.test", "{rooms:?}");

    // Bob chats live in the room on a.
    let mut bob_chat = Live::spawn(
        chat(&b_dir, "pb", &["chat", "across"]),
        b_dir.join("chat.err"),
    );
    ok(chat(&a_dir, "pa", &["send", "across", "hello from a"])).await;
    assert_eq!(
        bob_chat.next_text().await,
        (format!("{alice}@a.test"), "hello from a".to_string())
    );
    bob_chat.type_line("hello from b");
    assert_eq!(
        bob_chat.next_text().await,
        (bob.to_string(), "hello from b".to_string())
    );

    // Bob invites Carol of c; she posts; Bob's chat sees her.
    ok(chat(&b_dir, "pb", &["invite", "across", &carol_at_c])).await;
    ok(chat(&c_dir, "pc", &["accept"])).await;
    ok(chat(&c_dir, "pc", &["send", "across", "hello from c"])).await;
    assert_eq!(
        bob_chat.next_text().await,
        (carol_at_c.clone(), "hello from c".to_string())
    );
    let seen = texts(&ok(chat(&a_dir, "pa", &["read", "across"])).await);
    assert_eq!(
        seen,
        [
            (alice.to_string(), "hello from a".to_string()),
            (bob_at_b.clone(), "hello from b".to_string()),
            (carol_at_c.clone(), "hello from c".to_string()),
        ]
    );
    let members = ok(chat(&a_dir, "pa", &["members", "across"])).await;
    let listed: Vec<&str> = members
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&bob_at_b.as_str()) && listed.contains(&carol_at_c.as_str()),
        "{listed:?}"
    );

    // Alice removes Carol; the keys rotate to Bob; Bob's chat reads on.
    let removed = ok(chat(&a_dir, "pa", &["remove", "across", &carol_at_c])).await;
    assert_eq!(removed[1]["rekeyed"][0], bob_at_b.as_str(), "{removed:?}");
    ok(chat(&a_dir, "pa", &["send", "across", "without carol"])).await;
    assert_eq!(
        bob_chat.next_text().await,
        (format!("{alice}@a.test"), "without carol".to_string())
    );
    let (status, log) = bob_chat.finish().await;
    assert!(status.success(), "{log}");
    let refused = fails(chat(&c_dir, "pc", &["read", "across"])).await;
    assert!(
        refused.contains(&format!("you were removed from [across] by {alice}@a.test")),
        "{refused}"
    );
    // Bob leaves the room on a; his rooms say so.
    ok(chat(&b_dir, "pb", &["leave", "across"])).await;
    let rooms = ok(chat(&b_dir, "pb", &["rooms"])).await;
    assert_eq!(
        (&rooms[0]["status"], &rooms[0]["homeserver"]),
        (&"left".into(), &"a.test".into())
    );
    trio.stop().await;
}
