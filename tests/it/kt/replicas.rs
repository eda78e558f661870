//! Postgres: replicas share one log and publish one at a time (the advisory lock), and a
//! publisher that cannot take the lock holds nothing up but the proofs.

use std::time::{Duration, Instant};

use secretd::proto::{GetTreeHeadRequest, MonitorKeyRequest, PostKeyRequest};
use tonic::Code;

use super::*;

/// The publisher's advisory lock key ("secretkt", src/store/postgres/kt.rs).
const PUBLISH_LOCK: i64 = 0x7365_6372_6574_6b74;

fn postgres() -> Option<Backend> {
    Backend::postgres()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
async fn two_replicas_share_one_log_and_take_turns() {
    let Some(b) = postgres() else { return };
    let f = fresh(&b).await;
    let one = TestServer::start_with(f.backend.clone(), |s| s.kt_epoch_ms = 50).await;
    // Replicas of one homeserver share its key.
    let key_file = one.dir().join("federation-key").display().to_string();
    let two = TestServer::start_with(f.backend.clone(), |s| {
        s.kt_epoch_ms = 50;
        s.federation.signing_key_file = key_file.clone();
    })
    .await;
    let public = server_public_key(one.dir());
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let server = if i % 2 == 0 { &one } else { &two };
        let user = random_user();
        let mut c = server.client(user).await;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(15 * i)).await;
            let r = c
                .post_key(PostKeyRequest {
                    key_data: key_pem(1 + i as usize % 3),
                })
                .await
                .unwrap()
                .into_inner();
            (user, r.proof.expect("a proof, whichever replica published"))
        }));
    }
    for t in tasks {
        let (user, proof) = t.await.unwrap();
        check_proof(&proof, "localhost", user, &public, None);
    }
    let url = one.settings.database_url.expose().to_string();
    let sizes = check_stored_heads(&url, &mut two.client(random_user()).await, &public).await;
    assert_eq!(sizes.last(), Some(&40));
    one.stop().await;
    two.stop().await;
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
async fn while_another_holds_the_lock_nothing_is_published_and_nothing_is_lost() {
    use sqlx::Connection;
    let Some(b) = postgres() else { return };
    let f = fresh(&b).await;
    let Backend::Postgres(url) = &f.backend else {
        unreachable!()
    };
    // Someone holds the publisher's lock before the first start: no head at all.
    let mut holder = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(PUBLISH_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    let s = TestServer::start_with(f.backend.clone(), |s| s.kt_epoch_ms = 100).await;
    let public = server_public_key(s.dir());
    let user = random_user();
    let mut c = s.client(user).await;
    let st = expect_code(
        c.get_tree_head(GetTreeHeadRequest::default()).await,
        Code::Unavailable,
    );
    assert!(
        st.message().contains("no key transparency tree head"),
        "{st:?}"
    );
    // PostKey stores the key and answers without a proof after its wait.
    let t0 = Instant::now();
    let r = c
        .post_key(PostKeyRequest {
            key_data: key_pem(1),
        })
        .await
        .unwrap()
        .into_inner();
    let waited = t0.elapsed();
    assert!(r.proof.is_none());
    assert!(r.changed);
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    expect_code(
        c.monitor_key(MonitorKeyRequest {
            user_id: user,
            ..Default::default()
        })
        .await,
        Code::Unavailable,
    );
    // The lock is given back: the next epoch publishes the first head and the key.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(PUBLISH_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    let t0 = Instant::now();
    let proof = loop {
        match c
            .monitor_key(MonitorKeyRequest {
                user_id: user,
                ..Default::default()
            })
            .await
        {
            Ok(r) => break r.into_inner().proof.unwrap(),
            Err(st) => {
                assert!(t0.elapsed() < Duration::from_secs(3), "{st:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let entry = check_proof(&proof, "localhost", user, &public, None);
    assert_eq!(entry.fingerprint, r.fingerprint);
    assert_eq!(stored_heads(url).await.len(), 1, "one head, of size 1");
    holder.close().await.unwrap();
    s.stop().await;
    f.done().await;
}

/// A replica whose publisher has not seen the newest head (its epochs are far apart, so it
/// knows only the head of its start) still answers FetchKey with a proof of every key it
/// serves, against the newest stored head, at once — not a proof against its own stale
/// head that leaves the current key out (after waiting for an epoch that does not come).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
async fn a_replica_behind_the_newest_head_proves_the_keys_it_serves() {
    let Some(b) = postgres() else { return };
    let f = fresh(&b).await;
    let one = TestServer::start_with(f.backend.clone(), |s| s.kt_epoch_ms = 50).await;
    let key_file = one.dir().join("federation-key").display().to_string();
    let behind = TestServer::start_with(f.backend.clone(), |s| {
        s.kt_epoch_ms = 600_000;
        s.federation.signing_key_file = key_file.clone();
    })
    .await;
    let public = server_public_key(one.dir());
    let alice = random_user();
    let mut c = one.client(alice).await;
    for n in [1, 2] {
        let r = c
            .post_key(PostKeyRequest {
                key_data: key_pem(n),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.proof.is_some(), "key {n} logged by the first replica");
    }
    let url = one.settings.database_url.expose().to_string();
    let newest = stored_heads(&url).await.last().unwrap().0;
    let r = behind
        .client(random_user())
        .await
        .fetch_key(secretd::proto::FetchKeyRequest {
            user_id: alice,
            homeserver: String::new(),
            known_tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let served: Vec<Vec<u8>> = std::iter::once(r.current_key.unwrap())
        .chain(r.past_keys)
        .map(|k| k.fingerprint)
        .collect();
    assert_eq!(served, [fingerprint_of(2), fingerprint_of(1)]);
    let proof = r.proof.expect("a proof of the keys served");
    check_proof(&proof, "localhost", alice, &public, None);
    let logged: Vec<Vec<u8>> = proof
        .entries
        .iter()
        .map(|e| e.fingerprint.clone())
        .collect();
    assert_eq!(logged, served, "one entry per key served, in order");
    assert!(
        proof.head.unwrap().tree_size >= newest,
        "against the newest stored head"
    );
    one.stop().await;
    behind.stop().await;
    f.done().await;
}
