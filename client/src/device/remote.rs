//! Rooms hosted on other homeservers (DESIGN §9): the construction names users as the
//! *pair's* homeserver names them ("" = the pair's own users), while this device's
//! homeserver names them its own way ("" = its users). A room on homeserver `P` (as this
//! device's homeserver names it) is read and posted at `P`, with a "fed-user" token that
//! this device's homeserver makes (`Federate`) and renews; keys, pins and invites stay
//! with the home server.
//!
//! [`Frame`] converts between the two namings: `to_home` for keys, pins and display,
//! `to_room` for everything signed, encrypted or sent to the pair's server.

use std::collections::HashMap;

use super::Device;
use crate::api::Api;
use crate::error::{Error, Result};
use crate::time::now_secs;
use crate::user::UserRef;

/// A fed-user token is renewed this many seconds before it expires, or a fifth of its
/// lifetime before when that is shorter (a token is never older than the home token it
/// was made from, which may itself be short).
pub const RENEW_BEFORE_SECS: u64 = 60;

/// A connection to another homeserver and when to renew its token.
#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) api: Api,
    pub(crate) renew_at: u64,
}

/// When to renew a token that expires at `expires_at` (Unix seconds), made now.
fn renew_at(expires_at: u64) -> u64 {
    let now = now_secs();
    let lifetime = expires_at.saturating_sub(now);
    expires_at.saturating_sub((lifetime / 5).clamp(1, RENEW_BEFORE_SECS))
}

/// The connections to other homeservers, by name.
pub(crate) type Remotes = HashMap<String, Remote>;

/// How a room's homeserver and this device's homeserver name users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The pair's homeserver as this device's homeserver names it ("" = the same).
    pub pair: String,
    /// This device's homeserver's name (only needed when `pair` is not "").
    pub home: String,
}

impl Frame {
    /// The frame of a room on this device's own homeserver.
    pub fn local() -> Frame {
        Frame {
            pair: String::new(),
            home: String::new(),
        }
    }

    /// A user as the pair's homeserver names them → as this device's homeserver does.
    pub fn to_home(&self, r: &UserRef) -> UserRef {
        self.rename(r, &self.pair, &self.home)
    }

    /// A user as this device's homeserver names them → as the pair's homeserver does.
    pub fn to_room(&self, r: &UserRef) -> UserRef {
        self.rename(r, &self.home, &self.pair)
    }

    /// From one naming to the other: "" (the source's own users) becomes `source`, and
    /// `target` (the target's own users) becomes "". A local room names everyone alike.
    fn rename(&self, r: &UserRef, source: &str, target: &str) -> UserRef {
        if self.pair.is_empty() {
            return r.clone();
        }
        let homeserver = if r.homeserver.is_empty() {
            source.to_string()
        } else if r.homeserver == target {
            String::new()
        } else {
            r.homeserver.clone()
        };
        UserRef {
            homeserver,
            user_id: r.user_id,
        }
    }
}

impl Device {
    /// This device's homeserver's name, asked once (its `ServerKey`) and kept.
    pub(crate) async fn home_name(&mut self) -> Result<String> {
        if let Some(name) = &self.state.home_name {
            return Ok(name.clone());
        }
        let name = self.api.server_name().await.map_err(|e| {
            Error::State(format!(
                "cannot learn this homeserver's name, which rooms on other homeservers need \
                 (is federation on there?): {e}"
            ))
        })?;
        self.state.home_name = Some(name.clone());
        Ok(name)
    }

    /// The naming of the room `pair_id`.
    pub(crate) fn frame(&self, pair_id: &str) -> Result<Frame> {
        let pair = self.room_homeserver(pair_id)?;
        if pair.is_empty() {
            return Ok(Frame::local());
        }
        let home = self.state.home_name.clone().ok_or_else(|| {
            Error::State("this device does not know its homeserver's name yet".into())
        })?;
        Ok(Frame { pair, home })
    }

    fn room_homeserver(&self, pair_id: &str) -> Result<String> {
        Ok(self
            .state
            .rooms
            .get(pair_id)
            .ok_or_else(|| Error::State(format!("no room {pair_id} on this device")))?
            .homeserver
            .clone())
    }

    /// This user as the room's homeserver names them.
    pub(crate) fn me_in(&self, pair_id: &str) -> Result<UserRef> {
        Ok(self.frame(pair_id)?.to_room(&self.me))
    }

    /// The connection for the room's pair: this device's homeserver, or the pair's with a
    /// fresh fed-user token.
    pub(crate) async fn api_for(&mut self, pair_id: &str) -> Result<Api> {
        let (homeserver, endpoint) = {
            let room = self
                .state
                .rooms
                .get(pair_id)
                .ok_or_else(|| Error::State(format!("no room {pair_id} on this device")))?;
            (room.homeserver.clone(), room.endpoint.clone())
        };
        if homeserver.is_empty() {
            return Ok(self.api.clone());
        }
        let api = self.api_at(&homeserver, Some(&endpoint)).await?;
        Ok(api)
    }

    /// A connection to homeserver `name` with a token that has more than
    /// [`RENEW_BEFORE_SECS`] left (asked of this device's homeserver when needed).
    pub(crate) async fn api_at(&mut self, name: &str, known_endpoint: Option<&str>) -> Result<Api> {
        if let Some(remote) = self.remotes.get(name)
            && now_secs() < remote.renew_at
        {
            return Ok(remote.api.clone());
        }
        let federated = self.api.federate(name).await?;
        let endpoint = if federated.endpoint.is_empty() {
            known_endpoint.unwrap_or_default().to_string()
        } else {
            federated.endpoint.clone()
        };
        if endpoint.is_empty() {
            return Err(Error::State(format!(
                "your homeserver does not say where homeserver {name} serves clients"
            )));
        }
        let api = match self.remotes.get(name) {
            // The same connection, a new token: open calls and subscriptions pick it up.
            Some(remote) if remote.api.url() == endpoint => {
                remote.api.set_token(&federated.token);
                remote.api.clone()
            }
            // The CA this device trusts for its homeserver (a private CA of the
            // federation) or the system's roots.
            _ => {
                let ca_file = self.api.ca_file().map(|p| p.to_path_buf());
                Api::connect_with(&endpoint, &federated.token, ca_file.as_deref()).await?
            }
        };
        for room in self.state.rooms.values_mut() {
            if room.homeserver == name && room.endpoint != endpoint {
                room.endpoint = endpoint.clone();
            }
        }
        self.remotes.insert(
            name.to_string(),
            Remote {
                api: api.clone(),
                renew_at: renew_at(federated.expires_at),
            },
        );
        Ok(api)
    }

    /// The other homeservers this device's rooms live on, with when their tokens are due
    /// for renewal (Unix seconds; 0: not connected yet).
    pub fn remote_homeservers(&self) -> Vec<(String, u64)> {
        let mut names: Vec<String> = self
            .state
            .rooms
            .values()
            .filter(|r| !r.homeserver.is_empty() && r.lost.is_none())
            .map(|r| r.homeserver.clone())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| {
                let at = self.remotes.get(&n).map_or(0, |r| r.renew_at);
                (n, at)
            })
            .collect()
    }

    /// Forgets the token of homeserver `name`, so that the next use asks for a new one.
    pub fn forget_connection(&mut self, name: &str) {
        if let Some(remote) = self.remotes.get_mut(name) {
            remote.renew_at = 0;
        }
    }

    /// The connection to homeserver `name` ("" = this device's), its token renewed when
    /// it is close to expiry: for long-running subscriptions there.
    pub async fn connection(&mut self, name: &str) -> Result<Api> {
        if name.is_empty() {
            return Ok(self.api.clone());
        }
        let endpoint = self
            .state
            .rooms
            .values()
            .find(|r| r.homeserver == name)
            .map(|r| r.endpoint.clone());
        self.api_at(name, endpoint.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(hs: &str, id: u64) -> UserRef {
        UserRef {
            homeserver: hs.into(),
            user_id: id,
        }
    }

    #[test]
    fn namings_convert_both_ways() {
        // Bob of b looks at a room on a: Alice (a's own) is "" there, Bob is "b.test",
        // Carol of c is "c.test" in both namings.
        let f = Frame {
            pair: "a.test".into(),
            home: "b.test".into(),
        };
        for (room, home) in [
            (r("", 1), r("a.test", 1)),
            (r("b.test", 2), r("", 2)),
            (r("c.test", 3), r("c.test", 3)),
        ] {
            assert_eq!(f.to_home(&room), home);
            assert_eq!(f.to_room(&home), room);
        }
        assert_eq!(Frame::local().to_home(&r("c.test", 3)), r("c.test", 3));
    }
}
