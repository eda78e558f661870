//! Test harness: a real secretd started in-process on 127.0.0.1:0 (SQLite in a temporary
//! directory, or the Postgres of `DATABASE_URL`), real tokens, real devices.
//!
//! Postgres tests run when `DATABASE_URL` is set; with `CI_REQUIRE_POSTGRES=1` a missing
//! `DATABASE_URL` fails them instead of skipping (as in the server's tests).

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use secretd::config::Settings;
use secretd::server::Running;
use secretd_client::Device;
use secretd_client::api::Api;
use secretd_client::crypto::blob::Kdf;
use secretd_client::crypto::hmac_sha256;
use secretd_client::device::History;
use secretd_client::state::DeviceState;
use tempfile::TempDir;

/// The HS256 secret every test server verifies with.
pub const SECRET: &str = "client-test-secret-0123456789abcdef0123456789";

/// Which store a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A SQLite file in the server's temporary directory.
    Sqlite,
    /// The Postgres at this URL.
    Postgres(String),
}

impl Backend {
    /// Postgres from `DATABASE_URL`, None (skipped) without it; panics when
    /// `CI_REQUIRE_POSTGRES=1` and it is missing.
    pub fn postgres() -> Option<Backend> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres(client_database(&url))),
            _ => {
                if std::env::var("CI_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!("CI_REQUIRE_POSTGRES=1 but DATABASE_URL is not set");
                }
                eprintln!("skipped: DATABASE_URL is not set (Postgres tests need it)");
                None
            }
        }
    }
}

/// The database of the client tests beside `DATABASE_URL`'s (`<name>_client_tests`,
/// created once): one key-transparency log signed by one key (`with_shared_log_key`),
/// which the server's own tests — servers with keys of their own on `DATABASE_URL`'s
/// database — never re-sign.
fn client_database(url: &str) -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let (base, db) = url.rsplit_once('/').expect("DATABASE_URL names a database");
        let db = db.split('?').next().unwrap_or(db);
        let name = format!("{db}_client_tests");
        let admin = url.to_string();
        let create = name.clone();
        // Off every test's runtime: a small one of its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let pool = sqlx::PgPool::connect(&admin).await.expect("DATABASE_URL");
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                        .bind(&create)
                        .fetch_optional(&pool)
                        .await
                        .expect("pg_database");
                if exists.is_none() {
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {create}")))
                        .execute(&pool)
                        .await
                        .expect("CREATE DATABASE (the role needs CREATEDB)");
                }
                pool.close().await;
            })
        })
        .join()
        .expect("create the client tests' database");
        format!("{base}/{name}")
    })
    .clone()
}

/// Runs each `async fn name(backend: Backend)` as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(b) = $crate::common::Backend::postgres() {
                        super::$name(b).await
                    }
                }
            )*
        }
    };
}

/// A user id no other test (or earlier run on the shared Postgres) uses.
pub fn fresh_user() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).expect("random");
    2_000_000_000 + u64::from(u32::from_le_bytes(r)) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An HS256 JWT for `user`, valid for an hour (made here, not by the server's code, as
/// any homeserver's auth service would).
pub fn token(user: u64) -> String {
    token_for(user, 3600, SECRET)
}

/// An HS256 JWT for `user` issued now (`iat`), expiring `ttl` seconds from now (negative:
/// already expired), signed with `secret`.
pub fn token_for(user: u64, ttl: i64, secret: &str) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = now + ttl;
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64(format!(r#"{{"sub":"{user}","iat":{now},"exp":{exp}}}"#).as_bytes());
    let input = format!("{head}.{claims}");
    let sig = b64(&hmac_sha256(secret.as_bytes(), input.as_bytes()));
    format!("{input}.{sig}")
}

/// An in-process secretd.
pub struct Server {
    pub backend: Backend,
    pub settings: Settings,
    pub addr: std::net::SocketAddr,
    running: Option<Running>,
    dir: TempDir,
}

impl Server {
    /// Starts a server on `backend`.
    pub async fn start(backend: Backend) -> Server {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server on `backend` after letting `tweak` change its settings.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dir = tempfile::tempdir().expect("tempdir");
        Server::start_on(backend, listener, dir, |mut s| {
            tweak(&mut s);
            s
        })
        .await
    }

    /// Starts a server on `listener` with its data in `dir`, its settings passed through
    /// `adjust` (federation tests name the server and its peers).
    pub async fn start_on(
        backend: Backend,
        listener: tokio::net::TcpListener,
        dir: TempDir,
        adjust: impl FnOnce(Settings) -> Settings,
    ) -> Server {
        let database_url = match &backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("secretd.db").display()),
            Backend::Postgres(url) => url.clone(),
        };
        let settings = Settings {
            listen: ([127, 0, 0, 1], 0).into(),
            database_url: database_url.into(),
            data_dir: dir.path().to_path_buf(),
            jwt_secret: SECRET.into(),
            db_max_connections: 8,
            shutdown_grace_secs: 5,
            ..secretd::config::defaults()
        };
        let settings = adjust(with_shared_log_key(settings, &backend));
        let running = secretd::server::start(settings.clone(), listener)
            .await
            .expect("server starts");
        Server {
            backend,
            addr: running.addr(),
            settings,
            running: Some(running),
            dir,
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's data directory (the SQLite file lives there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection authenticated as `user`.
    pub async fn api(&self, user: u64) -> Api {
        Api::connect(&self.url(), &token(user))
            .await
            .expect("connect")
    }

    /// A new user's first device (identity generated, backed up under `password`).
    pub async fn new_user(&self, password: &str) -> (u64, Device) {
        let user = fresh_user();
        let device = Device::init(self.api(user).await, password, Kdf::DEFAULT)
            .await
            .expect("init");
        (user, device)
    }

    /// Stops the server gracefully and starts it again on the same address and store
    /// after `down` (clients see it go away and come back).
    pub async fn restart(&mut self, down: std::time::Duration) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        tokio::time::sleep(down).await;
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.running = Some(
            secretd::server::start(self.settings.clone(), listener)
                .await
                .expect("server starts again"),
        );
    }

    /// Stops the server gracefully.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// A room "r" created by `owner`, with `member` (user `member_id`) invited with all
/// history and the invite accepted.
pub async fn shared_room(owner: &mut Device, member: &mut Device, member_id: u64) -> String {
    let room = owner.create_room("r", vec![], "").await.expect("create");
    owner
        .invite(
            &room,
            &secretd_client::user::local(member_id),
            History::All,
            false,
        )
        .await
        .expect("invite");
    member.accept_invites().await.expect("accept");
    room
}

/// `dev`'s state with the room's message stream rewound to before its first event (every
/// epoch back at its origin), to replay events with the keys the device holds.
pub fn rewound(dev: &Device, room: &str) -> DeviceState {
    let mut state = dev.state().clone();
    let r = state.rooms.get_mut(room).expect("room");
    r.message.last_event_id = 0;
    r.message.last_counter = 0;
    r.message.accepted_counter = 0;
    r.message.missing_epoch = None;
    for e in r.message.epochs.values_mut() {
        e.cursor = e.origin.clone();
    }
    state
}

/// PKCS#8 v1 (RFC 8410) of an Ed25519 key: this prefix, then the 32-byte seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// On Postgres every test server shares one database, so one key-transparency log: they
/// are replicas of one homeserver, and replicas share its server key (as operators must,
/// `federation.signing_key_file`), or their heads would not verify under the key a
/// device pinned. SQLite servers each have a log and a key of their own.
fn with_shared_log_key(mut settings: Settings, backend: &Backend) -> Settings {
    if matches!(backend, Backend::Postgres(_)) && settings.federation.signing_key_file.is_empty() {
        let mut der = ED25519_PKCS8_V1_PREFIX.to_vec();
        der.extend_from_slice(&[0x5e; 32]);
        let path = settings.data_dir.join("shared-test-server-key.der");
        std::fs::write(&path, der).expect("write the shared test server key");
        settings.federation.signing_key_file = path.display().to_string();
    }
    settings
}
