//! The Postgres backend: production store and the way to scale out (any number of
//! stateless replicas on one database).
//!
//! Appends of one group-commit batch run in one transaction: lock the batch's stream rows
//! in stream-id order (so concurrent batches and replicas cannot deadlock), check
//! membership, apply the counter rules, insert every row with one multi-row statement,
//! move the heads, and send one NOTIFY for the whole batch — then commit once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row};
use uuid::Uuid;

use super::append::{ExistingEvent, HeadRow, lookups_needed, plan_batch};
use super::deadline::Conn;
use super::*;
use notify::Change;

/// Postgres store.
pub struct PgStore {
    pool: PgPool,
    replica: Uuid,
    /// Memberships the appends verified, by epoch (`members.rs`).
    members: members::MemberCache,
}

impl PgStore {
    /// Connects and runs the migrations (under sqlx's advisory lock, so replicas starting
    /// together do not race).
    ///
    /// `limit` is the client-side deadline of an operation (`db_timeout_ms`, enforced by
    /// the store's [`Deadline`](super::deadline::Deadline) wrapper). The pool's sessions
    /// get it as `statement_timeout` and `idle_in_transaction_session_timeout` too, so
    /// the server side of an operation the client abandoned ends by itself and releases
    /// its row locks even when the connection is half-open. An idle pooled connection is
    /// pinged before use and dropped if it does not answer within a quarter of `limit`
    /// (at most 1 s), so connections left dead by a network fault are skipped quickly.
    pub async fn open(
        url: &str,
        max_connections: u32,
        limit: Duration,
        replica: Uuid,
    ) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let unreachable = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "cannot connect to Postgres within {} ms: {e}",
                limit.as_millis()
            )
        };
        // Migrations on a connection of their own, without the session timeouts: a
        // migration may take long, and so may waiting for another replica's.
        let mut migrator = tokio::time::timeout(limit, PgConnection::connect_with(&options))
            .await
            .map_err(|e| unreachable(&e))?
            .map_err(|e| unreachable(&e))?;
        super::migrations::postgres().run(&mut migrator).await?;
        migrator.close().await?;
        let ms = limit.as_millis().max(1);
        let ping_within = (limit / 4).min(Duration::from_secs(1));
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(limit)
            .test_before_acquire(false)
            .before_acquire(move |conn, _| {
                Box::pin(async move {
                    match tokio::time::timeout(ping_within, conn.ping()).await {
                        Ok(answered) => answered.map(|()| true),
                        Err(_) => {
                            tracing::warn!(
                                "a pooled database connection did not answer; closing it"
                            );
                            Ok(false)
                        }
                    }
                })
            })
            .connect_lazy_with(options.options([
                ("statement_timeout", ms),
                ("idle_in_transaction_session_timeout", ms),
            ]));
        Ok(PgStore {
            pool,
            replica,
            members: members::MemberCache::default(),
        })
    }

    /// A connection for one operation (closed, not reused, if the operation is abandoned
    /// at its deadline).
    async fn conn(&self) -> Result<Conn<Postgres>> {
        Conn::acquire(&self.pool).await
    }

    async fn notify(&self, conn: &mut PgConnection, changes: &[Change]) -> Result<()> {
        let payloads = notify::encode(self.replica, changes);
        if !payloads.is_empty() {
            sqlx::query("SELECT count(pg_notify($1, p)) FROM UNNEST($2::text[]) AS p")
                .bind(notify::CHANNEL)
                .bind(payloads)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Locks the pair's stream rows (serialising with appends) and returns the pair if
    /// `user` is a member, with its owner.
    async fn lock_pair_of_member(
        &self,
        conn: &mut PgConnection,
        user: i64,
        pair: Uuid,
    ) -> Result<Option<(PairIds, i64)>> {
        sqlx::query(
            "SELECT stream_id FROM streams WHERE pair_id = $1 ORDER BY stream_id FOR UPDATE",
        )
        .bind(pair)
        .execute(&mut *conn)
        .await?;
        pair_of_member(conn, user, pair).await
    }

    async fn drop_member(
        &self,
        conn: &mut PgConnection,
        pair: &PairIds,
        user: i64,
        owner: i64,
        removed_by: Option<i64>,
        now: i64,
    ) -> Result<()> {
        sqlx::query("DELETE FROM members WHERE pair_id = $1 AND user_id = $2")
            .bind(pair.pair_id)
            .bind(user)
            .execute(&mut *conn)
            .await?;
        sqlx::query(sql::RECORD_DEPARTURE)
            .bind(user)
            .bind(pair.pair_id)
            .bind(removed_by)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE streams SET member_epoch = member_epoch + 1 WHERE pair_id = $1")
            .bind(pair.pair_id)
            .execute(&mut *conn)
            .await?;
        if owner == user {
            sqlx::query(
                "UPDATE channel_pairs p SET owner = m.user_id FROM \
                 (SELECT user_id FROM members WHERE pair_id = $1 ORDER BY joined_at, user_id LIMIT 1) m \
                 WHERE p.pair_id = $1",
            )
            .bind(pair.pair_id)
            .execute(&mut *conn)
            .await?;
        }
        self.notify(conn, &[Change::Membership { pair: *pair, user }])
            .await
    }
}

/// The pair and its owner if `user` is a member, with the member row locked FOR SHARE
/// until the transaction ends: a write that depends on the membership (an invite, a
/// removal by the owner) cannot commit after a concurrent removal of `user` has committed
/// (the removal's DELETE waits for the lock, or this read waits for the removal and then
/// finds no row).
async fn pair_of_member(
    conn: &mut PgConnection,
    user: i64,
    pair: Uuid,
) -> Result<Option<(PairIds, i64)>> {
    let row: Option<(Uuid, Uuid, i64)> = sqlx::query_as(
        "SELECT p.message_id, p.state_id, p.owner FROM channel_pairs p \
         JOIN members m ON m.pair_id = p.pair_id AND m.user_id = $1 WHERE p.pair_id = $2 \
         FOR SHARE OF m",
    )
    .bind(user)
    .bind(pair)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(message_id, state_id, owner)| {
        (
            PairIds {
                pair_id: pair,
                message_id,
                state_id,
            },
            owner,
        )
    }))
}

fn stored_event(
    stream_id: Uuid,
    row: &sqlx::postgres::PgRow,
    at: usize,
) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
        stream_id,
        event_id: row.try_get(at)?,
        counter: row.try_get(at + 1)?,
        sender: row.try_get(at + 2)?,
        sender_origin: row
            .try_get::<Option<String>, _>(at + 5)?
            .as_deref()
            .and_then(crate::domain::Foreign::from_sql),
        posted_at: row.try_get(at + 3)?,
        body: Bytes::from(row.try_get::<Vec<u8>, _>(at + 4)?),
    })
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

mod erase;
mod events;
mod federation;
mod keys;
mod kt;
mod kt_evidence;
mod kt_proof;
mod members;
pub mod notify;
mod retention;
mod rooms;

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
