//! A split view: the homeserver keeps two key logs (two databases under its one signing
//! key and name) and shows Bob the other one. Bob's events gossip the head he saw; Alice's
//! device cannot get it proved consistent with her log and alarms with the evidence,
//! which stays until she acknowledges it. Honest gossip (one log) passes.

use secretd_client::crypto::identity::Identity;
use secretd_client::{Device, Error};

use super::Db;
use crate::common::{Backend, Server, shared_room};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_view_is_caught_through_gossip() {
    let s1 = Server::start(Backend::Sqlite).await;
    let key_file = s1.dir().join("federation-key").display().to_string();
    let (_, mut alice) = s1.new_user("pa").await;
    let (bob_id, mut bob) = s1.new_user("pb").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    let db1 = Db::of(&s1).await;
    db1.wait_logged(bob_id, &bob.fingerprint()).await;

    // Honest gossip: Bob's head is of Alice's log.
    bob.monitor_own_key().await.unwrap();
    bob.send_text(&room, "one log").await.unwrap();
    let got = alice.sync_room(&room).await.unwrap();
    assert!(
        got.iter().any(|e| e.content.is_ok()),
        "the honest event is taken: {:?}",
        got.iter().map(|e| &e.content).collect::<Vec<_>>()
    );
    alice.monitor_own_key().await.unwrap();

    // The second log: the same server key and name, another database, in which only
    // Bob's key is logged.
    let s2 = Server::start_with(Backend::Sqlite, |s| {
        s.federation.signing_key_file = key_file;
    })
    .await;
    let bob_spki = Identity::from_pkcs8(&bob.state().identity_pkcs8)
        .unwrap()
        .public()
        .spki()
        .to_vec();
    s2.api(bob_id).await.post_key(&bob_spki).await.unwrap();
    Db::of(&s2)
        .await
        .wait_logged(bob_id, &bob.fingerprint())
        .await;
    // Bob's device is shown the second log's head (as the server would route his key-log
    // reads), then goes on talking to the first server.
    let mut fresh = bob.state().clone();
    fresh.home_log = None;
    let mut shown = Device::from_state(s2.api(bob_id).await, fresh).unwrap();
    shown.monitor_own_key().await.unwrap();
    let mut state = bob.state().clone();
    state.home_log = shown.state().home_log.clone();
    let forked_head = state.home_log.as_ref().unwrap().head.clone().unwrap();
    assert_eq!(
        forked_head.server_name,
        alice.state().home_log.as_ref().unwrap().server_name
    );
    assert_eq!(
        state.home_log.as_ref().unwrap().public_key,
        alice.state().home_log.as_ref().unwrap().public_key,
        "one signing key"
    );
    let mut bob = Device::from_state(s1.api(bob_id).await, state).unwrap();
    bob.send_text(&room, "two logs").await.unwrap();

    let got = alice.sync_room(&room).await;
    let refused: Vec<String> = match got {
        Ok(events) => events.into_iter().filter_map(|e| e.content.err()).collect(),
        Err(e) => vec![e.to_string()],
    };
    assert!(
        refused.iter().any(|r| r.contains("split view")
            && r.contains(&format!(
                "member {bob_id} saw a head of size {}",
                forked_head.tree_size
            ))),
        "{refused:?}"
    );
    // The alarm stays, with the evidence, until acknowledged.
    for _ in 0..2 {
        match alice.monitor_own_key().await {
            Err(Error::LogFork { evidence, .. }) => {
                let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
                assert_eq!(evidence["gossiped_head"]["log_root"], forked_head.log_root);
                assert_eq!(evidence["gossiped_by"], bob_id.to_string());
                assert!(evidence["this_device_head"]["signature"].is_string());
            }
            other => panic!("no split-view alarm: {other:?}"),
        }
    }
    // The command line: every command stops with exit code 3 and keeps the evidence, until
    // `acknowledge-log-fork`.
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("alice");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("state.json"),
        serde_json::to_vec(alice.state()).unwrap(),
    )
    .unwrap();
    let out = crate::cli::run(crate::cli::chat(&dir, "pa", &["rooms"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("different key logs (a split view)")
            && stderr.contains("secretd-chat acknowledge-log-fork"),
        "{stderr}"
    );
    let kept: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kt-alarm-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let done = crate::cli::ok(crate::cli::chat(&dir, "pa", &["acknowledge-log-fork"])).await;
    assert_eq!(done[0]["acknowledged_forks"], 1);
    crate::cli::ok(crate::cli::chat(&dir, "pa", &["rooms"])).await;

    assert_eq!(alice.acknowledge_log_fork(), 1);
    alice.monitor_own_key().await.unwrap();
    s2.stop().await;
    s1.stop().await;
}
