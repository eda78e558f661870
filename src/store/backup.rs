//! `secretd admin backup` on SQLite: a consistent copy of the live database, taken
//! while the server writes.
//!
//! `VACUUM INTO` on a read-only connection: it reads one snapshot (a WAL read
//! transaction, which never blocks the server's writer nor is blocked by it) and writes
//! a compact, self-contained database file, without `-wal` or `-shm` companions. SQLite
//! does not sync that file, so it is synced here before it gets its name.
//!
//! The copy is written to a temporary file (mode 0600, created exclusively) next to the
//! destination, synced, then hard-linked to the destination's name: a link never
//! replaces a file, so an existing file is never overwritten (not even one created
//! while the copy ran), and an interrupted run leaves only a `.NAME.*.partial` file,
//! never a truncated file under the name asked for.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::{ConnectOptions, Connection};

use crate::config::Misconfigured;

/// Why a backup was refused or failed: `Exists` is the operator's to fix, the rest
/// names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The destination exists; it is left as it is.
    #[error(
        "{0} already exists: `secretd admin backup` never overwrites a file; give a new \
         name, or move the old file away"
    )]
    Exists(PathBuf),
    /// Anything else, in words.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl BackupError {
    /// As an `anyhow::Error` whose chain holds the original (a `Misconfigured` inside
    /// stays findable, so the binary exits 2 for it).
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            BackupError::Other(e) => e,
            exists => anyhow::Error::from(exists),
        }
    }
}

/// Copies the SQLite database `url` (the file `db`) to `to`, consistent as of one
/// moment while the server goes on writing; `limit` is how long to wait for a lock
/// (`db_timeout_ms`). Returns the size of the copy in bytes.
pub async fn sqlite(url: &str, db: &Path, to: &Path, limit: Duration) -> Result<u64, BackupError> {
    if !db.exists() {
        return Err(anyhow::Error::from(Misconfigured(format!(
            "there is no SQLite database at {}: give the server's --data-dir or \
             --database-url",
            db.display()
        )))
        .into());
    }
    let to = std::path::absolute(to)
        .map_err(|e| anyhow::anyhow!("cannot resolve the path {}: {e}", to.display()))?;
    if to.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(to));
    }
    let (Some(dir), Some(name)) = (to.parent(), to.file_name()) else {
        return Err(anyhow::anyhow!("{} names no file to write", to.display()).into());
    };
    let partial = Partial::create(dir, &name.to_string_lossy())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", to.display()))?;
    let Some(partial_name) = partial.0.to_str() else {
        return Err(anyhow::anyhow!("{} is not a UTF-8 path", to.display()).into());
    };
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(anyhow::Error::from)?
        .read_only(true)
        .busy_timeout(limit)
        // A copy of a large database takes seconds: sqlx's slow-statement warning is noise.
        .disable_statement_logging();
    let copy = async {
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
        sqlx::query("VACUUM INTO ?")
            .bind(partial_name)
            .execute(&mut conn)
            .await?;
        conn.close().await
    };
    copy.await
        .map_err(|e| anyhow::anyhow!("cannot copy the database to {partial_name}: {e}"))?;
    std::fs::File::open(&partial.0)
        .and_then(|f| f.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot sync {partial_name}: {e}"))?;
    match std::fs::hard_link(&partial.0, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(BackupError::Exists(to)),
        Err(e) => {
            return Err(anyhow::anyhow!("cannot name the copy {}: {e}", to.display()).into());
        }
    }
    drop(partial);
    crate::private_files::sync_dir(dir)?;
    let size = std::fs::metadata(&to)
        .map_err(|e| anyhow::anyhow!("cannot read back {}: {e}", to.display()))?
        .len();
    Ok(size)
}

/// The copy while it is written: an empty file created exclusively with mode 0600
/// (SQLite writes into an empty file and keeps its mode), removed when dropped.
struct Partial(PathBuf);

impl Partial {
    /// Creates `dir/.NAME.PID.RANDOM.partial`.
    fn create(dir: &Path, name: &str) -> std::io::Result<Partial> {
        let path = dir.join(format!(
            ".{name}.{}.{:08x}.partial",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(&path)?;
        Ok(Partial(path))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
