//! Files only secretd may read: the data directory is 0700 and every file secretd keeps
//! in it 0600 (the JWT secret; the SQLite database, which holds everyone's encrypted
//! private keys, and its `-wal`/`-shm` companions).
//!
//! Directories and files are created with those modes. A directory or file found with
//! looser permissions (group or other bits) is tightened, with a warning in the log; when
//! that fails (a read-only mount), the warning says so and secretd goes on. On platforms
//! without Unix permissions these functions only create what is missing.

use std::io::ErrorKind;
use std::path::Path;

use crate::config::{Database, Settings};

/// Makes the data directory private (creating it 0700, or tightening it) when the
/// SQLite database lives in it. (The JWT secret file makes it private when it is used.)
pub fn secure_data_dir(settings: &Settings) -> anyhow::Result<()> {
    let database_inside = matches!(
        settings.database(),
        Ok(Database::Sqlite { path, .. }) if path.starts_with(&settings.data_dir)
    );
    if database_inside {
        private_dir(&settings.data_dir)?;
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700, or tightens an existing one to
/// 0700. For the data directory, which secretd owns.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    create_missing_dir(dir)?;
    tighten(dir, "directory");
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist; an existing
/// directory is left as it is (it may be shared, like `/tmp`).
pub fn create_missing_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the directory {}: {e}", dir.display()))
}

/// Creates the empty file `path` with mode 0600 unless it exists; an existing file is
/// tightened to 0600.
pub fn private_file(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            tighten(path, "file");
            Ok(())
        }
        Err(e) => anyhow::bail!("cannot create {}: {e}", path.display()),
    }
}

/// Tightens `path` to 0600 if it exists with group or other permissions.
pub fn tighten_if_exists(path: &Path) {
    if path.exists() {
        tighten(path, "file");
    }
}

/// Removes group and other permissions from `path`, logging a warning when it had any.
#[cfg(unix)]
fn tighten(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let tight = mode & 0o700;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight)) {
        Ok(()) => tracing::warn!(
            "{what} {} was readable by others (mode {mode:04o}); tightened it to {tight:04o}",
            path.display()
        ),
        Err(e) => tracing::warn!(
            "{what} {} is readable by others (mode {mode:04o}) and cannot be tightened to \
             {tight:04o}: {e}; restrict it yourself, it holds secrets",
            path.display()
        ),
    }
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _what: &str) {}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_and_tightens_loose() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700, "created parents too");
        let file = dir.join("f");
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::write(&file, "kept").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_file(&file).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
        // An existing shared directory is not touched by create_missing_dir.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_missing_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o755);
        tighten_if_exists(&dir.join("absent"));
    }
}
