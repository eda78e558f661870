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
        to: Option<i64>,
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
            // A foreign user without an id here is no member: 0 matches no one.
            .bind(to.unwrap_or(0))
            .bind(pair)
            .fetch_one(&mut *tx)
            .await?;
            if !invitee_is_member {
                caps.check_members(members)?;
            }
        }
        Ok(ids)
    }

    /// The id of foreign user `who` inside `tx`, given now if they have none (the caller
    /// stores something for them in the same transaction). Two transactions adding the same
    /// user: the second waits for the first's row and reads its id.
    pub(super) async fn foreign_id_in(tx: &mut PgConnection, who: &Foreign) -> Result<i64> {
        sqlx::query(
            "INSERT INTO foreign_users (id, homeserver, user_id) \
             VALUES (-nextval('foreign_user_ids'), $1, $2) ON CONFLICT DO NOTHING",
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
        Ok(id)
    }

    /// The id of foreign user `who`, if they have one, read inside `tx`.
    async fn foreign_id_of(tx: &mut PgConnection, who: &Foreign) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(sql::FOREIGN_USER_ID)
            .bind(&*who.homeserver)
            .bind(who.user.get())
            .fetch_optional(&mut *tx)
            .await?)
    }
}

#[async_trait]
impl FederationStore for PgStore {
    async fn foreign_user(&self, who: &Foreign) -> Result<Option<UserId>> {
        let mut conn = self.conn().await?;
        let found = Self::foreign_id_of(&mut conn, who).await?;
        Ok(found.map(UserId::trusted))
    }

    async fn check_new_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
    ) -> Result<PairIds> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let to = Self::foreign_id_of(&mut tx, to).await?;
        let ids = Self::new_member_checks(&mut tx, from.get(), pair.get(), to, caps).await?;
        tx.rollback().await?;
        Ok(ids)
    }

    async fn add_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
        now: i64,
    ) -> Result<(PairIds, UserId)> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let known = Self::foreign_id_of(&mut tx, to).await?;
        let ids = Self::new_member_checks(&mut tx, from.get(), pair.get(), known, caps).await?;
        let member = match known {
            Some(id) => id,
            None => Self::foreign_id_in(&mut tx, to).await?,
        };
        sqlx::query(
            "INSERT INTO members (pair_id, user_id, joined_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(pair.get())
        .bind(member)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((ids, UserId::trusted(member)))
    }

    async fn deliver_invite(
        &self,
        to: UserId,
        invite: Delivery<'_>,
        now: i64,
        caps: DeliveryCaps,
    ) -> Result<InviteRecord> {
        let Delivery {
            pair_homeserver,
            pair,
            from,
            body,
        } = invite;
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        // The inbox row first: it serialises deliveries to `to`, so the look for an earlier
        // copy below cannot race another delivery of the same invite.
        let invite_id: i64 = sqlx::query_scalar(sql::NEXT_INVITE_ID)
            .bind(to.get())
            .fetch_one(&mut *tx)
            .await?;
        // A foreign inviter without an id here has delivered nothing before.
        let known = match from {
            Inviter::Local(user) => Some(user.get()),
            Inviter::Foreign(who) => Self::foreign_id_of(&mut tx, who).await?,
        };
        let before: Option<(i64, i64)> = match known {
            Some(from_id) => {
                sqlx::query_as(sql::DELIVERED_BEFORE)
                    .bind(to.get())
                    .bind(pair_homeserver)
                    .bind(pair.pair_id)
                    .bind(from_id)
                    .bind(body)
                    .fetch_optional(&mut *tx)
                    .await?
            }
            None => None,
        };
        if let (Some((invite_id, sent_at)), Some(from_id)) = (before, known) {
            // The inbox counter goes back with the transaction.
            tx.rollback().await?;
            let from = UserId::trusted(from_id);
            return Ok(InviteRecord::delivered(
                invite_id,
                pair,
                pair_homeserver,
                from,
                body,
                sent_at,
            ));
        }
        // The caps: the inbox row serialises the count per invitee; a lock per peer (only
        // with that cap on) serialises the count per peer, so neither is passed by racing
        // deliveries.
        let since = now.saturating_sub(caps.window_micros);
        if caps.per_invitee > 0 {
            let pending: (i64, Option<i64>) = sqlx::query_as(sql::DELIVERED_TO_SINCE)
                .bind(to.get())
                .bind(pair_homeserver)
                .bind(since)
                .bind(DeliveryCaps::scan_limit(caps.per_invitee))
                .fetch_one(&mut *tx)
                .await?;
            caps.check(caps.per_invitee, pending, now, pair_homeserver, to, false)?;
        }
        if caps.per_peer > 0 {
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('remote_invites ' || $1, 0))",
            )
            .bind(pair_homeserver)
            .execute(&mut *tx)
            .await?;
            let pending: (i64, Option<i64>) = sqlx::query_as(sql::DELIVERED_BY_SINCE)
                .bind(pair_homeserver)
                .bind(since)
                .bind(DeliveryCaps::scan_limit(caps.per_peer))
                .fetch_one(&mut *tx)
                .await?;
            caps.check(caps.per_peer, pending, now, pair_homeserver, to, true)?;
        }
        let from_id = match (known, from) {
            (Some(id), _) => id,
            (None, Inviter::Foreign(who)) => Self::foreign_id_in(&mut tx, who).await?,
            (None, Inviter::Local(user)) => user.get(),
        };
        sqlx::query(sql::INSERT_REMOTE_INVITE)
            .bind(to.get())
            .bind(invite_id)
            .bind(pair_homeserver)
            .bind(pair.pair_id)
            .bind(pair.message_id)
            .bind(pair.state_id)
            .bind(from_id)
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        self.notify(&mut tx, &[Change::Invite { user: to.get() }])
            .await?;
        tx.commit().await?;
        let from = UserId::trusted(from_id);
        Ok(InviteRecord::delivered(
            invite_id,
            pair,
            pair_homeserver,
            from,
            body,
            now,
        ))
    }
}
