//! The user's identity on this device: the first device generates it and backs it up
//! under the password; another device restores it from the backup; a password change
//! re-wraps it.

use std::collections::BTreeMap;

use tonic::Code;

use super::Device;
use crate::api::Api;
use crate::crypto::blob::{self, Kdf};
use crate::crypto::identity::{Identity, fingerprint_hex};
use crate::error::{Error, Result};
use crate::state::{DeviceState, STATE_VERSION};

impl Device {
    /// First device of a user: generates the identity key, stores it wrapped under
    /// `password` (compare-and-set: only if no backup exists yet) and posts the public key.
    pub async fn init(api: Api, password: &str, kdf: Kdf) -> Result<Device> {
        let user_id = crate::token::check(&api.token(), None, crate::time::now_secs())?.user_id;
        if api.fetch_private_key().await?.is_some() {
            return Err(Error::State(format!(
                "user {user_id} already has an identity backed up on {}: use `login` on a new device",
                api.url()
            )));
        }
        let identity = Identity::generate()?;
        let sealed = blob::seal_private_key(&identity.to_pkcs8()?, password, kdf)?;
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
        Self::new_device(api, user_id, identity, version).await
    }

    /// A new device of an existing user: unwraps the identity from the backup with
    /// `password`, then rebuilds every room from the invites and reads their streams.
    pub async fn login(api: Api, password: &str) -> Result<Device> {
        let user_id = crate::token::check(&api.token(), None, crate::time::now_secs())?.user_id;
        let Some((sealed, version)) = api.fetch_private_key().await? else {
            return Err(Error::State(format!(
                "user {user_id} has no identity backup on {}: run `init` first",
                api.url()
            )));
        };
        let pkcs8 = blob::open_private_key(&sealed, password)?;
        let identity = Identity::from_pkcs8(&pkcs8)?;
        let mut device = Self::new_device(api, user_id, identity, version).await?;
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
        Ok(device)
    }

    /// A device with no rooms yet, after making sure the server holds its public key.
    async fn new_device(
        api: Api,
        user_id: u64,
        identity: Identity,
        backup_version: u64,
    ) -> Result<Device> {
        Self::ensure_key_posted(&api, user_id, &identity).await?;
        let state = DeviceState {
            version: STATE_VERSION,
            server: api.url().to_string(),
            token: api.token(),
            user_id,
            identity_pkcs8: identity.to_pkcs8()?.to_vec(),
            fingerprint: identity.fingerprint(),
            backup_version,
            invites_after: 0,
            rooms: BTreeMap::new(),
            token_source: None,
            token_source_set_ms: 0,
        };
        Self::from_parts(api, state, identity)
    }

    /// Makes sure the server's current key for us is the identity's public key.
    async fn ensure_key_posted(api: &Api, user_id: u64, identity: &Identity) -> Result<()> {
        match api.fetch_key(user_id, "").await {
            Ok(keys) if keys.current.fingerprint == identity.fingerprint() => return Ok(()),
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

    /// Re-wraps the identity under a new password (compare-and-set against the backup
    /// version this device last saw, so a concurrent change elsewhere is never overwritten).
    pub async fn change_password(&mut self, new_password: &str, kdf: Kdf) -> Result<()> {
        let sealed = blob::seal_private_key(&self.identity.to_pkcs8()?, new_password, kdf)?;
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
