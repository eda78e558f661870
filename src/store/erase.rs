//! Erasing a user (DESIGN §13, README "Erase a user"): one transaction per backend
//! (`postgres/erase.rs`, `sqlite/erase.rs`) over the SQL here, which both run as is.
//!
//! What goes: the user's public keys (out of service: FetchKey answers NOT_FOUND saying
//! so; the key transparency log keeps its entries and gets an "erased" one at the next
//! epoch, from the `erased_users` row left pending: `store::kt_publish`), the private-key
//! blob, the invites
//! from and to them, their memberships (each a departure, as if they had left: ownership
//! passes to the oldest remaining member and the streams' membership epoch moves, so
//! their subscriptions end), and with `erase_messages` the ciphertext of every event they
//! posted (body emptied, `erased` set; id, counter, sender and time kept). The user is
//! recorded in `erased_users` (migration 0008). Running it again changes nothing.

use async_trait::async_trait;
use uuid::Uuid;

use super::PairIds;
use crate::domain::UserId;
use crate::error::Result;

/// What one erasure changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// False when the user had been erased before (the first time is kept).
    pub first: bool,
    /// The pairs the user was a member of and no longer is.
    pub left: Vec<PairIds>,
    /// The streams in which events were erased now (their cached frames are stale), each
    /// with its membership epoch after the erasure (0 until the backend reads it).
    pub rewritten: Vec<(Uuid, i64)>,
    /// How many events were erased now.
    pub events_erased: u64,
}

/// Erasure of users.
#[async_trait]
pub trait EraseStore: Send + Sync {
    /// Erases `user` in one transaction (see the module). `now` in µs.
    async fn erase_user(&self, user: UserId, erase_messages: bool, now: i64) -> Result<Erasure>;
    /// When `user` was erased (µs), or `None`.
    async fn erased_at(&self, user: UserId) -> Result<Option<i64>>;
}

/// Records the erasure; affects one row only the first time.
pub(crate) const MARK_ERASED: &str = "INSERT INTO erased_users (user_id, erased_at) \
     VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING";

/// When `$1` was erased.
pub(crate) const ERASED_AT: &str = "SELECT erased_at FROM erased_users WHERE user_id = $1";

/// The pairs `$1` is a member of, in pair id order.
pub(crate) const MEMBER_PAIRS: &str =
    "SELECT pair_id FROM members WHERE user_id = $1 ORDER BY pair_id";

/// The streams `$1` may have posted to: those of the pairs they are a member of or
/// departed from (a post needs a membership; every lost membership leaves a departure).
pub(crate) const POSTED_STREAMS: &str = "SELECT stream_id FROM streams WHERE pair_id IN \
     (SELECT pair_id FROM members WHERE user_id = $1 \
      UNION SELECT pair_id FROM departures WHERE user_id = $1) ORDER BY stream_id";

/// Erases the events of sender `$2` in stream `$1` not yet erased (`$3`: empty bytes).
pub(crate) const ERASE_EVENTS: &str = "UPDATE events SET body = $3, erased = TRUE \
     WHERE stream_id = $1 AND sender = $2 AND NOT erased";

/// The membership epoch of stream `$1`.
pub(crate) const STREAM_EPOCH: &str = "SELECT member_epoch FROM streams WHERE stream_id = $1";

/// The statements that delete the rest of the user's data, each with `$1` = the user.
pub(crate) const DELETE_USER_DATA: [&str; 4] = [
    "DELETE FROM private_keys WHERE user_id = $1",
    "DELETE FROM public_keys WHERE user_id = $1",
    "DELETE FROM invites WHERE to_user = $1 OR from_user = $1",
    "DELETE FROM remote_invites WHERE to_user = $1",
];

/// The part of an erasure both backends run alike, inside the caller's transaction
/// (`$tx`): records the user as erased, erases their events when `$messages`, deletes
/// their keys, blob and invites. Evaluates to a `Result<(Erasure, pairs)>`: `left` is
/// still empty, `pairs` the pairs the user is a member of, for each backend's
/// `drop_member`. A macro because the two
/// backends' connections are different types.
macro_rules! erase_data {
    ($tx:expr, $user:expr, $messages:expr, $now:expr) => {
        async {
            let (user, tx) = ($user, $tx);
            let first = sqlx::query($crate::store::erase::MARK_ERASED)
                .bind(user)
                .bind($now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            let mut out = $crate::store::erase::Erasure {
                first,
                ..Default::default()
            };
            if $messages {
                let streams: Vec<uuid::Uuid> =
                    sqlx::query_scalar($crate::store::erase::POSTED_STREAMS)
                        .bind(user)
                        .fetch_all(&mut *tx)
                        .await?;
                for stream in streams {
                    let n = sqlx::query($crate::store::erase::ERASE_EVENTS)
                        .bind(stream)
                        .bind(user)
                        .bind(Vec::<u8>::new())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if n > 0 {
                        out.events_erased += n;
                        out.rewritten.push((stream, 0));
                    }
                }
            }
            for statement in $crate::store::erase::DELETE_USER_DATA {
                sqlx::query(statement).bind(user).execute(&mut *tx).await?;
            }
            let pairs: Vec<uuid::Uuid> = sqlx::query_scalar($crate::store::erase::MEMBER_PAIRS)
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
            Ok::<_, $crate::error::Error>((out, pairs))
        }
    };
}
pub(crate) use erase_data;
