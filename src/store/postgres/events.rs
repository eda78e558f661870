//! Ordered appends and reads of stream events on Postgres.

use futures_util::{StreamExt, TryStreamExt, stream};

use super::*;
use crate::error::Error;
use crate::store::page;

#[async_trait]
impl EventStore for PgStore {
    async fn append_batch(
        &self,
        batch: &[AppendRequest],
        max_gap: i64,
        now: i64,
    ) -> Result<Vec<Result<Appended>>> {
        let mut streams: Vec<Uuid> = batch.iter().map(|p| p.stream_id).collect();
        streams.sort_unstable();
        streams.dedup();
        let mut senders: Vec<(Uuid, i64)> = batch.iter().map(|p| (p.stream_id, p.sender)).collect();
        senders.sort_unstable();
        senders.dedup();

        let mut conn = self.conn().await?;

        let mut tx = conn.begin().await?;
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
        // Senders verified at the epoch their stream's head row shows now are members
        // still (members.rs); the others are read, after the lock, and remembered.
        let epoch_of = |s: &Uuid| heads.get(s).map(|h: &HeadRow| h.member_epoch);
        let (known, ask) = self.members.split(senders, epoch_of);
        let mut members: HashSet<(Uuid, i64)> = known.into_iter().collect();
        if !ask.is_empty() {
            let (ps, pu): (Vec<Uuid>, Vec<i64>) = ask.into_iter().unzip();
            let verified = sqlx::query_as::<_, (Uuid, i64)>(
                "SELECT r.stream_id, r.user_id FROM UNNEST($1::uuid[], $2::int8[]) AS r(stream_id, user_id) \
                 JOIN streams s ON s.stream_id = r.stream_id \
                 JOIN members m ON m.pair_id = s.pair_id AND m.user_id = r.user_id",
            )
            .bind(&ps)
            .bind(&pu)
            .fetch_all(&mut *tx)
            .await?;
            self.members.remember(
                verified
                    .iter()
                    .filter_map(|&key| Some((key, epoch_of(&key.0)?))),
            );
            members.extend(verified);
        }
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
        let payloads = notify::encode(self.replica, &changes);
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
        .bind(notify::CHANNEL)
        .bind(&payloads)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(plan.outcomes)
    }

    async fn stream_access(&self, user: UserId, stream: StreamId) -> Result<StreamAccess> {
        let user = user.get();
        let stream = stream.get();
        let row: Option<(i64, i64)> = sqlx::query_as(sql::STREAM_ACCESS)
            .bind(user)
            .bind(stream)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        let (head_event_id, member_epoch) = row.ok_or_else(stream_denied)?;
        Ok(StreamAccess {
            head_event_id,
            member_epoch,
        })
    }

    async fn fetch_events(
        &self,
        user: UserId,
        stream: StreamId,
        page: Page,
        limit: usize,
        budget: Budget<StoredEvent>,
    ) -> Result<EventPage> {
        let user = user.get();
        let stream = stream.get();
        // One statement, one snapshot: the access check, the head and the page agree.
        // No row at all = no access; one row with NULL event columns = an empty page.
        // Rows come nearest the cursor first (descending for a backward page).
        let (sql, bound) = match page {
            Page::After(after) => (
                concat!(
                    "SELECT s.head_event_id, s.member_epoch, s.first_event_id, e.event_id, e.counter, e.sender, e.posted_at, e.body, ",
                    sql::sender_origin!(),
                    " \
                 FROM streams s JOIN members m ON m.pair_id = s.pair_id AND m.user_id = $1 \
                 LEFT JOIN LATERAL (SELECT * FROM events WHERE stream_id = s.stream_id AND event_id > $3 \
                                    ORDER BY event_id LIMIT $4) e ON true \
                 WHERE s.stream_id = $2 ORDER BY e.event_id"
                ),
                after,
            ),
            Page::Before(before) => (
                concat!(
                    "SELECT s.head_event_id, s.member_epoch, s.first_event_id, e.event_id, e.counter, e.sender, e.posted_at, e.body, ",
                    sql::sender_origin!(),
                    " \
                 FROM streams s JOIN members m ON m.pair_id = s.pair_id AND m.user_id = $1 \
                 LEFT JOIN LATERAL (SELECT * FROM events WHERE stream_id = s.stream_id AND event_id < $3 \
                                    ORDER BY event_id DESC LIMIT $4) e ON true \
                 WHERE s.stream_id = $2 ORDER BY e.event_id DESC"
                ),
                before,
            ),
        };
        let mut conn = self.conn().await?;
        let mut rows = sqlx::query(sql)
            .bind(user)
            .bind(stream)
            .bind(bound)
            .bind(limit as i64 + 1)
            .fetch(&mut *conn);
        let first = rows.try_next().await?.ok_or_else(stream_denied)?;
        let head_event_id: i64 = first.try_get(0)?;
        let member_epoch: i64 = first.try_get(1)?;
        let first_event_id: i64 = first.try_get(2)?;
        let events = stream::once(async { Ok(first) })
            .chain(rows)
            .map_err(Error::from)
            .try_filter_map(|r| async move {
                match r.try_get::<Option<i64>, _>(3)? {
                    Some(_) => Ok(Some(stored_event(stream, &r, 3)?)),
                    None => Ok(None),
                }
            });
        let mut paged = page::collect(events, limit, budget).await?;
        if matches!(page, Page::Before(_)) {
            paged.items.reverse();
        }
        Ok(EventPage {
            events: paged.items,
            has_more: paged.has_more,
            head_event_id,
            member_epoch,
            first_event_id,
        })
    }

    async fn read_events(
        &self,
        stream: StreamId,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<EventRun> {
        let stream = stream.get();
        let rows = sqlx::query(
            concat!("SELECT s.member_epoch, e.event_id, e.counter, e.sender, e.posted_at, e.body, ",
            sql::sender_origin!(), " FROM streams s \
             LEFT JOIN LATERAL (SELECT * FROM events WHERE stream_id = s.stream_id AND event_id > $2 \
                                AND event_id <= $3 ORDER BY event_id LIMIT $4) e ON true \
             WHERE s.stream_id = $1 ORDER BY e.event_id"),
        )
        .bind(stream)
        .bind(after)
        .bind(up_to)
        .bind(limit as i64)
        .fetch_all(&mut *self.conn().await?)
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

    async fn stream_heads(&self, streams: &[Uuid]) -> Result<Vec<(Uuid, i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT stream_id, head_event_id, member_epoch FROM streams \
                 WHERE stream_id = ANY($1)",
        )
        .bind(streams)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }
}
