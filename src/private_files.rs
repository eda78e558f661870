//! Files only secretd may read: the data directory is 0700 and every file secretd keeps
//! in it 0600 (the JWT secret; the SQLite database, which holds everyone's encrypted
//! private keys, and its `-wal`/`-shm` companions).
//!
//! Directories and files are created with those modes. A directory or file found with
//! looser permissions (group or other bits) is tightened, with a warning in the log; when
//! that fails (a read-only mount), the warning says so and secretd goes on. On platforms
//! without Unix permissions these functions only create what is missing.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

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

/// What [`publish_new`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Our contents are now the file.
    Ours,
    /// Another process published the file first; ours was discarded. Read theirs.
    Theirs,
}

/// Creates `dir/name` holding `contents`, mode 0600, atomically: the contents go to a
/// synced temporary file that is then hard-linked into place (a link never replaces, so
/// the first of several racing processes wins and a crash leaves no empty file), and
/// the directory is synced. Used for the JWT secret and the federation key.
/// `before_link` runs just before the link (a test hook for races and crashes).
pub fn publish_new(
    dir: &Path,
    name: &str,
    contents: &[u8],
    before_link: &mut dyn FnMut(),
) -> anyhow::Result<Published> {
    let path = dir.join(name);
    let temp = TempFile::write(dir, name, contents)?;
    before_link();
    match std::fs::hard_link(&temp.0, &path) {
        Ok(()) => {
            drop(temp);
            sync_dir(dir)?;
            Ok(Published::Ours)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Published::Theirs),
        Err(e) => anyhow::bail!(
            "cannot publish {} (a hard link from {}): {e}",
            path.display(),
            temp.0.display()
        ),
    }
}

/// A synced temporary file, removed when dropped (a crash leaves a `.NAME.*.tmp` file
/// that is never used and may be deleted).
struct TempFile(PathBuf);

impl TempFile {
    fn write(dir: &Path, name: &str, contents: &[u8]) -> anyhow::Result<TempFile> {
        let temp_name = format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = dir.join(temp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        let temp = TempFile(path);
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", temp.0.display()))?;
        Ok(temp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Makes the directory's entries durable (the new link).
pub(crate) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot sync the directory {}: {e}", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
