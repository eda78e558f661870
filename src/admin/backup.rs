//! `secretd admin backup --to FILE`.
//!
//! SQLite: an online, consistent copy (see `store/backup.rs`). Postgres: Postgres's own
//! tools do it better than a copy of them would (pg_dump reads one snapshot while the
//! replicas write, and an operator may already run base backups with WAL archiving), so
//! the command prints the procedure — the exact `pg_dump`, `createdb` and `pg_restore`
//! lines for this database — writes nothing, and exits [`PROCEDURE_EXIT_CODE`], a code
//! of its own so that a script cannot mistake it for a backup taken.
//!
//! Either way the database is not all of a restore: the JWT secret and the server key
//! (which signs the key transparency heads that clients pin) live in files.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::config::{Database, Settings};
use crate::store::backup::{self, BackupError};

/// Exit code of `admin backup` on Postgres: nothing was written, the procedure was
/// printed.
pub const PROCEDURE_EXIT_CODE: u8 = 3;

/// What `admin backup` did.
#[derive(Debug)]
pub enum Outcome {
    /// The SQLite copy was written; what to tell the operator.
    Written(String),
    /// Postgres: nothing was written; the procedure to follow instead.
    Procedure(String),
}

/// Runs `secretd admin backup --to FILE` for the configured database.
pub async fn run(settings: &Settings, to: &Path) -> Result<Outcome, BackupError> {
    let database = settings.database().map_err(anyhow::Error::from)?;
    let limit = Duration::from_millis(settings.db_timeout_ms);
    match &database {
        Database::Postgres(url) => Ok(Outcome::Procedure(procedure(url.expose(), to)?)),
        Database::Sqlite { url, path } => {
            let started = std::time::Instant::now();
            let size = backup::sqlite(url, path, to, limit).await?;
            Ok(Outcome::Written(format!(
                "backed up {database} to {} ({size} bytes, one consistent snapshot, {} ms).\n\
                 {}",
                to.display(),
                started.elapsed().as_millis(),
                key_files(settings)
            )))
        }
    }
}

/// The files a restore needs besides the database, as a sentence.
fn key_files(settings: &Settings) -> String {
    let jwt = match settings.jwt_secret.is_empty() {
        true => settings
            .data_dir
            .join(crate::auth::SECRET_FILE)
            .display()
            .to_string(),
        false => "the jwt_secret of your configuration".into(),
    };
    let key = match settings.federation.signing_key_file.as_str() {
        "" => settings
            .data_dir
            .join(crate::federation::key::KEY_FILE)
            .display()
            .to_string(),
        file => file.to_string(),
    };
    format!(
        "Not in it, and needed by a restore: {key} (the server key: it signs the key \
         transparency heads, which clients pin, and federation tokens) and {jwt} (the JWT \
         secret tokens are signed with). Keep copies of both with the backup, as privately."
    )
}

/// The Postgres procedure for the database at `url`, with its password masked as
/// `***` (put it back, or leave it out and set `PGPASSWORD`).
fn procedure(url: &str, to: &Path) -> anyhow::Result<String> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let masked = crate::config::redact_url(url);
    let database = options.get_database().unwrap_or("secretd");
    let restored = with_database(&masked, "NEWDB");
    let file = shell_quote(&to.display().to_string());
    Ok(format!(
        "secretd does not copy a Postgres database: pg_dump does, from one consistent \
         snapshot while the servers keep writing. Nothing was written to {file}. Use pg_dump \
         and pg_restore of the database server's major version or newer; *** stands for \
         the password of database_url (or drop it and set PGPASSWORD).\n\
         \n\
         # 1. Back up {database} (any time; the servers keep running):\n\
         pg_dump --format=custom --no-owner --no-privileges --file={file} {}\n\
         \n\
         # 2. Restore into a new, empty database NEWDB (owned by the role that creates it):\n\
         createdb --maintenance-db={} NEWDB\n\
         pg_restore --no-owner --no-privileges --single-transaction --exit-on-error \
         --dbname={} {file}\n\
         \n\
         # 3. Start secretd with database_url = {} and the same server key and JWT secret\n\
         #    (federation.signing_key_file or data_dir/federation-key, jwt_secret or\n\
         #    data_dir/jwt-secret): they are not in the dump. The server key signs the key\n\
         #    transparency heads, which clients pin.\n",
        shell_quote(&masked),
        shell_quote(&masked),
        shell_quote(&restored),
        shell_quote(&restored),
    ))
}

/// `url` with its path (the database name) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..authority_end])
}

/// `s` as one POSIX shell word: bare when it is plainly safe, else single-quoted.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:@=+,".contains(c));
    match plain {
        true => s.to_string(),
        false => format!("'{}'", s.replace('\'', "'\\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_url_names_the_new_database() {
        assert_eq!(
            with_database("postgres://u:***@h:5432/secretd?sslmode=require", "NEWDB"),
            "postgres://u:***@h:5432/NEWDB?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "NEWDB"), "postgres://h/NEWDB");
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(
            shell_quote("/var/backups/secretd.dump"),
            "/var/backups/secretd.dump"
        );
        assert_eq!(shell_quote("it's here"), "'it'\\''s here'");
        assert_eq!(
            shell_quote("postgres://u:***@h/db"),
            "'postgres://u:***@h/db'"
        );
    }

    #[test]
    fn the_procedure_masks_the_password() {
        let text = procedure(
            "postgres://secretd:hunter2@127.0.0.1:5432/chat",
            Path::new("/b/chat.dump"),
        )
        .unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(
            "pg_dump --format=custom --no-owner --no-privileges --file=/b/chat.dump \
             'postgres://secretd:***@127.0.0.1:5432/chat'"
        ));
        assert!(text.contains("--dbname='postgres://secretd:***@127.0.0.1:5432/NEWDB'"));
    }
}
