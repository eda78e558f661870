//! The user's identity on this device: the first device generates it and backs it up
//! under the password; another device restores it from the backup (and re-wraps a backup
//! in an older or weaker format); a password change re-wraps it.

use std::collections::BTreeMap;

use tonic::Code;

use super::Device;
use crate::api::Api;
use crate::crypto::blob::{self, Kdf};
use crate::crypto::identity::{Identity, fingerprint_hex};
use crate::error::{Error, Result};
use crate::state::{DeviceState, STATE_VERSION};
use crate::user;

/// What [`Device::login_and_upgrade`] did about the backup's format.
#[derive(Debug)]
pub enum BackupUpgrade {
    /// The backup already was version 2 with at least the default KDF: nothing to do.
    Current,
    /// The older or weaker backup was re-wrapped as version 2 with [`Kdf::DEFAULT`] and
    /// stored (the device's `backup_version` is the new one).
    Rewrapped,
    /// Another device changed the backup after this one read it: its blob stands (and, if
    /// it is still old, the next login re-wraps it).
    ChangedElsewhere,
    /// Storing the re-wrapped backup failed: the old one stands, the login went on, and
    /// the next login tries again.
    Failed(Error),
}

impl Device {
    /// First device of a user: generates the identity key, stores it wrapped under
    /// `password` as a version 2 blob bound to the user (compare-and-set: only if no backup
    /// exists yet) and posts the public key. `kdf` is Argon2id at least as costly as
    /// [`Kdf::DEFAULT`].
    pub async fn init(api: Api, password: &str, kdf: Kdf) -> Result<Device> {
        let user_id = crate::token::check(&api.token(), None, crate::time::now_secs())?.user_id;
        if api.fetch_private_key().await?.is_some() {
            return Err(Error::State(format!(
                "user {user_id} already has an identity backed up on {}: use `login` on a new device",
                api.url()
            )));
        }
        let identity = Identity::generate()?;
        let sealed =
            blob::seal_private_key(&identity.to_pkcs8()?, password, kdf, &user::local(user_id))?;
        // Backup first: a crash after it leaves a restorable identity, never a posted key
        // whose private half is lost.
        let version = match api.post_private_key(&sealed, Some(0)).await {
            Ok(v) => v,
            Err(e) if e.code() == Some(Code::Aborted) => {
                return Err(Error::State(
                    "another device stored an identity backup at the same moment: use `login`"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        };
        Self::new_device(api, user_id, identity, version, 0).await
    }

    /// A new device of an existing user: unwraps the identity from the backup with
    /// `password`, then rebuilds every room from the invites and reads their streams.
    /// A backup in an older or weaker format is re-wrapped on the way (see
    /// [`Device::login_and_upgrade`]); when that fails the login still succeeds, and the
    /// next one tries again.
    pub async fn login(api: Api, password: &str) -> Result<Device> {
        Ok(Self::login_and_upgrade(api, password).await?.0)
    }

    /// [`Device::login`], also saying what happened to the backup: a version 1 blob (or
    /// any weaker than [`Kdf::DEFAULT`]) is re-sealed as version 2 with the default KDF
    /// and stored compare-and-set on the version read. Neither another device's change
    /// in between nor a failure to store fails the login.
    pub async fn login_and_upgrade(api: Api, password: &str) -> Result<(Device, BackupUpgrade)> {
        Self::login_acknowledging(api, password, 0).await
    }

    /// [`Device::login_and_upgrade`] after a key alarm the user acknowledged: the user's
    /// key-log entries through `acknowledged_seq` (the alarm's `newest_seq`) are taken as
    /// seen; later ones are checked as at every login.
    pub async fn login_acknowledging(
        api: Api,
        password: &str,
        acknowledged_seq: u64,
    ) -> Result<(Device, BackupUpgrade)> {
        let user_id = crate::token::check(&api.token(), None, crate::time::now_secs())?.user_id;
        let Some((sealed, version)) = api.fetch_private_key().await? else {
            return Err(Error::State(format!(
                "user {user_id} has no identity backup on {}: run `init` first",
                api.url()
            )));
        };
        // The backup is bound to ref("", user id): this user, on the homeserver storing it.
        let pkcs8 = blob::open_private_key(&sealed, password, &user::local(user_id))?;
        let identity = Identity::from_pkcs8(&pkcs8)?;
        let mut device =
            Self::new_device(api, user_id, identity, version, acknowledged_seq).await?;
        let upgrade = if blob::header(&sealed)?.is_current() {
            BackupUpgrade::Current
        } else {
            device.rewrap_backup(password, version).await
        };
        device.accept_invites().await?;
        // Rooms the user has since left or was removed from are kept, marked, and
        // skipped; every other room is caught up.
        for pair in device.state.rooms.keys().cloned().collect::<Vec<_>>() {
            match device.catch_up_room(&pair).await {
                Ok(()) | Err(Error::RoomLost { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        device.take_processed();
        Ok((device, upgrade))
    }

    /// Stores the identity as a version 2 blob with the default KDF, only if the backup is
    /// still at `read_version`.
    async fn rewrap_backup(&mut self, password: &str, read_version: u64) -> BackupUpgrade {
        let sealed = match self
            .identity
            .to_pkcs8()
            .and_then(|pkcs8| blob::seal_private_key(&pkcs8, password, Kdf::DEFAULT, &self.me))
        {
            Ok(sealed) => sealed,
            Err(e) => return BackupUpgrade::Failed(e),
        };
        match self.api.post_private_key(&sealed, Some(read_version)).await {
            Ok(v) => {
                self.state.backup_version = v;
                BackupUpgrade::Rewrapped
            }
            Err(e) if e.code() == Some(Code::Aborted) => BackupUpgrade::ChangedElsewhere,
            Err(e) => BackupUpgrade::Failed(e),
        }
    }

    /// A device with no rooms yet, after making sure the server holds its public key.
    async fn new_device(
        api: Api,
        user_id: u64,
        identity: Identity,
        backup_version: u64,
        acknowledged_seq: u64,
    ) -> Result<Device> {
        let state = DeviceState {
            version: STATE_VERSION,
            server: api.url().to_string(),
            ca_file: api.ca_file().map(Into::into),
            token: api.token(),
            user_id,
            identity_pkcs8: identity.to_pkcs8()?.to_vec(),
            fingerprint: identity.fingerprint(),
            backup_version,
            invites_after: 0,
            rooms: BTreeMap::new(),
            token_source: None,
            token_source_set_ms: 0,
            pins: BTreeMap::new(),
            home_name: None,
            home_log: None,
            peer_logs: Default::default(),
        };
        let mut device = Self::from_parts(api, state, identity)?;
        // Every login checks the user's entries in the homeserver's key log first: a key
        // this device never posted is an alarm, and the login stops there (before the
        // current key is compared with the backup's, which would only say "another
        // identity").
        if acknowledged_seq > 0 {
            device.acknowledge_key_alarm(acknowledged_seq).await?;
        }
        device.monitor_own_key().await?;
        Self::ensure_key_posted(&device.api, user_id, &device.identity, acknowledged_seq > 0)
            .await?;
        Ok(device)
    }

    /// Makes sure the server's current key for us is the identity's public key (or, after
    /// an acknowledged key alarm, that the server holds some key for us).
    async fn ensure_key_posted(
        api: &Api,
        user_id: u64,
        identity: &Identity,
        alarm_acknowledged: bool,
    ) -> Result<()> {
        match api.fetch_key(user_id, "").await {
            Ok(keys) if keys.current.fingerprint == identity.fingerprint() => return Ok(()),
            Ok(_) if alarm_acknowledged => return Ok(()),
            Ok(keys) => {
                return Err(Error::State(format!(
                    "the server's current key for user {user_id} ({}) is not the key in your \
                     backup ({}): another identity was posted after this backup",
                    fingerprint_hex(&keys.current.fingerprint),
                    fingerprint_hex(&identity.fingerprint())
                )));
            }
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) => return Err(e),
        }
        let fp = api.post_key(identity.public().spki()).await?;
        if fp != identity.fingerprint() {
            return Err(Error::Protocol(
                "PostKey returned another fingerprint than our key's".into(),
            ));
        }
        Ok(())
    }

    /// Re-wraps the identity under a new password as a version 2 blob (compare-and-set
    /// against the backup version this device last saw, so a concurrent change elsewhere
    /// is never overwritten). `kdf` as for [`Device::init`].
    pub async fn change_password(&mut self, new_password: &str, kdf: Kdf) -> Result<()> {
        let sealed =
            blob::seal_private_key(&self.identity.to_pkcs8()?, new_password, kdf, &self.me)?;
        match self
            .api
            .post_private_key(&sealed, Some(self.state.backup_version))
            .await
        {
            Ok(v) => {
                self.state.backup_version = v;
                Ok(())
            }
            Err(e) if e.code() == Some(Code::Aborted) => Err(Error::State(format!(
                "the backup changed on another device since this one saw version {}: log in again first",
                self.state.backup_version
            ))),
            Err(e) => Err(e),
        }
    }
}
