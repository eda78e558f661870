//! Pins and safety numbers on the command line: two `secretd-chat` users see the same
//! safety number and mark each other verified; when the server swaps one side's key, the
//! other side is warned (invite refused, `members` and `whoami` say so) until it accepts
//! the new key on purpose.

use secretd_client::crypto::identity::{Identity, fingerprint_hex};

use super::{Pair, chat, fails, ok};
use crate::common::{Backend, Server};
use crate::hostile::Db;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn safety_numbers_match_and_a_swapped_key_is_a_warning() {
    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let Pair {
        a_dir,
        b_dir,
        alice,
        bob,
    } = Pair::in_a_room(&server, home.path()).await;
    let (alice_s, bob_s) = (alice.to_string(), bob.to_string());

    let a_side = ok(chat(&a_dir, "pa", &["safety", &bob_s])).await;
    let b_side = ok(chat(&b_dir, "pb", &["safety", &alice_s])).await;
    let number = a_side[0]["safety_number"].as_str().unwrap().to_string();
    assert_eq!(number, b_side[0]["safety_number"].as_str().unwrap());
    assert_eq!(number.chars().filter(char::is_ascii_digit).count(), 60);
    assert_eq!(a_side[0]["verified"], false);

    let mut digits: Vec<&str> = vec!["verify", &bob_s];
    digits.extend(number.split(' '));
    let wrong = fails(chat(&a_dir, "pa", &["verify", &bob_s, "12345"])).await;
    assert!(wrong.contains("that is not the safety number"), "{wrong}");
    ok(chat(&a_dir, "pa", &digits)).await;
    let members = ok(chat(&a_dir, "pa", &["members", "room"])).await;
    let bob_line = members
        .iter()
        .find(|m| m["user"] == bob_s.as_str())
        .unwrap();
    assert_eq!(bob_line["pin"], "verified");
    let me = ok(chat(&a_dir, "pa", &["whoami"])).await;
    assert_eq!(
        (me[0]["pinned"].as_u64(), me[0]["verified"].as_u64()),
        (Some(1), Some(1))
    );

    // The server swaps Bob's key for one of its own.
    let evil = Identity::generate().unwrap();
    Db::of(&server)
        .await
        .set_current_key(bob, evil.public().spki())
        .await;
    ok(chat(&a_dir, "pa", &["create", "second"])).await;
    let warned = fails(chat(&a_dir, "pa", &["invite", "second", &bob_s])).await;
    let served = fingerprint_hex(&evil.fingerprint());
    assert!(
        warned.contains(&format!(
            "the server now serves a different key for user {bob_s}: {served}"
        )),
        "{warned}"
    );
    assert!(
        warned.contains(&format!("secretd-chat safety {bob_s}")),
        "{warned}"
    );
    let members = ok(chat(&a_dir, "pa", &["members", "room"])).await;
    let bob_line = members
        .iter()
        .find(|m| m["user"] == bob_s.as_str())
        .unwrap();
    assert_eq!(bob_line["pin"], "key changed, not accepted");
    assert_eq!(bob_line["offered_fingerprint"], served.as_str());
    let me = ok(chat(&a_dir, "pa", &["whoami"])).await;
    assert_eq!(me[0]["changed_keys"][0], bob_s.as_str());
    // The safety number still covers the pinned key: it still matches Bob's.
    let again = ok(chat(&a_dir, "pa", &["safety", &bob_s])).await;
    assert_eq!(again[0]["safety_number"], number.as_str());

    // Accepted on purpose, the new key is pinned, unverified, and invites go to it.
    let trusted = ok(chat(&a_dir, "pa", &["trust", &bob_s])).await;
    assert_eq!(trusted[0]["fingerprint"], served.as_str());
    ok(chat(&a_dir, "pa", &["invite", "second", &bob_s])).await;
    let changed = ok(chat(&a_dir, "pa", &["safety", &bob_s])).await;
    assert_ne!(changed[0]["safety_number"], number.as_str());
    assert_eq!(changed[0]["verified"], false);
    server.stop().await;
}
