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

/// Listens on [`CHANNEL`] until `shutdown` fires, forwarding other replicas' changes to
/// `sink`; reconnects with backoff after a drop and then asks `sink` to resync.
pub async fn run_listener<S: ChangeSink>(
    url: String,
    replica: Uuid,
    sink: std::sync::Arc<S>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let options =
                PgConnectOptions::from_str(&url)?.application_name(&listener_name(replica));
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options);
            let mut l = PgListener::connect_with(&pool).await?;
            l.ignore_pool_close_event(true);
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            r = connected => match r {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(error = %err, "change listener cannot connect; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        backoff = Duration::from_millis(100);
        // Whatever committed while no listener was attached is only visible in the
        // database: repair every local subscription now that LISTEN is in place.
        sink.resync().await;
        crate::telemetry::listener_connected(true);
        loop {
            let next = tokio::select! {
                n = listener.try_recv() => n,
                _ = shutdown.changed() => return,
            };
            match next {
                Ok(Some(notification)) => {
                    if let Some((from, changes)) = decode(notification.payload())
                        && from != replica
                    {
                        sink.apply(changes).await;
                    }
                }
                // The connection dropped (try_recv reports it as None): reconnect and
                // repair, so nothing sent while we were away stays unseen.
                Ok(None) | Err(_) => {
                    crate::telemetry::listener_connected(false);
                    tracing::warn!("change listener lost its connection; reconnecting");
                    break;
                }
            }
        }
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
