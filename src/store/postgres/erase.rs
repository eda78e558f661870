//! Erasing a user on Postgres (the SQL in `store::erase`).
//!
//! The streams of the user's pairs are locked first, in stream-id order like an append
//! batch, so that an append racing the erasure either commits before it (and its event is
//! erased with the rest) or waits and then finds the user no longer a member.

use super::*;
use crate::store::erase::{self, EraseStore, Erasure};

#[async_trait]
impl EraseStore for PgStore {
    async fn erase_user(&self, user: UserId, erase_messages: bool, now: i64) -> Result<Erasure> {
        let user = user.get();
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "SELECT stream_id FROM streams WHERE pair_id IN \
             (SELECT pair_id FROM members WHERE user_id = $1) ORDER BY stream_id FOR UPDATE",
        )
        .bind(user)
        .execute(&mut *tx)
        .await?;
        let (mut out, pairs) = erase::erase_data!(&mut *tx, user, erase_messages, now).await?;
        for pair in pairs {
            if let Some((ids, owner)) = pair_of_member(&mut tx, user, pair).await? {
                self.drop_member(&mut tx, &ids, user, owner, None, now)
                    .await?;
                out.left.push(ids);
            }
        }
        for (stream, epoch) in &mut out.rewritten {
            *epoch = sqlx::query_scalar(erase::STREAM_EPOCH)
                .bind(*stream)
                .fetch_one(&mut *tx)
                .await?;
        }
        let rewritten: Vec<Change> = out
            .rewritten
            .iter()
            .map(|&(stream, epoch)| Change::Erased { stream, epoch })
            .collect();
        self.notify(&mut tx, &rewritten).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn erased_at(&self, user: UserId) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(erase::ERASED_AT)
            .bind(user.get())
            .fetch_optional(&mut *self.conn().await?)
            .await?)
    }
}
