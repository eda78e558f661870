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
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use uuid::Uuid;

use super::append::{ExistingEvent, HeadRow, lookups_needed, plan_batch};
use super::*;
use crate::pgnotify::{self, Change};

/// Postgres store.
pub struct PgStore {
    pool: PgPool,
    replica: Uuid,
}

impl PgStore {
    /// Connects and runs the migrations (under sqlx's advisory lock, so replicas starting
    /// together do not race).
    pub async fn open(url: &str, max_connections: u32, replica: Uuid) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Postgres: {e}"))?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool, replica })
    }

    async fn notify(&self, conn: &mut PgConnection, changes: &[Change]) -> Result<()> {
        let payloads = pgnotify::encode(self.replica, changes);
        if !payloads.is_empty() {
            sqlx::query("SELECT count(pg_notify($1, p)) FROM UNNEST($2::text[]) AS p")
                .bind(pgnotify::CHANNEL)
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
    ) -> Result<()> {
        sqlx::query("DELETE FROM members WHERE pair_id = $1 AND user_id = $2")
            .bind(pair.pair_id)
            .bind(user)
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

async fn pair_of_member(
    conn: &mut PgConnection,
    user: i64,
    pair: Uuid,
) -> Result<Option<(PairIds, i64)>> {
    let row: Option<(Uuid, Uuid, i64)> = sqlx::query_as(
        "SELECT p.message_id, p.state_id, p.owner FROM channel_pairs p \
         JOIN members m ON m.pair_id = p.pair_id AND m.user_id = $1 WHERE p.pair_id = $2",
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
        posted_at: row.try_get(at + 3)?,
        body: Bytes::from(row.try_get::<Vec<u8>, _>(at + 4)?),
    })
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn post_public_key(
        &self,
        user: i64,
        key: &CanonicalKey,
        now: i64,
    ) -> Result<PostKeyOutcome> {
        // Two concurrent posts for one user may pick the same seq; the loser retries and
        // then sees the winner's row.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.pool.begin().await?;
            let current: Option<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, fingerprint FROM public_keys WHERE user_id = $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((_, fp)) = &current
                && fp[..] == key.fingerprint[..]
            {
                return Ok(PostKeyOutcome::Unchanged);
            }
            let retired: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM public_keys WHERE user_id = $1 AND fingerprint = $2",
            )
            .bind(user)
            .bind(&key.fingerprint[..])
            .fetch_optional(&mut *tx)
            .await?;
            if retired.is_some() {
                return Err(retired_key());
            }
            let seq = current.map_or(1, |(s, _)| s + 1);
            let inserted = sqlx::query(
                "INSERT INTO public_keys (user_id, seq, spki_der, fingerprint, posted_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(user)
            .bind(seq)
            .bind(&key.spki_der)
            .bind(&key.fingerprint[..])
            .bind(now)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(PostKeyOutcome::Changed);
                }
                Err(e) if is_unique_violation(&e) && attempt < 5 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn fetch_public_keys(&self, user: i64) -> Result<Vec<StoredKey>> {
        let rows: Vec<(Vec<u8>, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT spki_der, fingerprint, posted_at FROM public_keys WHERE user_id = $1 ORDER BY seq DESC",
        )
        .bind(user)
        .fetch_all(&self.pool)
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
        // Each branch is one atomic statement; no row returned means the compare lost.
        let stored: Option<i64> = match expected {
            None => {
                sqlx::query_scalar(
                    "INSERT INTO private_keys (user_id, blob, version, updated_at) VALUES ($1, $2, 1, $3) \
                     ON CONFLICT (user_id) DO UPDATE SET blob = EXCLUDED.blob, \
                     version = private_keys.version + 1, updated_at = EXCLUDED.updated_at RETURNING version",
                )
                .bind(user)
                .bind(blob)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?
            }
            Some(0) => {
                sqlx::query_scalar(
                    "INSERT INTO private_keys (user_id, blob, version, updated_at) VALUES ($1, $2, 1, $3) \
                     ON CONFLICT (user_id) DO NOTHING RETURNING version",
                )
                .bind(user)
                .bind(blob)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?
            }
            Some(v) => {
                sqlx::query_scalar(
                    "UPDATE private_keys SET blob = $2, version = version + 1, updated_at = $3 \
                     WHERE user_id = $1 AND version = $4 RETURNING version",
                )
                .bind(user)
                .bind(blob)
                .bind(now)
                .bind(i64::try_from(v).unwrap_or(i64::MAX))
                .fetch_optional(&self.pool)
                .await?
            }
        };
        match stored {
            Some(v) => Ok(v as u64),
            None => {
                let current: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM private_keys WHERE user_id = $1")
                        .bind(user)
                        .fetch_optional(&self.pool)
                        .await?;
                Err(version_mismatch(
                    expected.unwrap_or(0),
                    current.map(|v| v as u64),
                ))
            }
        }
    }

    async fn fetch_private_key(&self, user: i64) -> Result<Option<(Vec<u8>, u64)>> {
        let row: Option<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT blob, version FROM private_keys WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(b, v)| (b, v as u64)))
    }

    async fn create_pair(&self, owner: i64, ids: &PairIds, now: i64) -> Result<()> {
        sqlx::query(
            "WITH p AS (INSERT INTO channel_pairs (pair_id, message_id, state_id, owner, created_at) \
                        VALUES ($1, $2, $3, $4, $5) RETURNING pair_id), \
                  s AS (INSERT INTO streams (stream_id, pair_id) SELECT x, pair_id FROM p, UNNEST(ARRAY[$2, $3]::uuid[]) AS x) \
             INSERT INTO members (pair_id, user_id, joined_at) SELECT pair_id, $4, $5 FROM p",
        )
        .bind(ids.pair_id)
        .bind(ids.message_id)
        .bind(ids.state_id)
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?;
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
        let mut tx = self.pool.begin().await?;
        let (ids, _) = pair_of_member(&mut tx, from, pair)
            .await?
            .ok_or_else(pair_denied)?;
        let has_key: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM public_keys WHERE user_id = $1 LIMIT 1")
                .bind(to)
                .fetch_optional(&mut *tx)
                .await?;
        if has_key.is_none() {
            return Err(no_public_key(to));
        }
        // The inbox row serialises invites to one user: ids are dense and commit in order.
        let invite_id: i64 = sqlx::query_scalar(
            "INSERT INTO inboxes (user_id, last_invite_id) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET last_invite_id = inboxes.last_invite_id + 1 \
             RETURNING last_invite_id",
        )
        .bind(to)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "WITH i AS (INSERT INTO invites (to_user, invite_id, pair_id, from_user, body, sent_at) \
                        VALUES ($1, $2, $3, $4, $5, $6)) \
             INSERT INTO members (pair_id, user_id, joined_at) VALUES ($3, $1, $6) ON CONFLICT DO NOTHING",
        )
        .bind(to)
        .bind(invite_id)
        .bind(pair)
        .bind(from)
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.notify(&mut tx, &[Change::Invite { user: to }]).await?;
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
             WHERE i.to_user = $1 AND i.invite_id > $2 ORDER BY i.invite_id LIMIT $3",
        )
        .bind(user)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
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
            sqlx::query_scalar("SELECT last_invite_id FROM inboxes WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(id.unwrap_or(0))
    }

    async fn list_pairs(&self, user: i64) -> Result<Vec<PairInfo>> {
        let rows: Vec<(Uuid, Uuid, Uuid, i64, Vec<i64>)> = sqlx::query_as(
            "SELECT p.pair_id, p.message_id, p.state_id, p.owner, \
                    ARRAY(SELECT m2.user_id FROM members m2 WHERE m2.pair_id = p.pair_id ORDER BY m2.user_id) \
             FROM members m JOIN channel_pairs p ON p.pair_id = m.pair_id \
             WHERE m.user_id = $1 ORDER BY p.created_at, p.pair_id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(pair_id, message_id, state_id, owner, members)| PairInfo {
                ids: PairIds {
                    pair_id,
                    message_id,
                    state_id,
                },
                owner,
                members,
            })
            .collect())
    }

    async fn leave_pair(&self, user: i64, pair: Uuid) -> Result<PairIds> {
        let mut tx = self.pool.begin().await?;
        let (ids, owner) = self
            .lock_pair_of_member(&mut tx, user, pair)
            .await?
            .ok_or_else(pair_denied)?;
        self.drop_member(&mut tx, &ids, user, owner).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn remove_member(&self, owner: i64, pair: Uuid, user: i64) -> Result<PairIds> {
        let mut tx = self.pool.begin().await?;
        let (ids, current_owner) = self
            .lock_pair_of_member(&mut tx, owner, pair)
            .await?
            .ok_or_else(pair_denied)?;
        check_removal(owner, current_owner, user)?;
        let target: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM members WHERE pair_id = $1 AND user_id = $2")
                .bind(pair)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        if target.is_none() {
            return Err(not_a_member(user));
        }
        self.drop_member(&mut tx, &ids, user, current_owner).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn append_batch(
        &self,
        batch: &[AppendRequest],
        max_gap: i64,
        now: i64,
    ) -> Result<Vec<Result<Appended>>> {
        let mut streams: Vec<Uuid> = batch.iter().map(|p| p.stream_id).collect();
        streams.sort_unstable();
        streams.dedup();
        let mut pairs_senders: Vec<(Uuid, i64)> =
            batch.iter().map(|p| (p.stream_id, p.sender)).collect();
        pairs_senders.sort_unstable();
        pairs_senders.dedup();
        let (ps, pu): (Vec<Uuid>, Vec<i64>) = pairs_senders.into_iter().unzip();

        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT stream_id, head_event_id, head_counter, member_epoch FROM streams \
             WHERE stream_id = ANY($1) ORDER BY stream_id FOR UPDATE",
        )
        .bind(&streams)
        .fetch_all(&mut *tx)
        .await?;
        let mut heads = HashMap::with_capacity(rows.len());
        for r in &rows {
            heads.insert(
                r.try_get::<Uuid, _>(0)?,
                HeadRow {
                    head_event_id: r.try_get(1)?,
                    head_counter: r.try_get(2)?,
                    member_epoch: r.try_get(3)?,
                },
            );
        }
        let members: HashSet<(Uuid, i64)> = sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT r.stream_id, r.user_id FROM UNNEST($1::uuid[], $2::int8[]) AS r(stream_id, user_id) \
             JOIN streams s ON s.stream_id = r.stream_id \
             JOIN members m ON m.pair_id = s.pair_id AND m.user_id = r.user_id",
        )
        .bind(&ps)
        .bind(&pu)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let wanted = lookups_needed(batch, &heads);
        let mut existing = HashMap::new();
        if !wanted.is_empty() {
            let (ws, wc): (Vec<Uuid>, Vec<i64>) = wanted.into_iter().unzip();
            let found: Vec<(Uuid, i64, i64, i64, Vec<u8>)> = sqlx::query_as(
                "SELECT e.stream_id, e.counter, e.event_id, e.sender, e.body FROM events e \
                 JOIN UNNEST($1::uuid[], $2::int8[]) AS r(stream_id, counter) \
                 ON e.stream_id = r.stream_id AND e.counter = r.counter",
            )
            .bind(&ws)
            .bind(&wc)
            .fetch_all(&mut *tx)
            .await?;
            for (stream, counter, event_id, sender, body) in found {
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
        if plan.inserts.is_empty() {
            tx.rollback().await?;
            return Ok(plan.outcomes);
        }
        let n = plan.inserts.len();
        let mut e_stream = Vec::with_capacity(n);
        let mut e_id = Vec::with_capacity(n);
        let mut e_counter = Vec::with_capacity(n);
        let mut e_sender = Vec::with_capacity(n);
        let mut e_time = Vec::with_capacity(n);
        let mut e_body: Vec<&[u8]> = Vec::with_capacity(n);
        for e in &plan.inserts {
            e_stream.push(e.stream_id);
            e_id.push(e.event_id);
            e_counter.push(e.counter);
            e_sender.push(e.sender);
            e_time.push(e.posted_at);
            e_body.push(&e.body[..]);
        }
        let h_stream: Vec<Uuid> = plan.heads.iter().map(|h| h.0).collect();
        let h_event: Vec<i64> = plan.heads.iter().map(|h| h.1).collect();
        let h_counter: Vec<i64> = plan.heads.iter().map(|h| h.2).collect();
        let changes: Vec<Change> = plan
            .heads
            .iter()
            .map(|&(stream, head, _)| Change::Event { stream, head })
            .collect();
        let payloads = pgnotify::encode(self.replica, &changes);
        sqlx::query(
            "WITH ins AS (INSERT INTO events (stream_id, event_id, counter, sender, posted_at, body) \
                          SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::bytea[])), \
                  upd AS (UPDATE streams s SET head_event_id = u.e, head_counter = u.c \
                          FROM UNNEST($7::uuid[], $8::int8[], $9::int8[]) AS u(id, e, c) WHERE s.stream_id = u.id) \
             SELECT count(pg_notify($10, p)) FROM UNNEST($11::text[]) AS p",
        )
        .bind(&e_stream)
        .bind(&e_id)
        .bind(&e_counter)
        .bind(&e_sender)
        .bind(&e_time)
        .bind(&e_body)
        .bind(&h_stream)
        .bind(&h_event)
        .bind(&h_counter)
        .bind(pgnotify::CHANNEL)
        .bind(&payloads)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(plan.outcomes)
    }

    async fn stream_access(&self, user: i64, stream: Uuid) -> Result<StreamAccess> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT s.head_event_id, s.member_epoch FROM streams s \
             JOIN members m ON m.pair_id = s.pair_id AND m.user_id = $1 WHERE s.stream_id = $2",
        )
        .bind(user)
        .bind(stream)
        .fetch_optional(&self.pool)
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
        // One statement, one snapshot: the access check, the head and the page agree.
        // No row at all = no access; one row with NULL event columns = an empty page.
        let (sql, bound) = match page {
            Page::After(after) => (
                "SELECT s.head_event_id, s.member_epoch, e.event_id, e.counter, e.sender, e.posted_at, e.body \
                 FROM streams s JOIN members m ON m.pair_id = s.pair_id AND m.user_id = $1 \
                 LEFT JOIN LATERAL (SELECT * FROM events WHERE stream_id = s.stream_id AND event_id > $3 \
                                    ORDER BY event_id LIMIT $4) e ON true \
                 WHERE s.stream_id = $2 ORDER BY e.event_id",
                after,
            ),
            Page::Before(before) => (
                "SELECT s.head_event_id, s.member_epoch, e.event_id, e.counter, e.sender, e.posted_at, e.body \
                 FROM streams s JOIN members m ON m.pair_id = s.pair_id AND m.user_id = $1 \
                 LEFT JOIN LATERAL (SELECT * FROM events WHERE stream_id = s.stream_id AND event_id < $3 \
                                    ORDER BY event_id DESC LIMIT $4) e ON true \
                 WHERE s.stream_id = $2 ORDER BY e.event_id",
                before,
            ),
        };
        let rows = sqlx::query(sql)
            .bind(user)
            .bind(stream)
            .bind(bound)
            .bind(limit as i64 + 1)
            .fetch_all(&self.pool)
            .await?;
        let first = rows.first().ok_or_else(stream_denied)?;
        let head_event_id: i64 = first.try_get(0)?;
        let member_epoch: i64 = first.try_get(1)?;
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            if r.try_get::<Option<i64>, _>(2)?.is_some() {
                events.push(stored_event(stream, r, 2)?);
            }
        }
        let has_more = events.len() > limit;
        if has_more {
            match page {
                Page::After(_) => events.truncate(limit),
                Page::Before(_) => {
                    events.remove(0);
                }
            }
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
        let rows = sqlx::query(
            "SELECT s.member_epoch, e.event_id, e.counter, e.sender, e.posted_at, e.body FROM streams s \
             LEFT JOIN LATERAL (SELECT * FROM events WHERE stream_id = s.stream_id AND event_id > $2 \
                                AND event_id <= $3 ORDER BY event_id LIMIT $4) e ON true \
             WHERE s.stream_id = $1 ORDER BY e.event_id",
        )
        .bind(stream)
        .bind(after)
        .bind(up_to)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut run = EventRun::default();
        for r in &rows {
            run.member_epoch = r.try_get(0)?;
            if r.try_get::<Option<i64>, _>(1)?.is_some() {
                run.events.push(stored_event(stream, r, 1)?);
            }
        }
        Ok(run)
    }

    async fn stream_heads(&self, streams: &[Uuid]) -> Result<Vec<(Uuid, i64)>> {
        Ok(
            sqlx::query_as(
                "SELECT stream_id, head_event_id FROM streams WHERE stream_id = ANY($1)",
            )
            .bind(streams)
            .fetch_all(&self.pool)
            .await?,
        )
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
