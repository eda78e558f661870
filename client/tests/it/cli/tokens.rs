//! Tokens: checked before a device keeps them (another user's, a malformed, an expired
//! one, one the server refuses — each refused with the device unchanged and still
//! working); renewed by `chat` from the configured source or from a token saved in
//! another terminal, with nothing missed; and a chat whose token runs out with nothing to
//! renew it stops with a message.

use std::path::Path;
use std::time::Duration;

use super::{Live, Pair, chat, fails, new_device, ok, texts};
use crate::chat::marker;
use crate::common::{Backend, SECRET, Server, token, token_for};

fn saved(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("state.json")).unwrap()
}

fn saved_token(dir: &Path) -> String {
    let state: serde_json::Value = serde_json::from_slice(&saved(dir)).unwrap();
    state["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_checked_before_they_are_kept() {
    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (home.path().join("alice"), home.path().join("bob"));
    let (alice, _) = new_device(&server, &a_dir, "pa").await;
    let (bob, _) = new_device(&server, &b_dir, "pb").await;
    ok(chat(&b_dir, "pb", &["create", "mine"])).await;
    let before = saved(&b_dir);

    let refusals = [
        (
            token(alice),
            format!("error: this token is for user {alice}, but this device belongs to user {bob}"),
        ),
        (
            "not.a-token".to_string(),
            "error: this is not a token from your homeserver".to_string(),
        ),
        (
            token_for(bob, -5, SECRET),
            "error: this token expired at ".to_string(),
        ),
        (
            token_for(bob, 600, "another-homeservers-secret-0123456789abcdef"),
            "refuses this token: ".to_string(),
        ),
    ];
    for (bad, says) in &refusals {
        let err = fails(chat(&b_dir, "pb", &["token", bad])).await;
        assert!(err.contains(says.as_str()), "{says:?} not in {err}");
        assert_eq!(
            saved(&b_dir),
            before,
            "the device is unchanged after {says}"
        );
        // The same token in SECRETD_CHAT_TOKEN is refused before any use, except the one
        // only the server can judge (its signature).
        let mut cmd = chat(&b_dir, "pb", &["send", "mine", "x"]);
        cmd.env("SECRETD_CHAT_TOKEN", bad);
        let out = super::run(cmd).await;
        assert_eq!(out.status.code(), Some(1), "{says}");
        assert_eq!(
            saved(&b_dir),
            before,
            "not saved from the environment: {says}"
        );
    }
    // A new device with a bad token is not created at all.
    let fresh = home.path().join("never");
    let err = fails(chat(
        &fresh,
        "pn",
        &[
            "init",
            "--server",
            &server.url(),
            "--token",
            &token_for(7, -5, SECRET),
        ],
    ))
    .await;
    assert!(err.contains("this token expired at"), "{err}");
    assert!(!fresh.exists());

    // The device still works; a good token is taken, and shown.
    ok(chat(&b_dir, "pb", &["send", "mine", "still works"])).await;
    let good = token_for(bob, 7200, SECRET);
    let shown = ok(chat(&b_dir, "pb", &["token", &good])).await;
    assert_eq!(shown[0]["changed"], true);
    assert_eq!(saved_token(&b_dir), good);

    // A saved token that expired: commands say what to do; a configured source fixes it.
    let short = token_for(bob, 2, SECRET);
    ok(chat(&b_dir, "pb", &["token", &short])).await;
    assert_eq!(
        saved_token(&b_dir),
        short,
        "the user's token wins, even a shorter one"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = fails(chat(&b_dir, "pb", &["send", "mine", "x"])).await;
    assert!(
        err.contains("the token this device holds is refused: this token expired at"),
        "{err}"
    );
    assert!(err.contains("secretd-chat token NEW_TOKEN"), "{err}");
    let file = home.path().join("bob.token");
    std::fs::write(&file, format!("{good}\n")).unwrap();
    ok(chat(
        &b_dir,
        "pb",
        &["token", "--file", file.to_str().unwrap()],
    ))
    .await;
    ok(chat(
        &b_dir,
        "pb",
        &["send", "mine", "with the file's token"],
    ))
    .await;
    let lines = ok(chat(&b_dir, "pb", &["read", "mine"])).await;
    assert_eq!(
        texts(&lines)
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>(),
        ["still works", "with the file's token"]
    );
    server.stop().await;
}

/// Alice posts `n` numbered lines, one every `every`.
async fn alice_posts(a_dir: std::path::PathBuf, tag: String, n: usize, every: Duration) {
    for i in 0..n {
        ok(chat(&a_dir, "pa", &["send", "room", &format!("{tag} {i}")])).await;
        tokio::time::sleep(every).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_renews_its_token_and_misses_nothing() {
    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let Pair {
        a_dir,
        b_dir,
        alice,
        bob,
    } = Pair::in_a_room(&server, home.path()).await;
    let tag = marker();

    // The source: a command that counts its runs and prints an hour-long token.
    let runs = home.path().join("runs");
    let long = home.path().join("long.token");
    std::fs::write(&long, token_for(bob, 3600, SECRET)).unwrap();
    let command = format!("echo run >> {}; cat {}", runs.display(), long.display());
    ok(chat(&b_dir, "pb", &["token", "--command", &command])).await;
    // Then a token that expires four seconds into the conversation.
    ok(chat(&b_dir, "pb", &["token", &token_for(bob, 4, SECRET)])).await;
    std::fs::remove_file(&runs).unwrap();

    let alice_s = alice.to_string();
    let mut bob_chat = Live::spawn(
        chat(&b_dir, "pb", &["chat", "room"]),
        b_dir.join("chat.err"),
    );
    let posting = tokio::spawn(alice_posts(
        a_dir.clone(),
        tag.clone(),
        12,
        Duration::from_millis(600),
    ));
    for i in 0..12 {
        let from_alice = bob_chat
            .next_where(|v| v["kind"] == "text" && v["sender"] == alice_s.as_str())
            .await;
        assert_eq!(
            from_alice["text"],
            format!("{tag} {i}"),
            "Alice's posts, each once, in order, across the renewal"
        );
        if i % 3 == 0 {
            bob_chat.type_line(&format!("bob {tag} {i}"));
        }
    }
    posting.await.unwrap();
    let (status, log) = bob_chat.finish().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains("expired"), "no expiry seen: {log}");
    let ran = std::fs::read_to_string(&runs).unwrap_or_default();
    assert!(ran.lines().count() >= 1, "the token command ran: {log}");
    assert_eq!(saved_token(&b_dir), std::fs::read_to_string(&long).unwrap());
    let bobs: Vec<String> = texts(&ok(chat(&a_dir, "pa", &["read", "room"])).await)
        .into_iter()
        .filter(|(who, _)| *who == bob.to_string())
        .map(|(_, t)| t)
        .collect();
    let typed: Vec<String> = (0..12)
        .step_by(3)
        .map(|i| format!("bob {tag} {i}"))
        .collect();
    assert_eq!(bobs, typed, "every typed line sent once, in order");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_saved_in_another_terminal_is_picked_up_and_none_stops_the_chat() {
    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let Pair {
        a_dir,
        b_dir,
        alice,
        bob,
    } = Pair::in_a_room(&server, home.path()).await;
    let tag = marker();

    // No source: the chat warns, then picks up the token given in "another terminal".
    ok(chat(&b_dir, "pb", &["token", &token_for(bob, 3, SECRET)])).await;
    let mut bob_chat = Live::spawn(
        chat(&b_dir, "pb", &["chat", "room"]),
        b_dir.join("chat.err"),
    );
    ok(chat(
        &a_dir,
        "pa",
        &["send", "room", &format!("{tag} before")],
    ))
    .await;
    assert_eq!(bob_chat.next_text().await.1, format!("{tag} before"));
    ok(chat(
        &b_dir,
        "pb",
        &["token", &token_for(bob, 3600, SECRET)],
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // past the first token's expiry
    ok(chat(
        &a_dir,
        "pa",
        &["send", "room", &format!("{tag} after")],
    ))
    .await;
    assert_eq!(
        bob_chat.next_text().await,
        (alice.to_string(), format!("{tag} after"))
    );
    let (status, log) = bob_chat.finish().await;
    assert!(status.success(), "{log}");

    // Nothing to renew with: a clear stop at expiry, not an endless reconnect loop.
    ok(chat(&b_dir, "pb", &["token", &token_for(bob, 3, SECRET)])).await;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        super::run({
            let mut c = chat(&b_dir, "pb", &["listen"]);
            c.stdin(std::process::Stdio::null());
            c
        }),
    )
    .await
    .expect("listen stops by itself when its token expires");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("note: your token expires at"), "{err}");
    assert!(
        err.contains("error: your token expired at") && err.contains("live updates stopped"),
        "{err}"
    );
    assert!(err.contains("secretd-chat token NEW_TOKEN"), "{err}");
    assert!(!err.contains("reconnecting"), "{err}");
    server.stop().await;
}
