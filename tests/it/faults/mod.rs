//! Faults and interleavings, made deterministic: a removal held open in a test
//! transaction while an invite races it (`invites`); a TCP proxy between secretd and
//! Postgres that stops forwarding without closing, for the client-side database deadlines
//! (`database`), the change listener's watchdog (`listener`), and an outage under
//! steady traffic (`outage`).

mod database;
mod invites;
mod listener;
mod outage;

use std::future::Future;
use std::time::Duration;

use crate::common::*;
use secretd::config::Settings;
use tonic::{Code, Status};

/// The deadline and watchdog of the servers behind a faulty proxy (short, so the tests
/// are quick; long enough for a loaded 2-core machine to answer healthy queries).
pub const DB_TIMEOUT_MS: u64 = 2000;

/// A direct connection pool to the test database (not through secretd or a proxy).
pub async fn direct_pool(b: &Backend) -> sqlx::PgPool {
    let Backend::Postgres(url) = b else {
        unreachable!("Postgres only")
    };
    sqlx::PgPool::connect(url).await.unwrap()
}

/// Polls until `n` backends wait for a lock held by the backend `pid`, or `done` says the
/// racing calls have already answered (a call that never waits is the defect the caller's
/// assertions catch). Polling a condition, not sleeping through a window.
pub async fn until_blocked_by(pool: &sqlx::PgPool, pid: i32, n: i64, done: impl Fn() -> bool) {
    for _ in 0..3000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting >= n || done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the racing call neither answered nor waited for the held transaction in 30 s");
}

/// A proxy in front of the test database, and the database URL that goes through it.
pub async fn postgres_behind_proxy(b: &Backend) -> (Proxy, String) {
    let Backend::Postgres(url) = b else {
        unreachable!("Postgres only")
    };
    // postgres://user:password@host:port/db?params: swap host:port for the proxy's.
    let start = url
        .rfind('@')
        .map_or(url.find("://").unwrap() + 3, |at| at + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let mut host_port = url[start..end].to_string();
    if !host_port.contains(':') {
        host_port.push_str(":5432");
    }
    let upstream = tokio::net::lookup_host(&host_port)
        .await
        .unwrap()
        .next()
        .expect("the database host resolves");
    let proxy = Proxy::start(upstream).await;
    let through = format!("{}{}{}", &url[..start], proxy.addr, &url[end..]);
    (proxy, through)
}

/// Two replicas on the test database: `a` reaches it through the returned proxy (with
/// the settings of [`behind`]), `other` directly.
pub async fn replicas_one_behind_proxy(b: &Backend) -> (Proxy, TestServer, TestServer) {
    let (proxy, url) = postgres_behind_proxy(b).await;
    let a = TestServer::start_with(b.clone(), behind(&url)).await;
    let other = TestServer::start(b.clone()).await;
    (proxy, a, other)
}

/// Opens a transaction on `pool` that locks the pair's stream rows FOR UPDATE (as a
/// removal, a leave or an append does), and returns it with its backend pid.
pub async fn hold_stream_rows(
    pool: &sqlx::PgPool,
    pair_id: uuid::Uuid,
) -> (sqlx::Transaction<'static, sqlx::Postgres>, i32) {
    let mut tx = pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM streams WHERE pair_id = $1 ORDER BY stream_id FOR UPDATE")
        .bind(pair_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    (tx, pid)
}

/// The next event on `sub` must be the message with event id `id`.
pub async fn expect_message(sub: &mut Subscription, id: u64) {
    match sub.next_within(30).await.unwrap().unwrap() {
        Event::Message(m) => assert_eq!(m.event_id, id),
        other => panic!("expected event {id}, got {other:?}"),
    }
}

/// Settings of a server whose database is reached through `url` (a proxy), with short
/// deadlines and the smallest pool, so a leaked connection shows at once.
pub fn behind(url: &str) -> impl FnOnce(&mut Settings) + '_ {
    move |st| {
        st.database_url = url.into();
        st.db_timeout_ms = DB_TIMEOUT_MS;
        st.listener_watchdog_ms = DB_TIMEOUT_MS;
        st.db_max_connections = 2;
        // The key transparency publisher runs at start only: its own transactions (and
        // COMMITs) would mix with the faults these tests inject into the server's.
        st.kt_epoch_ms = 60_000;
    }
}

/// Awaits `fut`, failing the test if it does not finish within `secs` seconds: a call
/// that hangs is the defect, not a slow machine (the bound is far above the deadline).
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs} s"))
}

/// Repeats `call` while it answers UNAVAILABLE (as a client does), for at most 60 s.
pub async fn retry_unavailable<T>(
    what: &str,
    mut call: impl AsyncFnMut() -> Result<T, Status>,
) -> T {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match within(30, what, call()).await {
            Ok(v) => return v,
            Err(st) if st.code() == Code::Unavailable && tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(st) => panic!("{what}: {st:?}"),
        }
    }
}
