//! The embedded migrations of both backends (`migrations/postgres/`, `migrations/sqlite/`).
//!
//! Built here from `include_str!` instead of with `sqlx::migrate!`: that macro is sqlx's
//! only one this crate used, and its proc-macro crate compiles sqlx's drivers and the
//! bundled SQLite a second time, for the host, on every cold build. Versions,
//! descriptions and checksums are the ones `migrate!` computed (the file name's number,
//! the rest of its name with `_` as spaces, SHA-384 of the text), so databases migrated
//! before keep their history; a unit test checks the lists against the directories.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

/// `(file name, SQL)` of each Postgres migration, in order.
const POSTGRES: &[(&str, &str)] = &[
    (
        "0001_initial.sql",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        "0002_invites_by_sender.sql",
        include_str!("../../migrations/postgres/0002_invites_by_sender.sql"),
    ),
    (
        "0003_federation.sql",
        include_str!("../../migrations/postgres/0003_federation.sql"),
    ),
    (
        "0004_departures.sql",
        include_str!("../../migrations/postgres/0004_departures.sql"),
    ),
    (
        "0005_delivered_invite_caps.sql",
        include_str!("../../migrations/postgres/0005_delivered_invite_caps.sql"),
    ),
    (
        "0006_key_transparency.sql",
        include_str!("../../migrations/postgres/0006_key_transparency.sql"),
    ),
    (
        "0007_kt_evidence.sql",
        include_str!("../../migrations/postgres/0007_kt_evidence.sql"),
    ),
    (
        "0008_erasure.sql",
        include_str!("../../migrations/postgres/0008_erasure.sql"),
    ),
    (
        "0009_retention.sql",
        include_str!("../../migrations/postgres/0009_retention.sql"),
    ),
    (
        "0010_kt_erased.sql",
        include_str!("../../migrations/postgres/0010_kt_erased.sql"),
    ),
];

/// `(file name, SQL)` of each SQLite migration, in order.
const SQLITE: &[(&str, &str)] = &[
    (
        "0001_initial.sql",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        "0002_invites_by_sender.sql",
        include_str!("../../migrations/sqlite/0002_invites_by_sender.sql"),
    ),
    (
        "0003_federation.sql",
        include_str!("../../migrations/sqlite/0003_federation.sql"),
    ),
    (
        "0004_departures.sql",
        include_str!("../../migrations/sqlite/0004_departures.sql"),
    ),
    (
        "0005_delivered_invite_caps.sql",
        include_str!("../../migrations/sqlite/0005_delivered_invite_caps.sql"),
    ),
    (
        "0006_key_transparency.sql",
        include_str!("../../migrations/sqlite/0006_key_transparency.sql"),
    ),
    (
        "0007_kt_evidence.sql",
        include_str!("../../migrations/sqlite/0007_kt_evidence.sql"),
    ),
    (
        "0008_erasure.sql",
        include_str!("../../migrations/sqlite/0008_erasure.sql"),
    ),
    (
        "0009_retention.sql",
        include_str!("../../migrations/sqlite/0009_retention.sql"),
    ),
    (
        "0010_kt_erased.sql",
        include_str!("../../migrations/sqlite/0010_kt_erased.sql"),
    ),
];

/// The Postgres migrator.
pub(crate) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

/// The SQLite migrator.
pub(crate) fn sqlite() -> Migrator {
    migrator(SQLITE)
}

/// A migrator over `files`, read the way `sqlx::migrate!` reads a directory.
fn migrator(files: &[(&str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(name, sql)| {
            let (version, rest) = name.split_once('_').unwrap_or((name, ""));
            Migration::new(
                version.parse().unwrap_or_default(),
                Cow::Owned(rest.trim_end_matches(".sql").replace('_', " ")),
                MigrationType::Simple,
                AssertSqlSafe(sql).into_sql_str(),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.sql` file of a migrations directory, sorted, and its text.
    fn files_in(dir: &str) -> Vec<(String, String)> {
        let path = format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_migration_file_is_embedded() {
        for (dir, embedded) in [("postgres", POSTGRES), ("sqlite", SQLITE)] {
            let listed: Vec<_> = embedded
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect();
            assert_eq!(
                listed,
                files_in(dir),
                "migrations/{dir}: add new files to migrations.rs"
            );
        }
        let m = postgres();
        assert_eq!(m.migrations[1].version, 2);
        assert_eq!(m.migrations[1].description, "invites by sender");
        assert!(!m.migrations[0].no_tx);
    }
}
