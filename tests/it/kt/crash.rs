//! The real binary killed with SIGKILL after an epoch, inside one (its transaction
//! written, held open by the test hook `SECRETD_TESTHOOK_KT_PAUSE_MS`) and before one
//! (keys stored, none logged yet), then restarted on the same database: every key is
//! logged exactly once, the heads are unique and each extends the last, every proof
//! verifies, and `secretd kt-verify` passes.

use std::time::Duration;

use secretd::proto::{FetchKeyRequest, PostKeyRequest};

use super::*;

both_backends!(sigkill_before_during_and_after_an_epoch_loses_nothing);

struct Node {
    p: ServerProcess,
}

async fn serve(dir: &std::path::Path, url: &str, extra: &[(&str, &str)]) -> Node {
    let data = dir.display().to_string();
    let mut envs = vec![
        ("SECRETD_JWT_SECRET", SECRET),
        ("SECRETD_DB_TIMEOUT_MS", "20000"),
    ];
    envs.extend_from_slice(extra);
    let p = spawn_binary(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            url,
            "--data-dir",
            &data,
        ],
        &envs,
        dir,
    )
    .await;
    Node { p }
}

impl Node {
    async fn client(&self, user: u64) -> Client {
        client_at(&self.p.addr, token(user, 3600)).await
    }

    /// SIGKILL: no shutdown of any kind.
    async fn kill(mut self) {
        self.p.child.start_kill().unwrap();
        self.p.child.wait().await.unwrap();
    }

    /// Waits for a line of its log containing `text`.
    async fn wait_for_log(&mut self, text: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = self.p.stderr_lines.recv().await {
                if line.contains(text) {
                    return;
                }
            }
            panic!("the server exited before logging {text:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {text:?} in the log within 10 s"));
    }
}

async fn post(node: &Node, user: u64, key: usize) -> Option<secretd::proto::KeyProof> {
    let mut c = node.client(user).await;
    c.post_key(PostKeyRequest {
        key_data: key_pem(key),
    })
    .await
    .unwrap()
    .into_inner()
    .proof
}

async fn sigkill_before_during_and_after_an_epoch_loses_nothing(b: Backend) {
    let f = fresh(&b).await;
    let dir = tempfile::tempdir().unwrap();
    let url = f.backend.url(dir.path());
    let fast = [("SECRETD_KT_EPOCH_MS", "100")];
    let users: Vec<u64> = (0..5).map(|_| random_user()).collect();

    // After: two keys published (PostKey answered with their proofs), then SIGKILL.
    let node = serve(dir.path(), &url, &fast).await;
    let public = server_public_key(dir.path());
    for (i, u) in users[..2].iter().enumerate() {
        let proof = post(&node, *u, 1 + i).await.expect("published");
        check_proof(&proof, "localhost", *u, &public, None);
    }
    node.kill().await;

    // During: an epoch holding a key is written and waits before its COMMIT; SIGKILL
    // there.
    let mut node = serve(
        dir.path(),
        &url,
        &[
            ("SECRETD_KT_EPOCH_MS", "100"),
            ("SECRETD_TESTHOOK_KT_PAUSE_MS", "30000"),
        ],
    )
    .await;
    let mut c = node.client(users[2]).await;
    let pending = tokio::spawn(async move {
        c.post_key(PostKeyRequest {
            key_data: key_pem(3),
        })
        .await
    });
    node.wait_for_log("pausing before COMMIT").await;
    node.kill().await;
    // The call was cut off with the process, or answered without a proof.
    if let Ok(Ok(r)) = pending.await {
        assert!(r.into_inner().proof.is_none());
    }

    // Before: keys stored, the next epoch a minute away; SIGKILL before it. (The epoch
    // at start logs the key of the killed epoch.)
    let node = serve(
        dir.path(),
        &url,
        &[
            ("SECRETD_KT_EPOCH_MS", "60000"),
            ("SECRETD_UNARY_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    for (i, u) in users[3..].iter().enumerate() {
        assert!(post(&node, *u, 1 + i).await.is_none(), "not published yet");
    }
    node.kill().await;

    // Restarted: everything is logged once, and checks out.
    let node = serve(dir.path(), &url, &fast).await;
    let mut c = node.client(random_user()).await;
    let mut head = None;
    for (i, u) in users.iter().enumerate() {
        let keys = c
            .fetch_key(FetchKeyRequest {
                user_id: *u,
                homeserver: String::new(),
                known_tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let proof = keys.proof.expect("every key is logged");
        let entry = check_proof(&proof, "localhost", *u, &public, None);
        assert_eq!(entry.seq, 1, "user {i} logged once");
        assert_eq!(entry.fingerprint, keys.current_key.unwrap().fingerprint);
        head = proof.head;
    }
    let head = head.unwrap();
    assert_eq!(head.tree_size, 5, "five keys, five entries");
    assert_eq!(
        sql_i64(
            &url,
            "SELECT count(*) FROM public_keys WHERE kt_leaf IS NULL"
        )
        .await,
        0
    );
    assert_eq!(
        sql_i64(&url, "SELECT count(DISTINCT kt_leaf) FROM public_keys").await,
        5
    );
    let sizes = check_stored_heads(&url, &mut c, &public).await;
    assert_eq!(sizes.last(), Some(&5));
    node.kill().await;
    let data = dir.path().display().to_string();
    let out = run_binary(
        &["kt-verify", "--database-url", &url, "--data-dir", &data],
        dir.path(),
        &[],
    );
    assert!(
        out.status.success(),
        "kt-verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("5 entries of 5 users"), "{said}");
    f.done().await;
}
