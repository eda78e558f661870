//! The static peer map (`[[federation.peers]]`): each peer's name, endpoint, pinned
//! Ed25519 key and a lazily connected gRPC channel to it.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use tonic::transport::{Channel, Endpoint};

use crate::config::FederationSettings;

/// One configured peer.
pub struct Peer {
    /// Its server name.
    pub name: String,
    /// Where it listens (`http://host:port`).
    pub endpoint: String,
    /// Its pinned public key, for verifying the tokens it signs.
    pub key: DecodingKey,
    /// A channel to it; it connects on first use (and reconnects after failures), each
    /// attempt and each call bounded by `federation.request_timeout_secs`.
    pub channel: Channel,
}

/// The peers by server name.
pub struct Peers(HashMap<String, Peer>);

impl Peers {
    /// The peers of a validated `[federation]` table. Needs a Tokio runtime (channels
    /// spawn their connection task).
    pub fn from_settings(settings: &FederationSettings) -> anyhow::Result<Peers> {
        let timeout = Duration::from_secs(settings.request_timeout_secs);
        let mut map = HashMap::new();
        for peer in &settings.peers {
            let public = peer
                .public_key_bytes()
                .map_err(|e| anyhow::anyhow!("peer {:?}: public_key {e}", peer.server_name))?;
            let channel = Endpoint::from_shared(peer.endpoint.clone())?
                .connect_timeout(timeout)
                .timeout(timeout)
                .tcp_nodelay(true)
                .connect_lazy();
            map.insert(
                peer.server_name.clone(),
                Peer {
                    name: peer.server_name.clone(),
                    endpoint: peer.endpoint.clone(),
                    key: DecodingKey::from_ed_der(&public),
                    channel,
                },
            );
        }
        Ok(Peers(map))
    }

    /// The peer named `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&Peer> {
        self.0.get(name)
    }

    /// The key pinned for the peer named `name`.
    pub fn pinned_key(&self, name: &str) -> Option<&DecodingKey> {
        self.0.get(name).map(|p| &p.key)
    }
}
