//! Key transparency on SQLite: the single writer connection is the publisher's lock (one
//! process per database file); proofs are read on the reader pool. Lookups of many nodes
//! go in chunks of `(VALUES …) JOIN` the table on its primary key (SQLite plans a row-value
//! `(bits, path) IN (VALUES …)` as a scan of the whole table: O(users) per proof), writes
//! row by row inside the epoch's transaction (SQLite runs them in-process). A proof reads
//! its parts statement by statement (the default `KtConn::proof_rows`): one statement of
//! all parts, as on Postgres, measured slower here twice — with `(VALUES …)` lists and with
//! `json_each` node lists (BENCHMARKS.md, "Key transparency" and "FetchKey after issue
//! 21's third round").

use super::*;
use crate::merkle::log::{Hash, Node};
use crate::merkle::map::{Prefix, Stored};
use crate::store::kt::{
    self, EntryRow, Epoch, HeadRow, HeadSigner, KtConn, KtQuery, KtRows, KtStore, KtTx, LogEntry,
    PendingErasure, PendingKey, PublishLimits, Published, TreeHead, hash32, signed,
};

/// Pairs of parameters one lookup statement binds at most.
const CHUNK: usize = 250;

/// A map node row: (bits, path, interior_hash, leaf_key, leaf_value).
type MapRow = (
    i64,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// `(?, ?), (?, ?), …` for `n` pairs.
fn pairs(n: usize) -> String {
    vec!["(?, ?)"; n].join(", ")
}

/// Key transparency statements on one SQLite connection (or transaction).
struct SqliteKt<'a>(&'a mut SqliteConnection);

#[async_trait]
impl KtConn for SqliteKt<'_> {
    async fn latest_head(&mut self) -> Result<Option<TreeHead>> {
        let row: Option<HeadRow> = sqlx::query_as(sql::KT_LATEST_HEAD)
            .fetch_optional(&mut *self.0)
            .await?;
        row.map(TreeHead::try_from).transpose()
    }

    async fn user_entries(
        &mut self,
        user: i64,
        after_seq: u64,
        below_leaf: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        sqlx::query_as::<_, EntryRow>(sql::KT_USER_ENTRIES)
            .bind(user)
            .bind(signed(after_seq))
            .bind(signed(below_leaf))
            .bind(limit as i64)
            .fetch_all(&mut *self.0)
            .await?
            .into_iter()
            .map(LogEntry::try_from)
            .collect()
    }

    async fn public_keys(&mut self, user: i64, limit: usize) -> Result<Vec<StoredKey>> {
        let rows: Vec<KeyRow> = sqlx::query_as(sql::FETCH_PUBLIC_KEYS)
            .bind(user)
            .bind(limit as i64)
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows.into_iter().map(StoredKey::from).collect())
    }

    async fn map_nodes(&mut self, prefixes: &[Prefix]) -> Result<Vec<(Prefix, Stored)>> {
        let mut out = Vec::new();
        for chunk in prefixes.chunks(CHUNK) {
            let sql = format!(
                "SELECT n.bits, n.path, n.interior_hash, n.leaf_key, n.leaf_value \
                 FROM (VALUES {}) AS q JOIN kt_map_nodes n \
                 ON n.bits = q.column1 AND n.path = q.column2",
                pairs(chunk.len())
            );
            let mut q = sqlx::query_as::<_, MapRow>(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q.bind(i64::from(p.bits)).bind(kt::path_bytes(p).to_vec());
            }
            out.extend(map_rows(q.fetch_all(&mut *self.0).await?)?);
        }
        Ok(out)
    }

    async fn log_nodes(&mut self, nodes: &[Node]) -> Result<Vec<(Node, Hash)>> {
        let mut out = Vec::new();
        for chunk in nodes.chunks(CHUNK) {
            let sql = format!(
                "SELECT n.level, n.idx, n.hash FROM (VALUES {}) AS q JOIN kt_log_nodes n \
                 ON n.level = q.column1 AND n.idx = q.column2",
                pairs(chunk.len())
            );
            let mut q = sqlx::query_as::<_, (i64, i64, Vec<u8>)>(sqlx::AssertSqlSafe(sql));
            for n in chunk {
                q = q.bind(i64::from(n.level)).bind(signed(n.index));
            }
            for (level, idx, hash) in q.fetch_all(&mut *self.0).await? {
                let level = u8::try_from(level).map_err(|_| {
                    crate::error::Error::Internal(format!("kt_log_nodes holds level {level}"))
                })?;
                out.push((
                    Node {
                        level,
                        index: kt::unsigned(idx, "kt_log_nodes.idx")?,
                    },
                    hash32(&hash, "kt_log_nodes.hash")?,
                ));
            }
        }
        Ok(out)
    }
}

/// Map nodes from their rows.
fn map_rows(rows: Vec<MapRow>) -> Result<Vec<(Prefix, Stored)>> {
    rows.into_iter()
        .map(|(bits, path, interior, key, value)| {
            Ok((
                kt::prefix_from(bits, &path)?,
                kt::stored_from(interior, key, value)?,
            ))
        })
        .collect()
}

#[async_trait]
impl KtTx for SqliteKt<'_> {
    async fn pending(&mut self, limit: usize) -> Result<Vec<PendingKey>> {
        let oldest: Vec<i64> = sqlx::query_scalar(sql::KT_PENDING_USERS)
            .bind(limit as i64)
            .fetch_all(&mut *self.0)
            .await?;
        let mut users = Vec::new();
        for u in oldest {
            if !users.contains(&u) {
                users.push(u);
            }
        }
        let mut out = Vec::new();
        for user in users {
            let rows: Vec<(i64, i64, Vec<u8>, i64)> = sqlx::query_as(
                "SELECT user_id, seq, fingerprint, posted_at FROM public_keys \
                 WHERE kt_leaf IS NULL AND user_id = $1 ORDER BY seq",
            )
            .bind(user)
            .fetch_all(&mut *self.0)
            .await?;
            out.extend(
                rows.into_iter()
                    .map(|(user, seq, fingerprint, posted_at)| PendingKey {
                        user,
                        seq,
                        fingerprint,
                        posted_at,
                    }),
            );
        }
        Ok(out)
    }

    async fn pending_erasures(&mut self, limit: usize) -> Result<Vec<PendingErasure>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(sql::KT_PENDING_ERASURES)
            .bind(limit as i64)
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(user, erased_at)| PendingErasure { user, erased_at })
            .collect())
    }

    async fn last_entries(&mut self, users: &[i64]) -> Result<Vec<(i64, u64, Hash)>> {
        let mut out = Vec::new();
        for &user in users {
            let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, entry_hash FROM kt_entries WHERE user_id = $1 \
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(user)
            .fetch_optional(&mut *self.0)
            .await?;
            if let Some((seq, hash)) = row {
                out.push((
                    user,
                    kt::unsigned(seq, "kt_entries.seq")?,
                    hash32(&hash, "kt_entries.entry_hash")?,
                ));
            }
        }
        Ok(out)
    }

    async fn write(&mut self, epoch: &Epoch) -> Result<()> {
        let conn = &mut *self.0;
        for e in &epoch.entries {
            sqlx::query(
                "INSERT INTO kt_entries (leaf_index, user_id, seq, fingerprint, posted_at_ms, \
                 prev_entry_hash, entry_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(signed(e.leaf_index))
            .bind(e.user)
            .bind(signed(e.seq))
            .bind(&e.fingerprint[..])
            .bind(signed(e.posted_at_ms))
            .bind(&e.prev_entry_hash[..])
            .bind(&e.entry_hash[..])
            .execute(&mut *conn)
            .await?;
        }
        for (node, hash) in &epoch.log_nodes {
            sqlx::query("INSERT INTO kt_log_nodes (level, idx, hash) VALUES ($1, $2, $3)")
                .bind(i64::from(node.level))
                .bind(signed(node.index))
                .bind(&hash[..])
                .execute(&mut *conn)
                .await?;
        }
        for (p, s) in &epoch.map {
            match s {
                Some(s) => {
                    let (interior, key, value) = kt::columns_of(s);
                    sqlx::query(
                        "INSERT INTO kt_map_nodes (bits, path, interior_hash, leaf_key, \
                         leaf_value) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (bits, path) \
                         DO UPDATE SET interior_hash = excluded.interior_hash, \
                         leaf_key = excluded.leaf_key, leaf_value = excluded.leaf_value",
                    )
                    .bind(i64::from(p.bits))
                    .bind(kt::path_bytes(p))
                    .bind(interior)
                    .bind(key)
                    .bind(value)
                    .execute(&mut *conn)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM kt_map_nodes WHERE bits = $1 AND path = $2")
                        .bind(i64::from(p.bits))
                        .bind(kt::path_bytes(p))
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        for &(user, seq, leaf) in &epoch.logged {
            let marked = sqlx::query(
                "UPDATE public_keys SET kt_leaf = $3 WHERE user_id = $1 AND seq = $2 \
                 AND kt_leaf IS NULL",
            )
            .bind(user)
            .bind(seq)
            .bind(signed(leaf))
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if marked != 1 {
                return Err(crate::error::Error::Internal(format!(
                    "key {seq} of user {user} changed during the epoch"
                )));
            }
        }
        for &(user, leaf) in &epoch.erasures {
            let marked = sqlx::query(sql::KT_ERASURE_PUBLISHED)
                .bind(user)
                .bind(leaf.map(signed))
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if marked != 1 {
                return Err(crate::error::Error::Internal(format!(
                    "the erasure of user {user} changed during the epoch"
                )));
            }
        }
        if let Some(h) = &epoch.head {
            kt::bind_new_head!(sqlx::query(sql::KT_INSERT_HEAD), h)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn resign(&mut self, h: &TreeHead) -> Result<()> {
        kt::bind_resigned_head!(sqlx::query(sql::KT_RESIGN_HEAD), h)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl KtStore for SqliteStore {
    async fn kt_publish(
        &self,
        signer: &HeadSigner,
        limits: &PublishLimits,
        now_ms: u64,
    ) -> Result<Published> {
        let mut tx = self.writer.begin().await?;
        let published = kt::publish(&mut SqliteKt(&mut tx), signer, limits, now_ms).await?;
        if let Published::Unchanged(_) = published {
            // Nothing written: no COMMIT (nothing for the disk, nothing for replicas).
            tx.rollback().await?;
            return Ok(published);
        }
        kt::pause_before_commit(limits, &published).await;
        tx.commit().await?;
        Ok(published)
    }

    async fn kt_latest_head(&self) -> Result<Option<TreeHead>> {
        let mut conn = self.readers.acquire().await?;
        SqliteKt(&mut conn).latest_head().await
    }

    async fn kt_read(&self, query: &KtQuery) -> Result<KtRows> {
        let mut conn = self.readers.acquire().await?;
        kt::read(&mut SqliteKt(&mut conn), query).await
    }

    async fn kt_heads_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<TreeHead>> {
        sqlx::query_as::<_, HeadRow>(sql::KT_HEADS_AFTER)
            .bind(after.map_or(-1, signed))
            .bind(limit as i64)
            .fetch_all(&self.readers)
            .await?
            .into_iter()
            .map(TreeHead::try_from)
            .collect()
    }

    async fn kt_entries_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<LogEntry>> {
        sqlx::query_as::<_, EntryRow>(sql::KT_ENTRIES_AFTER)
            .bind(after.map_or(-1, signed))
            .bind(limit as i64)
            .fetch_all(&self.readers)
            .await?
            .into_iter()
            .map(LogEntry::try_from)
            .collect()
    }

    async fn kt_log_nodes_after(
        &self,
        level: u8,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Hash)>> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(sql::KT_LOG_NODES_AFTER)
            .bind(i64::from(level))
            .bind(after.map_or(-1, signed))
            .bind(limit as i64)
            .fetch_all(&self.readers)
            .await?;
        rows.into_iter()
            .map(|(i, h)| {
                Ok((
                    kt::unsigned(i, "kt_log_nodes.idx")?,
                    hash32(&h, "kt_log_nodes.hash")?,
                ))
            })
            .collect()
    }

    async fn kt_map_nodes_after(
        &self,
        after: Option<Prefix>,
        limit: usize,
    ) -> Result<Vec<(Prefix, Stored)>> {
        let (bits, path) = match &after {
            Some(p) => (i64::from(p.bits), kt::path_bytes(p).to_vec()),
            None => (-1, Vec::new()),
        };
        let rows: Vec<MapRow> = sqlx::query_as(sql::KT_MAP_NODES_AFTER)
            .bind(bits)
            .bind(path)
            .bind(limit as i64)
            .fetch_all(&self.readers)
            .await?;
        map_rows(rows)
    }

    async fn kt_misfiled_key(&self) -> Result<Option<(i64, i64, i64)>> {
        Ok(sqlx::query_as(sql::KT_MISFILED_KEY)
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn kt_misfiled_erasure(&self) -> Result<Option<(i64, Option<i64>)>> {
        Ok(sqlx::query_as(sql::KT_MISFILED_ERASURE)
            .bind(&crate::store::kt_publish::ERASED_FINGERPRINT[..])
            .fetch_optional(&self.readers)
            .await?)
    }
}
