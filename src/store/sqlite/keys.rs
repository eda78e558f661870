//! Public keys and private-key backups on SQLite.

use futures_util::StreamExt;

use super::*;
use crate::store::page;

#[async_trait]
impl KeyStore for SqliteStore {
    async fn post_public_key(
        &self,
        user: UserId,
        key: &CanonicalKey,
        now: i64,
    ) -> Result<PostKeyOutcome> {
        let user = user.get();
        let mut tx = self.writer.begin().await?;
        let current: Option<(i64, Vec<u8>)> = sqlx::query_as(sql::CURRENT_PUBLIC_KEY)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((_, fp)) = &current
            && fp[..] == key.fingerprint[..]
        {
            return Ok(PostKeyOutcome::Unchanged);
        }
        let retired: Option<i64> = sqlx::query_scalar(sql::KNOWN_PUBLIC_KEY)
            .bind(user)
            .bind(&key.fingerprint[..])
            .fetch_optional(&mut *tx)
            .await?;
        if retired.is_some() {
            return Err(retired_key());
        }
        let seq = current.map_or(1, |(s, _)| s + 1);
        sqlx::query(sql::INSERT_PUBLIC_KEY)
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

    async fn fetch_public_keys(
        &self,
        user: UserId,
        limit: usize,
        budget: Budget<StoredKey>,
    ) -> Result<Paged<StoredKey>> {
        let user = user.get();
        let rows = sqlx::query_as::<_, KeyRow>(sql::FETCH_PUBLIC_KEYS)
            .bind(user)
            .bind(limit as i64 + 1)
            .fetch(&self.readers)
            .map(|row| -> Result<StoredKey> { Ok(StoredKey::from(row?)) });
        page::collect(rows, limit, budget).await
    }

    async fn post_private_key(
        &self,
        user: UserId,
        blob: &[u8],
        expected: Option<u64>,
        now: i64,
    ) -> Result<u64> {
        let user = user.get();
        let mut tx = self.writer.begin().await?;
        let current: Option<i64> = sqlx::query_scalar(sql::PRIVATE_KEY_VERSION)
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

    async fn fetch_private_key(&self, user: UserId) -> Result<Option<(Vec<u8>, u64)>> {
        let user = user.get();
        let row: Option<(Vec<u8>, i64)> = sqlx::query_as(sql::FETCH_PRIVATE_KEY)
            .bind(user)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(|(b, v)| (b, v as u64)))
    }
}
