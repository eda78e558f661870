//! The change listener: LISTEN on the notification channel, with a self-ping watchdog.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use uuid::Uuid;

use super::Replica;
use crate::shutdown::Signal;
use crate::store::postgres::notify::{CHANNEL, decode};

/// The `application_name` of a replica's listener connection (so operators, and the
/// tests that cut it on purpose, can find it in `pg_stat_activity`).
pub fn listener_name(replica: Uuid) -> String {
    format!("secretd-listener-{}", replica.simple())
}

/// The channel a replica's listener pings itself on (its watchdog; see [`run_listener`]).
pub fn ping_channel(replica: Uuid) -> String {
    format!("secretd_ping_{}", replica.simple())
}

/// Listens on [`CHANNEL`] until the shutdown begins, handing other replicas' changes to
/// `replica`; reconnects with backoff after a drop and then asks `replica` to repair.
///
/// **Watchdog.** A half-open connection (the database or the path to it stopped
/// answering without closing) never reports an error, so the listener also pings itself:
/// every `watchdog / 2` a NOTIFY on its own [`ping_channel`] goes out through a second
/// connection (`application_name` `secretd-ping-<replica>`). Any notification proves the listener's connection
/// alive; when none has arrived for `watchdog` while it waited, the connection is
/// dropped, a new one is made, and [`Replica::repair_all`] repairs every local subscription. A
/// dead listener is therefore noticed within `watchdog` (`listener_watchdog_ms`), plus
/// the time it takes to connect again.
pub async fn run_listener(
    url: String,
    replica: Uuid,
    fanout: Arc<Replica>,
    watchdog: Duration,
    shutdown: Signal,
) {
    let ping = ping_channel(replica);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Ok(options) = PgConnectOptions::from_str(&url) else {
            tracing::error!("change listener: the database URL does not parse; not listening");
            return;
        };
        // Fresh pools per connection attempt, one connection each: one listens, the other
        // pings. A connection that stopped answering is left behind with its pool.
        let pool = |name: String| {
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(watchdog)
                .connect_lazy_with(options.clone().application_name(&name))
        };
        let pinger_pool = pool(format!("secretd-ping-{}", replica.simple()));
        let listener_pool = pool(listener_name(replica));
        let connected = async {
            let mut l = PgListener::connect_with(&listener_pool).await?;
            l.ignore_pool_close_event(true);
            l.eager_reconnect(false);
            l.listen_all([CHANNEL, ping.as_str()]).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let attempt = tokio::select! {
            r = tokio::time::timeout(watchdog, connected) => r,
            _ = shutdown.draining() => return,
        };
        let mut listener = match attempt {
            Ok(Ok(l)) => l,
            failed => {
                match failed {
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "change listener cannot connect; retrying")
                    }
                    _ => tracing::warn!("change listener: no answer from the database; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.draining() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Whatever committed while no listener was attached is only visible in the
        // database: repair every local subscription now that LISTEN is in place.
        fanout.repair_all().await;
        crate::telemetry::listener_connected(true);
        let pinger = tokio::spawn(ping_forever(pinger_pool, ping.clone(), watchdog / 2));
        let _stop_pinger = AbortOnDrop(pinger);
        loop {
            let silent_until = tokio::time::Instant::now() + watchdog;
            let next = tokio::select! {
                biased;
                _ = shutdown.draining() => return,
                n = listener.try_recv() => n,
                () = tokio::time::sleep_until(silent_until) => {
                    crate::telemetry::listener_watchdog();
                    tracing::warn!(
                        watchdog_ms = watchdog.as_millis() as u64,
                        "change listener heard nothing, not even its own ping; reconnecting"
                    );
                    break;
                }
            };
            match next {
                Ok(Some(notification)) => {
                    if notification.channel() == CHANNEL
                        && let Some((from, changes)) = decode(notification.payload())
                        && from != replica
                    {
                        fanout.apply(changes).await;
                    }
                }
                // The connection dropped (try_recv reports it as None): reconnect and
                // repair, so nothing sent while we were away stays unseen.
                Ok(None) | Err(_) => {
                    tracing::warn!("change listener lost its connection; reconnecting");
                    break;
                }
            }
        }
        crate::telemetry::listener_connected(false);
        crate::telemetry::listener_reconnect();
    }
}

/// Sends a NOTIFY on `channel` every `every` (each bounded by `every`) until aborted.
async fn ping_forever(pool: sqlx::PgPool, channel: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&pool);
        match tokio::time::timeout(every, sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "listener ping not sent"),
            Err(_) => tracing::debug!("listener ping not sent in time"),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
