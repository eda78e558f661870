//! The `[federation]` table (DESIGN §9): whether this server federates, its signing key,
//! the outgoing-call timeout, the key cache, the per-peer limit on incoming calls and the
//! static map of peers with their pinned Ed25519 keys.
//!
//! Scalar keys have environment twins `SECRETD_FEDERATION_<KEY>` (e.g.
//! `SECRETD_FEDERATION_ENABLED=true`); peers come from the config file only. Everything is
//! checked when the configuration loads: a bad peer is a configuration error (exit 2)
//! naming the key, e.g. `federation.peers[1].public_key` (a peer's `ca_file` is read when
//! the server starts, its errors named the same way).

use std::collections::HashSet;

use base64::Engine;
use serde::Deserialize;

/// Length of a raw Ed25519 public key in bytes.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// The `[federation]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSettings {
    /// Serve SecretFederationService and reach peers. Default false: FetchKey of a
    /// foreign homeserver and Federate answer FAILED_PRECONDITION.
    pub enabled: bool,
    /// PKCS#8 file (PEM or DER) with this server's Ed25519 key; replicas of one
    /// homeserver share it. Empty (the default) = `data_dir/federation-key`, created
    /// (mode 0600) at the first start with federation enabled or by
    /// `secretd federation-key`. A configured file must exist.
    pub signing_key_file: String,
    /// Deadline of an outgoing call to a peer, in seconds (connecting included). Default 5.
    pub request_timeout_secs: u64,
    /// How long a user key fetched from a peer is served from memory, in seconds.
    /// Default 300; 0 = ask the peer every time.
    pub key_cache_secs: u64,
    /// Incoming server-to-server calls per peer per second (0 = off). Default 100.
    pub rate_per_sec: f64,
    /// Incoming server-to-server calls a peer may make at once before the rate applies.
    /// Default 200.
    pub rate_burst: u32,
    /// Outgoing calls to one peer on behalf of one user (a FetchKey that misses the cache,
    /// a SendInvite delivered there), per second (0 = off). Default 2.
    pub outgoing_per_user_per_sec: f64,
    /// Outgoing calls to one peer on behalf of one user at once before that rate applies.
    /// Default 50.
    pub outgoing_per_user_burst: u32,
    /// Outgoing calls to one peer in total, per second (0 = off); keep it at or below what
    /// the peer allows this server (its `federation.rate_per_sec`). Default 50.
    pub outgoing_per_peer_per_sec: f64,
    /// Outgoing calls to one peer at once before that rate applies (at or below the peer's
    /// `federation.rate_burst`). Default 100.
    pub outgoing_per_peer_burst: u32,
    /// The share (percent) of each peer's outgoing budget that key lookups may not use,
    /// kept for invites. Default 20.
    pub invite_reserve_percent: u32,
    /// How long a peer's NOT_FOUND for a user's key is remembered, in seconds (0 = not at
    /// all). Default 30.
    pub not_found_cache_secs: u64,
    /// Invites one peer may have pending here for one of our users (0 = off). Default 100.
    pub max_delivered_invites_per_invitee: u64,
    /// Invites one peer may have pending here in total (0 = off). Default 10,000.
    pub max_delivered_invites_per_peer: u64,
    /// How long a delivered invite counts as pending against those caps, in seconds.
    /// Default 86,400 (a day).
    pub delivered_invites_window_secs: u64,
    /// How often this server calls ExchangeHeads on every peer (key transparency
    /// gossip, docs/kt.md §9), in milliseconds; 0 = never (this server still answers
    /// peers' calls). Default 60,000.
    pub exchange_heads_ms: u64,
    /// The homeservers this one federates with (`[[federation.peers]]`).
    pub peers: Vec<PeerConfig>,
}

impl Default for FederationSettings {
    fn default() -> Self {
        FederationSettings {
            enabled: false,
            signing_key_file: String::new(),
            request_timeout_secs: 5,
            key_cache_secs: 300,
            rate_per_sec: 100.0,
            rate_burst: 200,
            outgoing_per_user_per_sec: 2.0,
            outgoing_per_user_burst: 50,
            outgoing_per_peer_per_sec: 50.0,
            outgoing_per_peer_burst: 100,
            invite_reserve_percent: 20,
            not_found_cache_secs: 30,
            max_delivered_invites_per_invitee: 100,
            max_delivered_invites_per_peer: 10_000,
            delivered_invites_window_secs: 86_400,
            exchange_heads_ms: 60_000,
            peers: Vec::new(),
        }
    }
}

/// One `[[federation.peers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's `server_name` (what its users' `homeserver` fields say, its tokens'
    /// `iss` and our tokens' `aud` for it).
    pub server_name: String,
    /// Where the peer's secretd listens: `https://host:port` (its certificate verified
    /// against the system's roots, or against `ca_file`), or `http://host:port` with
    /// `allow_insecure`.
    pub endpoint: String,
    /// The peer's Ed25519 public key, base64 (standard alphabet), as its
    /// `secretd federation-key` prints it. Pinned: only tokens signed by it are accepted
    /// as coming from this peer.
    pub public_key: String,
    /// Where the peer serves clients (its SecretService, as our users' clients reach it),
    /// returned by Federate so that a client can follow a pair hosted there. Empty (the
    /// default) = `endpoint`.
    #[serde(default)]
    pub client_endpoint: String,
    /// PEM file with the CA certificate(s) that the peer's TLS certificate must chain to,
    /// instead of the system's roots (a private CA). Empty (the default) = system roots.
    #[serde(default)]
    pub ca_file: String,
    /// Allow an `http://` endpoint: calls to this peer, and the tokens they carry, travel
    /// in plaintext (a warning is logged at start). Default false.
    #[serde(default)]
    pub allow_insecure: bool,
}

impl PeerConfig {
    /// Where the peer serves clients: `client_endpoint`, or `endpoint` when that is empty.
    pub fn client_endpoint(&self) -> &str {
        if self.client_endpoint.is_empty() {
            &self.endpoint
        } else {
            &self.client_endpoint
        }
    }

    /// The raw 32-byte public key, or why `public_key` is not one.
    pub fn public_key_bytes(&self) -> Result<[u8; ED25519_PUBLIC_KEY_LEN], String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.public_key.trim())
            .map_err(|e| format!("is not base64 ({e})"))?;
        <[u8; ED25519_PUBLIC_KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
            format!(
                "is {} bytes long; an Ed25519 public key is {ED25519_PUBLIC_KEY_LEN} bytes \
                 (paste the last word `secretd federation-key` prints on that server)",
                bytes.len()
            )
        })
    }
}

impl FederationSettings {
    /// Checks the table; `server_name` is this server's name (no peer may carry it). The
    /// error names the offending key.
    pub fn validate(&self, server_name: &str) -> Result<(), String> {
        if self.request_timeout_secs == 0 {
            return Err("federation.request_timeout_secs must be at least 1".into());
        }
        if !self.rate_per_sec.is_finite() || !(0.0..=1e9).contains(&self.rate_per_sec) {
            return Err(format!(
                "federation.rate_per_sec is {}; use 0 (off) or a positive number of calls per \
                 second",
                self.rate_per_sec
            ));
        }
        if self.rate_per_sec > 0.0 && self.rate_burst == 0 {
            return Err(
                "federation.rate_burst is 0; it must be at least 1 while federation.rate_per_sec \
                 is set (set the rate to 0 to turn the limit off)"
                    .into(),
            );
        }
        for (rate, burst, name) in [
            (
                self.outgoing_per_user_per_sec,
                self.outgoing_per_user_burst,
                "outgoing_per_user",
            ),
            (
                self.outgoing_per_peer_per_sec,
                self.outgoing_per_peer_burst,
                "outgoing_per_peer",
            ),
        ] {
            if !rate.is_finite() || !(0.0..=1e9).contains(&rate) {
                return Err(format!(
                    "federation.{name}_per_sec is {rate}; use 0 (off) or a positive number of \
                     calls per second"
                ));
            }
            if rate > 0.0 && burst == 0 {
                return Err(format!(
                    "federation.{name}_burst is 0; it must be at least 1 while \
                     federation.{name}_per_sec is set (set the rate to 0 to turn it off)"
                ));
            }
        }
        if self.invite_reserve_percent > 90 {
            return Err(format!(
                "federation.invite_reserve_percent is {}; use 0 to 90 (key lookups need a \
                 share of the budget too)",
                self.invite_reserve_percent
            ));
        }
        let caps_on =
            self.max_delivered_invites_per_invitee > 0 || self.max_delivered_invites_per_peer > 0;
        if caps_on && !(1..=365 * 86_400).contains(&self.delivered_invites_window_secs) {
            return Err(format!(
                "federation.delivered_invites_window_secs is {}; use 1 to 31536000 seconds \
                 while a cap on delivered invites is on",
                self.delivered_invites_window_secs
            ));
        }
        if self.exchange_heads_ms != 0 && !(100..=86_400_000).contains(&self.exchange_heads_ms) {
            return Err(format!(
                "federation.exchange_heads_ms is {}; use 100 to 86400000 milliseconds (default \
                 60000), or 0 to never call ExchangeHeads",
                self.exchange_heads_ms
            ));
        }
        let mut seen = HashSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = |field: &str| format!("federation.peers[{i}].{field}");
            let name = peer.server_name.trim();
            if name.is_empty() || name != peer.server_name {
                return Err(format!(
                    "{} must be the peer's server name, without surrounding spaces",
                    key("server_name")
                ));
            }
            if name == server_name {
                return Err(format!(
                    "{} is {name:?}, this server's own server_name; list other homeservers only",
                    key("server_name")
                ));
            }
            if !seen.insert(name) {
                return Err(format!(
                    "{} {name:?} is listed twice; list each peer once",
                    key("server_name")
                ));
            }
            check_endpoint(peer, &key)?;
            if !peer.client_endpoint.is_empty() {
                check_client_endpoint(&peer.client_endpoint)
                    .map_err(|e| format!("{} {e}", key("client_endpoint")))?;
            }
            peer.public_key_bytes()
                .map_err(|e| format!("{} {e}", key("public_key")))?;
        }
        Ok(())
    }

    /// The peer named `server_name`, if configured.
    pub fn peer(&self, server_name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.server_name == server_name)
    }
}

/// An endpoint is `https://host:port`, or `http://host:port` on a peer that says
/// `allow_insecure`; a `ca_file` goes with `https` only. `key` names a key of this peer.
fn check_endpoint(peer: &PeerConfig, key: &dyn Fn(&str) -> String) -> Result<(), String> {
    let endpoint = &peer.endpoint;
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{} {endpoint:?} is not a URL ({e})", key("endpoint")))?;
    if uri.authority().is_none() {
        return Err(format!(
            "{} {endpoint:?} must be of the form https://host:port",
            key("endpoint")
        ));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if !peer.ca_file.is_empty() => Err(format!(
            "{} is set, but {} {endpoint:?} is plaintext http: use https://, or drop the \
             ca_file",
            key("ca_file"),
            key("endpoint")
        )),
        Some("http") if peer.allow_insecure => Ok(()),
        Some("http") => Err(format!(
            "{} {endpoint:?} is plaintext http: use https://host:port, or set {} = true to \
             accept that calls to this peer (and the tokens they carry) can be read and \
             altered on the way",
            key("endpoint"),
            key("allow_insecure")
        )),
        _ => Err(format!(
            "{} {endpoint:?} must be of the form https://host:port",
            key("endpoint")
        )),
    }
}

/// A client endpoint is any `http://` or `https://` URL with a host (clients may reach
/// the peer through a proxy or a load balancer with TLS).
fn check_client_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!(
            "{endpoint:?} must be a URL such as https://chat.example.org:443 (http or https, \
             with a host)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, key: &str) -> PeerConfig {
        PeerConfig {
            server_name: name.into(),
            endpoint: "https://127.0.0.1:1".into(),
            public_key: key.into(),
            client_endpoint: String::new(),
            ca_file: String::new(),
            allow_insecure: false,
        }
    }

    #[test]
    fn peers_are_checked_by_key() {
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let with = |peers: Vec<PeerConfig>| FederationSettings {
            peers,
            ..FederationSettings::default()
        };
        with(vec![peer("b.test", &good)])
            .validate("a.test")
            .unwrap();
        for (peers, key) in [
            (vec![peer("b.test", "!!")], "federation.peers[0].public_key"),
            (
                vec![peer("b.test", "AAAA")],
                "federation.peers[0].public_key",
            ),
            (
                vec![peer("a.test", &good)],
                "federation.peers[0].server_name",
            ),
            (
                vec![peer("b.test", &good), peer("b.test", &good)],
                "federation.peers[1].server_name",
            ),
        ] {
            let err = with(peers).validate("a.test").unwrap_err();
            assert!(err.starts_with(key), "{err}");
        }
        let endpoint = |endpoint: &str, ca_file: &str, allow_insecure: bool| {
            let mut p = peer("b.test", &good);
            p.endpoint = endpoint.into();
            p.ca_file = ca_file.into();
            p.allow_insecure = allow_insecure;
            with(vec![p]).validate("a.test")
        };
        endpoint("https://b.test:50051", "", false).unwrap();
        endpoint("https://b.test:50051", "ca.pem", false).unwrap();
        endpoint("http://127.0.0.1:50051", "", true).unwrap();
        for (url, ca_file, allow_insecure, key) in [
            ("b.test:50051", "", false, "endpoint"),
            ("ftp://b.test:50051", "", false, "endpoint"),
            ("http://127.0.0.1:50051", "", false, "endpoint"),
            ("http://127.0.0.1:50051", "ca.pem", true, "ca_file"),
        ] {
            let err = endpoint(url, ca_file, allow_insecure).unwrap_err();
            assert!(
                err.starts_with(&format!("federation.peers[0].{key}")),
                "{url}: {err}"
            );
        }
        let err = endpoint("http://127.0.0.1:50051", "", false).unwrap_err();
        assert!(
            err.contains("federation.peers[0].allow_insecure = true"),
            "{err}"
        );
        for (ms, ok) in [(0, true), (100, true), (60_000, true), (99, false)] {
            let table = FederationSettings {
                exchange_heads_ms: ms,
                ..FederationSettings::default()
            };
            match table.validate("a.test") {
                Ok(()) => assert!(ok, "{ms}"),
                Err(e) => assert!(!ok && e.starts_with("federation.exchange_heads_ms"), "{e}"),
            }
        }
        let mut bad_client = peer("b.test", &good);
        bad_client.client_endpoint = "chat.b.test".into();
        let err = with(vec![bad_client]).validate("a.test").unwrap_err();
        assert!(
            err.starts_with("federation.peers[0].client_endpoint"),
            "{err}"
        );
        let mut good_client = peer("b.test", &good);
        good_client.client_endpoint = "https://chat.b.test".into();
        assert_eq!(good_client.client_endpoint(), "https://chat.b.test");
        with(vec![good_client]).validate("a.test").unwrap();
        assert_eq!(
            peer("b.test", &good).client_endpoint(),
            "https://127.0.0.1:1"
        );
    }
}
