//! Users of other homeservers and the invites their servers deliver, on SQLite (every
//! write on the single writer connection, so the checks and writes below are serialised
//! with everything else).

use super::*;

/// The checks of adding `to` to `pair` on behalf of member `from` inside `tx` (SendInvite,
/// and adding a foreign invitee): `from` is a member, and the member cap leaves room; the
/// pair's ids.
pub(super) async fn new_member_checks(
    tx: &mut SqliteConnection,
    from: i64,
    pair: Uuid,
    to: i64,
    caps: InviteCaps,
) -> Result<PairIds> {
    let (ids, _) = pair_of_member(&mut *tx, from, pair)
        .await?
        .ok_or_else(pair_denied)?;
    if caps.members_per_pair > 0 {
        let (members, invitee_is_member): (i64, bool) = sqlx::query_as(
            "SELECT count(*), coalesce(max(user_id = ?), 0) FROM members WHERE pair_id = ?",
        )
        .bind(to)
        .bind(pair)
        .fetch_one(&mut *tx)
        .await?;
        if !invitee_is_member {
            caps.check_members(members)?;
        }
    }
    Ok(ids)
}

#[async_trait]
impl FederationStore for SqliteStore {
    async fn foreign_user(&self, who: &Foreign, create: bool) -> Result<Option<UserId>> {
        let found: Option<i64> = sqlx::query_scalar(sql::FOREIGN_USER_ID)
            .bind(&*who.homeserver)
            .bind(who.user.get())
            .fetch_optional(&self.readers)
            .await?;
        if found.is_some() || !create {
            return Ok(found.map(UserId::trusted));
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        // `WHERE true` lets SQLite parse the upsert after a SELECT.
        sqlx::query(
            "INSERT INTO foreign_users (id, homeserver, user_id) \
             SELECT coalesce(min(id), 0) - 1, ?, ? FROM foreign_users WHERE true \
             ON CONFLICT DO NOTHING",
        )
        .bind(&*who.homeserver)
        .bind(who.user.get())
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(sql::FOREIGN_USER_ID)
            .bind(&*who.homeserver)
            .bind(who.user.get())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(UserId::trusted(id)))
    }

    async fn check_new_member(
        &self,
        from: UserId,
        pair: PairId,
        to: UserId,
        caps: InviteCaps,
    ) -> Result<PairIds> {
        let mut tx = self.readers.begin().await?;
        let ids = new_member_checks(&mut tx, from.get(), pair.get(), to.get(), caps).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn add_member(
        &self,
        from: UserId,
        pair: PairId,
        to: UserId,
        caps: InviteCaps,
        now: i64,
    ) -> Result<PairIds> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let ids = new_member_checks(&mut tx, from.get(), pair.get(), to.get(), caps).await?;
        sqlx::query(
            "INSERT INTO members (pair_id, user_id, joined_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(pair.get())
        .bind(to.get())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn deliver_invite(
        &self,
        to: UserId,
        pair_homeserver: &str,
        pair: &PairIds,
        from: UserId,
        body: &[u8],
        now: i64,
    ) -> Result<InviteRecord> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let record = |invite_id, sent_at| {
            InviteRecord::delivered(invite_id, pair, pair_homeserver, from, body, sent_at)
        };
        let before: Option<(i64, i64)> = sqlx::query_as(sql::DELIVERED_BEFORE)
            .bind(to.get())
            .bind(pair_homeserver)
            .bind(pair.pair_id)
            .bind(from.get())
            .bind(body)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((invite_id, sent_at)) = before {
            tx.rollback().await?;
            return Ok(record(invite_id, sent_at));
        }
        let invite_id: i64 = sqlx::query_scalar(sql::NEXT_INVITE_ID)
            .bind(to.get())
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(sql::INSERT_REMOTE_INVITE)
            .bind(to.get())
            .bind(invite_id)
            .bind(pair_homeserver)
            .bind(pair.pair_id)
            .bind(pair.message_id)
            .bind(pair.state_id)
            .bind(from.get())
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(record(invite_id, now))
    }
}
