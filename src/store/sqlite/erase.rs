//! Erasing a user on SQLite (the SQL in `store::erase`): one write transaction on the
//! single writer, so no append interleaves with it.

use super::*;
use crate::store::erase::{self, EraseStore, Erasure};

#[async_trait]
impl EraseStore for SqliteStore {
    async fn erase_user(&self, user: UserId, erase_messages: bool, now: i64) -> Result<Erasure> {
        let user = user.get();
        let mut tx = self.writer.begin().await?;
        let (mut out, pairs) = erase::erase_data!(&mut *tx, user, erase_messages, now).await?;
        for pair in pairs {
            if let Some((ids, owner)) = pair_of_member(&mut tx, user, pair).await? {
                drop_member(&mut tx, &ids, user, owner, None, now).await?;
                out.left.push(ids);
            }
        }
        for (stream, epoch) in &mut out.rewritten {
            *epoch = sqlx::query_scalar(erase::STREAM_EPOCH)
                .bind(*stream)
                .fetch_one(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn erased_at(&self, user: UserId) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(erase::ERASED_AT)
            .bind(user.get())
            .fetch_optional(&self.readers)
            .await?)
    }
}
