//! Test harness: real secretd servers on 127.0.0.1 (in-process or as the real binary),
//! real tonic clients, real SQLite files and a real Postgres.
//!
//! Postgres tests run when `DATABASE_URL` is set. With `CI_REQUIRE_POSTGRES=1` (CI)
//! a missing `DATABASE_URL` fails them instead of skipping.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use secretd::config::Settings;
use secretd::proto::secret_service_client::SecretServiceClient;
use secretd::proto::{self, ChannelPair, EncryptedMessage, PostMessageRequest};
use secretd::server::Running;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
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

/// Runs each listed `async fn name(backend: Backend)` as `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(b) = super::common::Backend::postgres() {
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

/// Settings for a test server on `backend` with its data in `dir`.
pub fn test_settings(backend: &Backend, dir: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        database_url: backend.url(dir),
        data_dir: dir.to_path_buf(),
        jwt_secret: SECRET.into(),
        db_max_connections: 8,
        shutdown_grace_secs: 5,
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
        settings.listen = "127.0.0.1:0".into();
        Self::launch(self.backend.clone(), settings, self.dir).await
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

/// A secretd binary running as a child process.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub addr: String,
    pub stderr_lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// Starts the real `secretd` binary with `args` and `envs`; waits for its ready line.
pub async fn spawn_binary(args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> ServerProcess {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_secretd"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env("SECRETD_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn secretd");
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = rx.recv().await {
            if let Some(rest) = line.split("secretd listening on ").nth(1) {
                return rest.split_whitespace().next().unwrap_or("").to_string();
            }
        }
        panic!("secretd exited before it was ready");
    })
    .await
    .expect("secretd ready within 60 s");
    ServerProcess {
        child,
        addr,
        stderr_lines: rx,
    }
}

/// A TCP proxy in front of a server that can stop passing the server's answers on, to
/// play a client whose request arrived but whose response never came back.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on 127.0.0.1.
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blackhole = Arc::new(AtomicBool::new(false));
        let bh = blackhole.clone();
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((down, _)) = listener.accept().await {
                let up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                conns.push(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut dr, &mut uw).await;
                }));
                let bh = bh.clone();
                conns.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !bh.load(Ordering::SeqCst) && dw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }));
            }
            drop(conns);
        });
        Proxy {
            addr,
            blackhole,
            task,
        }
    }

    /// From now on, the server's bytes are swallowed.
    pub fn swallow_responses(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One StreamMessagePosting call seen from the client.
pub struct Subscription {
    tx: tokio::sync::mpsc::UnboundedSender<proto::ManageStream>,
    pub rx: tonic::Streaming<proto::StreamMessagePostingResponse>,
}

/// What the server sent, flattened.
pub use proto::stream_message_posting_response::Event;

impl Subscription {
    /// Opens the call; returns once the response headers arrived.
    pub async fn open(client: &mut Client) -> Result<Subscription, Status> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let rx = client
            .stream_message_posting(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Subscription { tx, rx })
    }

    /// Sends a ManageStream.
    pub fn manage(&self, subscribe: &[&str], unsubscribe: &[&str], resume: &[(&str, u64)]) {
        self.tx
            .send(proto::ManageStream {
                subscribe_to: subscribe.iter().map(|s| s.to_string()).collect(),
                unsubscribe_to: unsubscribe.iter().map(|s| s.to_string()).collect(),
                resume_from: resume
                    .iter()
                    .map(|(s, a)| proto::StreamCursor {
                        stream_id: s.to_string(),
                        after_event_id: *a,
                    })
                    .collect(),
            })
            .expect("call open");
    }

    /// The next thing the server sends (panics after `secs` seconds of silence).
    pub async fn next_within(&mut self, secs: u64) -> Result<Option<Event>, Status> {
        match tokio::time::timeout(Duration::from_secs(secs), self.rx.message()).await {
            Ok(r) => r.map(|m| m.map(|m| m.event.expect("every response carries an event"))),
            Err(_) => panic!("nothing from the server within {secs} s"),
        }
    }

    /// The next event (10 s at most).
    pub async fn next(&mut self) -> Event {
        self.next_within(10)
            .await
            .expect("stream ok")
            .expect("stream open")
    }

    /// True if the server sends nothing for `millis` ms.
    pub async fn quiet_for(&mut self, millis: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(millis), self.rx.message())
            .await
            .is_err()
    }

    /// Reads until CaughtUp for `stream`, returning the events before it.
    pub async fn until_caught_up(&mut self, stream: &str) -> (Vec<proto::PostedMessage>, u64) {
        let mut events = Vec::new();
        loop {
            match self.next().await {
                Event::Message(m) => events.push(m),
                Event::CaughtUp(c) if c.stream_id == stream => return (events, c.head_event_id),
                other => panic!("unexpected {other:?} before CaughtUp"),
            }
        }
    }
}

/// Posts `bodies` on `stream` as one client would: on a refused counter it resyncs from
/// the trailers and tries again. Returns the acknowledged event ids.
pub async fn post_all(
    c: &mut Client,
    stream: &str,
    bodies: impl IntoIterator<Item = Vec<u8>>,
) -> Vec<u64> {
    let mut counter = 1u64;
    let mut ids = Vec::new();
    for body in bodies {
        loop {
            match post(c, stream, counter, &body).await {
                Ok(id) => {
                    ids.push(id);
                    counter += 1;
                    break;
                }
                Err(st)
                    if st.code() == Code::FailedPrecondition
                        || st.code() == Code::AlreadyExists =>
                {
                    let head = match st.metadata().get("secretd-head-counter") {
                        Some(v) => v.to_str().unwrap().parse::<u64>().unwrap(),
                        None => counter, // ALREADY_EXISTS: someone took this counter
                    };
                    counter = head.max(counter) + 1;
                }
                Err(other) => panic!("post failed: {other:?}"),
            }
        }
    }
    ids
}

/// The VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
