//! Key transparency on Postgres: one replica publishes at a time, under a
//! transaction-scoped advisory lock taken first in the epoch's transaction (another
//! replica that finds it taken skips that epoch); bulk writes as `UNNEST` arrays. A
//! proof's rows after its head come in one statement (`kt_proof.rs`): each round trip
//! costs the server more CPU than the lookups themselves.

use super::kt_proof::PROOF_ROWS;
use super::*;
use crate::merkle::log::{Hash, Node};
use crate::merkle::map::{Prefix, Stored};
use crate::store::kt::{
    self, EntriesQuery, EntryRow, Epoch, HeadRow, HeadSigner, KeysQuery, KtConn, KtQuery, KtRows,
    KtStore, KtTx, LogEntry, PendingErasure, PendingKey, ProofRows, PublishLimits, Published,
    TreeHead, hash32, signed,
};
use crate::store::kt_rows::{ProofRow, proof_parts};

/// The advisory lock key of the publisher ("secretkt").
const PUBLISH_LOCK: i64 = 0x7365_6372_6574_6b74;

/// A map node row: (bits, path, interior_hash, leaf_key, leaf_value).
type MapRow = (
    i16,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// Key transparency statements on one Postgres connection (or transaction).
struct PgKt<'a>(&'a mut PgConnection);

#[async_trait]
impl KtConn for PgKt<'_> {
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

    async fn map_nodes(&mut self, prefixes: &[Prefix]) -> Result<Vec<(Prefix, Stored)>> {
        if prefixes.is_empty() {
            return Ok(Vec::new());
        }
        let bits: Vec<i16> = prefixes.iter().map(|p| p.bits as i16).collect();
        let paths: Vec<Vec<u8>> = prefixes
            .iter()
            .map(|p| kt::path_bytes(p).to_vec())
            .collect();
        let rows: Vec<MapRow> = sqlx::query_as(
            "SELECT n.bits, n.path, n.interior_hash, n.leaf_key, n.leaf_value \
             FROM UNNEST($1::smallint[], $2::bytea[]) AS q(bits, path) \
             JOIN kt_map_nodes n ON n.bits = q.bits AND n.path = q.path",
        )
        .bind(bits)
        .bind(paths)
        .fetch_all(&mut *self.0)
        .await?;
        map_rows(rows)
    }

    async fn public_keys(&mut self, user: i64, limit: usize) -> Result<Vec<StoredKey>> {
        let rows: Vec<KeyRow> = sqlx::query_as(sql::FETCH_PUBLIC_KEYS)
            .bind(user)
            .bind(limit as i64)
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows.into_iter().map(StoredKey::from).collect())
    }

    async fn proof_rows(
        &mut self,
        entries: Option<EntriesQuery>,
        prefixes: &[Prefix],
        nodes: &[Node],
        keys: Option<KeysQuery>,
    ) -> Result<ProofRows> {
        // No entries asked: a user that matches nothing (user ids are positive) and LIMIT 0.
        let q = entries.unwrap_or(EntriesQuery {
            user: 0,
            after_seq: 0,
            below_leaf: 0,
            limit: 0,
        });
        let rows: Vec<ProofRow> = sqlx::query_as(PROOF_ROWS)
            .bind(q.user)
            .bind(signed(q.after_seq))
            .bind(signed(q.below_leaf))
            .bind(q.limit as i64)
            .bind(prefixes.iter().map(|p| p.bits as i16).collect::<Vec<_>>())
            .bind(
                prefixes
                    .iter()
                    .map(|p| kt::path_bytes(p).to_vec())
                    .collect::<Vec<_>>(),
            )
            .bind(nodes.iter().map(|n| i16::from(n.level)).collect::<Vec<_>>())
            .bind(nodes.iter().map(|n| signed(n.index)).collect::<Vec<_>>())
            // No keys asked: LIMIT 0.
            .bind(keys.map_or(0, |k| k.user))
            .bind(keys.map_or(0, |k| k.limit as i64))
            .fetch_all(&mut *self.0)
            .await?;
        proof_parts(q.user, rows)
    }

    async fn log_nodes(&mut self, nodes: &[Node]) -> Result<Vec<(Node, Hash)>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let levels: Vec<i16> = nodes.iter().map(|n| i16::from(n.level)).collect();
        let idxs: Vec<i64> = nodes.iter().map(|n| signed(n.index)).collect();
        let rows: Vec<(i16, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT n.level, n.idx, n.hash FROM UNNEST($1::smallint[], $2::bigint[]) AS q(level, idx) \
             JOIN kt_log_nodes n ON n.level = q.level AND n.idx = q.idx",
        )
        .bind(levels)
        .bind(idxs)
        .fetch_all(&mut *self.0)
        .await?;
        rows.into_iter()
            .map(|(level, idx, hash)| {
                Ok((
                    Node {
                        level: u8::try_from(level).map_err(|_| bad_level(level))?,
                        index: kt::unsigned(idx, "kt_log_nodes.idx")?,
                    },
                    hash32(&hash, "kt_log_nodes.hash")?,
                ))
            })
            .collect()
    }
}

fn bad_level(level: i16) -> crate::error::Error {
    crate::error::Error::Internal(format!("kt_log_nodes holds level {level}"))
}

/// Map nodes from their rows.
fn map_rows(rows: Vec<MapRow>) -> Result<Vec<(Prefix, Stored)>> {
    rows.into_iter()
        .map(|(bits, path, interior, key, value)| {
            Ok((
                kt::prefix_from(i64::from(bits), &path)?,
                kt::stored_from(interior, key, value)?,
            ))
        })
        .collect()
}

#[async_trait]
impl KtTx for PgKt<'_> {
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
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, i64, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT user_id, seq, fingerprint, posted_at FROM public_keys \
             WHERE kt_leaf IS NULL AND user_id = ANY($1) ORDER BY user_id, seq",
        )
        .bind(&users)
        .fetch_all(&mut *self.0)
        .await?;
        let mut by_user: HashMap<i64, Vec<PendingKey>> = HashMap::new();
        for (user, seq, fingerprint, posted_at) in rows {
            by_user.entry(user).or_default().push(PendingKey {
                user,
                seq,
                fingerprint,
                posted_at,
            });
        }
        Ok(users
            .iter()
            .flat_map(|u| by_user.remove(u).unwrap_or_default())
            .collect())
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
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT DISTINCT ON (user_id) user_id, seq, entry_hash FROM kt_entries \
             WHERE user_id = ANY($1) ORDER BY user_id, seq DESC",
        )
        .bind(users)
        .fetch_all(&mut *self.0)
        .await?;
        rows.into_iter()
            .map(|(u, seq, h)| {
                Ok((
                    u,
                    kt::unsigned(seq, "kt_entries.seq")?,
                    hash32(&h, "kt_entries.entry_hash")?,
                ))
            })
            .collect()
    }

    async fn write(&mut self, epoch: &Epoch) -> Result<()> {
        let conn = &mut *self.0;
        if !epoch.entries.is_empty() {
            let e = &epoch.entries;
            sqlx::query(
                "INSERT INTO kt_entries (leaf_index, user_id, seq, fingerprint, posted_at_ms, \
                 prev_entry_hash, entry_hash) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], \
                 $3::bigint[], $4::bytea[], $5::bigint[], $6::bytea[], $7::bytea[])",
            )
            .bind(e.iter().map(|x| signed(x.leaf_index)).collect::<Vec<_>>())
            .bind(e.iter().map(|x| x.user).collect::<Vec<_>>())
            .bind(e.iter().map(|x| signed(x.seq)).collect::<Vec<_>>())
            .bind(e.iter().map(|x| x.fingerprint.to_vec()).collect::<Vec<_>>())
            .bind(e.iter().map(|x| signed(x.posted_at_ms)).collect::<Vec<_>>())
            .bind(
                e.iter()
                    .map(|x| x.prev_entry_hash.to_vec())
                    .collect::<Vec<_>>(),
            )
            .bind(e.iter().map(|x| x.entry_hash.to_vec()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !epoch.log_nodes.is_empty() {
            let n = &epoch.log_nodes;
            sqlx::query(
                "INSERT INTO kt_log_nodes (level, idx, hash) \
                 SELECT * FROM UNNEST($1::smallint[], $2::bigint[], $3::bytea[])",
            )
            .bind(
                n.iter()
                    .map(|(x, _)| i16::from(x.level))
                    .collect::<Vec<_>>(),
            )
            .bind(n.iter().map(|(x, _)| signed(x.index)).collect::<Vec<_>>())
            .bind(n.iter().map(|(_, h)| h.to_vec()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let (set, gone): (Vec<_>, Vec<_>) = epoch.map.iter().partition(|(_, s)| s.is_some());
        if !set.is_empty() {
            let columns: Vec<kt::MapColumns> = set
                .iter()
                .map(|(_, s)| kt::columns_of(&s.expect("partitioned")))
                .collect();
            sqlx::query(
                "INSERT INTO kt_map_nodes (bits, path, interior_hash, leaf_key, leaf_value) \
                 SELECT * FROM UNNEST($1::smallint[], $2::bytea[], $3::bytea[], $4::bytea[], \
                 $5::bytea[]) ON CONFLICT (bits, path) DO UPDATE SET \
                 interior_hash = EXCLUDED.interior_hash, leaf_key = EXCLUDED.leaf_key, \
                 leaf_value = EXCLUDED.leaf_value",
            )
            .bind(set.iter().map(|(p, _)| p.bits as i16).collect::<Vec<_>>())
            .bind(
                set.iter()
                    .map(|(p, _)| kt::path_bytes(p).to_vec())
                    .collect::<Vec<_>>(),
            )
            .bind(columns.iter().map(|c| c.0.clone()).collect::<Vec<_>>())
            .bind(columns.iter().map(|c| c.1.clone()).collect::<Vec<_>>())
            .bind(columns.iter().map(|c| c.2.clone()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !gone.is_empty() {
            sqlx::query(
                "DELETE FROM kt_map_nodes n USING UNNEST($1::smallint[], $2::bytea[]) \
                 AS q(bits, path) WHERE n.bits = q.bits AND n.path = q.path",
            )
            .bind(gone.iter().map(|(p, _)| p.bits as i16).collect::<Vec<_>>())
            .bind(
                gone.iter()
                    .map(|(p, _)| kt::path_bytes(p).to_vec())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await?;
        }
        if !epoch.logged.is_empty() {
            let l = &epoch.logged;
            let marked = sqlx::query(
                "UPDATE public_keys p SET kt_leaf = q.leaf \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS q(user_id, seq, leaf) \
                 WHERE p.user_id = q.user_id AND p.seq = q.seq AND p.kt_leaf IS NULL",
            )
            .bind(l.iter().map(|x| x.0).collect::<Vec<_>>())
            .bind(l.iter().map(|x| x.1).collect::<Vec<_>>())
            .bind(l.iter().map(|x| signed(x.2)).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if marked != l.len() as u64 {
                return Err(crate::error::Error::Internal(format!(
                    "{} of {} keys to log changed during the epoch",
                    l.len() as u64 - marked,
                    l.len()
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
impl KtStore for PgStore {
    async fn kt_publish(
        &self,
        signer: &HeadSigner,
        limits: &PublishLimits,
        now_ms: u64,
    ) -> Result<Published> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PUBLISH_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(Published::Busy);
        }
        let published = kt::publish(&mut PgKt(&mut tx), signer, limits, now_ms).await?;
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
        let mut conn = self.conn().await?;
        PgKt(&mut conn).latest_head().await
    }

    async fn kt_read(&self, query: &KtQuery) -> Result<KtRows> {
        let mut conn = self.conn().await?;
        kt::read(&mut PgKt(&mut conn), query).await
    }

    async fn kt_heads_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<TreeHead>> {
        sqlx::query_as::<_, HeadRow>(sql::KT_HEADS_AFTER)
            .bind(after.map_or(-1, signed))
            .bind(limit as i64)
            .fetch_all(&mut *self.conn().await?)
            .await?
            .into_iter()
            .map(TreeHead::try_from)
            .collect()
    }

    async fn kt_entries_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<LogEntry>> {
        sqlx::query_as::<_, EntryRow>(sql::KT_ENTRIES_AFTER)
            .bind(after.map_or(-1, signed))
            .bind(limit as i64)
            .fetch_all(&mut *self.conn().await?)
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
            .bind(i16::from(level))
            .bind(after.map_or(-1, signed))
            .bind(limit as i64)
            .fetch_all(&mut *self.conn().await?)
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
            Some(p) => (p.bits as i16, kt::path_bytes(p).to_vec()),
            None => (-1, Vec::new()),
        };
        let rows: Vec<MapRow> = sqlx::query_as(sql::KT_MAP_NODES_AFTER)
            .bind(bits)
            .bind(path)
            .bind(limit as i64)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        map_rows(rows)
    }

    async fn kt_misfiled_key(&self) -> Result<Option<(i64, i64, i64)>> {
        Ok(sqlx::query_as(sql::KT_MISFILED_KEY)
            .fetch_optional(&mut *self.conn().await?)
            .await?)
    }

    async fn kt_misfiled_erasure(&self) -> Result<Option<(i64, Option<i64>)>> {
        Ok(sqlx::query_as(sql::KT_MISFILED_ERASURE)
            .bind(&crate::store::kt_publish::ERASED_FINGERPRINT[..])
            .fetch_optional(&mut *self.conn().await?)
            .await?)
    }
}
