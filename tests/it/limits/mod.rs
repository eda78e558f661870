//! Limits (README "Limits"): per-user rate limits, the invite and membership caps, the
//! group-commit queue's overload answer, the unary deadline, the transport limits and the
//! request-size limit. Every refusal is checked for its exact status, its message naming
//! the config key, and that the server goes on serving.

mod caps;
mod overload;
mod rates;
mod settings;
mod transport;

use std::time::Duration;

use secretd::config::Settings;
use secretd::limits::RateClass;
use tonic::{Code, Status};

use crate::common::*;

/// The (rate per second, burst) settings of a class.
pub fn rate_of(s: &mut Settings, class: RateClass) -> (&mut f64, &mut u32) {
    match class {
        RateClass::Pairs => (&mut s.rate_pairs_per_sec, &mut s.rate_pairs_burst),
        RateClass::Invites => (&mut s.rate_invites_per_sec, &mut s.rate_invites_burst),
        RateClass::Keys => (&mut s.rate_keys_per_sec, &mut s.rate_keys_burst),
        RateClass::PrivateKeys => (
            &mut s.rate_private_keys_per_sec,
            &mut s.rate_private_keys_burst,
        ),
        RateClass::Posts => (&mut s.rate_posts_per_sec, &mut s.rate_posts_burst),
        RateClass::Reads => (&mut s.rate_reads_per_sec, &mut s.rate_reads_burst),
        RateClass::Subscriptions => (
            &mut s.rate_subscriptions_per_sec,
            &mut s.rate_subscriptions_burst,
        ),
    }
}

/// Settings with every rate limit off, for tests that exercise another limit.
pub fn no_rate_limits(s: &mut Settings) {
    for class in RateClass::ALL {
        *rate_of(s, class).0 = 0.0;
    }
}

/// The pairs the client's user is a member of.
pub async fn pairs_of(c: &mut Client) -> Vec<secretd::proto::ChannelPairInfo> {
    c.list_channel_pairs(secretd::proto::ListChannelPairsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pairs
}

/// The `retry-after-ms` of a refusal that clears with time (panics without one).
#[track_caller]
pub fn retry_after(status: &Status) -> Duration {
    let ms = status
        .metadata()
        .get("retry-after-ms")
        .unwrap_or_else(|| panic!("no retry-after-ms on {status:?}"))
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(ms >= 1, "{status:?}");
    assert!(
        status.message().contains(&format!("retry in {ms} ms")),
        "the message says when to retry: {status:?}"
    );
    Duration::from_millis(ms)
}

/// Asserts a RESOURCE_EXHAUSTED naming `key` and carrying `retry-after-ms`; returns the delay.
#[track_caller]
pub fn throttled(status: &Status, key: &str) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(key), "names {key}: {status:?}");
    assert!(
        !status.message().contains('%') && !status.message().contains('#'),
        "{status:?}"
    );
    retry_after(status)
}

/// A real database lock that stalls the server's group-commit writer: on SQLite another
/// connection holding `BEGIN IMMEDIATE` on the same file, on Postgres another connection
/// holding the rows of `streams` `FOR UPDATE`. Released by [`Stall::release`] (or drop).
pub enum Stall {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Stall {
    pub async fn hold(server: &TestServer, streams: &[&str]) -> Stall {
        use sqlx::Connection;
        match &server.backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", server.dir().join("secretd.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Stall::Sqlite(conn)
            }
            Backend::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let ids: Vec<uuid::Uuid> = streams.iter().map(|s| s.parse().unwrap()).collect();
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                let locked: Vec<(uuid::Uuid,)> = sqlx::query_as(
                    "SELECT stream_id FROM streams WHERE stream_id = ANY($1) \
                     ORDER BY stream_id FOR UPDATE",
                )
                .bind(&ids)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                assert_eq!(locked.len(), ids.len());
                Stall::Postgres(conn)
            }
        }
    }

    pub async fn release(self) {
        match self {
            Stall::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
            Stall::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
        }
    }
}
