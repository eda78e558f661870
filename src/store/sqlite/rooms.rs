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
        let ids = super::federation::new_member_checks(&mut tx, from, pair, Some(to), caps).await?;
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
        include_departed: bool,
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
                let cursor = if include_departed {
                    sql::PAIR_CREATED_FOR_MEMBER_OR_DEPARTED
                } else {
                    sql::PAIR_CREATED_FOR_MEMBER
                };
                let created: Option<i64> = sqlx::query_scalar(cursor)
                    .bind(user)
                    .bind(pair)
                    .fetch_optional(&mut *tx)
                    .await?;
                (created.ok_or_else(cursor_denied)?, pair)
            }
        };
        // `q`: a page of the user's pairs (gone = 0) and, when asked, of the pairs they
        // departed and are not a member of again. Members as one ascending list per pair,
        // so that one row is one pair, listed for the page's pairs only; a departed pair
        // lists no owner and no members, only the foreign remover's name.
        let rows = sqlx::query(
            "SELECT q.pair_id, q.message_id, q.state_id, CASE WHEN q.gone THEN 0 ELSE q.owner END, \
                    (SELECT group_concat(m2.user_id, ',' ORDER BY m2.user_id) FROM members m2 \
                     WHERE m2.pair_id = q.pair_id AND NOT q.gone), \
                    (SELECT group_concat(CAST(f.id AS TEXT) || ' ' || CAST(f.user_id AS TEXT) || ' ' \
                                         || f.homeserver, char(10)) \
                     FROM foreign_users f WHERE f.id IN \
                         (SELECT m2.user_id FROM members m2 \
                          WHERE m2.pair_id = q.pair_id AND m2.user_id < 0 AND NOT q.gone \
                          UNION ALL SELECT q.removed_by WHERE q.removed_by < 0)), \
                    q.gone, q.removed_by, q.departed_at \
             FROM (SELECT p.pair_id, p.message_id, p.state_id, p.owner, p.created_at, \
                          x.gone, x.removed_by, x.departed_at \
                   FROM (SELECT pair_id, 0 AS gone, NULL AS removed_by, 0 AS departed_at \
                         FROM members WHERE user_id = $1 \
                         UNION ALL \
                         SELECT d.pair_id, 1, d.removed_by, d.departed_at FROM departures d \
                         WHERE $5 AND d.user_id = $1 AND NOT EXISTS \
                             (SELECT 1 FROM members m WHERE m.pair_id = d.pair_id AND m.user_id = $1)) x \
                   JOIN channel_pairs p ON p.pair_id = x.pair_id \
                   WHERE (p.created_at, p.pair_id) > ($2, $3) \
                   ORDER BY p.created_at, p.pair_id LIMIT $4) q \
             ORDER BY q.created_at, q.pair_id",
        )
        .bind(user)
        .bind(after_created)
        .bind(after_pair)
        .bind(limit as i64 + 1)
        .bind(include_departed)
        .fetch(&mut *tx)
        .map(|r| -> Result<PairInfo> {
            let r = r?;
            let members: Option<String> = r.try_get(4)?;
            let gone: bool = r.try_get(6)?;
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
                departed: gone
                    .then(|| -> Result<Departure> {
                        Ok(Departure {
                            removed_by: r.try_get(7)?,
                            at: r.try_get(8)?,
                        })
                    })
                    .transpose()?,
            })
        });
        let paged = page::collect(rows, limit, budget).await?;
        tx.commit().await?;
        Ok(paged)
    }

    async fn leave_pair(&self, user: UserId, pair: PairId, now: i64) -> Result<PairIds> {
        let user = user.get();
        let pair = pair.get();
        let mut tx = self.writer.begin().await?;
        let (ids, owner) = pair_of_member(&mut tx, user, pair)
            .await?
            .ok_or_else(pair_denied)?;
        drop_member(&mut tx, &ids, user, owner, None, now).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn remove_member(
        &self,
        owner: UserId,
        pair: PairId,
        user: UserId,
        now: i64,
    ) -> Result<PairIds> {
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
        drop_member(&mut tx, &ids, user, current_owner, Some(owner), now).await?;
        tx.commit().await?;
        Ok(ids)
    }
}
