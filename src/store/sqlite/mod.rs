//! The bundled-SQLite backend: the embedded default (a file in the data directory).
//!
//! One writer connection serialises every write transaction (SQLite has one writer
//! anyway), so appends to a stream are ordered by construction; a pool of read-only
//! connections serves reads concurrently thanks to WAL. `synchronous = FULL`: an
//! acknowledged post survives power loss. One process per database file.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::append::{ExistingEvent, HeadRow, lookups_needed, plan_batch};
use super::*;

/// Rows a reader's worker thread reads ahead of the task consuming them (sqlx's default
/// is 50). A page stops at its byte budget and drops the rest of its rows; with 64 KiB
/// rows this keeps what was read ahead and thrown away to 512 KiB.
const READ_AHEAD_ROWS: usize = 8;

/// SQLite store: a single writer and a pool of readers on one file.
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs the migrations. `limit` is
    /// the client-side deadline of an operation (`db_timeout_ms`): waits for a lock or a
    /// connection give up by then too. `mmap_mb`: how much of the file each connection
    /// reads through a memory map (`sqlite_mmap_mb`; 0: none).
    pub async fn open(
        url: &str,
        readers: u32,
        limit: Duration,
        mmap_mb: u64,
    ) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(limit);
        // Reads through a memory map of the file rather than a read(2) per page: a
        // FetchKey's proof walks ~20 B-tree pages spread over the whole key log, which
        // the readers' small page caches rarely hold (README "Configuration").
        let options = options.pragma("mmap_size", mmap_mb.saturating_mul(1 << 20).to_string());
        if !is_in_memory(url) {
            create_private(options.get_filename())?;
        }
        // A connection to a local file does not break the way a socket does: no ping
        // (a round trip to the connection's worker thread) before every use.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(limit)
            .connect_with(options.clone())
            .await?;
        super::migrations::sqlite().run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .test_before_acquire(false)
            .acquire_timeout(limit)
            .connect_with(options.read_only(true).row_buffer_size(READ_AHEAD_ROWS))
            .await?;
        Ok(SqliteStore { writer, readers })
    }
}

/// Whether `url` names an in-memory database (no file).
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Creates the database file with mode 0600 before SQLite opens it (SQLite gives its
/// `-wal`, `-shm` and `-journal` files the database file's mode), in a directory created
/// 0700 if missing; an existing file and its companions with looser modes are tightened.
fn create_private(file: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = file.parent() {
        crate::private_files::create_missing_dir(dir)?;
    }
    crate::private_files::private_file(file)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut companion = file.as_os_str().to_owned();
        companion.push(suffix);
        crate::private_files::tighten_if_exists(std::path::Path::new(&companion));
    }
    Ok(())
}

fn stored_event(
    stream_id: Uuid,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
        stream_id,
        event_id: row.try_get(0)?,
        counter: row.try_get(1)?,
        sender: row.try_get(2)?,
        sender_origin: row
            .try_get::<Option<String>, _>(5)?
            .as_deref()
            .and_then(crate::domain::Foreign::from_sql),
        posted_at: row.try_get(3)?,
        body: Bytes::from(row.try_get::<Vec<u8>, _>(4)?),
    })
}

async fn pair_of_member(
    conn: &mut SqliteConnection,
    user: i64,
    pair: Uuid,
) -> Result<Option<(PairIds, i64)>> {
    let row = sqlx::query(
        "SELECT p.message_id, p.state_id, p.owner FROM channel_pairs p \
         JOIN members m ON m.pair_id = p.pair_id AND m.user_id = ? WHERE p.pair_id = ?",
    )
    .bind(user)
    .bind(pair)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(r) => Some((
            PairIds {
                pair_id: pair,
                message_id: r.try_get(0)?,
                state_id: r.try_get(1)?,
            },
            r.try_get(2)?,
        )),
        None => None,
    })
}

/// Removes `user` from `pair`, bumps the streams' membership epoch and hands ownership on
/// if they owned it.
async fn drop_member(
    conn: &mut SqliteConnection,
    pair: &PairIds,
    user: i64,
    owner: i64,
    removed_by: Option<i64>,
    now: i64,
) -> Result<()> {
    sqlx::query("DELETE FROM members WHERE pair_id = ? AND user_id = ?")
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
    sqlx::query("UPDATE streams SET member_epoch = member_epoch + 1 WHERE pair_id = ?")
        .bind(pair.pair_id)
        .execute(&mut *conn)
        .await?;
    if owner == user {
        sqlx::query(
            "UPDATE channel_pairs SET owner = (SELECT user_id FROM members WHERE pair_id = ?1 \
             ORDER BY joined_at, user_id LIMIT 1) WHERE pair_id = ?1 \
             AND EXISTS (SELECT 1 FROM members WHERE pair_id = ?1)",
        )
        .bind(pair.pair_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

mod erase;
mod events;
mod federation;
mod keys;
mod kt;
mod kt_evidence;
mod retention;
mod rooms;

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}
