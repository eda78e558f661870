//! Cross-replica change notifications over Postgres LISTEN/NOTIFY.
//!
//! Writers send at most a few `pg_notify('secretd', payload)` per transaction (one per
//! group-commit batch, never one per event: a NOTIFY serialises commits). A payload names
//! the sending replica and a list of changes; it carries no event data. Each replica's
//! listener (`server.rs` starts [`run_listener`]) reads the new rows once per stream and
//! hands them to its local hub. When the listener connection drops, it reconnects and asks
//! the hub to repair every local subscription from the database.

use std::time::Duration;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use uuid::Uuid;

use crate::store::PairIds;

/// The NOTIFY channel.
pub const CHANNEL: &str = "secretd";
/// Postgres rejects payloads of 8000 bytes or more; stay well below.
const MAX_PAYLOAD: usize = 7800;

/// One change another replica may need to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A stream's head moved to `head`.
    Event {
        /// The stream.
        stream: Uuid,
        /// Its new head event id.
        head: i64,
    },
    /// The user received an invite.
    Invite {
        /// The invitee.
        user: i64,
    },
    /// The user left or was removed from the pair.
    Membership {
        /// The pair.
        pair: PairIds,
        /// The user who lost access.
        user: i64,
    },
}

/// Encodes changes as one or more payloads of at most ~7.8 KB each.
pub fn encode(replica: Uuid, changes: &[Change]) -> Vec<String> {
    let prefix = replica.simple().to_string();
    let mut out = Vec::new();
    let mut cur = prefix.clone();
    for change in changes {
        let item = match change {
            Change::Event { stream, head } => format!(" e{}.{head}", stream.simple()),
            Change::Invite { user } => format!(" i{user}"),
            Change::Membership { pair, user } => format!(
                " m{}.{}.{}.{user}",
                pair.pair_id.simple(),
                pair.message_id.simple(),
                pair.state_id.simple()
            ),
        };
        if cur.len() + item.len() > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut cur, prefix.clone()));
        }
        cur.push_str(&item);
    }
    if cur.len() > prefix.len() {
        out.push(cur);
    }
    out
}

/// Decodes a payload into (sending replica, changes). Malformed items are skipped.
pub fn decode(payload: &str) -> Option<(Uuid, Vec<Change>)> {
    let mut parts = payload.split(' ');
    let replica = Uuid::try_parse(parts.next()?).ok()?;
    let changes = parts
        .filter_map(|item| {
            let (kind, rest) = item.split_at_checked(1)?;
            let mut f = rest.split('.');
            match kind {
                "e" => Some(Change::Event {
                    stream: Uuid::try_parse(f.next()?).ok()?,
                    head: f.next()?.parse().ok()?,
                }),
                "i" => Some(Change::Invite {
                    user: rest.parse().ok()?,
                }),
                "m" => Some(Change::Membership {
                    pair: PairIds {
                        pair_id: Uuid::try_parse(f.next()?).ok()?,
                        message_id: Uuid::try_parse(f.next()?).ok()?,
                        state_id: Uuid::try_parse(f.next()?).ok()?,
                    },
                    user: f.next()?.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect();
    Some((replica, changes))
}

/// The `application_name` of a replica's listener connection (so operators, and the
/// tests that cut it on purpose, can find it in `pg_stat_activity`).
pub fn listener_name(replica: Uuid) -> String {
    format!("secretd-listener-{}", replica.simple())
}

/// What the listener reports to the fan-out.
pub trait ChangeSink: Send + Sync + 'static {
    /// Changes made by another replica.
    fn apply(&self, changes: Vec<Change>) -> impl std::future::Future<Output = ()> + Send;
    /// The listener was (re)connected after a drop: anything may have been missed.
    fn resync(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// The channel a replica's listener pings itself on (its watchdog; see [`run_listener`]).
pub fn ping_channel(replica: Uuid) -> String {
    format!("secretd_ping_{}", replica.simple())
}

/// Listens on [`CHANNEL`] until `shutdown` fires, forwarding other replicas' changes to
/// `sink`; reconnects with backoff after a drop and then asks `sink` to resync.
///
/// **Watchdog.** A half-open connection (the database or the path to it stopped
/// answering without closing) never reports an error, so the listener also pings itself:
/// every `watchdog / 2` a NOTIFY on its own [`ping_channel`] goes out through a second
/// connection (`application_name` `secretd-ping-<replica>`). Any notification proves the listener's connection
/// alive; when none has arrived for `watchdog` while it waited, the connection is
/// dropped, a new one is made, and `sink.resync()` repairs every local subscription. A
/// dead listener is therefore noticed within `watchdog` (`listener_watchdog_ms`), plus
/// the time it takes to connect again.
pub async fn run_listener<S: ChangeSink>(
    url: String,
    replica: Uuid,
    sink: std::sync::Arc<S>,
    watchdog: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
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
            _ = shutdown.changed() => return,
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
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Whatever committed while no listener was attached is only visible in the
        // database: repair every local subscription now that LISTEN is in place.
        sink.resync().await;
        crate::telemetry::listener_connected(true);
        let pinger = tokio::spawn(ping_forever(pinger_pool, ping.clone(), watchdog / 2));
        let _stop_pinger = AbortOnDrop(pinger);
        loop {
            let silent_until = tokio::time::Instant::now() + watchdog;
            let next = tokio::select! {
                biased;
                _ = shutdown.changed() => return,
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
                        sink.apply(changes).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_split() {
        let replica = Uuid::new_v4();
        let pair = PairIds::generate();
        let mut changes = vec![
            Change::Invite { user: 42 },
            Change::Membership { pair, user: 7 },
        ];
        for i in 0..500 {
            changes.push(Change::Event {
                stream: Uuid::new_v4(),
                head: i,
            });
        }
        let payloads = encode(replica, &changes);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() < 8000);
            let (r, c) = decode(p).unwrap();
            assert_eq!(r, replica);
            back.extend(c);
        }
        assert_eq!(back, changes);
        assert!(encode(replica, &[]).is_empty());
    }
}
