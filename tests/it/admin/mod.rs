//! `secretd admin stats` and `secretd admin backup`, run as the real binary beside real
//! servers: a backup taken while posters write restores to a consistent state on both
//! backends (`restore.rs`), and bad input gets exact exit codes and sentences
//! (`errors.rs`).

mod errors;
mod restore;

use std::path::Path;

use crate::common::*;

/// Starts `secretd serve` on `url` with its data (key files) in `dir`.
async fn serve(dir: &Path, url: &str) -> ServerProcess {
    let data_dir = dir.display().to_string();
    spawn_binary(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            url,
            "--data-dir",
            &data_dir,
        ],
        &[
            ("SECRETD_KT_EPOCH_MS", "50"),
            ("SECRETD_SHUTDOWN_GRACE_SECS", "10"),
        ],
        dir,
    )
    .await
}

/// Stops a server with SIGTERM and waits for its exit 0.
async fn stop(mut p: ServerProcess) {
    let pid = p.child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::time::timeout(std::time::Duration::from_secs(20), p.child.wait())
        .await
        .expect("exits within 20 s")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
}

/// A token for `user` signed with the JWT secret of the data directory `dir`, as
/// `secretd mint-token` prints it.
fn mint(dir: &Path, user: u64) -> String {
    let out = secretd(
        &[
            "mint-token",
            "--user",
            &user.to_string(),
            "--data-dir",
            &dir.display().to_string(),
        ],
        dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Runs the binary with `args` in `cwd`, text logs.
fn secretd(args: &[&str], cwd: &Path) -> std::process::Output {
    run_binary(args, cwd, &[("SECRETD_LOG_FORMAT", "text")])
}

/// `secretd admin stats --json` of `url`, parsed.
fn stats_json(url: &str, cwd: &Path) -> serde_json::Value {
    let out = secretd(&["admin", "stats", "--json", "--database-url", url], cwd);
    assert!(
        out.status.success(),
        "admin stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("admin stats --json prints one JSON object")
}

/// Copies the key files a restore needs (JWT secret, server key) from one data
/// directory to another, mode 0600 as secretd keeps them.
fn copy_key_files(from: &Path, to: &Path) {
    for name in ["jwt-secret", "federation-key"] {
        let target = to.join(name);
        std::fs::copy(from.join(name), &target).expect("copy key file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}
