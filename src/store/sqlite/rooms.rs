//! Channel pairs, membership and invites on SQLite.

use futures_util::StreamExt;

use super::*;
use crate::error::Error;
use crate::store::page;

/// Parses the comma-separated member ids that `group_concat` built.
fn parse_members(list: &str) -> Result<Vec<i64>> {
    list.split(',')
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.parse().map_err(|e| {
                Error::internal(
                    &format!("member id {m:?} in the database is not a number"),
                    &e,
                )
            })
        })
        .collect()
}

#[async_trait]
impl RoomStore for SqliteStore {
    async fn create_pair(&self, owner: UserId, ids: &PairIds, now: i64) -> Result<()> {
        let owner = owner.get();
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
        from: UserId,
        pair: PairId,
        to: UserId,
        body: &[u8],
        now: i64,
        caps: InviteCaps,
    ) -> Result<InviteRecord> {
        let from = from.get();
        let pair = pair.get();
        let to = to.get();
        // IMMEDIATE: take the write lock before reading, so a lock held by another
        // connection is waited for (busy_timeout) instead of failing the upgrade at once.
        // The single writer connection serialises this with every removal, so the
        // membership read here cannot be overtaken by one (Postgres locks the row).
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let ids = super::federation::new_member_checks(&mut tx, from, pair, to, caps).await?;
        let has_key: Option<i64> = sqlx::query_scalar(sql::HAS_PUBLIC_KEY)
            .bind(to)
            .fetch_optional(&mut *tx)
            .await?;
        if has_key.is_none() {
            return Err(no_public_key(to));
        }
        if caps.pending_per_sender > 0 && from != to {
            let pending: i64 = sqlx::query_scalar(sql::PENDING_INVITES)
                .bind(to)
                .bind(from)
                .bind(caps.pending_scan_limit())
                .fetch_one(&mut *tx)
                .await?;
            caps.check_pending(from, to, pending)?;
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
            pair: ids,
            from_user: from,
            from_origin: None,
            pair_homeserver: String::new(),
            body: body.to_vec(),
            sent_at: now,
        })
    }

    async fn fetch_invites(
        &self,
        user: UserId,
        after: i64,
        limit: usize,
        budget: Budget<InviteRecord>,
    ) -> Result<Paged<InviteRecord>> {
        let user = user.get();
        let rows = sqlx::query_as::<_, InviteRow>(sql::FETCH_INVITES)
            .bind(user)
            .bind(after)
            .bind(limit as i64 + 1)
            .fetch(&self.readers)
            .map(move |row| -> Result<InviteRecord> { Ok(InviteRecord::from_row(row?)) });
        page::collect(rows, limit, budget).await
    }

    async fn last_invite_id(&self, user: UserId) -> Result<i64> {
        let user = user.get();
        let id: Option<i64> = sqlx::query_scalar(sql::LAST_INVITE_ID)
            .bind(user)
            .fetch_optional(&self.readers)
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn list_pairs(
        &self,
        user: UserId,
        after: Option<PairId>,
        limit: usize,
        budget: Budget<PairInfo>,
    ) -> Result<Paged<PairInfo>> {
        let user = user.get();
        let after = after.map(PairId::get);
        // One read transaction, so the cursor and the page see one snapshot.
        let mut tx = self.readers.begin().await?;
        // Keyset paging on (created_at, pair_id); before the first pair for no cursor.
        let (after_created, after_pair) = match after {
            None => (i64::MIN, Uuid::nil()),
            Some(pair) => {
                let created: Option<i64> = sqlx::query_scalar(sql::PAIR_CREATED_FOR_MEMBER)
                    .bind(user)
                    .bind(pair)
                    .fetch_optional(&mut *tx)
                    .await?;
                (created.ok_or_else(cursor_denied)?, pair)
            }
        };
        // Members as one ascending list per pair, so that one row is one pair; listed for
        // the page's pairs only.
        let rows = sqlx::query(
            "SELECT q.pair_id, q.message_id, q.state_id, q.owner, \
                    (SELECT group_concat(m2.user_id, ',' ORDER BY m2.user_id) FROM members m2 \
                     WHERE m2.pair_id = q.pair_id), \
                    (SELECT group_concat(CAST(f.id AS TEXT) || ' ' || CAST(f.user_id AS TEXT) || ' ' \
                                         || f.homeserver, char(10)) \
                     FROM members m2 JOIN foreign_users f ON f.id = m2.user_id \
                     WHERE m2.pair_id = q.pair_id AND m2.user_id < 0) \
             FROM (SELECT p.pair_id, p.message_id, p.state_id, p.owner, p.created_at \
                   FROM members m JOIN channel_pairs p ON p.pair_id = m.pair_id \
                   WHERE m.user_id = ? AND (p.created_at, p.pair_id) > (?, ?) \
                   ORDER BY p.created_at, p.pair_id LIMIT ?) q \
             ORDER BY q.created_at, q.pair_id",
        )
        .bind(user)
        .bind(after_created)
        .bind(after_pair)
        .bind(limit as i64 + 1)
        .fetch(&mut *tx)
        .map(|r| -> Result<PairInfo> {
            let r = r?;
            let members: Option<String> = r.try_get(4)?;
            Ok(PairInfo {
                ids: PairIds {
                    pair_id: r.try_get(0)?,
                    message_id: r.try_get(1)?,
                    state_id: r.try_get(2)?,
                },
                owner: r.try_get(3)?,
                members: parse_members(members.as_deref().unwrap_or(""))?,
                foreign: parse_foreign_members(
                    r.try_get::<Option<String>, _>(5)?.as_deref().unwrap_or(""),
                )?,
            })
        });
        let paged = page::collect(rows, limit, budget).await?;
        tx.commit().await?;
        Ok(paged)
    }

    async fn leave_pair(&self, user: UserId, pair: PairId) -> Result<PairIds> {
        let user = user.get();
        let pair = pair.get();
        let mut tx = self.writer.begin().await?;
        let (ids, owner) = pair_of_member(&mut tx, user, pair)
            .await?
            .ok_or_else(pair_denied)?;
        drop_member(&mut tx, &ids, user, owner).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn remove_member(&self, owner: UserId, pair: PairId, user: UserId) -> Result<PairIds> {
        let owner = owner.get();
        let pair = pair.get();
        let user = user.get();
        let mut tx = self.writer.begin().await?;
        let (ids, current_owner) = pair_of_member(&mut tx, owner, pair)
            .await?
            .ok_or_else(pair_denied)?;
        check_removal(owner, current_owner, user)?;
        let target: Option<i64> = sqlx::query_scalar(sql::IS_MEMBER)
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
}
