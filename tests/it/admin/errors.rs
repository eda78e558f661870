//! Bad input to `secretd admin`: the exit code and the whole of what it says, and that
//! nothing was written. Exit 1: the command failed (existing or unwritable file); 2: a
//! configuration error (no database where the flags point); 3: `backup` on Postgres
//! printed the procedure instead.

use std::path::Path;

use super::*;

/// A migrated SQLite database in `dir/data`; its URL.
fn migrated(dir: &Path) -> String {
    let url = format!("sqlite://{}", dir.join("data/secretd.db").display());
    let out = secretd(&["migrate", "--database-url", &url], dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    url
}

/// (exit code, stdout, stderr) of `secretd args` in `dir`.
fn run(args: &[&str], dir: &Path) -> (Option<i32>, String, String) {
    let out = secretd(args, dir);
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (out.status.code(), text(out.stdout), text(out.stderr))
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn backup_never_overwrites_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = migrated(dir.path());
    let to = dir.path().join("old-backup.db");
    std::fs::write(&to, b"yesterday's backup").unwrap();
    let to_s = to.display().to_string();
    let (code, out, err) = run(
        &["admin", "backup", "--to", &to_s, "--database-url", &url],
        dir.path(),
    );
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "secretd: {to_s} already exists: `secretd admin backup` never overwrites a file; \
             give a new name, or move the old file away\n"
        )
    );
    assert_eq!(std::fs::read(&to).unwrap(), b"yesterday's backup");
    assert_eq!(
        names(dir.path()),
        ["data", "old-backup.db"],
        "no partial file left"
    );
}

#[test]
fn backup_to_a_path_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let url = migrated(dir.path());
    // (The tests may run as root, whom permission bits do not stop: a missing directory
    // and a file where a directory should be fail for everyone.)
    let missing = dir
        .path()
        .join("no-such-dir/backup.db")
        .display()
        .to_string();
    let (code, out, err) = run(
        &["admin", "backup", "--to", &missing, "--database-url", &url],
        dir.path(),
    );
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert_eq!(
        err,
        format!("secretd: cannot write {missing}: No such file or directory (os error 2)\n")
    );
    std::fs::write(dir.path().join("a-file"), b"").unwrap();
    let under_file = dir.path().join("a-file/backup.db").display().to_string();
    let (code, _, err) = run(
        &[
            "admin",
            "backup",
            "--to",
            &under_file,
            "--database-url",
            &url,
        ],
        dir.path(),
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!("secretd: cannot write {under_file}: Not a directory (os error 20)\n")
    );
    assert_eq!(names(dir.path()), ["a-file", "data"]);
}

#[test]
fn stats_and_backup_of_a_missing_sqlite_file_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not-the-data-dir");
    let data_s = data.display().to_string();
    let db = data.join("secretd.db").display().to_string();
    let (code, out, err) = run(&["admin", "stats", "--data-dir", &data_s], dir.path());
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert_eq!(
        err,
        format!(
            "secretd: configuration error: cannot read the statistics of sqlite://{db}: there \
             is no SQLite database at {db}: give the server's --data-dir or --database-url \
             (this command never creates one)\n"
        )
    );
    let to = dir.path().join("b.db").display().to_string();
    let (code, out, err) = run(
        &["admin", "backup", "--to", &to, "--data-dir", &data_s],
        dir.path(),
    );
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert_eq!(
        err,
        format!(
            "secretd: configuration error: there is no SQLite database at {db}: give the \
             server's --data-dir or --database-url\n"
        )
    );
    assert!(
        names(dir.path()).is_empty(),
        "nothing created: {:?}",
        names(dir.path())
    );
}

#[test]
fn stats_of_a_database_that_is_not_secretd_s() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.db");
    std::fs::write(&file, b"").unwrap();
    let url = format!("sqlite://{}", file.display());
    let (code, out, err) = run(&["admin", "stats", "--database-url", &url], dir.path());
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert_eq!(
        err,
        format!(
            "secretd: configuration error: cannot read the statistics of {url}: the database \
             has no secretd tables (no `events`): is this the server's database? (`secretd \
             migrate` creates them)\n"
        )
    );
}

#[test]
fn stats_prints_a_table_of_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = migrated(dir.path());
    let (code, out, err) = run(&["admin", "stats", "--database-url", &url], dir.path());
    assert_eq!((code, err.as_str()), (Some(0), ""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("database             {url} (sqlite)"));
    assert_eq!(
        lines[1..9],
        [
            "users with a key     0",
            "foreign users        0",
            "channel pairs        0",
            "events               0",
            "ciphertext bytes     0",
            "oldest event         -",
            "key log entries      0",
            "keys not yet logged  0",
        ]
    );
    assert!(lines[9].starts_with("database size        "), "{out}");
}

#[test]
fn backup_of_postgres_prints_the_procedure_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the procedure is printed without connecting.
    let url = "postgres://chat:hunter2@127.0.0.1:1/chat";
    let to = dir.path().join("chat.dump").display().to_string();
    let (code, out, err) = run(
        &["admin", "backup", "--to", &to, "--database-url", url],
        dir.path(),
    );
    assert_eq!(code, Some(3));
    assert_eq!(
        err,
        "secretd: nothing written: a Postgres database is backed up with pg_dump, as printed \
         above (exit 3)\n"
    );
    assert!(!out.contains("hunter2"), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("pg_") || l.starts_with("createdb"))
        .collect();
    assert_eq!(
        lines,
        [
            format!(
                "pg_dump --format=custom --no-owner --no-privileges --file={to} 'postgres://chat:***@127.0.0.1:1/chat'"
            ),
            "createdb --maintenance-db='postgres://chat:***@127.0.0.1:1/chat' NEWDB".to_string(),
            format!(
                "pg_restore --no-owner --no-privileges --single-transaction --exit-on-error --dbname='postgres://chat:***@127.0.0.1:1/NEWDB' {to}"
            ),
        ]
    );
    assert!(names(dir.path()).is_empty());
}
