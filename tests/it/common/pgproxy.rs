//! A TCP proxy between secretd and Postgres that a test can cut, so the database fails
//! for one server only (other tests share the same Postgres): drop every connection and
//! refuse new ones, or let one COMMIT through and lose its answer (the transaction is
//! committed, the server sees a connection error: a lost acknowledgement).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; dropping it stops it.
pub struct PgProxy {
    /// `postgres://…` through the proxy (TLS off, so the proxy can see COMMIT).
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

/// Which connections are cut off (and refused): none, all, all but secretd's change
/// listener, or only the listener.
const UP: u8 = 0;
const ALL: u8 = 1;
const QUERIES: u8 = 2;
const LISTENER: u8 = 3;

struct State {
    /// One of [`UP`], [`ALL`], [`QUERIES`], [`LISTENER`].
    down: AtomicU8,
    /// Bumped to drop every open connection.
    cut: tokio::sync::watch::Sender<u64>,
    /// The next COMMIT's answer is lost and its connection dropped.
    lose_next_commit: AtomicBool,
    /// What the proxy cuts off at the moment it loses that answer ([`UP`]: nothing), so
    /// no query can slip through between the lost answer and the outage.
    down_after_lost_commit: AtomicU8,
}

impl PgProxy {
    /// Starts a proxy on 127.0.0.1 to the Postgres named by `url`.
    pub async fn start(url: &str) -> PgProxy {
        let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        let (creds, host) = match authority.rsplit_once('@') {
            Some((c, h)) => (format!("{c}@"), h),
            None => (String::new(), authority),
        };
        let host = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:5432")
        };
        let upstream: SocketAddr = tokio::net::lookup_host(&host)
            .await
            .expect("resolve the database host")
            .next()
            .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sep = if query.is_empty() { "" } else { "&" };
        let url = format!("{scheme}://{creds}{addr}/{db}?{query}{sep}sslmode=disable");
        let state = Arc::new(State {
            down: AtomicU8::new(UP),
            cut: tokio::sync::watch::channel(0).0,
            lose_next_commit: AtomicBool::new(false),
            down_after_lost_commit: AtomicU8::new(UP),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pipe(client, upstream, st.clone()));
            }
        });
        PgProxy { url, state, task }
    }

    /// The database fails: every open connection drops and new ones are refused.
    pub fn fail(&self) {
        self.cut_off(ALL);
    }

    /// Queries fail, but the change listener's connection stays up (so nothing is
    /// repaired by a listener reconnect).
    pub fn fail_queries(&self) {
        self.cut_off(QUERIES);
    }

    /// Only the change listener loses its connection and cannot reconnect; queries work.
    pub fn fail_listener(&self) {
        self.cut_off(LISTENER);
    }

    /// New connections are accepted again.
    pub fn heal(&self) {
        self.state.down.store(UP, Ordering::SeqCst);
    }

    fn cut_off(&self, which: u8) {
        self.state.down.store(which, Ordering::SeqCst);
        self.state.cut.send_modify(|g| *g += 1);
    }

    /// Whether a connection (the listener's or not) is cut off now.
    fn refuses(state: &State, listener: bool) -> bool {
        match state.down.load(Ordering::SeqCst) {
            ALL => true,
            QUERIES => !listener,
            LISTENER => listener,
            _ => false,
        }
    }

    /// The next COMMIT reaches Postgres, but its answer is lost and its connection
    /// drops.
    pub fn lose_next_commit_answer(&self) {
        self.state.lose_next_commit.store(true, Ordering::SeqCst);
    }

    /// The next COMMIT's answer is lost, and in the same step queries start failing as
    /// with [`fail_queries`](Self::fail_queries): the server cannot read anything between
    /// the lost answer and the outage, whatever the scheduling.
    pub fn lose_next_commit_answer_then_fail_queries(&self) {
        self.state
            .down_after_lost_commit
            .store(QUERIES, Ordering::SeqCst);
        self.lose_next_commit_answer();
    }

    /// True until an armed COMMIT answer has been lost.
    pub fn commit_answer_pending(&self) -> bool {
        self.state.lose_next_commit.load(Ordering::SeqCst)
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.cut.send_modify(|g| *g += 1);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, st: Arc<State>) {
    let mut cut = st.cut.subscribe();
    let (mut cbuf, mut sbuf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    // The startup message names the application: secretd's change listener is
    // `secretd-listener-<replica>`.
    let n = match client.read(&mut cbuf).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    let listener = contains(&cbuf[..n], b"secretd-listener");
    if PgProxy::refuses(&st, listener) {
        return; // dropped: the connection is refused
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(&cbuf[..n]).await.is_err() {
        return;
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut commit_sent = false;
    loop {
        tokio::select! {
            r = cr.read(&mut cbuf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                // A cut may not have been seen yet: never forward past it.
                if PgProxy::refuses(&st, listener) {
                    return;
                }
                let chunk = &cbuf[..n];
                if !commit_sent
                    && contains(chunk, b"COMMIT")
                    && st.lose_next_commit.load(Ordering::SeqCst)
                {
                    commit_sent = true;
                }
                if sw.write_all(chunk).await.is_err() {
                    return;
                }
            }
            r = sr.read(&mut sbuf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                let chunk = &sbuf[..n];
                // Postgres answers COMMIT with CommandComplete "COMMIT" once it is durable.
                if commit_sent && contains(chunk, b"COMMIT\0") {
                    let then = st.down_after_lost_commit.swap(UP, Ordering::SeqCst);
                    if then != UP {
                        st.down.store(then, Ordering::SeqCst);
                        st.cut.send_modify(|g| *g += 1);
                    }
                    st.lose_next_commit.store(false, Ordering::SeqCst);
                    return;
                }
                if cw.write_all(chunk).await.is_err() {
                    return;
                }
            }
            _ = cut.changed() => {
                if PgProxy::refuses(&st, listener) {
                    return;
                }
            }
        }
    }
}
