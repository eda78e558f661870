//! Two people chat: set-up, a room, an invite with history from now, concurrent posts
//! resolved by the retry path, a second device restored from the password, and no
//! plaintext on the server.

use std::collections::BTreeSet;

use secretd_client::device::{Content, History, Incoming};
use secretd_client::{Device, Error};

use secretd_client::device::posting::PostGate;

use crate::common::{Backend, Server, shared_room};

/// Random text that must never appear on the server.
pub fn marker() -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    format!("PLAINTEXT-MARKER-{}", hex::encode(r))
}

/// The texts of `events`, each of which must have decrypted to one.
pub fn texts(events: &[Incoming]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.content {
            Ok(Content::Text(t)) => t.clone(),
            other => panic!("event {} did not decrypt to text: {other:?}", e.event_id),
        })
        .collect()
}

/// Whether any byte of the server's storage holds `needle`: every file of the SQLite data
/// directory, or every row of every Postgres table (bytes appear there as hex).
pub async fn server_holds(server: &Server, needle: &[u8]) -> bool {
    match &server.backend {
        Backend::Sqlite => {
            let mut checked = 0;
            let mut found = false;
            for entry in std::fs::read_dir(server.dir()).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                checked += bytes.len();
                found |= bytes.windows(needle.len()).any(|w| w == needle);
            }
            assert!(checked > 0, "no database bytes were read");
            found
        }
        Backend::Postgres(url) => {
            use sqlx::Row;
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert!(tables.iter().any(|t| t == "events"), "tables: {tables:?}");
            let hex_needle = hex::encode(needle);
            let raw_needle = String::from_utf8_lossy(needle).into_owned();
            let mut found = false;
            for table in tables {
                // The table names come from the catalogue, not from input.
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT coalesce(string_agg(t::text, ''), '') FROM \"{table}\" t"
                )))
                .fetch_one(&mut conn)
                .await
                .unwrap();
                let text: String = row.get(0);
                found |= text.contains(&hex_needle) || text.contains(&raw_needle);
            }
            found
        }
    }
}

/// Asserts the server never stored `secret`, with a control: the public key it must hold
/// is found by the same search.
pub async fn assert_server_never_saw(server: &Server, stored_spki: &[u8], secret: &str) {
    assert!(
        server_holds(server, stored_spki).await,
        "control failed: the search does not find a public key the server stores"
    );
    assert!(
        !server_holds(server, secret.as_bytes()).await,
        "the server's storage holds the plaintext {secret:?}"
    );
}

async fn two_people_chat(backend: Backend) {
    let server = Server::start(backend).await;
    let secret = marker();
    let (_alice_id, mut alice) = server.new_user("alice's password").await;
    let (bob_id, mut bob) = server.new_user("bob's password").await;

    let room = alice
        .create_room(&format!("general {secret}"), vec![], "")
        .await
        .unwrap();
    alice
        .send_text(&room, &format!("before bob {secret}"))
        .await
        .unwrap();
    alice
        .invite(
            &room,
            &secretd_client::user::local(bob_id),
            History::FromNow,
            false,
        )
        .await
        .unwrap();
    let accepted = bob.accept_invites().await.unwrap();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].result, Ok(format!("general {secret}")));

    // Both post at once: counters collide and the retry path resolves them.
    const EACH: usize = 12;
    let post_all = |mut d: Device, who: &'static str, secret: String, room: String| async move {
        for i in 0..EACH {
            d.send_text(&room, &format!("{who} {i} {secret}"))
                .await
                .unwrap();
        }
        d
    };
    let (a, b) = tokio::join!(
        tokio::spawn(post_all(alice, "alice", secret.clone(), room.clone())),
        tokio::spawn(post_all(bob, "bob", secret.clone(), room.clone())),
    );
    let (mut alice, mut bob) = (a.unwrap(), b.unwrap());

    let expected: BTreeSet<String> = (0..EACH)
        .flat_map(|i| [format!("alice {i} {secret}"), format!("bob {i} {secret}")])
        .collect();
    let alice_view = alice.history(&room).await.unwrap();
    let bob_view = bob.history(&room).await.unwrap();
    let alice_texts = texts(&alice_view.events);
    let bob_texts = texts(&bob_view.events);
    assert_eq!(alice_texts.len(), 2 * EACH + 1);
    assert_eq!(alice_texts[0], format!("before bob {secret}"));
    assert_eq!(
        bob_view.hidden, 1,
        "the message before the invite is not Bob's to read"
    );
    assert_eq!(bob_texts.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(&alice_texts[1..], &bob_texts[..], "both see one order");

    // No counter was used twice: counters strictly increase with event ids.
    let counters: Vec<u64> = alice_view.events.iter().map(|e| e.counter).collect();
    assert!(counters.windows(2).all(|w| w[0] < w[1]), "{counters:?}");

    // Each per-person order is kept.
    for who in ["alice", "bob"] {
        let mine: Vec<&String> = bob_texts.iter().filter(|t| t.starts_with(who)).collect();
        let want: Vec<String> = (0..EACH).map(|i| format!("{who} {i} {secret}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }

    // Bob's second device: from the password alone it reads everything Bob could.
    let wrong = Device::login(server.api(bob_id).await, "not bob's password").await;
    assert!(
        matches!(wrong, Err(Error::WrongPassword)),
        "{:?}",
        wrong.err()
    );
    let mut bob2 = Device::login(server.api(bob_id).await, "bob's password")
        .await
        .unwrap();
    let bob2_view = bob2.history(&room).await.unwrap();
    assert_eq!(texts(&bob2_view.events), bob_texts);
    assert_eq!(bob2_view.hidden, 1);
    assert_eq!(bob2.room(&room).unwrap().name, format!("general {secret}"));

    // The second device posts, and the first reads it.
    bob2.send_text(&room, &format!("from bob's phone {secret}"))
        .await
        .unwrap();
    let new = bob.sync_room(&room).await.unwrap();
    assert_eq!(
        texts(&new[new.len() - 1..]),
        vec![format!("from bob's phone {secret}")]
    );

    // Alice's second device also restores the room, including the message before Bob.
    let (alice_id, _) = (alice.me().user_id, ());
    let mut alice2 = Device::login(server.api(alice_id).await, "alice's password")
        .await
        .unwrap();
    let alice2_view = alice2.history(&room).await.unwrap();
    assert_eq!(alice2_view.hidden, 0);
    assert_eq!(alice2_view.events.len(), 2 * EACH + 2);

    let spki = alice
        .api()
        .fetch_key(alice_id, "")
        .await
        .unwrap()
        .current
        .key_data;
    assert_server_never_saw(&server, &spki, &secret).await;
    assert_server_never_saw(&server, &spki, "bob's password").await;
    let alice_private = alice.state().identity_pkcs8.clone();
    assert!(
        !server_holds(&server, &alice_private).await,
        "the private key is stored unwrapped"
    );
    server.stop().await;
}

/// A counter race made deterministic with the post gate: Bob's post is held after he
/// picked counter n, Alice takes n meanwhile, Bob's post is refused and goes out at n + 1
/// after the retry path (resync, new counter, new salt and signature).
async fn counter_race_is_resolved_by_the_retry_path(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, mut alice) = server.new_user("pw a").await;
    let (bob_id, mut bob) = server.new_user("pw b").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
    let (resume, resume_rx) = tokio::sync::mpsc::unbounded_channel();
    bob.post_gate = Some(PostGate {
        reached: reached_tx,
        resume: resume_rx,
    });
    let r = room.clone();
    let bob_task = tokio::spawn(async move {
        let sent = bob.send_text(&r, "bob's").await.unwrap();
        (bob, sent)
    });
    let n = reached.recv().await.unwrap();
    let alice_sent = alice.send_text(&room, "alice's").await.unwrap();
    assert_eq!(alice_sent.counter, n, "Alice takes the counter Bob picked");
    resume.send(()).unwrap();
    assert_eq!(
        reached.recv().await.unwrap(),
        n + 1,
        "Bob's retry moves past the new head"
    );
    drop(resume);
    let (mut bob, bob_sent) = bob_task.await.unwrap();
    assert_eq!((bob_sent.counter, bob_sent.refused), (n + 1, 1));
    assert_eq!(bob_sent.event_id, alice_sent.event_id + 1);
    for dev in [&mut alice, &mut bob] {
        let seen = texts(&dev.history(&room).await.unwrap().events);
        assert_eq!(seen, ["alice's", "bob's"]);
    }
    server.stop().await;
}

crate::on_both_stores!(two_people_chat, counter_race_is_resolved_by_the_retry_path);
