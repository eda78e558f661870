//! The real binary as a child process, and a TCP proxy that loses responses.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
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
