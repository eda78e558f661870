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

/// SQLite store: a single writer and a pool of readers on one file.
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs the migrations.
    pub async fn open(url: &str, readers: u32) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display())
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, readers })
    }
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
) -> Result<()> {
    sqlx::query("DELETE FROM members WHERE pair_id = ? AND user_id = ?")
        .bind(pair.pair_id)
        .bind(user)
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

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn post_public_key(
        &self,
        user: i64,
        key: &CanonicalKey,
        now: i64,
    ) -> Result<PostKeyOutcome> {
        let mut tx = self.writer.begin().await?;
        let current: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, fingerprint FROM public_keys WHERE user_id = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((_, fp)) = &current
            && fp[..] == key.fingerprint[..]
        {
            return Ok(PostKeyOutcome::Unchanged);
        }
        let retired: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM public_keys WHERE user_id = ? AND fingerprint = ?")
                .bind(user)
                .bind(&key.fingerprint[..])
                .fetch_optional(&mut *tx)
                .await?;
        if retired.is_some() {
            return Err(retired_key());
        }
        let seq = current.map_or(1, |(s, _)| s + 1);
        sqlx::query(
            "INSERT INTO public_keys (user_id, seq, spki_der, fingerprint, posted_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(user)
        .bind(seq)
        .bind(&key.spki_der)
        .bind(&key.fingerprint[..])
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(PostKeyOutcome::Changed)
    }

    async fn fetch_public_keys(&self, user: i64) -> Result<Vec<StoredKey>> {
        let rows: Vec<(Vec<u8>, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT spki_der, fingerprint, posted_at FROM public_keys WHERE user_id = ? ORDER BY seq DESC",
        )
        .bind(user)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(spki_der, fingerprint, posted_at)| StoredKey {
                spki_der,
                fingerprint,
                posted_at,
            })
            .collect())
    }

    async fn post_private_key(
        &self,
        user: i64,
        blob: &[u8],
        expected: Option<u64>,
        now: i64,
    ) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM private_keys WHERE user_id = ?")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(expected) = expected
            && current.unwrap_or(0) as u64 != expected
        {
            return Err(version_mismatch(expected, current.map(|v| v as u64)));
        }
        let version = current.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO private_keys (user_id, blob, version, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (user_id) DO UPDATE SET blob = ?2, version = ?3, updated_at = ?4",
        )
        .bind(user)
        .bind(blob)
        .bind(version)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version as u64)
    }

    async fn fetch_private_key(&self, user: i64) -> Result<Option<(Vec<u8>, u64)>> {
        let row: Option<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT blob, version FROM private_keys WHERE user_id = ?")
                .bind(user)
                .fetch_optional(&self.readers)
                .await?;
        Ok(row.map(|(b, v)| (b, v as u64)))
    }

    async fn create_pair(&self, owner: i64, ids: &PairIds, now: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO channel_pairs (pair_id, message_id, state_id, owner, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(ids.pair_id)
        .bind(ids.message_id)
        .bind(ids.state_id)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for stream in ids.streams() {
            sqlx::query("INSERT INTO streams (stream_id, pair_id) VALUES (?, ?)")
                .bind(stream)
                .bind(ids.pair_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO members (pair_id, user_id, joined_at) VALUES (?, ?, ?)")
            .bind(ids.pair_id)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn send_invite(
        &self,
        from: i64,
        pair: Uuid,
        to: i64,
        body: &[u8],
        now: i64,
    ) -> Result<InviteRecord> {
        let mut tx = self.writer.begin().await?;
        let (ids, _) = pair_of_member(&mut tx, from, pair)
            .await?
            .ok_or_else(pair_denied)?;
        let has_key: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM public_keys WHERE user_id = ? LIMIT 1")
                .bind(to)
                .fetch_optional(&mut *tx)
                .await?;
        if has_key.is_none() {
            return Err(no_public_key(to));
        }
        let invite_id: i64 = sqlx::query_scalar(
            "INSERT INTO inboxes (user_id, last_invite_id) VALUES (?, 1) \
             ON CONFLICT (user_id) DO UPDATE SET last_invite_id = last_invite_id + 1 \
             RETURNING last_invite_id",
        )
        .bind(to)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO invites (to_user, invite_id, pair_id, from_user, body, sent_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(to)
        .bind(invite_id)
        .bind(pair)
        .bind(from)
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO members (pair_id, user_id, joined_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(pair)
        .bind(to)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(InviteRecord {
            invite_id,
            to_user: to,
            pair: ids,
            from_user: from,
            body: body.to_vec(),
            sent_at: now,
        })
    }

    async fn fetch_invites(
        &self,
        user: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<InviteRecord>> {
        let rows = sqlx::query(
            "SELECT i.invite_id, i.pair_id, p.message_id, p.state_id, i.from_user, i.body, i.sent_at \
             FROM invites i JOIN channel_pairs p ON p.pair_id = i.pair_id \
             WHERE i.to_user = ? AND i.invite_id > ? ORDER BY i.invite_id LIMIT ?",
        )
        .bind(user)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InviteRecord {
                    invite_id: r.try_get(0)?,
                    to_user: user,
                    pair: PairIds {
                        pair_id: r.try_get(1)?,
                        message_id: r.try_get(2)?,
                        state_id: r.try_get(3)?,
                    },
                    from_user: r.try_get(4)?,
                    body: r.try_get(5)?,
                    sent_at: r.try_get(6)?,
                })
            })
            .collect()
    }

    async fn last_invite_id(&self, user: i64) -> Result<i64> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT last_invite_id FROM inboxes WHERE user_id = ?")
                .bind(user)
                .fetch_optional(&self.readers)
                .await?;
        Ok(id.unwrap_or(0))
    }

    async fn list_pairs(&self, user: i64) -> Result<Vec<PairInfo>> {
        let rows = sqlx::query(
            "SELECT p.pair_id, p.message_id, p.state_id, p.owner, m2.user_id \
             FROM members m JOIN channel_pairs p ON p.pair_id = m.pair_id \
             JOIN members m2 ON m2.pair_id = p.pair_id \
             WHERE m.user_id = ? ORDER BY p.created_at, p.pair_id, m2.user_id",
        )
        .bind(user)
        .fetch_all(&self.readers)
        .await?;
        let mut out: Vec<PairInfo> = Vec::new();
        for r in &rows {
            let pair_id: Uuid = r.try_get(0)?;
            let member: i64 = r.try_get(4)?;
            match out.last_mut() {
                Some(last) if last.ids.pair_id == pair_id => last.members.push(member),
                _ => out.push(PairInfo {
                    ids: PairIds {
                        pair_id,
                        message_id: r.try_get(1)?,
                        state_id: r.try_get(2)?,
                    },
                    owner: r.try_get(3)?,
                    members: vec![member],
                }),
            }
        }
        Ok(out)
    }

    async fn leave_pair(&self, user: i64, pair: Uuid) -> Result<PairIds> {
        let mut tx = self.writer.begin().await?;
        let (ids, owner) = pair_of_member(&mut tx, user, pair)
            .await?
            .ok_or_else(pair_denied)?;
        drop_member(&mut tx, &ids, user, owner).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn remove_member(&self, owner: i64, pair: Uuid, user: i64) -> Result<PairIds> {
        let mut tx = self.writer.begin().await?;
        let (ids, current_owner) = pair_of_member(&mut tx, owner, pair)
            .await?
            .ok_or_else(pair_denied)?;
        check_removal(owner, current_owner, user)?;
        let target: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM members WHERE pair_id = ? AND user_id = ?")
                .bind(pair)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        if target.is_none() {
            return Err(not_a_member(user));
        }
        drop_member(&mut tx, &ids, user, current_owner).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn append_batch(
        &self,
        batch: &[AppendRequest],
        max_gap: i64,
        now: i64,
    ) -> Result<Vec<Result<Appended>>> {
        let mut tx = self.writer.begin().await?;
        let mut heads: HashMap<Uuid, HeadRow> = HashMap::new();
        let mut pairs: HashMap<Uuid, Uuid> = HashMap::new();
        for post in batch {
            if heads.contains_key(&post.stream_id) || pairs.contains_key(&post.stream_id) {
                continue;
            }
            let row = sqlx::query(
                "SELECT pair_id, head_event_id, head_counter, member_epoch FROM streams WHERE stream_id = ?",
            )
            .bind(post.stream_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = row {
                pairs.insert(post.stream_id, r.try_get(0)?);
                heads.insert(
                    post.stream_id,
                    HeadRow {
                        head_event_id: r.try_get(1)?,
                        head_counter: r.try_get(2)?,
                        member_epoch: r.try_get(3)?,
                    },
                );
            }
        }
        let mut members: HashSet<(Uuid, i64)> = HashSet::new();
        let mut checked: HashSet<(Uuid, i64)> = HashSet::new();
        for post in batch {
            let Some(pair) = pairs.get(&post.stream_id) else {
                continue;
            };
            if !checked.insert((post.stream_id, post.sender)) {
                continue;
            }
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM members WHERE pair_id = ? AND user_id = ?")
                    .bind(pair)
                    .bind(post.sender)
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_some() {
                members.insert((post.stream_id, post.sender));
            }
        }
        let mut existing = HashMap::new();
        for (stream, counter) in lookups_needed(batch, &heads) {
            let row: Option<(i64, i64, Vec<u8>)> = sqlx::query_as(
                "SELECT event_id, sender, body FROM events WHERE stream_id = ? AND counter = ?",
            )
            .bind(stream)
            .bind(counter)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((event_id, sender, body)) = row {
                existing.insert(
                    (stream, counter),
                    ExistingEvent {
                        event_id,
                        sender,
                        body,
                    },
                );
            }
        }
        let plan = plan_batch(
            batch,
            &heads,
            |s, u| members.contains(&(s, u)),
            &existing,
            max_gap,
            now,
        );
        for e in &plan.inserts {
            sqlx::query(
                "INSERT INTO events (stream_id, event_id, counter, sender, posted_at, body) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(e.stream_id)
            .bind(e.event_id)
            .bind(e.counter)
            .bind(e.sender)
            .bind(e.posted_at)
            .bind(&e.body[..])
            .execute(&mut *tx)
            .await?;
        }
        for (stream, head_event_id, head_counter) in &plan.heads {
            sqlx::query(
                "UPDATE streams SET head_event_id = ?, head_counter = ? WHERE stream_id = ?",
            )
            .bind(head_event_id)
            .bind(head_counter)
            .bind(stream)
            .execute(&mut *tx)
            .await?;
        }
        if plan.inserts.is_empty() {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(plan.outcomes)
    }

    async fn stream_access(&self, user: i64, stream: Uuid) -> Result<StreamAccess> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT s.head_event_id, s.member_epoch FROM streams s \
             JOIN members m ON m.pair_id = s.pair_id AND m.user_id = ? WHERE s.stream_id = ?",
        )
        .bind(user)
        .bind(stream)
        .fetch_optional(&self.readers)
        .await?;
        let (head_event_id, member_epoch) = row.ok_or_else(stream_denied)?;
        Ok(StreamAccess {
            head_event_id,
            member_epoch,
        })
    }

    async fn fetch_events(
        &self,
        user: i64,
        stream: Uuid,
        page: Page,
        limit: usize,
    ) -> Result<EventPage> {
        // One read transaction: the access check, the head and the page see one snapshot.
        let mut tx = self.readers.begin().await?;
        let head: Option<(i64, i64)> = sqlx::query_as(
            "SELECT s.head_event_id, s.member_epoch FROM streams s \
             JOIN members m ON m.pair_id = s.pair_id AND m.user_id = ? WHERE s.stream_id = ?",
        )
        .bind(user)
        .bind(stream)
        .fetch_optional(&mut *tx)
        .await?;
        let (head_event_id, member_epoch) = head.ok_or_else(stream_denied)?;
        let rows = match page {
            Page::After(after) => {
                sqlx::query(
                    "SELECT event_id, counter, sender, posted_at, body FROM events \
                     WHERE stream_id = ? AND event_id > ? ORDER BY event_id LIMIT ?",
                )
                .bind(stream)
                .bind(after)
                .bind(limit as i64 + 1)
                .fetch_all(&mut *tx)
                .await?
            }
            Page::Before(before) => {
                sqlx::query(
                    "SELECT event_id, counter, sender, posted_at, body FROM events \
                     WHERE stream_id = ? AND event_id < ? ORDER BY event_id DESC LIMIT ?",
                )
                .bind(stream)
                .bind(before)
                .bind(limit as i64 + 1)
                .fetch_all(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        let mut events = rows
            .iter()
            .map(|r| stored_event(stream, r))
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = events.len() > limit;
        events.truncate(limit);
        if matches!(page, Page::Before(_)) {
            events.reverse();
        }
        Ok(EventPage {
            events,
            has_more,
            head_event_id,
            member_epoch,
        })
    }

    async fn read_events(
        &self,
        stream: Uuid,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<EventRun> {
        let mut tx = self.readers.begin().await?;
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT member_epoch FROM streams WHERE stream_id = ?")
                .bind(stream)
                .fetch_optional(&mut *tx)
                .await?;
        let rows = sqlx::query(
            "SELECT event_id, counter, sender, posted_at, body FROM events \
             WHERE stream_id = ? AND event_id > ? AND event_id <= ? ORDER BY event_id LIMIT ?",
        )
        .bind(stream)
        .bind(after)
        .bind(up_to)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(EventRun {
            events: rows
                .iter()
                .map(|r| stored_event(stream, r))
                .collect::<Result<Vec<_>, _>>()?,
            member_epoch: epoch.unwrap_or(0),
        })
    }

    async fn stream_heads(&self, streams: &[Uuid]) -> Result<Vec<(Uuid, i64)>> {
        let mut out = Vec::with_capacity(streams.len());
        let mut conn = self.readers.acquire().await?;
        for &s in streams {
            let head: Option<i64> =
                sqlx::query_scalar("SELECT head_event_id FROM streams WHERE stream_id = ?")
                    .bind(s)
                    .fetch_optional(&mut *conn)
                    .await?;
            if let Some(h) = head {
                out.push((s, h));
            }
        }
        Ok(out)
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}
