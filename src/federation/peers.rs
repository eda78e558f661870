//! The static peer map (`[[federation.peers]]`): each peer's name, endpoint, pinned
//! Ed25519 key and a lazily connected gRPC channel to it (TLS for `https://` peers).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use tonic::transport::{Channel, Endpoint};

use crate::config::{FederationSettings, Misconfigured};

/// One configured peer.
pub struct Peer {
    /// Its server name.
    pub name: String,
    /// Where it listens (`https://host:port`, or `http://` with `allow_insecure`): for
    /// this server's log only, never in an answer to a client.
    pub endpoint: String,
    /// Its pinned public key, for verifying the tokens it signs.
    pub key: DecodingKey,
    /// The same key, raw: it verifies the key transparency heads the peer signs.
    pub public_key: [u8; 32],
    /// A channel to it; it connects on first use (and reconnects after failures), each
    /// attempt and each call bounded by `federation.request_timeout_secs`.
    pub channel: Channel,
}

/// The peers by server name.
pub struct Peers(HashMap<String, Peer>);

impl Peers {
    /// The peers of a validated `[federation]` table: an `https://` peer is verified
    /// against its `ca_file` or the system's roots (read now: a missing file is a
    /// configuration error); an `http://` one (`allow_insecure`) is warned about. Needs a
    /// Tokio runtime (channels spawn their connection task).
    pub fn from_settings(settings: &FederationSettings) -> anyhow::Result<Peers> {
        let timeout = Duration::from_secs(settings.request_timeout_secs);
        let mut map = HashMap::new();
        for (i, peer) in settings.peers.iter().enumerate() {
            let public = peer
                .public_key_bytes()
                .map_err(|e| anyhow::anyhow!("peer {:?}: public_key {e}", peer.server_name))?;
            let mut endpoint = Endpoint::from_shared(peer.endpoint.clone())?
                .connect_timeout(timeout)
                .timeout(timeout)
                .tcp_nodelay(true);
            let key = |field: &str| format!("federation.peers[{i}].{field}");
            if peer.endpoint.starts_with("https:") {
                let ca_file = (!peer.ca_file.is_empty()).then(|| Path::new(&peer.ca_file));
                let tls = crate::tls::client_tls(ca_file, &key("ca_file"))?;
                endpoint = endpoint.tls_config(tls).map_err(|e| {
                    Misconfigured(format!(
                        "{}: no roots to verify {} with ({e}); install the system's CA \
                         certificates or set {}",
                        key("endpoint"),
                        peer.endpoint,
                        key("ca_file")
                    ))
                })?;
            } else {
                tracing::warn!(
                    peer = peer.server_name,
                    endpoint = peer.endpoint,
                    "{} is plaintext http ({} = true): calls to this peer and the tokens \
                     they carry can be read and altered on the way",
                    key("endpoint"),
                    key("allow_insecure")
                );
            }
            let channel = endpoint.connect_lazy();
            map.insert(
                peer.server_name.clone(),
                Peer {
                    name: peer.server_name.clone(),
                    endpoint: peer.endpoint.clone(),
                    key: DecodingKey::from_ed_der(&public),
                    public_key: public,
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

    /// The names of the peers, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.keys().cloned().collect();
        names.sort();
        names
    }

    /// The key pinned for the peer named `name`.
    pub fn pinned_key(&self, name: &str) -> Option<&DecodingKey> {
        self.0.get(name).map(|p| &p.key)
    }
}
