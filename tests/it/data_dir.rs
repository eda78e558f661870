//! The data directory: the JWT secret file is created atomically (racing processes end up
//! with one secret, a crash never leaves an empty one), secrets shorter than 32 bytes are
//! refused from every source, and the directory is 0700 with every file in it 0600.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use secretd::auth::{SECRET_FILE, Verifier, load_or_create_secret, load_or_create_secret_with};
use secretd::config::Settings;

fn settings_for(dir: &Path) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        jwt_secret: String::new().into(),
        ..secretd::config::defaults()
    }
}

/// The secret on disk, as the server reads it.
fn secret_on_disk(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(SECRET_FILE))
        .expect("the secret file exists")
        .trim()
        .to_string()
}

/// Whether `token` verifies with the HS256 `secret` (as a server configured with it would).
fn verifies_with(token: &str, secret: &str) -> bool {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .is_ok()
}

fn secretd(args: &[&str], cwd: &Path, envs: &[(&str, &str)]) -> Output {
    run_binary(args, cwd, envs)
}

#[test]
fn a_loader_starting_while_another_creates_the_secret_gets_the_same_one() {
    // Deterministically: the second loader runs entirely inside the first one's window
    // between creating its secret file and publishing it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let settings = settings_for(&dir);
    let mut second = None;
    let first = load_or_create_secret_with(&settings, &mut || {
        second = Some(load_or_create_secret(&settings).map_err(|e| e.to_string()));
    })
    .expect("the first loader succeeds");
    let second = second
        .expect("the hook ran")
        .expect("the second loader succeeds");
    let disk = secret_on_disk(&dir);
    assert_eq!(disk.len(), 64);
    assert_eq!(first, disk, "the first loader uses the secret on disk");
    assert_eq!(second, disk, "the second loader uses the secret on disk");
}

#[test]
fn a_crash_while_creating_the_secret_never_leaves_an_empty_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let settings = settings_for(&dir);
    // The process dies inside the window (a panic stands in for the crash).
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load_or_create_secret_with(&settings, &mut || panic!("crash"))
    }));
    assert!(crashed.is_err(), "the hook ran and crashed the loader");
    // The next start works and agrees with what is on disk from then on.
    let next = load_or_create_secret(&settings).expect("the next start creates a secret");
    assert_eq!(next, secret_on_disk(&dir));
    assert_eq!(load_or_create_secret(&settings).unwrap(), next);
}

#[test]
fn loaders_racing_on_a_fresh_data_dir_agree_on_one_secret() {
    // Several loaders start together on a fresh directory, many times over: each must
    // return the secret that ends up on disk (never an empty or a different one).
    const ROUNDS: usize = 300;
    const LOADERS: usize = 3;
    let mut disagreements = 0;
    for round in 0..ROUNDS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(LOADERS));
        let handles: Vec<_> = (0..LOADERS)
            .map(|_| {
                let settings = settings_for(&dir);
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    load_or_create_secret(&settings).map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let disk = secret_on_disk(&dir);
        assert_eq!(disk.len(), 64, "round {round}: 32 random bytes in hex");
        if results.iter().any(|r| r.as_deref() != Ok(disk.as_str())) {
            disagreements += 1;
            eprintln!("round {round}: on disk {disk:?}, loaders got {results:?}");
        }
    }
    assert_eq!(
        disagreements, 0,
        "{disagreements} of {ROUNDS} rounds: a loader did not get the secret on disk"
    );
}

#[test]
fn mint_token_processes_racing_on_a_fresh_data_dir_sign_with_one_secret() {
    const ROUNDS: usize = 40;
    let bin = env!("CARGO_BIN_EXE_secretd");
    let mut bad = Vec::new();
    for round in 0..ROUNDS {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data").display().to_string();
        let children: Vec<_> = (0..2)
            .map(|i| {
                let user = (i + 1).to_string();
                Command::new(bin)
                    .args(["mint-token", "--user", &user, "--data-dir", &data])
                    .env_remove("SECRETD_JWT_SECRET")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let disk = secret_on_disk(&tmp.path().join("data"));
        for out in &outputs {
            let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || !verifies_with(&token, &disk) || verifies_with(&token, "") {
                bad.push(format!(
                    "round {round}: {:?} {token:?} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{} bad tokens: {bad:#?}", bad.len());
}

#[test]
fn short_secrets_are_a_configuration_error_from_every_source() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let short = "0123456789abcdef0123456789abcde"; // 31 bytes
    let mut cases: Vec<(&str, Output)> = vec![
        (
            "environment",
            secretd(
                &["mint-token", "--user", "1", "--data-dir", "d1"],
                cwd,
                &[("SECRETD_JWT_SECRET", short)],
            ),
        ),
        (
            "environment, serve",
            secretd(
                &["serve", "--data-dir", "d1", "--listen", "127.0.0.1:0"],
                cwd,
                &[("SECRETD_JWT_SECRET", short)],
            ),
        ),
    ];
    std::fs::write(
        cwd.join("short.toml"),
        format!("jwt_secret = \"{short}\"\n"),
    )
    .unwrap();
    cases.push((
        "config file",
        secretd(
            &[
                "mint-token",
                "--user",
                "1",
                "--data-dir",
                "d2",
                "--config",
                "short.toml",
            ],
            cwd,
            &[],
        ),
    ));
    std::fs::create_dir(cwd.join("d3")).unwrap();
    std::fs::write(cwd.join("d3").join(SECRET_FILE), format!("{short}\n")).unwrap();
    cases.push((
        "secret file",
        secretd(&["mint-token", "--user", "1", "--data-dir", "d3"], cwd, &[]),
    ));
    cases.push((
        "secret file, serve",
        secretd(
            &["serve", "--data-dir", "d3", "--listen", "127.0.0.1:0"],
            cwd,
            &[],
        ),
    ));
    for (source, out) in cases {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{source}: {err}");
        assert!(out.stdout.is_empty(), "{source}: no token printed");
        assert!(err.contains("at least 32 bytes"), "{source}: {err}");
    }
    // The short file is left alone (the operator decides what replaces it).
    assert_eq!(
        std::fs::read_to_string(cwd.join("d3").join(SECRET_FILE)).unwrap(),
        format!("{short}\n")
    );
    // Exactly 32 bytes is enough.
    let ok = secretd(
        &["mint-token", "--user", "1", "--data-dir", "d4"],
        cwd,
        &[("SECRETD_JWT_SECRET", "0123456789abcdef0123456789abcdef")],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn an_empty_secret_file_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join(SECRET_FILE), "").unwrap();
    let out = secretd(
        &["mint-token", "--user", "1", "--data-dir", "data"],
        tmp.path(),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is empty") && err.contains("delete it"),
        "{err}"
    );
    // In-process too (what `serve` builds its verifier from).
    let e = Verifier::from_settings(&settings_for(&data))
        .err()
        .expect("an empty secret file is refused")
        .to_string();
    assert!(e.contains("is empty"), "{e}");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The real server on the data directory `cwd/data`, with the embedded SQLite and a
/// generated secret.
async fn serve_in(cwd: &Path) -> ServerProcess {
    spawn_binary(
        &["serve", "--data-dir", "data", "--listen", "127.0.0.1:0"],
        &[],
        cwd,
    )
    .await
}

#[cfg(unix)]
#[tokio::test]
async fn a_fresh_data_dir_is_0700_and_every_file_in_it_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let p = serve_in(tmp.path()).await;
    // A write, so the database has everything it keeps while running.
    let token =
        secretd::auth::sign_hs256(secret_on_disk(&data).as_bytes(), 7, 60, "", "").expect("sign");
    let mut c = client_at(&p.addr, token).await;
    c.post_key(secretd::proto::PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .expect("post key");
    assert_eq!(mode(&data), 0o700, "data dir: {:o}", mode(&data));
    for name in [
        SECRET_FILE,
        "secretd.db",
        "secretd.db-wal",
        "secretd.db-shm",
    ] {
        assert_eq!(
            mode(&data.join(name)),
            0o600,
            "{name}: {:o}",
            mode(&data.join(name))
        );
    }
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path) & 0o077, 0, "{}", path.display());
    }
    drop(p);
}

#[cfg(unix)]
#[tokio::test]
async fn looser_modes_are_tightened_at_start_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A first run makes the database; then someone loosens everything.
    drop(serve_in(tmp.path()).await);
    set_mode(&data, 0o755);
    set_mode(&data.join(SECRET_FILE), 0o644);
    set_mode(&data.join("secretd.db"), 0o644);
    // Killed, the first run left its write-ahead log behind.
    set_mode(&data.join("secretd.db-wal"), 0o644);
    let p = serve_in(tmp.path()).await;
    assert_eq!(mode(&data), 0o700, "data dir: {:o}", mode(&data));
    for name in [SECRET_FILE, "secretd.db", "secretd.db-wal"] {
        assert_eq!(
            mode(&data.join(name)),
            0o600,
            "{name}: {:o}",
            mode(&data.join(name))
        );
    }
    let log = p.startup_lines.join("\n");
    for (name, wanted) in [
        ("data", "0700"),
        (SECRET_FILE, "0600"),
        ("secretd.db", "0600"),
    ] {
        assert!(
            p.startup_lines
                .iter()
                .any(|l| l.contains("WARN") && l.contains(wanted) && l.contains(name)),
            "a warning naming {name}:\n{log}"
        );
    }
    drop(p);
}
