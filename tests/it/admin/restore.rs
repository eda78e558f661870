//! A backup taken while posters write, restored and served: every post acknowledged
//! before the backup began is there, each stream's ids and counters are dense with the
//! bodies as posted (nothing half-written), a subscriber resuming by a cursor from
//! before the backup gets exactly the stored events in order, `admin stats` on the
//! restored database agrees with what was written, and the key log still verifies
//! against the server key copied with the data directory.
//!
//! SQLite: `secretd admin backup --to FILE` (written straight into the new data
//! directory). Postgres: the pg_dump / createdb / pg_restore lines that `admin backup`
//! prints (exit 3), run as printed with the password and the new database's name put
//! in; on a database of the test's own, so that every figure can be compared exactly.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;
use secretd::proto::PostedMessage;

/// Concurrent posters, one user and one pair each.
const POSTERS: usize = 4;
/// Posts each poster has acknowledged before the backup starts.
const BEFORE: u64 = 150;
/// Bytes of each post's ciphertext.
const BODY: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_backup_during_writes_restores_every_acknowledged_post() {
    init_test_log();
    backup_during_writes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
async fn postgres_pg_dump_during_writes_restores_every_acknowledged_post() {
    init_test_log();
    if let Some(b) = Backend::postgres() {
        backup_during_writes(b).await;
    }
}

/// A post's body: who posted it and its counter, padded to [`BODY`] bytes.
fn body(poster: usize, counter: u64) -> Vec<u8> {
    let mut b = format!("poster {poster} counter {counter} ").into_bytes();
    b.resize(BODY, (counter % 251) as u8);
    b
}

/// One acknowledged post.
#[derive(Debug, Clone, Copy)]
struct Ack {
    id: u64,
    counter: u64,
    /// Acknowledged before the backup began (so it must be in the backup).
    before_backup: bool,
}

async fn backup_during_writes(b: Backend) {
    let source = crate::kt::fresh(&b).await;
    let dir1 = tempfile::tempdir().unwrap();
    let url1 = source.backend.url(dir1.path());
    let p1 = serve(dir1.path(), &url1).await;
    // Posters: one user (with a key) and one pair each, posting counters 1, 2, … until told
    // to stop. `began` is set just before the backup starts: an acknowledgement read
    // before it was set was received before the backup began.
    let began = Arc::new(AtomicBool::new(false));
    let stop_posting = Arc::new(AtomicBool::new(false));
    let mut users = Vec::new();
    let mut streams = Vec::new();
    let mut counts = Vec::new();
    let mut tasks = Vec::new();
    for poster in 0..POSTERS {
        let user = random_user();
        let mut c = client_at(&p1.addr, mint(dir1.path(), user)).await;
        give_key(&mut c).await;
        let stream = new_pair(&mut c).await.message_id;
        let count = Arc::new(AtomicU64::new(0));
        let (began, stop_posting, n) = (began.clone(), stop_posting.clone(), count.clone());
        let st = stream.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for counter in 1.. {
                if stop_posting.load(Ordering::SeqCst) {
                    break;
                }
                let id = post(&mut c, &st, counter, &body(poster, counter))
                    .await
                    .expect("post");
                let before_backup = !began.load(Ordering::SeqCst);
                acks.push(Ack {
                    id,
                    counter,
                    before_backup,
                });
                n.fetch_add(1, Ordering::SeqCst);
            }
            acks
        }));
        users.push(user);
        streams.push(stream);
        counts.push(count);
    }
    while counts.iter().any(|n| n.load(Ordering::SeqCst) < BEFORE) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir2 = tempfile::tempdir().unwrap();
    let dump = dir2.path().join("secretd.dump");
    let acked_at = |counts: &[Arc<AtomicU64>]| -> u64 {
        counts.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    };
    began.store(true, Ordering::SeqCst);
    let (at_start, t0) = (acked_at(&counts), Instant::now());
    // The backup, while the posters go on.
    let restore = match &b {
        Backend::Sqlite => {
            let to = dir2.path().join("secretd.db");
            let out = secretd_async(
                &[
                    "admin",
                    "backup",
                    "--to",
                    &to.display().to_string(),
                    "--database-url",
                    &url1,
                    "--data-dir",
                    &dir1.path().display().to_string(),
                ],
                dir1.path(),
            )
            .await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.starts_with(&format!("backed up {url1} to {}", to.display())),
                "{said}"
            );
            assert!(
                said.contains("federation-key") && said.contains("jwt-secret"),
                "{said}"
            );
            assert_eq!(mode(&to), 0o600, "the backup is private");
            None
        }
        Backend::Postgres(_) => {
            let out = secretd_async(
                &[
                    "admin",
                    "backup",
                    "--to",
                    &dump.display().to_string(),
                    "--database-url",
                    &url1,
                ],
                dir1.path(),
            )
            .await;
            assert_eq!(
                out.status.code(),
                Some(3),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let procedure = String::from_utf8(out.stdout).unwrap();
            let masked = format!(":{}@", password(&url1));
            assert!(!procedure.contains(&masked), "the password is masked");
            run_line(&procedure, "pg_dump ", &url1, "").await;
            Some(procedure)
        }
    };
    let (took, at_end) = (t0.elapsed(), acked_at(&counts));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_posting.store(true, Ordering::SeqCst);
    let mut written = Vec::new();
    for t in tasks {
        written.push(t.await.unwrap());
    }
    let after = acked_at(&counts);
    eprintln!(
        "backup took {took:?}; {at_start} posts acknowledged before it began, {} while it \
         ran, {} after it ended",
        at_end - at_start,
        after - at_end
    );
    assert!(
        after > at_end,
        "the posters were still writing when the backup ended"
    );
    stop(p1).await;
    // Restore: the database, and the key files of the first data directory.
    copy_key_files(dir1.path(), dir2.path());
    let (url2, restored) = match (&b, &restore) {
        (Backend::Postgres(_), Some(procedure)) => {
            let name = format!("secretd_admin_restored_{}", rand::random::<u32>());
            run_line(procedure, "createdb ", &url1, &name).await;
            run_line(procedure, "pg_restore ", &url1, &name).await;
            let url2 = format!("{}/{name}", url1.rsplit_once('/').unwrap().0);
            (url2, Some(name))
        }
        _ => (Backend::Sqlite.url(dir2.path()), None),
    };
    let p2 = serve(dir2.path(), &url2).await;
    let mut total_events = 0u64;
    let mut total_bytes = 0u64;
    let mut oldest = i64::MAX;
    for (poster, ((user, stream), acks)) in users.iter().zip(&streams).zip(&written).enumerate() {
        let mut c = client_at(&p2.addr, mint(dir1.path(), *user)).await;
        let stored = fetch_all(&mut c, stream).await;
        let before = acks.iter().filter(|a| a.before_backup).count();
        assert!(
            stored.len() >= before,
            "poster {poster}: {} stored, {before} acknowledged before the backup",
            stored.len()
        );
        for (i, m) in stored.iter().enumerate() {
            let a = acks[i];
            let msg = m.message.as_ref().expect("a message");
            assert_eq!(
                (m.event_id, msg.id),
                (i as u64 + 1, i as u64 + 1),
                "poster {poster}: dense ids and counters"
            );
            assert_eq!(
                (m.event_id, msg.id),
                (a.id, a.counter),
                "poster {poster}: as acknowledged"
            );
            assert!(
                msg.message == body(poster, a.counter),
                "poster {poster} event {}: the body as posted",
                m.event_id
            );
            total_bytes += msg.message.len() as u64;
            oldest = oldest.min(micros(m));
        }
        total_events += stored.len() as u64;
        if poster == 0 {
            resume_from_before_the_backup(&mut c, stream, before as u64, &stored).await;
        }
    }
    // admin stats on the restored database, while its server runs.
    let s = stats_json(&url2, dir2.path());
    assert_eq!(
        s["backend"],
        if b.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    );
    assert_eq!(s["users_with_key"], POSTERS as u64, "{s}");
    assert_eq!(s["pairs"], POSTERS as u64, "{s}");
    assert_eq!(s["events"], total_events, "{s}");
    assert_eq!(s["ciphertext_bytes"], total_bytes, "{s}");
    assert_eq!(s["oldest_event_us"], oldest, "{s}");
    assert_eq!(s["kt_log_entries"], POSTERS as u64, "{s}");
    assert_eq!(s["kt_keys_pending"], 0, "{s}");
    assert_eq!(s["foreign_users"], 0, "{s}");
    // The heads in the backup verify against the server key the first server signed with.
    let key = secretd(
        &[
            "federation-key",
            "--data-dir",
            &dir1.path().display().to_string(),
        ],
        dir1.path(),
    );
    let key = String::from_utf8(key.stdout).unwrap();
    let public = key.split_whitespace().nth(2).expect("SERVER KEY_ID PUBLIC");
    let verified = secretd(
        &["kt-verify", "--database-url", &url2, "--public-key", public],
        dir2.path(),
    );
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    stop(p2).await;
    if let Some(name) = restored {
        drop_database(&url1, &name).await;
    }
    source.done().await;
}

/// A subscriber that had read up to a point before the backup resumes from there on the
/// restored server: it gets exactly the stored events after that point, in order, then
/// CaughtUp at the stored head.
async fn resume_from_before_the_backup(
    c: &mut Client,
    stream: &str,
    before: u64,
    stored: &[PostedMessage],
) {
    let cursor = before.saturating_sub(25);
    let mut sub = Subscription::open(c).await.unwrap();
    sub.manage(&[], &[], &[(stream, cursor)]);
    let (events, head) = sub.until_caught_up(stream).await;
    assert_eq!(head, stored.len() as u64);
    assert_eq!(events, stored[cursor as usize..], "resumed from {cursor}");
}

/// Runs the line of `procedure` that starts with `command` in a shell, with the password
/// of `url` for `***` and `new_db` for NEWDB.
async fn run_line(procedure: &str, command: &str, url: &str, new_db: &str) {
    let line = procedure
        .lines()
        .find(|l| l.starts_with(command))
        .unwrap_or_else(|| panic!("no `{command}` line in:\n{procedure}"));
    let line = line.replace("***", password(url)).replace("NEWDB", new_db);
    let out = tokio::process::Command::new("sh")
        .args(["-c", &line])
        .output()
        .await
        .expect("sh");
    assert!(
        out.status.success(),
        "{command}failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The password in `scheme://user:password@host/…`.
fn password(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let userinfo = rest.rsplit_once('@').map_or("", |(u, _)| u);
    userinfo.split_once(':').map_or("", |(_, p)| p)
}

async fn drop_database(url: &str, name: &str) {
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    admin.close().await;
}

/// The binary run to completion without blocking the runtime (the posters go on).
async fn secretd_async(args: &[&str], cwd: &Path) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_secretd"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env("SECRETD_LOG_FORMAT", "text")
        .output()
        .await
        .expect("run secretd")
}

/// When an event was posted, µs since the epoch.
fn micros(m: &PostedMessage) -> i64 {
    let t = m.posted_at.as_ref().expect("posted_at");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

/// The permission bits of a file.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
