//! A homeserver for the federation tests: the real `secretd` binary with a config file
//! naming its server, its federation settings and its pinned peers, in plaintext or
//! serving TLS with a certificate of a test CA.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::common::*;

/// A homeserver's name and data directory, with its federation key already created by
/// `secretd federation-key` (so peers can pin it before it starts).
pub struct NodeKey {
    pub name: String,
    pub dir: TempDir,
    pub key_id: String,
    pub public_key: String,
}

impl NodeKey {
    /// Runs `secretd federation-key` for a new data directory of server `name`.
    pub fn new(name: &str) -> NodeKey {
        let dir = tempfile::tempdir().unwrap();
        let out = run_binary(
            &["federation-key", "--data-dir", "data"],
            dir.path(),
            &[("SECRETD_SERVER_NAME", name)],
        );
        assert!(out.status.success(), "{out:?}");
        let line = String::from_utf8(out.stdout).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 3, "{line}");
        assert_eq!(words[0], name);
        NodeKey {
            name: name.into(),
            key_id: words[1].into(),
            public_key: words[2].into(),
            dir,
        }
    }

    /// The server's key, as the server itself loads it (tests sign tokens with it).
    pub fn server_key(&self) -> secretd::federation::key::ServerKey {
        let bytes = std::fs::read(self.dir.path().join("data/federation-key")).unwrap();
        secretd::federation::key::ServerKey::from_file_bytes(&bytes).unwrap()
    }
}

/// A `[[federation.peers]]` entry (an `http://` one is written with `allow_insecure`).
pub struct PeerSpec {
    pub name: String,
    pub endpoint: String,
    pub public_key: String,
    /// Its `client_endpoint` (empty: not written).
    pub client_endpoint: String,
    /// The CA its certificate chains to, when it serves TLS.
    pub ca_file: Option<PathBuf>,
}

impl PeerSpec {
    /// A peer listening at `addr` in plaintext.
    pub fn at(key: &NodeKey, addr: &str) -> PeerSpec {
        PeerSpec {
            name: key.name.clone(),
            endpoint: format!("http://{addr}"),
            public_key: key.public_key.clone(),
            client_endpoint: String::new(),
            ca_file: None,
        }
    }

    /// The running `node` (server `key`), reached as it serves: over TLS, verified
    /// against its CA (the peer's `ca_file`), when it serves TLS.
    pub fn node(key: &NodeKey, node: &Node) -> PeerSpec {
        PeerSpec {
            endpoint: node.url(),
            ca_file: node.tls.as_ref().map(|files| files.ca.clone()),
            ..PeerSpec::at(key, &node.addr)
        }
    }

    /// A peer this server never calls (only its key matters): port 9 (discard).
    pub fn unreachable(key: &NodeKey) -> PeerSpec {
        PeerSpec::at(key, "127.0.0.1:9")
    }
}

/// A SecretFederationService client.
pub type FedClient =
    secretd::proto::federation::secret_federation_service_client::SecretFederationServiceClient<
        Signed,
    >;

/// How a [`FedClient`] authenticates its calls.
#[derive(Clone)]
pub enum Auth {
    /// No metadata.
    None,
    /// The same token on every call (a captured or hand-made one).
    Fixed(String),
    /// A new s2s token for each call, bound to its method, as a real peer signs them:
    /// signed with `key` as `iss` for `aud`.
    Fresh {
        key: std::sync::Arc<secretd::federation::key::ServerKey>,
        iss: String,
        aud: String,
    },
}

/// A channel that adds the `authorization` metadata of its [`Auth`] to each call.
#[derive(Clone)]
pub struct Signed {
    channel: tonic::transport::Channel,
    auth: Auth,
}

impl tower::Service<http::Request<tonic::body::Body>> for Signed {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future =
        <tonic::transport::Channel as tower::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let token = match &self.auth {
            Auth::None => None,
            Auth::Fixed(t) => Some(t.clone()),
            Auth::Fresh { key, iss, aud } => Some(
                secretd::federation::token::mint_s2s(key, iss, aud, req.uri().path())
                    .unwrap()
                    .0,
            ),
        };
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        self.channel.call(req)
    }
}

/// A SecretFederationService client at `addr` presenting `token` on every call (none: no
/// metadata).
pub async fn fed_client(addr: &str, token: Option<String>) -> FedClient {
    fed_client_with(addr, token.map_or(Auth::None, Auth::Fixed)).await
}

/// A SecretFederationService client at `addr` acting as peer `key` (signing a fresh
/// token for each call, for audience `aud`).
pub async fn peer_client(addr: &str, key: &NodeKey, aud: &str) -> FedClient {
    let auth = Auth::Fresh {
        key: std::sync::Arc::new(key.server_key()),
        iss: key.name.clone(),
        aud: aud.into(),
    };
    fed_client_with(addr, auth).await
}

/// A SecretFederationService client at `addr` authenticating with `auth`.
pub async fn fed_client_with(addr: &str, auth: Auth) -> FedClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    secretd::proto::federation::secret_federation_service_client::SecretFederationServiceClient::new(
        Signed { channel, auth },
    )
}

/// A running homeserver.
pub struct Node {
    pub process: ServerProcess,
    pub addr: String,
    /// Its certificate files when it serves TLS.
    pub tls: Option<TlsFiles>,
    /// On Postgres, the database of its own (one database is one homeserver's key
    /// transparency log: two homeservers never share one), dropped with the node.
    pub db: Option<crate::kt::Fresh>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            // Dropped from a thread of its own: Drop cannot await, and the test's runtime
            // may be the one dropping.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(db.done())
            })
            .join();
        }
    }
}

/// Writes `dir/secretd.toml` for server `name` with federation on, `federation` extra
/// `[federation]` keys (raw TOML values) and `peers`.
pub fn write_config(dir: &Path, name: &str, peers: &[PeerSpec], federation: &[(&str, &str)]) {
    let mut toml = format!("server_name = \"{name}\"\n\n[federation]\nenabled = true\n");
    for (k, v) in federation {
        toml.push_str(&format!("{k} = {v}\n"));
    }
    for p in peers {
        toml.push_str(&format!(
            "\n[[federation.peers]]\nserver_name = \"{}\"\nendpoint = \"{}\"\npublic_key = \"{}\"\n",
            p.name, p.endpoint, p.public_key
        ));
        if !p.client_endpoint.is_empty() {
            toml.push_str(&format!("client_endpoint = \"{}\"\n", p.client_endpoint));
        }
        if p.endpoint.starts_with("http:") {
            toml.push_str("allow_insecure = true\n");
        }
        if let Some(ca) = &p.ca_file {
            toml.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
        }
    }
    std::fs::write(dir.join("secretd.toml"), toml).unwrap();
}

impl Node {
    /// Starts homeserver `key` on `backend` with `peers` pinned.
    pub async fn start(
        key: &NodeKey,
        backend: &Backend,
        peers: &[PeerSpec],
        federation: &[(&str, &str)],
    ) -> Node {
        Self::start_with_env(key, backend, peers, federation, &[]).await
    }

    /// [`Node::start`] with extra environment variables.
    pub async fn start_with_env(
        key: &NodeKey,
        backend: &Backend,
        peers: &[PeerSpec],
        federation: &[(&str, &str)],
        envs: &[(&str, &str)],
    ) -> Node {
        let dir = key.dir.path();
        write_config(dir, &key.name, peers, federation);
        let db = match backend {
            Backend::Postgres(_) => Some(crate::kt::fresh(backend).await),
            Backend::Sqlite => None,
        };
        let url = db
            .as_ref()
            .map_or(backend, |db| &db.backend)
            .url(&dir.join("data"));
        let mut all = vec![("SECRETD_JWT_SECRET", SECRET)];
        all.extend_from_slice(envs);
        let process = spawn_binary(
            &[
                "serve",
                "--config",
                "secretd.toml",
                "--data-dir",
                "data",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &url,
            ],
            &all,
            dir,
        )
        .await;
        let tls = envs
            .iter()
            .any(|(k, _)| *k == "SECRETD_TLS_CERT_FILE")
            .then(|| TlsFiles {
                ca: dir.join(format!("{}-ca.pem", key.name)),
                cert: dir.join(format!("{}.crt", key.name)),
                key: dir.join(format!("{}.key", key.name)),
            });
        Node {
            addr: process.addr.clone(),
            process,
            tls,
            db,
        }
    }

    /// [`Node::start`] serving TLS with a new certificate signed by `ca` (files in the
    /// node's directory, named by the environment twins of `tls_cert_file` and
    /// `tls_key_file`).
    pub async fn start_tls(
        key: &NodeKey,
        backend: &Backend,
        peers: &[PeerSpec],
        federation: &[(&str, &str)],
        ca: &TestCa,
    ) -> Node {
        let files = ca.write(key.dir.path(), &key.name);
        let (cert, tls_key) = (
            files.cert.display().to_string(),
            files.key.display().to_string(),
        );
        let envs = [
            ("SECRETD_TLS_CERT_FILE", cert.as_str()),
            ("SECRETD_TLS_KEY_FILE", tls_key.as_str()),
        ];
        Self::start_with_env(key, backend, peers, federation, &envs).await
    }

    /// The backend it stores in: on Postgres its own database (`given` is the backend it
    /// was started with).
    pub fn backend(&self, given: &Backend) -> Backend {
        self.db
            .as_ref()
            .map_or(given.clone(), |db| db.backend.clone())
    }

    /// Where clients and peers reach it: `https://addr` or `http://addr`.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// A SecretService client of this server authenticated as its user `user`.
    pub async fn client(&self, user: u64) -> Client {
        self.client_with_token(token(user, 3600)).await
    }

    /// A SecretService client of this server (over TLS, trusting its CA, when it serves
    /// TLS) sending `token`.
    pub async fn client_with_token(&self, token: String) -> Client {
        match &self.tls {
            Some(files) => {
                let ca = std::fs::read_to_string(&files.ca).unwrap();
                tls_client_at(&self.addr, &ca, token).await
            }
            None => client_at(&self.addr, token).await,
        }
    }

    /// Kills the process (a server that is simply gone).
    pub async fn kill(mut self) {
        self.process.child.kill().await.unwrap();
    }
}
