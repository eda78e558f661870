//! Channel pairs, membership and invites on SQLite.

use super::*;

#[async_trait]
impl RoomStore for SqliteStore {
    async fn create_pair(&self, owner: i64, ids: &PairIds, now: i64) -> Result<()> {
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
        from: i64,
        pair: Uuid,
        to: i64,
        body: &[u8],
        now: i64,
    ) -> Result<InviteRecord> {
        // The single writer connection serialises this with every removal, so the
        // membership read here cannot be overtaken by one (Postgres locks the row).
        let mut tx = self.writer.begin().await?;
        let (ids, _) = pair_of_member(&mut tx, from, pair)
            .await?
            .ok_or_else(pair_denied)?;
        let has_key: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM public_keys WHERE user_id = ? LIMIT 1")
                .bind(to)
                .fetch_optional(&mut *tx)
                .await?;
        if has_key.is_none() {
            return Err(no_public_key(to));
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
            to_user: to,
            pair: ids,
            from_user: from,
            body: body.to_vec(),
            sent_at: now,
        })
    }

    async fn fetch_invites(
        &self,
        user: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<InviteRecord>> {
        let rows: Vec<InviteRow> = sqlx::query_as(
            "SELECT i.invite_id, i.pair_id, p.message_id, p.state_id, i.from_user, i.body, i.sent_at \
             FROM invites i JOIN channel_pairs p ON p.pair_id = i.pair_id \
             WHERE i.to_user = ? AND i.invite_id > ? ORDER BY i.invite_id LIMIT ?",
        )
        .bind(user)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| InviteRecord::from_row(user, row))
            .collect())
    }

    async fn last_invite_id(&self, user: i64) -> Result<i64> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT last_invite_id FROM inboxes WHERE user_id = ?")
                .bind(user)
                .fetch_optional(&self.readers)
                .await?;
        Ok(id.unwrap_or(0))
    }

    async fn list_pairs(&self, user: i64) -> Result<Vec<PairInfo>> {
        let rows = sqlx::query(
            "SELECT p.pair_id, p.message_id, p.state_id, p.owner, m2.user_id \
             FROM members m JOIN channel_pairs p ON p.pair_id = m.pair_id \
             JOIN members m2 ON m2.pair_id = p.pair_id \
             WHERE m.user_id = ? ORDER BY p.created_at, p.pair_id, m2.user_id",
        )
        .bind(user)
        .fetch_all(&self.readers)
        .await?;
        let mut out: Vec<PairInfo> = Vec::new();
        for r in &rows {
            let pair_id: Uuid = r.try_get(0)?;
            let member: i64 = r.try_get(4)?;
            match out.last_mut() {
                Some(last) if last.ids.pair_id == pair_id => last.members.push(member),
                _ => out.push(PairInfo {
                    ids: PairIds {
                        pair_id,
                        message_id: r.try_get(1)?,
                        state_id: r.try_get(2)?,
                    },
                    owner: r.try_get(3)?,
                    members: vec![member],
                }),
            }
        }
        Ok(out)
    }

    async fn leave_pair(&self, user: i64, pair: Uuid) -> Result<PairIds> {
        let mut tx = self.writer.begin().await?;
        let (ids, owner) = pair_of_member(&mut tx, user, pair)
            .await?
            .ok_or_else(pair_denied)?;
        drop_member(&mut tx, &ids, user, owner).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn remove_member(&self, owner: i64, pair: Uuid, user: i64) -> Result<PairIds> {
        let mut tx = self.writer.begin().await?;
        let (ids, current_owner) = pair_of_member(&mut tx, owner, pair)
            .await?
            .ok_or_else(pair_denied)?;
        check_removal(owner, current_owner, user)?;
        let target: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM members WHERE pair_id = ? AND user_id = ?")
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
