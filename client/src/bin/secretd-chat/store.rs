//! The state directory: `state.json` (0600) in a 0700 directory, written atomically
//! (temporary file, fsync, rename) under an exclusive lock on `state.lock`, merged with
//! what another process of the same device wrote meanwhile (so `listen` in one terminal
//! and `send` in another lose nothing).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use secretd_client::state::DeviceState;
use secretd_client::{Error, Result};

/// Which token a save keeps.
enum TokenRule {
    /// The one that expires later (a renewal in another process wins over an older one).
    Later,
    /// The one already saved.
    Saved,
    /// The one being saved.
    Mine,
}

/// A device's state directory.
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The directory (not created yet).
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Writes a key alarm's evidence to `kt-alarm-<unix ms>.json` (0600; the directory is
    /// created 0700 if needed, so a login that alarms before any state exists keeps it
    /// too); returns its path.
    pub fn save_evidence(&self, evidence: &str) -> Result<PathBuf> {
        self.create_dir()?;
        let path = self
            .dir
            .join(format!("kt-alarm-{}.json", secretd_client::time::now_ms()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(evidence.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        write().map_err(|e| Error::io("cannot write the key alarm's evidence", e))?;
        Ok(path)
    }

    /// True when a device was set up here.
    pub fn exists(&self) -> bool {
        self.file().exists()
    }

    fn create_dir(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::io(format!("cannot create {}", self.dir.display()), e))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("cannot restrict {}", self.dir.display()), e))
    }

    fn lock(&self) -> Result<File> {
        self.create_dir()?;
        let path = self.dir.join("state.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        file.lock()
            .map_err(|e| Error::io(format!("cannot lock {}", path.display()), e))?;
        Ok(file)
    }

    fn read(&self) -> Result<Option<DeviceState>> {
        let path = self.file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::State(format!("{} is damaged: {e}", path.display())))
    }

    /// The saved state, or an error telling the user to run `init` or `login`.
    pub fn load(&self) -> Result<DeviceState> {
        let _lock = self.lock()?;
        self.read()?.ok_or_else(|| {
            Error::State(format!(
                "no device in {}: run `secretd-chat init` (first device) or `login` (another device)",
                self.dir.display()
            ))
        })
    }

    /// Saves `state`, merged with whatever another process saved since it was loaded
    /// (of two tokens, the one that expires later is kept).
    pub fn save(&self, state: &DeviceState) -> Result<()> {
        self.save_merged(state, TokenRule::Later)
    }

    /// Saves `state` like [`StateDir::save`] but keeps the token saved before (the server
    /// refused the one `state` holds).
    pub fn save_keeping_token(&self, state: &DeviceState) -> Result<()> {
        self.save_merged(state, TokenRule::Saved)
    }

    /// Saves `state` with its token, whichever expires later (the user gave it).
    pub fn save_with_token(&self, state: &DeviceState) -> Result<()> {
        self.save_merged(state, TokenRule::Mine)
    }

    fn save_merged(&self, state: &DeviceState, rule: TokenRule) -> Result<()> {
        let _lock = self.lock()?;
        let mut merged = state.clone();
        if let Some(on_disk) = self.read()?
            && on_disk.user_id == state.user_id
        {
            let saved_token = on_disk.token.clone();
            merged.merge(on_disk);
            match rule {
                TokenRule::Later => {}
                TokenRule::Saved => merged.token = saved_token,
                TokenRule::Mine => merged.token = state.token.clone(),
            }
        }
        let json = serde_json::to_vec_pretty(&merged)
            .map_err(|e| Error::State(format!("cannot encode the state: {e}")))?;
        let tmp = self.dir.join("state.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, self.file())?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Error::io(format!("cannot write {}", self.file().display()), e))
    }
}
