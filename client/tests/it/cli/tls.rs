//! `secretd-chat` against a server that serves TLS from a private CA: `init --ca-file`
//! keeps the CA file in the device's state, and later commands use it.

use crate::cli::{chat, fails, ok, run};
use crate::common::{fresh_user, token};
use crate::tls::tls_server;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn init_with_a_ca_file_then_commands_over_tls() {
    let home = tempfile::tempdir().unwrap();
    let (server, url, files) = tls_server(home.path()).await;
    let dir = home.path().join("alice");
    let tok = token(fresh_user());

    // Without the CA, the server's certificate is not trusted and nothing is kept.
    let err = fails(chat(
        &dir,
        "pw",
        &["init", "--server", &url, "--token", &tok],
    ))
    .await;
    assert!(err.contains("--ca-file"), "{err}");
    assert!(!dir.join("state.json").exists());

    let ca = files.ca.display().to_string();
    ok(chat(
        &dir,
        "pw",
        &["init", "--server", &url, "--ca-file", &ca, "--token", &tok],
    ))
    .await;
    ok(chat(&dir, "pw", &["create", "room"])).await;
    let rooms = ok(chat(&dir, "pw", &["rooms"])).await;
    assert!(rooms.iter().any(|r| r["name"] == "room"), "{rooms:?}");
    // The CA file is the one thing that lets it in: moved away, commands fail.
    std::fs::rename(&files.ca, home.path().join("moved.pem")).unwrap();
    let out = run(chat(&dir, "pw", &["rooms"])).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read the CA file"),
        "{out:?}"
    );
    server.stop().await;
}
