//! Channel pairs, membership and invites on Postgres.

use futures_util::StreamExt;

use super::*;
use crate::store::page;

#[async_trait]
impl RoomStore for PgStore {
    async fn create_pair(&self, owner: UserId, ids: &PairIds, now: i64) -> Result<()> {
        let owner = owner.get();
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
        .execute(&mut *self.conn().await?)
        .await?;
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
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let ids = Self::new_member_checks(&mut tx, from, pair, Some(to), caps).await?;
        let has_key: Option<i32> = sqlx::query_scalar(sql::HAS_PUBLIC_KEY)
            .bind(to)
            .fetch_optional(&mut *tx)
            .await?;
        if has_key.is_none() {
            return Err(no_public_key(to));
        }
        // The inbox row serialises invites to one user: ids are dense and commit in order,
        // and the pending count below is exact.
        let invite_id: i64 = sqlx::query_scalar(
            "INSERT INTO inboxes (user_id, last_invite_id) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET last_invite_id = inboxes.last_invite_id + 1 \
             RETURNING last_invite_id",
        )
        .bind(to)
        .fetch_one(&mut *tx)
        .await?;
        if caps.pending_per_sender > 0 && from != to {
            let pending: i64 = sqlx::query_scalar(sql::PENDING_INVITES)
                .bind(to)
                .bind(from)
                .bind(caps.pending_scan_limit())
                .fetch_one(&mut *tx)
                .await?;
            // A refusal drops the transaction: the inbox counter goes back too.
            caps.check_pending(from, to, pending)?;
        }
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
        let mut conn = self.conn().await?;
        let rows = sqlx::query_as::<_, InviteRow>(sql::FETCH_INVITES)
            .bind(user)
            .bind(after)
            .bind(limit as i64 + 1)
            .fetch(&mut *conn)
            .map(move |row| -> Result<InviteRecord> { Ok(InviteRecord::from_row(row?)) });
        page::collect(rows, limit, budget).await
    }

    async fn last_invite_id(&self, user: UserId) -> Result<i64> {
        let user = user.get();
        let id: Option<i64> = sqlx::query_scalar(sql::LAST_INVITE_ID)
            .bind(user)
            .fetch_optional(&mut *self.conn().await?)
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
                    .fetch_optional(&mut *self.conn().await?)
                    .await?;
                (created.ok_or_else(cursor_denied)?, pair)
            }
        };
        let mut conn = self.conn().await?;
        // `x`: the user's pairs (gone = false) and, when asked, the pairs they departed and
        // are not a member of again. A departed pair lists no owner and no members, only
        // the foreign remover's name.
        let rows = sqlx::query_as::<
            _,
            (Uuid, Uuid, Uuid, i64, Vec<i64>, Vec<String>, bool, Option<i64>, i64),
        >(
            "SELECT p.pair_id, p.message_id, p.state_id, CASE WHEN x.gone THEN 0 ELSE p.owner END, \
                    ARRAY(SELECT m2.user_id FROM members m2 \
                          WHERE m2.pair_id = p.pair_id AND NOT x.gone ORDER BY m2.user_id), \
                    ARRAY(SELECT CAST(f.id AS TEXT) || ' ' || CAST(f.user_id AS TEXT) || ' ' || f.homeserver \
                          FROM foreign_users f WHERE f.id IN \
                              (SELECT m2.user_id FROM members m2 \
                               WHERE m2.pair_id = p.pair_id AND m2.user_id < 0 AND NOT x.gone \
                               UNION ALL SELECT x.removed_by WHERE x.removed_by < 0)), \
                    x.gone, x.removed_by, x.departed_at \
             FROM (SELECT pair_id, FALSE AS gone, CAST(NULL AS BIGINT) AS removed_by, \
                          CAST(0 AS BIGINT) AS departed_at \
                   FROM members WHERE user_id = $1 \
                   UNION ALL \
                   SELECT d.pair_id, TRUE, d.removed_by, d.departed_at FROM departures d \
                   WHERE $5 AND d.user_id = $1 AND NOT EXISTS \
                       (SELECT 1 FROM members m WHERE m.pair_id = d.pair_id AND m.user_id = $1)) x \
             JOIN channel_pairs p ON p.pair_id = x.pair_id \
             WHERE (p.created_at, p.pair_id) > ($2, $3) \
             ORDER BY p.created_at, p.pair_id LIMIT $4",
        )
        .bind(user)
        .bind(after_created)
        .bind(after_pair)
        .bind(limit as i64 + 1)
        .bind(include_departed)
        .fetch(&mut *conn)
        .map(|row| -> Result<PairInfo> {
            let (pair_id, message_id, state_id, owner, members, foreign, gone, removed_by, at) =
                row?;
            Ok(PairInfo {
                ids: PairIds {
                    pair_id,
                    message_id,
                    state_id,
                },
                owner,
                members,
                foreign: parse_foreign_members(&foreign.join("\n"))?,
                departed: gone.then_some(Departure { removed_by, at }),
            })
        });
        page::collect(rows, limit, budget).await
    }

    async fn leave_pair(&self, user: UserId, pair: PairId, now: i64) -> Result<PairIds> {
        let user = user.get();
        let pair = pair.get();
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let (ids, owner) = self
            .lock_pair_of_member(&mut tx, user, pair)
            .await?
            .ok_or_else(pair_denied)?;
        self.drop_member(&mut tx, &ids, user, owner, None, now)
            .await?;
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
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let (ids, current_owner) = self
            .lock_pair_of_member(&mut tx, owner, pair)
            .await?
            .ok_or_else(pair_denied)?;
        check_removal(owner, current_owner, user)?;
        let target: Option<i32> = sqlx::query_scalar(sql::IS_MEMBER)
            .bind(pair)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
        if target.is_none() {
            return Err(not_a_member(user));
        }
        self.drop_member(&mut tx, &ids, user, current_owner, Some(owner), now)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }
}
