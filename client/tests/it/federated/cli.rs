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

/// Bob of b chats in a room on a with a home token that expires six seconds in: his
/// device renews it from its token command, and the token for a (which never outlives
/// the home token) with it; Alice's posts across both expiries all arrive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_for_another_homeserver_are_renewed_and_nothing_is_missed() {
    let trio = Trio::start().await;
    let home = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (home.path().join("alice"), home.path().join("bob"));
    let (alice, bob) = (fresh_user(), fresh_user());
    ok(chat(
        &a_dir,
        "pa",
        &["init", "--server", &trio.a.url(), "--token", &token(alice)],
    ))
    .await;
    ok(chat(
        &b_dir,
        "pb",
        &["init", "--server", &trio.b.url(), "--token", &token(bob)],
    ))
    .await;
    ok(chat(&a_dir, "pa", &["create", "across"])).await;
    ok(chat(
        &a_dir,
        "pa",
        &["invite", "across", &format!("{bob}@b.test")],
    ))
    .await;
    ok(chat(&b_dir, "pb", &["accept"])).await;
    let long = home.path().join("bob.token");
    std::fs::write(
        &long,
        crate::common::token_for(bob, 3600, crate::common::SECRET),
    )
    .unwrap();
    ok(chat(
        &b_dir,
        "pb",
        &["token", "--command", &format!("cat {}", long.display())],
    ))
    .await;
    ok(chat(
        &b_dir,
        "pb",
        &[
            "token",
            &crate::common::token_for(bob, 6, crate::common::SECRET),
        ],
    ))
    .await;

    let mut bob_chat = Live::spawn(
        chat(&b_dir, "pb", &["chat", "across"]),
        b_dir.join("chat.err"),
    );
    let alice_name = format!("{alice}@a.test");
    // 16 posts 0.7 s apart: past the first token's expiry and the server's 5-second
    // leeway for fed-user tokens.
    for i in 0..16 {
        ok(chat(&a_dir, "pa", &["send", "across", &format!("a{i}")])).await;
        let seen = bob_chat
            .next_where(|v| v["kind"] == "text" && v["sender"] == alice_name.as_str())
            .await;
        assert_eq!(seen["text"], format!("a{i}"), "{}", bob_chat.log());
        if i % 4 == 0 {
            bob_chat.type_line(&format!("b{i}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    let (status, log) = bob_chat.finish().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains("expired"), "{log}");
    let from_bob: Vec<String> = texts(&ok(chat(&a_dir, "pa", &["read", "across"])).await)
        .into_iter()
        .filter(|(who, _)| *who == format!("{bob}@b.test"))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(from_bob, ["b0", "b4", "b8", "b12"]);
    trio.stop().await;
}
