//! Test harness: real secretd servers on 127.0.0.1 (in-process or as the real binary),
//! real tonic clients, real SQLite files and a real Postgres.
//!
//! Postgres tests run when `DATABASE_URL` is set. With `CI_REQUIRE_POSTGRES=1` (CI)
//! a missing `DATABASE_URL` fails them instead of skipping.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use secretd::config::Settings;
use secretd::proto::secret_service_client::SecretServiceClient;
use secretd::proto::{self, ChannelPair, EncryptedMessage, PostMessageRequest};
use secretd::server::Running;
use tempfile::TempDir;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The secret every test server signs with.
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

/// Which store a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A SQLite file in the server's temporary data directory.
    Sqlite,
    /// The Postgres at this URL (shared by all tests; they use random user ids).
    Postgres(String),
}

impl Backend {
    /// The Postgres backend, or None (test skipped) when `DATABASE_URL` is not set.
    /// Panics when `CI_REQUIRE_POSTGRES=1` and it is not set.
    pub fn postgres() -> Option<Backend> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres(url)),
            _ => {
                if std::env::var("CI_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!("CI_REQUIRE_POSTGRES=1 but DATABASE_URL is not set");
                }
                eprintln!("skipped: DATABASE_URL is not set (Postgres tests need it)");
                None
            }
        }
    }

    /// The database URL for a server whose data directory is `dir`.
    pub fn url(&self, dir: &Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}", dir.join("secretd.db").display()),
            Backend::Postgres(url) => url.clone(),
        }
    }

    /// True on Postgres.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }
}

/// Logs of the in-process servers on stderr when `TEST_LOG` is set (a filter in
/// `RUST_LOG` syntax: `TEST_LOG=debug`, `TEST_LOG=secretd=trace`); cargo shows them for
/// failing tests, or for all with `-- --nocapture`.
pub fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Runs each listed `async fn name(backend: Backend)` as `sqlite::name` and
/// `postgres::name` (compiled as ignored when `DATABASE_URL` was unset at build time).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $crate::common::init_test_log();
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
                async fn $name() {
                    $crate::common::init_test_log();
                    if let Some(b) = $crate::common::Backend::postgres() {
                        super::$name(b).await
                    }
                }
            )*
        }
    };
}

/// A user id no other test uses (tests share one Postgres database).
pub fn random_user() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base: u64 = rand::random::<u32>() as u64 * 1_000_000;
    1_000_000_000 + base + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// 127.0.0.1, any free port.
const LOOPBACK_ANY_PORT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Settings for a test server on `backend` with its data in `dir`.
pub fn test_settings(backend: &Backend, dir: &Path) -> Settings {
    Settings {
        listen: LOOPBACK_ANY_PORT,
        database_url: backend.url(dir).into(),
        data_dir: dir.to_path_buf(),
        jwt_secret: SECRET.into(),
        db_max_connections: 8,
        shutdown_grace_secs: 5,
        // PostKey waits for its key's epoch: short ones keep the suite quick.
        kt_epoch_ms: 50,
        ..secretd::config::defaults()
    }
}

/// An in-process secretd listening on 127.0.0.1.
pub struct TestServer {
    pub backend: Backend,
    pub settings: Settings,
    pub addr: std::net::SocketAddr,
    running: Option<Running>,
    dir: TempDir,
}

pub type Client = SecretServiceClient<InterceptedService<Channel, Bearer>>;

impl TestServer {
    /// Starts a server with the test defaults.
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server after letting `tweak` change its settings.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = test_settings(&backend, dir.path());
        tweak(&mut settings);
        Self::launch(backend, settings, dir).await
    }

    async fn launch(backend: Backend, settings: Settings, dir: TempDir) -> TestServer {
        init_test_log();
        let listener = tokio::net::TcpListener::bind(&settings.listen)
            .await
            .expect("bind");
        let running = secretd::server::start(settings.clone(), listener)
            .await
            .expect("server starts");
        TestServer {
            backend,
            addr: running.addr(),
            settings,
            running: Some(running),
            dir,
        }
    }

    /// Stops the server gracefully and starts a new one on the same data.
    pub async fn restart(mut self) -> TestServer {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        let mut settings = self.settings.clone();
        settings.listen = LOOPBACK_ANY_PORT;
        Self::launch(self.backend.clone(), settings, self.dir).await
    }

    /// Stops the server gracefully and keeps its data: the test works on the database
    /// with no server running, then [`TestServer::restart`] starts a new one on it.
    pub async fn halt(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Stops the server gracefully.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// The replica id of the running server.
    pub fn replica_id(&self) -> uuid::Uuid {
        self.running.as_ref().expect("running").replica_id()
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token for `user` valid for an hour.
    pub fn token(&self, user: u64) -> String {
        token(user, 3600)
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// A client authenticated as `user`.
    pub async fn client(&self, user: u64) -> Client {
        self.client_with_token(self.token(user)).await
    }

    /// A client sending `authorization: Bearer <token>`.
    pub async fn client_with_token(&self, token: String) -> Client {
        SecretServiceClient::with_interceptor(self.channel().await, Bearer(Some(token)))
    }

    /// A client without any authorization metadata.
    pub async fn anonymous(&self) -> Client {
        SecretServiceClient::with_interceptor(self.channel().await, Bearer(None))
    }
}

/// Adds `authorization: Bearer <token>` (or nothing).
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

/// An HS256 token for `user`, expiring `ttl` seconds from now (negative = expired).
pub fn token(user: u64, ttl: i64) -> String {
    secretd::auth::sign_hs256(SECRET.as_bytes(), user, ttl, "", "").unwrap()
}

/// Asserts that a call failed with `code`, returning the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            assert!(!s.message().is_empty(), "status without a message: {s:?}");
            s
        }
    }
}

/// Path of a key fixture.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The bytes of a key fixture.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

/// A valid 4096-bit public key (PEM, SPKI); `n` picks one of three.
pub fn key_pem(n: usize) -> Vec<u8> {
    fixture_bytes(&format!("rsa4096_{}.pub.pem", n))
}

/// Gives `user` a public key (invitees need one).
pub async fn give_key(client: &mut Client) {
    client
        .post_key(proto::PostKeyRequest {
            key_data: key_pem(1),
        })
        .await
        .expect("post key");
}

/// Creates a pair owned by the client's user.
pub async fn new_pair(client: &mut Client) -> ChannelPair {
    client
        .generate_channel_pair(proto::GenerateChannelPairRequest {})
        .await
        .expect("generate pair")
        .into_inner()
}

/// Invites `user` (after giving them a key through `their_client`).
pub async fn invite(owner: &mut Client, their_client: &mut Client, pair: &ChannelPair, user: u64) {
    give_key(their_client).await;
    owner
        .send_invite(proto::SendInviteRequest {
            pair_id: pair.pair_id.clone(),
            user_id: user,
            homeserver: String::new(),
            invite: b"sealed invite".to_vec(),
            ..Default::default()
        })
        .await
        .expect("invite");
}

/// Posts one message.
pub async fn post(
    client: &mut Client,
    stream: &str,
    counter: u64,
    body: &[u8],
) -> Result<u64, Status> {
    client
        .post_message(PostMessageRequest {
            stream_id: stream.to_string(),
            message: Some(EncryptedMessage {
                message: body.to_vec(),
                id: counter,
            }),
        })
        .await
        .map(|r| r.into_inner().event_id)
}

/// Reads a whole stream forward.
pub async fn fetch_all(client: &mut Client, stream: &str) -> Vec<proto::PostedMessage> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .fetch_messages(proto::FetchMessagesRequest {
                stream_id: stream.to_string(),
                after_event_id: after,
                before_event_id: 0,
                limit: 1000,
            })
            .await
            .expect("fetch")
            .into_inner();
        if let Some(last) = page.messages.last() {
            after = last.event_id;
        }
        let more = page.has_more;
        out.extend(page.messages);
        if !more {
            return out;
        }
    }
}

mod certs;
mod metrics;
mod pgproxy;
mod processes;
mod streams;

pub use certs::*;
pub use metrics::*;
pub use pgproxy::*;
pub use processes::*;
pub use streams::*;
