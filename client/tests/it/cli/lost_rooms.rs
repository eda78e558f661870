//! Rooms a user left or was removed from: marked, explained, and skipped, while every
//! other room and every other command keeps working — `listen`, `chat` in another room,
//! `login` on a new device; `members` and `leave`.

use serde_json::Value;

use super::{Live, chat, fails, new_device, ok, texts};
use crate::chat::marker;
use crate::common::{Backend, Server};

fn room<'a>(rooms: &'a [Value], name: &str) -> &'a Value {
    rooms
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no room {name} in {rooms:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_and_departed_users_keep_working() {
    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let dir = |n: &str| home.path().join(n);
    let (a_dir, b_dir, c_dir) = (dir("alice"), dir("bob"), dir("carol"));
    let (alice, _) = new_device(&server, &a_dir, "pa").await;
    let (bob, b_tok) = new_device(&server, &b_dir, "pb").await;
    let (carol, c_tok) = new_device(&server, &c_dir, "pc").await;
    let secret = marker();
    let (bob_s, carol_s) = (bob.to_string(), carol.to_string());
    for name in ["general", "other"] {
        ok(chat(&a_dir, "pa", &["create", name])).await;
        for who in [&bob_s, &carol_s] {
            ok(chat(
                &a_dir,
                "pa",
                &["invite", name, who, "--history", "all"],
            ))
            .await;
        }
    }
    ok(chat(&b_dir, "pb", &["accept"])).await;
    ok(chat(&c_dir, "pc", &["accept"])).await;

    // Bob is removed from general; Carol leaves other.
    ok(chat(&a_dir, "pa", &["remove", "general", &bob_s])).await;
    let left = ok(chat(&c_dir, "pc", &["leave", "other"])).await;
    assert_eq!(left[0]["room_name"], "other");
    // Leaving again is refused with what happened.
    let again = fails(chat(&c_dir, "pc", &["leave", "other"])).await;
    assert!(again.contains("error: you left [other] at "), "{again}");

    // The server's view, owner included; a removed or departed user is not a member.
    let members = |lines: Vec<Value>| -> Vec<String> {
        lines
            .iter()
            .map(|m| m["user"].as_str().unwrap().to_string())
            .collect()
    };
    let general = ok(chat(&a_dir, "pa", &["members", "general"])).await;
    assert_eq!(general[0]["owner"], true);
    assert_eq!(general[0]["me"], true);
    assert_eq!(members(general), [alice.to_string(), carol_s.clone()]);
    let other = ok(chat(&a_dir, "pa", &["members", "other"])).await;
    assert_eq!(
        other[1]["trusted_fingerprints"].as_array().unwrap().len(),
        1,
        "Bob's key is trusted in the room"
    );
    assert_eq!(members(other), [alice.to_string(), bob_s.clone()]);

    // Bob's rooms say what happened, who did it and when.
    let rooms = ok(chat(&b_dir, "pb", &["rooms"])).await;
    let g = room(&rooms, "general");
    assert_eq!(g["status"], "removed");
    assert_eq!(g["removed_by"], alice.to_string());
    assert!(g["departed_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(
        g["members"],
        Value::Null,
        "nothing about the room's members"
    );
    assert_eq!(room(&rooms, "other")["status"], "member");
    let rooms = ok(chat(&c_dir, "pc", &["rooms"])).await;
    assert_eq!(room(&rooms, "other")["status"], "left");
    assert_eq!(room(&rooms, "other")["removed_by"], Value::Null);
    let human = super::run({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_secretd-chat"));
        c.arg("--state").arg(&b_dir).arg("rooms");
        c
    })
    .await;
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("[general]") && human.contains(&format!("removed by {alice} at ")),
        "{human}"
    );

    // Posting or chatting in the lost room says so, by name; the device is unharmed.
    let refused = fails(chat(&b_dir, "pb", &["send", "general", "x"])).await;
    assert!(
        refused.contains(&format!(
            "error: you were removed from [general] by {alice} at "
        )),
        "{refused}"
    );
    assert!(
        refused.contains("you can no longer read or post there"),
        "{refused}"
    );
    assert!(
        !refused.contains("FetchMessages"),
        "no RPC names: {refused}"
    );
    let refused = fails(chat(&b_dir, "pb", &["chat", "general"])).await;
    assert!(
        refused.contains("you were removed from [general]"),
        "{refused}"
    );

    // Bob listens to everything and chats in the room he is still in.
    let mut listen = Live::spawn(chat(&b_dir, "pb", &["listen"]), b_dir.join("listen.err"));
    let mut bob_chat = Live::spawn(
        chat(&b_dir, "pb", &["chat", "other"]),
        b_dir.join("chat.err"),
    );
    ok(chat(
        &a_dir,
        "pa",
        &["send", "other", &format!("to other {secret}")],
    ))
    .await;
    let heard = (alice.to_string(), format!("to other {secret}"));
    assert_eq!(bob_chat.next_text().await, heard);
    assert_eq!(listen.next_text().await, heard);
    bob_chat.type_line(&format!("bob in other {secret}"));
    assert_eq!(
        bob_chat.next_text().await,
        (bob_s.clone(), format!("bob in other {secret}"))
    );
    let (status, log) = bob_chat.finish().await;
    assert!(status.success(), "{log}");
    // Alice removes Bob from other too: the listening device is told, by room name, and
    // goes on listening.
    ok(chat(&a_dir, "pa", &["remove", "other", &bob_s])).await;
    let lost = listen.next_where(|v| v["kind"] == "lost").await;
    assert_eq!(lost["room_name"], "other");
    assert_eq!(lost["by"], alice.to_string());
    ok(chat(&a_dir, "pa", &["invite", "other", &bob_s])).await;
    let back = listen.next_where(|v| v["accepted"] == true).await;
    assert_eq!(
        (&back["room_name"], &back["new_room"]),
        (&"other".into(), &true.into())
    );
    ok(chat(
        &a_dir,
        "pa",
        &["send", "other", &format!("welcome back {secret}")],
    ))
    .await;
    assert_eq!(
        listen.next_text().await,
        (alice.to_string(), format!("welcome back {secret}"))
    );
    listen.kill();

    // Carol, who left other, still chats in general.
    ok(chat(
        &c_dir,
        "pc",
        &["send", "general", &format!("carol here {secret}")],
    ))
    .await;

    // New devices log in and skip what they lost.
    let b2 = home.path().join("bob2");
    ok(chat(
        &b2,
        "pb",
        &["login", "--server", &server.url(), "--token", &b_tok],
    ))
    .await;
    let rooms = ok(chat(&b2, "pb", &["rooms"])).await;
    assert_eq!(room(&rooms, "general")["status"], "removed");
    assert_eq!(room(&rooms, "other")["status"], "member", "invited back");
    let c2 = home.path().join("carol2");
    let logged = ok(chat(
        &c2,
        "pc",
        &["login", "--server", &server.url(), "--token", &c_tok],
    ))
    .await;
    let rooms: Vec<Value> = logged
        .into_iter()
        .filter(|l| l["room"].is_string())
        .collect();
    assert_eq!(room(&rooms, "other")["status"], "left");
    assert!(
        texts(&ok(chat(&c2, "pc", &["read", "general"])).await)
            .contains(&(carol_s.clone(), format!("carol here {secret}")))
    );
    server.stop().await;
}
