//! Public keys and private-key backups on Postgres.

use futures_util::StreamExt;

use super::*;
use crate::store::page;

#[async_trait]
impl KeyStore for PgStore {
    async fn post_public_key(
        &self,
        user: UserId,
        key: &CanonicalKey,
        now: i64,
    ) -> Result<PostKeyOutcome> {
        let user = user.get();
        // Two concurrent posts for one user may pick the same seq; the loser retries and
        // then sees the winner's row.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.conn().await?;
            let mut tx = conn.begin().await?;
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
            let inserted = sqlx::query(sql::INSERT_PUBLIC_KEY)
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

    async fn fetch_public_keys(
        &self,
        user: UserId,
        limit: usize,
        budget: Budget<StoredKey>,
    ) -> Result<Paged<StoredKey>> {
        let user = user.get();
        let mut conn = self.conn().await?;
        let rows = sqlx::query_as::<_, KeyRow>(sql::FETCH_PUBLIC_KEYS)
            .bind(user)
            .bind(limit as i64 + 1)
            .fetch(&mut *conn)
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
                .fetch_optional(&mut *self.conn().await?)
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
                .fetch_optional(&mut *self.conn().await?)
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
                .fetch_optional(&mut *self.conn().await?)
                .await?
            }
        };
        match stored {
            Some(v) => Ok(v as u64),
            None => {
                let current: Option<i64> = sqlx::query_scalar(sql::PRIVATE_KEY_VERSION)
                    .bind(user)
                    .fetch_optional(&mut *self.conn().await?)
                    .await?;
                Err(version_mismatch(
                    expected.unwrap_or(0),
                    current.map(|v| v as u64),
                ))
            }
        }
    }

    async fn fetch_private_key(&self, user: UserId) -> Result<Option<(Vec<u8>, u64)>> {
        let user = user.get();
        let row: Option<(Vec<u8>, i64)> = sqlx::query_as(sql::FETCH_PRIVATE_KEY)
            .bind(user)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        Ok(row.map(|(b, v)| (b, v as u64)))
    }
}
