//! Rooms across homeservers with the reference client: three in-process secretd, a, b
//! and c, federating with each other (pinned Ed25519 keys), their users in one room on
//! a — invited across, posting both ways, rotated after a removal — through the library
//! ([`library`]) and the CLI ([`cli`]).

mod cli;
mod library;

use secretd::config::Settings;
use secretd_client::Device;
use secretd_client::crypto::blob::Kdf;

use crate::common::{Backend, Server, fresh_user, token};

/// Three homeservers that all know each other.
pub struct Trio {
    pub a: Server,
    pub b: Server,
    pub c: Server,
}

pub const NAMES: [&str; 3] = ["a.test", "b.test", "c.test"];

impl Trio {
    /// Starts a, b and c, each pinning the other two at their addresses.
    pub async fn start() -> Trio {
        let mut listeners = Vec::new();
        let mut dirs = Vec::new();
        let mut keys = Vec::new();
        for name in NAMES {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let settings = Settings {
                server_name: name.into(),
                data_dir: dir.path().to_path_buf(),
                ..secretd::config::defaults()
            };
            let key = secretd::federation::key::load_or_create(&settings).unwrap();
            keys.push((
                name,
                listener.local_addr().unwrap(),
                key.public_key_base64(),
            ));
            listeners.push(listener);
            dirs.push(dir);
        }
        let mut servers = Vec::new();
        for ((listener, dir), name) in listeners.into_iter().zip(dirs).zip(NAMES) {
            let peers: Vec<secretd::config::PeerConfig> = keys
                .iter()
                .filter(|(n, _, _)| *n != name)
                .map(|(n, addr, key)| {
                    serde_json::from_value(serde_json::json!({
                        "server_name": n,
                        "endpoint": format!("http://{addr}"),
                        "public_key": key,
                        "allow_insecure": true,
                    }))
                    .unwrap()
                })
                .collect();
            let server = Server::start_on(Backend::Sqlite, listener, dir, move |mut s| {
                s.server_name = name.into();
                s.federation.enabled = true;
                s.federation.peers = peers;
                s
            })
            .await;
            servers.push(server);
        }
        let c = servers.pop().unwrap();
        let b = servers.pop().unwrap();
        let a = servers.pop().unwrap();
        Trio { a, b, c }
    }

    pub async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
        self.c.stop().await;
    }
}

/// A new user of `server` with a device.
pub async fn user_on(server: &Server) -> (u64, Device) {
    let id = fresh_user();
    let api = secretd_client::api::Api::connect(&server.url(), &token(id))
        .await
        .unwrap();
    (id, Device::init(api, "pw", Kdf::DEFAULT).await.unwrap())
}
