//! Users of other homeservers and the invites their servers deliver, on Postgres.

use super::*;

impl PgStore {
    /// The checks of adding `to` to `pair` on behalf of member `from` inside `tx`
    /// (SendInvite, and adding a foreign invitee): `from` is a member, and the member cap
    /// leaves room; the pair's ids.
    pub(super) async fn new_member_checks(
        tx: &mut PgConnection,
        from: i64,
        pair: Uuid,
        to: i64,
        caps: InviteCaps,
    ) -> Result<PairIds> {
        if caps.members_per_pair > 0 {
            // Serialises the invites into one pair, so two of them cannot both take the
            // last place (NO KEY UPDATE: members' foreign-key checks still pass). Taken
            // first, before any other lock of this transaction.
            sqlx::query("SELECT 1 FROM channel_pairs WHERE pair_id = $1 FOR NO KEY UPDATE")
                .bind(pair)
                .execute(&mut *tx)
                .await?;
        }
        // Locks the inviter's membership: a removal racing this invite either waits for
        // it or makes it PERMISSION_DENIED, never an invitee added after the removal.
        let (ids, _) = pair_of_member(&mut *tx, from, pair)
            .await?
            .ok_or_else(pair_denied)?;
        if caps.members_per_pair > 0 {
            let (members, invitee_is_member): (i64, bool) = sqlx::query_as(
                "SELECT count(*), coalesce(bool_or(user_id = $1), false) FROM members \
                 WHERE pair_id = $2",
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
}

#[async_trait]
impl FederationStore for PgStore {
    async fn foreign_user(&self, who: &Foreign, create: bool) -> Result<Option<UserId>> {
        let mut conn = self.conn().await?;
        let found: Option<i64> = sqlx::query_scalar(sql::FOREIGN_USER_ID)
            .bind(&*who.homeserver)
            .bind(who.user.get())
            .fetch_optional(&mut *conn)
            .await?;
        if found.is_some() || !create {
            return Ok(found.map(UserId::trusted));
        }
        // Two replicas may race to add the same user: one insert wins, both read its id.
        sqlx::query(
            "INSERT INTO foreign_users (id, homeserver, user_id) \
             VALUES (-nextval('foreign_user_ids'), $1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&*who.homeserver)
        .bind(who.user.get())
        .execute(&mut *conn)
        .await?;
        let id: i64 = sqlx::query_scalar(sql::FOREIGN_USER_ID)
            .bind(&*who.homeserver)
            .bind(who.user.get())
            .fetch_one(&mut *conn)
            .await?;
        Ok(Some(UserId::trusted(id)))
    }

    async fn check_new_member(
        &self,
        from: UserId,
        pair: PairId,
        to: UserId,
        caps: InviteCaps,
    ) -> Result<PairIds> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let ids = Self::new_member_checks(&mut tx, from.get(), pair.get(), to.get(), caps).await?;
        tx.rollback().await?;
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
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let ids = Self::new_member_checks(&mut tx, from.get(), pair.get(), to.get(), caps).await?;
        sqlx::query(
            "INSERT INTO members (pair_id, user_id, joined_at) VALUES ($1, $2, $3) \
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
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        // The inbox row first: it serialises deliveries to `to`, so the look for an earlier
        // copy below cannot race another delivery of the same invite.
        let invite_id: i64 = sqlx::query_scalar(sql::NEXT_INVITE_ID)
            .bind(to.get())
            .fetch_one(&mut *tx)
            .await?;
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
            // The inbox counter goes back with the transaction.
            tx.rollback().await?;
            return Ok(record(invite_id, sent_at));
        }
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
        self.notify(&mut tx, &[Change::Invite { user: to.get() }])
            .await?;
        tx.commit().await?;
        Ok(record(invite_id, now))
    }
}
