//! The live subscriptions of a `listen` or `chat`: one per homeserver the device's rooms
//! live on — its own (which also brings invites) and each other one (with a fed-user
//! token its homeserver makes, renewed before it expires).

use std::collections::BTreeMap;

use futures_util::FutureExt;
use secretd_client::api::subscription::{Delivery, Subscription};
use secretd_client::time::now_secs;
use secretd_client::{Device, Result};
use tokio::time::Instant;

/// One subscription per homeserver ("" = the device's own).
pub struct Subs {
    by_server: BTreeMap<String, Subscription>,
}

/// The cursors of the rooms on `server` that the user is in (or of one room).
pub fn cursors_on(device: &Device, server: &str, pair: Option<&str>) -> Vec<(String, u64)> {
    device
        .state()
        .rooms
        .values()
        .filter(|r| r.lost.is_none() && r.homeserver == server)
        .filter(|r| pair.is_none_or(|p| p == r.pair_id))
        .flat_map(|r| r.streams().map(|s| (s.stream_id.clone(), s.last_event_id)))
        .collect()
}

impl Subs {
    /// Subscribes to every room, on every homeserver, and to invites.
    pub async fn open(device: &mut Device) -> Result<Subs> {
        let mut subs = Subs {
            by_server: BTreeMap::new(),
        };
        subs.reopen(device, "").await?;
        for (server, _) in device.remote_homeservers() {
            subs.reopen(device, &server).await?;
        }
        Ok(subs)
    }

    /// (Re)opens the subscription to one homeserver from the device's cursors (after a
    /// new token: nothing is missed or repeated).
    pub async fn reopen(&mut self, device: &mut Device, server: &str) -> Result<()> {
        let api = device.connection(server).await?;
        let invites = server.is_empty().then_some(device.state().invites_after);
        let sub = api.subscribe(cursors_on(device, server, None), invites);
        self.by_server.insert(server.to_string(), sub);
        Ok(())
    }

    /// Follows a room the device just joined, on its homeserver.
    pub async fn add(&mut self, device: &mut Device, pair_id: &str) -> Result<()> {
        let Some(server) = device
            .state()
            .rooms
            .get(pair_id)
            .map(|r| r.homeserver.clone())
        else {
            return Ok(());
        };
        match self.by_server.get(&server) {
            Some(sub) => {
                sub.add(cursors_on(device, &server, Some(pair_id)));
                Ok(())
            }
            None => self.reopen(device, &server).await,
        }
    }

    /// Stops following a room's streams.
    pub fn remove(&mut self, device: &Device, pair_id: &str) {
        let Some(room) = device.state().rooms.get(pair_id) else {
            return;
        };
        if let Some(sub) = self.by_server.get(&room.homeserver) {
            sub.remove(room.streams().map(|s| s.stream_id.clone()).to_vec());
        }
    }

    /// The next delivery from any homeserver, with the homeserver it came from.
    pub async fn next(&mut self) -> Option<(String, Delivery)> {
        if self.by_server.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.by_server.iter_mut().map(|(server, sub)| {
            let server = server.clone();
            async move { (server, sub.next().await) }.boxed()
        });
        let ((server, delivery), _, _) = futures_util::future::select_all(waits).await;
        match delivery {
            Some(d) => Some((server, d)),
            None => {
                self.by_server.remove(&server);
                Box::pin(self.next()).await
            }
        }
    }

    /// When the first fed-user token of another homeserver is due for renewal.
    pub fn next_renewal(device: &Device) -> Instant {
        let soonest = device
            .remote_homeservers()
            .into_iter()
            .filter(|(_, at)| *at > 0)
            .map(|(_, at)| at)
            .min();
        match soonest {
            Some(at) => {
                Instant::now() + std::time::Duration::from_secs(at.saturating_sub(now_secs()))
            }
            None => Instant::now() + std::time::Duration::from_secs(86_400),
        }
    }

    /// The other homeservers whose tokens are due.
    pub fn due(device: &Device) -> Vec<String> {
        device
            .remote_homeservers()
            .into_iter()
            .filter(|(_, at)| *at > 0 && *at <= now_secs())
            .map(|(name, _)| name)
            .collect()
    }
}
