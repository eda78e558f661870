//! `secretd kt-verify`: passes on a log the server wrote, and fails — exit 1, naming the
//! first mismatch — after a row is tampered with, or against another key.

use secretd::proto::PostKeyRequest;

use super::proofs::blob;
use super::*;

both_backends!(kt_verify_passes_and_names_what_was_tampered_with);

/// Runs `secretd kt-verify` on the database at `url` with the data directory `dir`.
pub(super) fn kt_verify(
    url: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (bool, String, String) {
    let data = dir.display().to_string();
    let mut args = vec!["kt-verify", "--database-url", url, "--data-dir", &data];
    args.extend_from_slice(extra);
    let out = run_binary(&args, dir, &[]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kt-verify and expects a failure whose message contains `wanted`.
#[track_caller]
pub(super) fn fails_naming(url: &str, dir: &std::path::Path, extra: &[&str], wanted: &str) {
    let (ok, stdout, stderr) = kt_verify(url, dir, extra);
    assert!(!ok, "kt-verify passed: {stdout}");
    assert!(
        stderr.contains("key transparency log mismatch") && stderr.contains(wanted),
        "expected a mismatch naming {wanted:?}: {stderr}"
    );
}

async fn kt_verify_passes_and_names_what_was_tampered_with(b: Backend) {
    let f = fresh(&b).await;
    let s = TestServer::start_with(f.backend.clone(), |s| s.kt_epoch_ms = 50).await;
    let url = s.settings.database_url.expose().to_string();
    let dir = s.dir().to_path_buf();
    // Keys over several epochs; one user with three.
    let first = random_user();
    let mut c = s.client(first).await;
    for k in 1..=3 {
        c.post_key(PostKeyRequest {
            key_data: key_pem(k),
        })
        .await
        .unwrap();
    }
    for i in 0..12 {
        let mut c = s.client(random_user()).await;
        c.post_key(PostKeyRequest {
            key_data: key_pem(1 + i % 3),
        })
        .await
        .unwrap();
    }
    let (ok, stdout, stderr) = kt_verify(&url, &dir, &[]);
    assert!(ok, "kt-verify failed: {stderr}");
    assert!(stdout.contains("15 entries of 13 users"), "{stdout}");
    // Against the server's public key given on the command line: the same.
    let public = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(server_public_key(&dir))
    };
    let (ok, _, stderr) = kt_verify(&url, &dir, &["--public-key", &public]);
    assert!(ok, "{stderr}");
    // Against another key: the first head names the wrong key.
    let other = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
    fails_naming(
        &url,
        &dir,
        &["--public-key", &other],
        "not this server's key",
    );
    // (The server keeps running, idle: it holds the data directory.)

    // An entry's fingerprint swapped: its fields no longer give its hash.
    sql(
        &url,
        &format!(
            "UPDATE kt_entries SET fingerprint = {} WHERE leaf_index = 4",
            blob(&url, &[0x42; 32])
        ),
    )
    .await;
    fails_naming(&url, &dir, &[], "the entry at leaf 4");
    sql(
        &url,
        "UPDATE kt_entries SET fingerprint = (SELECT fingerprint FROM public_keys p \
         WHERE p.kt_leaf = 4) WHERE leaf_index = 4",
    )
    .await;
    let (ok, _, stderr) = kt_verify(&url, &dir, &[]);
    assert!(ok, "restored: {stderr}");

    // A head changed: its signature no longer verifies.
    sql(
        &url,
        "UPDATE kt_heads SET timestamp_ms = timestamp_ms + 1 WHERE tree_size = 15",
    )
    .await;
    fails_naming(&url, &dir, &[], "the signature of the head of tree size 15");
    sql(
        &url,
        "UPDATE kt_heads SET timestamp_ms = timestamp_ms - 1 WHERE tree_size = 15",
    )
    .await;
    // A map node changed (map paths are made of them).
    sql(
        &url,
        &format!(
            "UPDATE kt_map_nodes SET interior_hash = {} WHERE bits = 0",
            blob(&url, &[5; 32])
        ),
    )
    .await;
    fails_naming(&url, &dir, &[], "the map node at the 0-bit prefix");
    sql(
        &url,
        "UPDATE kt_map_nodes SET interior_hash = (SELECT map_root FROM kt_heads \
         WHERE tree_size = 15) WHERE bits = 0",
    )
    .await;
    let (ok, _, stderr) = kt_verify(&url, &dir, &[]);
    assert!(ok, "restored: {stderr}");

    // A stored subtree of the log changed (proofs are made of them).
    sql(
        &url,
        &format!(
            "UPDATE kt_log_nodes SET hash = {} WHERE level = 2 AND idx = 1",
            blob(&url, &[9; 32])
        ),
    )
    .await;
    fails_naming(&url, &dir, &[], "(level 2, index 1)");
    sql(&url, "DELETE FROM kt_log_nodes WHERE level = 2 AND idx = 1").await;
    fails_naming(&url, &dir, &[], "(level 2, index 1) is not stored");
    s.stop().await;
    f.done().await;
}
