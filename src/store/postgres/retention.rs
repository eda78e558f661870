//! Retention on Postgres (see [`crate::store::retention`]).

use super::*;
use crate::store::retention::{self, Retention, RetentionStore, SweepTarget, not_owner};

/// Streams whose policy asks for a higher horizon: `$1` default max age (s), `$2` default
/// max events, `$3` now (µs), `$4` limit. The age cut-off is the first event (by id) not
/// older than the limit, so an event is deleted only when it and every event before it
/// have expired; the head is never a target's past.
const SWEEP_TARGETS: &str = "SELECT s.stream_id, s.first_event_id, t.target FROM streams s \
     LEFT JOIN pair_retention r ON r.pair_id = s.pair_id \
     CROSS JOIN LATERAL (SELECT COALESCE(r.max_age_secs, $1) AS age, \
                                COALESCE(r.max_events, $2) AS cnt) pol \
     CROSS JOIN LATERAL (SELECT LEAST(s.head_event_id, GREATEST( \
         CASE WHEN pol.cnt > 0 THEN s.head_event_id - pol.cnt + 1 ELSE 0 END, \
         CASE WHEN pol.age > 0 THEN COALESCE((SELECT e.event_id FROM events e \
              WHERE e.stream_id = s.stream_id AND e.event_id >= s.first_event_id \
              AND e.posted_at >= $3 - LEAST(pol.age, 9000000000000) * 1000000 \
              ORDER BY e.event_id LIMIT 1), s.head_event_id) ELSE 0 END)) AS target) t \
     WHERE (r.pair_id IS NOT NULL OR $1 > 0 OR $2 > 0) AND s.head_event_id > 0 \
       AND t.target > GREATEST(s.first_event_id, 1) \
     LIMIT $4";

#[async_trait]
impl RetentionStore for PgStore {
    async fn set_retention(
        &self,
        owner: UserId,
        pair: PairId,
        policy: Retention,
        now: i64,
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let (_, current_owner) = pair_of_member(&mut tx, owner.get(), pair.get())
            .await?
            .ok_or_else(pair_denied)?;
        if current_owner != owner.get() {
            return Err(not_owner());
        }
        sqlx::query(retention::UPSERT)
            .bind(pair.get())
            .bind(policy.max_age_secs)
            .bind(policy.max_events)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn sweep_targets(
        &self,
        default: Retention,
        now: i64,
        limit: usize,
    ) -> Result<Vec<SweepTarget>> {
        let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(SWEEP_TARGETS)
            .bind(default.max_age_secs)
            .bind(default.max_events)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        Ok(retention::targets(rows))
    }

    async fn advance_horizon(&self, stream: Uuid, from: i64, to: i64) -> Result<u64> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "UPDATE streams SET first_event_id = $2 \
             WHERE stream_id = $1 AND first_event_id < $2 AND head_event_id >= $2",
        )
        .bind(stream)
        .bind(to)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query(
            "DELETE FROM events WHERE stream_id = $1 AND event_id >= $2 AND event_id < \
             LEAST($3, (SELECT first_event_id FROM streams WHERE stream_id = $1))",
        )
        .bind(stream)
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }
}
