//! The real binary as a child process, and a TCP proxy that loses answers or stops
//! forwarding without closing (in front of secretd or of Postgres).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// A secretd binary running as a child process.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub addr: String,
    pub stderr_lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// What the server wrote to stderr up to and including its ready line.
    pub startup_lines: Vec<String>,
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
    let mut startup_lines = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = rx.recv().await {
            let ready = line
                .split("secretd listening on ")
                .nth(1)
                .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
            startup_lines.push(line);
            if let Some(addr) = ready {
                return addr;
            }
        }
        panic!("secretd exited before it was ready: {startup_lines:#?}");
    })
    .await
    .expect("secretd ready within 60 s");
    ServerProcess {
        child,
        addr,
        stderr_lines: rx,
        startup_lines,
    }
}

/// Runs the `secretd` binary to completion (without `SECRETD_JWT_SECRET` from the
/// environment unless `envs` sets it).
pub fn run_binary(args: &[&str], cwd: &Path, envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_secretd"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("SECRETD_JWT_SECRET")
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run secretd")
}

/// A client of the server at `addr` (host:port) sending `token`.
pub async fn client_at(addr: &str, token: String) -> super::Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    secretd::proto::secret_service_client::SecretServiceClient::with_interceptor(
        channel,
        super::Bearer(Some(token)),
    )
}

/// A TCP proxy in front of a server (secretd, or Postgres) that can lose answers or stop
/// forwarding without closing anything, as a broken network path does.
///
/// - [`Proxy::swallow_responses`]: from now on the server's bytes are read and dropped
///   (the client's requests still arrive).
/// - [`Proxy::stall_existing`]: every connection open now stops forwarding in both
///   directions, for good, and is never closed (a half-open connection); new ones work.
/// - [`Proxy::stall_all`]: the same, and new connections are accepted and stalled too,
///   until [`Proxy::heal`] (after which new connections work; stalled ones stay stalled).
/// - [`Proxy::stall_after_next_commit`]: the next client chunk holding `COMMIT` is
///   forwarded, then its connection stalls: the database commits, and the answer is lost.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    shared: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    swallow: AtomicBool,
    stall_new: AtomicBool,
    stall_after_commit: AtomicBool,
    /// Each connection's stall flag and its two pumps.
    conns: std::sync::Mutex<Vec<(Arc<AtomicBool>, tokio::task::AbortHandle)>>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on 127.0.0.1.
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyState::default());
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let stalled = Arc::new(AtomicBool::new(state.stall_new.load(Ordering::SeqCst)));
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let requests = tokio::spawn(pump(dr, uw, stalled.clone(), state.clone(), true));
                let answers = tokio::spawn(pump(ur, dw, stalled.clone(), state.clone(), false));
                let mut conns = state.conns.lock().unwrap();
                conns.push((stalled.clone(), requests.abort_handle()));
                conns.push((stalled, answers.abort_handle()));
            }
        });
        Proxy { addr, shared, task }
    }

    /// From now on, the server's bytes are swallowed.
    pub fn swallow_responses(&self) {
        self.shared.swallow.store(true, Ordering::SeqCst);
    }

    /// Every connection open now goes silent for good, without closing.
    pub fn stall_existing(&self) {
        for (stalled, _) in self.shared.conns.lock().unwrap().iter() {
            stalled.store(true, Ordering::SeqCst);
        }
    }

    /// Every connection, open now or accepted until [`Proxy::heal`], goes silent.
    pub fn stall_all(&self) {
        self.shared.stall_new.store(true, Ordering::SeqCst);
        self.stall_existing();
    }

    /// New connections work again (stalled ones stay stalled).
    pub fn heal(&self) {
        self.shared.stall_new.store(false, Ordering::SeqCst);
    }

    /// The next client chunk holding `COMMIT` is forwarded, then its connection stalls.
    pub fn stall_after_next_commit(&self) {
        self.shared.stall_after_commit.store(true, Ordering::SeqCst);
    }
}

/// Forwards `from` to `to` until either side closes or the connection stalls (then it
/// holds both halves open forever, forwarding nothing).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
    state: Arc<ProxyState>,
    requests: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stalled.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        if !requests && state.swallow.load(Ordering::SeqCst) {
            continue;
        }
        let commit = requests
            && state.stall_after_commit.load(Ordering::SeqCst)
            && buf[..n].windows(6).any(|w| w == b"COMMIT");
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if commit && state.stall_after_commit.swap(false, Ordering::SeqCst) {
            stalled.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        for (_, pump) in self.shared.conns.lock().unwrap().drain(..) {
            pump.abort();
        }
    }
}
