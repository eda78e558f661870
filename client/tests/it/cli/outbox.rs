//! `chat`'s outbox: lines typed while the server is down are kept and sent once it is
//! back, in order, each exactly once; the chat goes on receiving afterwards.

use std::time::Duration;

use super::{Live, Pair, chat, ok, texts};
use crate::chat::marker;
use crate::common::{Backend, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_typed_while_the_server_is_down_are_sent_when_it_returns() {
    let mut server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let Pair {
        a_dir,
        b_dir,
        alice,
        bob,
    } = Pair::in_a_room(&server, home.path()).await;
    let tag = marker();
    let (alice_s, bob_s) = (alice.to_string(), bob.to_string());

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
    assert_eq!(
        bob_chat.next_text().await,
        (alice_s.clone(), format!("{tag} before"))
    );
    bob_chat.type_line(&format!("{tag} one"));
    assert_eq!(
        bob_chat.next_text().await,
        (bob_s.clone(), format!("{tag} one"))
    );

    // The server goes away for a few seconds; Bob keeps typing.
    let typed = ["two", "three", "four"];
    let restart = async {
        server.restart(Duration::from_secs(3)).await;
        server
    };
    let typing = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for t in typed {
            bob_chat.type_line(&format!("{tag} {t}"));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (server, ()) = tokio::join!(restart, typing);
    for t in typed {
        assert_eq!(
            bob_chat.next_text().await,
            (bob_s.clone(), format!("{tag} {t}")),
            "sent once the server is back, in order; {}",
            bob_chat.log()
        );
    }
    ok(chat(
        &a_dir,
        "pa",
        &["send", "room", &format!("{tag} after")],
    ))
    .await;
    assert_eq!(
        bob_chat.next_text().await,
        (alice_s.clone(), format!("{tag} after"))
    );
    let (status, log) = bob_chat.finish().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("not sent yet"), "the user was told: {log}");
    assert!(
        log.contains("the server is back: every waiting line is sent"),
        "{log}"
    );

    let all = texts(&ok(chat(&a_dir, "pa", &["read", "room"])).await);
    let expected: Vec<(String, String)> = [
        (&alice_s, "before"),
        (&bob_s, "one"),
        (&bob_s, "two"),
        (&bob_s, "three"),
        (&bob_s, "four"),
        (&alice_s, "after"),
    ]
    .into_iter()
    .map(|(who, t)| (who.clone(), format!("{tag} {t}")))
    .collect();
    assert_eq!(all, expected, "each line exactly once, in order");
    server.stop().await;
}
