//! Pins and safety numbers on the command line: two `secretd-chat` users see the same
//! safety number and mark each other verified; when the server swaps one side's key, the
//! other side is warned (invite refused, `members` and `whoami` say so) until it accepts
//! the new key on purpose. A key, or an erasure of the account, that the user never made
//! stops every command with the key alarm until acknowledged.

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

/// Runs a command that must stop on a key alarm (exit code 3); its JSON lines and stderr.
async fn alarms(cmd: std::process::Command) -> (Vec<serde_json::Value>, String) {
    let out = super::run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    (lines, stderr)
}

/// The evidence files a state directory holds.
fn evidence_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with("kt-alarm-") && name.ends_with(".json")
    });
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_the_user_never_posted_stops_every_command_until_acknowledged() {
    use std::os::unix::fs::PermissionsExt;

    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let b_dir = home.path().join("bob");
    let (bob, tok) = super::new_device(&server, &b_dir, "pb").await;
    let db = Db::of(&server).await;
    let mine = ok(chat(&b_dir, "pb", &["whoami"])).await;
    assert!(mine[0]["fingerprint"].is_string(), "{mine:?}");

    // The server logs a key of its own for Bob.
    let evil = Identity::generate().unwrap();
    db.set_current_key(bob, evil.public().spki()).await;
    let served = fingerprint_hex(&evil.fingerprint());
    for round in 1..=2 {
        let (lines, stderr) = alarms(chat(&b_dir, "pb", &["rooms"])).await;
        assert!(
            stderr.contains("ALARM: your homeserver's key log holds a key for you")
                && stderr.contains(&format!("entry 2 (key {served}"))
                && stderr.contains("secretd-chat acknowledge-key-alarm 2"),
            "{stderr}"
        );
        let kept = lines.iter().find(|l| l["evidence"].is_string()).unwrap();
        assert_eq!(kept["newest_seq"], 2);
        let files = evidence_in(&b_dir);
        assert_eq!(files.len(), round, "one evidence file per alarm");
        let path = std::path::PathBuf::from(kept["evidence"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let evidence: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(evidence["entries"][0]["fingerprint"], served.as_str());
        assert_eq!(evidence["user"], bob);
    }

    // A new device of Bob alarms at login, keeps the evidence, and is not set up.
    let c_dir = home.path().join("bob2");
    let server_url = server.url();
    let login = |extra: &[&str]| {
        let mut args = vec!["login", "--server", &server_url, "--token", &tok];
        args.extend_from_slice(extra);
        chat(&c_dir, "pb", &args)
    };
    let (_, stderr) = alarms(login(&[])).await;
    assert!(stderr.contains("--acknowledge-key-alarm 2"), "{stderr}");
    assert_eq!(evidence_in(&c_dir).len(), 1);
    assert!(!c_dir.join("state.json").exists());

    // Acknowledging less than the alarm named still alarms; more than the log holds is
    // refused; the alarm's own number lets the device go on.
    alarms(chat(&b_dir, "pb", &["acknowledge-key-alarm", "1"])).await;
    let refused = fails(chat(&b_dir, "pb", &["acknowledge-key-alarm", "9"])).await;
    assert!(refused.contains("there is no entry 9"), "{refused}");
    let done = ok(chat(&b_dir, "pb", &["acknowledge-key-alarm", "2"])).await;
    assert_eq!(done[0]["acknowledged_seq"], 2);
    ok(chat(&b_dir, "pb", &["rooms"])).await;
    ok(login(&["--acknowledge-key-alarm", "2"])).await;
    ok(chat(&c_dir, "pb", &["rooms"])).await;
    server.stop().await;
}

/// The server logs an erasure of Bob that he did not ask for: every command stops on the
/// key alarm (exit code 3), says the server logged the account as erased, and keeps the
/// evidence, until he acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erasure_the_user_did_not_ask_for_stops_every_command() {
    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let b_dir = home.path().join("bob");
    let (bob, _) = super::new_device(&server, &b_dir, "pb").await;
    let db = Db::of(&server).await;
    ok(chat(&b_dir, "pb", &["whoami"])).await;
    db.record_erasure(bob).await;
    db.wait_erasure_logged(bob).await;
    let (lines, stderr) = alarms(chat(&b_dir, "pb", &["rooms"])).await;
    assert!(
        stderr.contains("entry 2 (logged at ")
            && stderr.contains(&format!(
                "records that the homeserver erased this account (user {bob}): the server logged \
             the account as erased"
            ))
            && stderr.contains(
                "advice: your homeserver (or whoever controls its database) \
             logged your account as erased, and this device did not erase it"
            )
            && stderr.contains("secretd-chat acknowledge-key-alarm 2"),
        "{stderr}"
    );
    let kept = lines.iter().find(|l| l["evidence"].is_string()).unwrap();
    let path = std::path::PathBuf::from(kept["evidence"].as_str().unwrap());
    let evidence: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        evidence["entries"][0]["fingerprint"],
        "00".repeat(32).as_str()
    );
    ok(chat(&b_dir, "pb", &["acknowledge-key-alarm", "2"])).await;
    ok(chat(&b_dir, "pb", &["rooms"])).await;
    server.stop().await;
}
