//! Ordered appends and reads of stream events on SQLite.

use futures_util::StreamExt;

use super::*;
use crate::store::page;

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_batch(
        &self,
        batch: &[AppendRequest],
        max_gap: i64,
        now: i64,
    ) -> Result<Vec<Result<Appended>>> {
        // IMMEDIATE: the batch reads before it writes; a deferred transaction would fail
        // at once (SQLITE_BUSY without the busy handler) if another connection held the
        // write lock at the upgrade, instead of waiting busy_timeout for it.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
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

    async fn stream_access(&self, user: UserId, stream: StreamId) -> Result<StreamAccess> {
        let user = user.get();
        let stream = stream.get();
        let row: Option<(i64, i64)> = sqlx::query_as(sql::STREAM_ACCESS)
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
        user: UserId,
        stream: StreamId,
        page: Page,
        limit: usize,
        budget: Budget<StoredEvent>,
    ) -> Result<EventPage> {
        let user = user.get();
        let stream = stream.get();
        // One read transaction: the access check, the head and the page see one snapshot.
        let mut tx = self.readers.begin().await?;
        let head: Option<(i64, i64)> = sqlx::query_as(sql::STREAM_ACCESS)
            .bind(user)
            .bind(stream)
            .fetch_optional(&mut *tx)
            .await?;
        let (head_event_id, member_epoch) = head.ok_or_else(stream_denied)?;
        let first_event_id: i64 =
            sqlx::query_scalar("SELECT first_event_id FROM streams WHERE stream_id = ?")
                .bind(stream)
                .fetch_one(&mut *tx)
                .await?;
        // Rows come nearest the cursor first (descending for a backward page).
        let (sql, bound) = match page {
            Page::After(after) => (
                concat!(
                    "SELECT e.event_id, e.counter, e.sender, e.posted_at, e.body, ",
                    sql::sender_origin!(),
                    " FROM events e WHERE e.stream_id = ? AND e.event_id > ? \
                     ORDER BY e.event_id LIMIT ?"
                ),
                after,
            ),
            Page::Before(before) => (
                concat!(
                    "SELECT e.event_id, e.counter, e.sender, e.posted_at, e.body, ",
                    sql::sender_origin!(),
                    " FROM events e WHERE e.stream_id = ? AND e.event_id < ? \
                     ORDER BY e.event_id DESC LIMIT ?"
                ),
                before,
            ),
        };
        let rows = sqlx::query(sql)
            .bind(stream)
            .bind(bound)
            .bind(limit as i64 + 1)
            .fetch(&mut *tx)
            .map(|r| -> Result<StoredEvent> { Ok(stored_event(stream, &r?)?) });
        let mut paged = page::collect(rows, limit, budget).await?;
        tx.commit().await?;
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
        let mut tx = self.readers.begin().await?;
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT member_epoch FROM streams WHERE stream_id = ?")
                .bind(stream)
                .fetch_optional(&mut *tx)
                .await?;
        let rows = sqlx::query(concat!(
            "SELECT e.event_id, e.counter, e.sender, e.posted_at, e.body, ",
            sql::sender_origin!(),
            " FROM events e WHERE e.stream_id = ? AND e.event_id > ? AND e.event_id <= ? \
             ORDER BY e.event_id LIMIT ?"
        ))
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

    async fn stream_heads(&self, streams: &[Uuid]) -> Result<Vec<(Uuid, i64, i64)>> {
        let mut out = Vec::with_capacity(streams.len());
        let mut conn = self.readers.acquire().await?;
        for &s in streams {
            let row: Option<(i64, i64)> = sqlx::query_as(
                "SELECT head_event_id, member_epoch FROM streams WHERE stream_id = ?",
            )
            .bind(s)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((head, epoch)) = row {
                out.push((s, head, epoch));
            }
        }
        Ok(out)
    }
}
