//! The "erased" entry (DESIGN §13, docs/kt.md §1 and §8): an erasure of a user with
//! logged keys is logged once, at the next epoch, as an entry of 32 zero bytes chained to
//! their last one and proved by the map (MonitorKey); FetchKey stays NOT_FOUND; an
//! erasure of a user with no logged key logs nothing, and a key posted but not logged
//! when its user is erased is never logged; `secretd kt-verify` passes, and names an
//! erasure whose recorded leaf is not its erased entry.

use std::time::{Duration, Instant};

use secretd::proto::{
    DeleteAccountRequest, FetchKeyRequest, GetTreeHeadRequest, KeyProof, MonitorKeyRequest,
    PostKeyRequest,
};
use tonic::Code;

use super::proofs::blob;
use super::verify_cli::{fails_naming, kt_verify};
use super::*;

both_backends!(
    an_erasure_is_logged_once_after_the_users_keys,
    erasures_without_a_logged_key_log_nothing,
);

const SERVER: &str = "localhost";

/// DeleteAccount of `user` by themself, with a fresh token.
async fn delete(s: &TestServer, user: u64) {
    s.client(user)
        .await
        .delete_account(DeleteAccountRequest {
            user_id: user,
            erase_messages: false,
        })
        .await
        .expect("DeleteAccount");
}

async fn post(s: &TestServer, user: u64, key: usize) {
    s.client(user)
        .await
        .post_key(PostKeyRequest {
            key_data: key_pem(key),
        })
        .await
        .expect("PostKey");
}

fn monitor(user: u64, after_seq: u64, known_tree_size: u64) -> MonitorKeyRequest {
    MonitorKeyRequest {
        user_id: user,
        homeserver: String::new(),
        after_seq,
        known_tree_size,
    }
}

/// MonitorKey of `user` (every entry, newest first) once their newest entry is `seq`
/// (waits up to 10 s).
async fn entries_through(c: &mut Client, user: u64, seq: u64, known: u64) -> KeyProof {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let proof = c
            .monitor_key(monitor(user, 0, known))
            .await
            .expect("MonitorKey")
            .into_inner()
            .proof
            .expect("a proof");
        if proof.entries[0].seq >= seq {
            return proof;
        }
        assert!(
            Instant::now() < deadline,
            "entry {seq} of {user} never logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ms() -> u64 {
    (secretd::time::now_micros() / 1000) as u64
}

async fn an_erasure_is_logged_once_after_the_users_keys(b: Backend) {
    let f = fresh(&b).await;
    let s = TestServer::start_with(f.backend.clone(), |s| s.kt_epoch_ms = 50).await;
    let public = server_public_key(s.dir());
    let url = s.settings.database_url.expose().to_string();
    let (alice, carol) = (random_user(), random_user());
    post(&s, alice, 1).await;
    post(&s, alice, 2).await;
    let mut c = s.client(carol).await;
    let before = c
        .get_tree_head(GetTreeHeadRequest { known_tree_size: 0 })
        .await
        .unwrap()
        .into_inner()
        .head
        .unwrap();

    let erased_from = now_ms();
    delete(&s, alice).await;
    let erased_by = now_ms();
    let proof = entries_through(&mut c, alice, 3, before.tree_size).await;
    // Proved like any entry: signed head, map path to the newest entry, chain, and the
    // head extends the one seen before the erasure.
    let newest = check_proof(
        &proof,
        SERVER,
        alice,
        &public,
        Some((before.tree_size, &before.log_root)),
    );
    assert_eq!(
        (newest.seq, newest.fingerprint.as_slice()),
        (3, &[0u8; 32][..]),
        "the erased entry"
    );
    assert!(
        (erased_from..=erased_by).contains(&newest.posted_at_ms),
        "dated at the erasure: {} not in {erased_from}..={erased_by}",
        newest.posted_at_ms
    );
    assert_eq!(proof.entries.len(), 3);
    assert_eq!(proof.entries[1].fingerprint, fingerprint_of(2));
    assert_eq!(
        newest.prev_entry_hash,
        entry_hash(SERVER, alice, &proof.entries[1]),
        "chained to the user's last key"
    );
    // FetchKey stays NOT_FOUND.
    let err = c
        .fetch_key(FetchKeyRequest {
            user_id: alice,
            homeserver: String::new(),
            known_tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("erased their account"), "{err:?}");

    // Erasing again logs nothing more: an epoch after it (carol's key waits for one)
    // leaves alice at entry 3.
    delete(&s, alice).await;
    post(&s, carol, 3).await;
    let again = entries_through(&mut c, alice, 3, 0).await;
    assert_eq!(again.entries[0].seq, 3);
    assert_eq!(
        sql_i64(
            &url,
            &format!("SELECT COUNT(*) FROM kt_entries WHERE user_id = {alice}")
        )
        .await,
        3
    );
    let dir = s.dir().to_path_buf();
    let (ok, stdout, stderr) = kt_verify(&url, &dir, &[]);
    assert!(ok, "kt-verify: {stderr}");
    assert!(stdout.contains("4 entries of 2 users"), "{stdout}");

    // kt-verify names an erasure whose leaf is not its erased entry, and one marked
    // published without an entry for a user who has some.
    let leaf = newest.leaf_index;
    sql(
        &url,
        &format!("UPDATE erased_users SET kt_leaf = 0 WHERE user_id = {alice}"),
    )
    .await;
    fails_naming(
        &url,
        &dir,
        &[],
        &format!("the erasure of user {alice} is logged at leaf 0"),
    );
    sql(
        &url,
        &format!("UPDATE erased_users SET kt_leaf = NULL WHERE user_id = {alice}"),
    )
    .await;
    fails_naming(
        &url,
        &dir,
        &[],
        &format!("the erasure of user {alice} is marked published without an entry"),
    );
    sql(
        &url,
        &format!("UPDATE erased_users SET kt_leaf = {leaf} WHERE user_id = {alice}"),
    )
    .await;
    let (ok, _, stderr) = kt_verify(&url, &dir, &[]);
    assert!(ok, "restored: {stderr}");
    s.stop().await;
    f.done().await;
}

async fn erasures_without_a_logged_key_log_nothing(b: Backend) {
    let f = fresh(&b).await;
    let mut s = TestServer::start_with(f.backend.clone(), |s| s.kt_epoch_ms = 50).await;
    let url = s.settings.database_url.expose().to_string();
    let dir = s.dir().to_path_buf();
    let (bob, dave, eve, carol) = (random_user(), random_user(), random_user(), random_user());
    // Bob never posted a key.
    delete(&s, bob).await;
    post(&s, dave, 1).await;
    // With no server running (no publisher), Dave and Eve have keys posted but not logged
    // (written as PostKey writes them), and both are erased by the operator.
    s.halt().await;
    let at = secretd::time::now_micros();
    for (user, seq, key) in [(dave, 2, 2), (eve, 1, 3)] {
        sql(
            &url,
            &format!(
                "INSERT INTO public_keys (user_id, seq, spki_der, fingerprint, posted_at) \
                 VALUES ({user}, {seq}, {}, {}, {at})",
                blob(&url, b"spki"),
                blob(&url, &fingerprint_of(key))
            ),
        )
        .await;
    }
    let data = dir.display().to_string();
    for user in [dave, eve] {
        let id = user.to_string();
        let out = run_binary(
            &[
                "admin",
                "erase-user",
                "--user",
                &id,
                "--database-url",
                &url,
                "--data-dir",
                &data,
            ],
            &dir,
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = s.restart().await;
    // An epoch after the erasures: Carol's key waits for one, and the erasures are older.
    post(&s, carol, 1).await;
    let mut c = s.client(carol).await;
    for user in [bob, eve] {
        let err = c.monitor_key(monitor(user, 0, 0)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{user}: {err:?}");
    }
    // Dave: his logged key, then the erased entry; the unlogged key never got one.
    let proof = entries_through(&mut c, dave, 2, 0).await;
    let seen: Vec<_> = proof
        .entries
        .iter()
        .map(|e| (e.seq, e.fingerprint.clone()))
        .collect();
    assert_eq!(seen, [(2, vec![0; 32]), (1, fingerprint_of(1))]);
    assert_eq!(
        sql_i64(
            &url,
            &format!(
                "SELECT COUNT(*) FROM erased_users WHERE user_id IN ({bob}, {eve}) \
                 AND kt_published AND kt_leaf IS NULL"
            )
        )
        .await,
        2,
        "done, with no entry"
    );
    assert_eq!(
        sql_i64(
            &url,
            "SELECT COUNT(*) FROM erased_users WHERE NOT kt_published"
        )
        .await,
        0
    );
    let (ok, stdout, stderr) = kt_verify(&url, &dir, &[]);
    assert!(ok, "kt-verify: {stderr}");
    assert!(stdout.contains("3 entries of 2 users"), "{stdout}");
    s.stop().await;
    f.done().await;
}
