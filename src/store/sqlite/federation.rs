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
    to: Option<i64>,
    caps: InviteCaps,
) -> Result<PairIds> {
    let (ids, _) = pair_of_member(&mut *tx, from, pair)
        .await?
        .ok_or_else(pair_denied)?;
    if caps.members_per_pair > 0 {
        let (members, invitee_is_member): (i64, bool) = sqlx::query_as(
            "SELECT count(*), coalesce(max(user_id = ?), 0) FROM members WHERE pair_id = ?",
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

/// The id of foreign user `who`, if they have one, read inside `tx`.
async fn foreign_id_of(tx: &mut SqliteConnection, who: &Foreign) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(sql::FOREIGN_USER_ID)
        .bind(&*who.homeserver)
        .bind(who.user.get())
        .fetch_optional(&mut *tx)
        .await?)
}

/// The id of foreign user `who` inside the writer's transaction `tx`, given now if they
/// have none (the caller stores something for them in the same transaction).
async fn foreign_id_in(tx: &mut SqliteConnection, who: &Foreign) -> Result<i64> {
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
    Ok(id)
}

#[async_trait]
impl FederationStore for SqliteStore {
    async fn foreign_user(&self, who: &Foreign) -> Result<Option<UserId>> {
        let found: Option<i64> = sqlx::query_scalar(sql::FOREIGN_USER_ID)
            .bind(&*who.homeserver)
            .bind(who.user.get())
            .fetch_optional(&self.readers)
            .await?;
        Ok(found.map(UserId::trusted))
    }

    async fn check_new_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
    ) -> Result<PairIds> {
        let mut tx = self.readers.begin().await?;
        let to = foreign_id_of(&mut tx, to).await?;
        let ids = new_member_checks(&mut tx, from.get(), pair.get(), to, caps).await?;
        tx.commit().await?;
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let known = foreign_id_of(&mut tx, to).await?;
        let ids = new_member_checks(&mut tx, from.get(), pair.get(), known, caps).await?;
        let member = match known {
            Some(id) => id,
            None => foreign_id_in(&mut tx, to).await?,
        };
        sqlx::query(
            "INSERT INTO members (pair_id, user_id, joined_at) VALUES (?, ?, ?) \
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        // A foreign inviter without an id here has delivered nothing before.
        let known = match from {
            Inviter::Local(user) => Some(user.get()),
            Inviter::Foreign(who) => foreign_id_of(&mut tx, who).await?,
        };
        if let Some(from_id) = known {
            let before: Option<(i64, i64)> = sqlx::query_as(sql::DELIVERED_BEFORE)
                .bind(to.get())
                .bind(pair_homeserver)
                .bind(pair.pair_id)
                .bind(from_id)
                .bind(body)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some((invite_id, sent_at)) = before {
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
        }
        // The caps (the single writer serialises the counts with the inserts).
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
            (None, Inviter::Foreign(who)) => foreign_id_in(&mut tx, who).await?,
            (None, Inviter::Local(user)) => user.get(),
        };
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
            .bind(from_id)
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
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
