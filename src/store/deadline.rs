//! Client-side deadlines on every database operation.
//!
//! [`Deadline`] wraps a store: each call must finish within `db_timeout_ms`, or the caller
//! gets UNAVAILABLE at that moment — also when the database (or the network path to it)
//! stops answering without closing the connection, which no server-side timeout can
//! notice. An operation abandoned at its deadline is dropped where it stands; the
//! connection it held may be half-way through a statement and, on a black-holed path,
//! would never answer sqlx's return-to-pool check, keeping its pool slot forever. So the
//! backends take their connections through [`Conn`], which closes such a connection
//! instead of returning it to the pool: the pool drops broken connections and the server
//! recovers by itself once the database answers again.
//!
//! What an abandoned write did is decided by the database alone: a COMMIT that arrived
//! commits, anything else rolls back (Postgres ends the session's transaction when the
//! connection closes, or after `idle_in_transaction_session_timeout`). Either way a
//! client's retry of an acknowledged-or-not post finds the truth under the stream's row
//! lock: the original event id if it committed, a new one if it did not, never two
//! copies.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use uuid::Uuid;

use super::*;
use crate::error::{Error, Result};

tokio::task_local! {
    /// Set by [`Deadline`] around each operation; true once the operation is abandoned.
    static ABANDONED: Arc<AtomicBool>;
}

/// A store whose every operation answers within `limit` (UNAVAILABLE when it cannot).
pub struct Deadline {
    inner: DynStore,
    limit: Duration,
}

impl Deadline {
    /// Wraps `inner`.
    pub fn new(inner: DynStore, limit: Duration) -> Self {
        Deadline { inner, limit }
    }

    /// Runs `op` within the deadline. On expiry the operation is marked abandoned
    /// *before* it is dropped, so the connection it holds is closed, not reused.
    async fn bound<T>(&self, what: &'static str, op: impl Future<Output = Result<T>>) -> Result<T> {
        let abandoned = Arc::new(AtomicBool::new(false));
        let op = ABANDONED.scope(abandoned.clone(), op);
        tokio::pin!(op);
        tokio::select! {
            biased;
            out = &mut op => out,
            () = tokio::time::sleep(self.limit) => {
                abandoned.store(true, Ordering::Release);
                crate::telemetry::db_deadline(what);
                tracing::warn!(
                    operation = what,
                    limit_ms = self.limit.as_millis() as u64,
                    "database operation abandoned at its deadline"
                );
                Err(timed_out(self.limit))
            }
        }
        // `op` is dropped here, after the flag is set.
    }
}

/// The error of an operation that missed its deadline.
pub fn timed_out(limit: Duration) -> Error {
    Error::Unavailable(format!(
        "the database did not answer within {} ms (db_timeout_ms); retry in a few seconds \
         (a post retried with the same counter and bytes is stored once)",
        limit.as_millis()
    ))
}

/// A pooled connection taken for one store operation. Derefs to the driver's connection.
/// If the operation is abandoned at its deadline while holding it, it is closed instead
/// of being returned to the pool.
pub(crate) struct Conn<DB: Database> {
    conn: PoolConnection<DB>,
    abandoned: Option<Arc<AtomicBool>>,
}

impl<DB: Database> Conn<DB> {
    /// Takes a connection from `pool` for the current operation.
    pub(crate) async fn acquire(pool: &Pool<DB>) -> Result<Self> {
        Ok(Conn {
            conn: pool.acquire().await?,
            abandoned: ABANDONED.try_with(Arc::clone).ok(),
        })
    }
}

impl<DB: Database> Deref for Conn<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.conn
    }
}

impl<DB: Database> DerefMut for Conn<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: Database> Drop for Conn<DB> {
    fn drop(&mut self) {
        if self
            .abandoned
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Acquire))
        {
            // Its state is unknown and its peer may never answer: close it (bounded by
            // sqlx) rather than ping it on the way back into the pool (unbounded).
            self.conn.close_on_drop();
        }
    }
}

#[async_trait]
impl KeyStore for Deadline {
    async fn post_public_key(
        &self,
        user: UserId,
        key: &CanonicalKey,
        now: i64,
    ) -> Result<PostKeyOutcome> {
        let op = self.inner.post_public_key(user, key, now);
        self.bound("post_public_key", op).await
    }

    async fn fetch_public_keys(
        &self,
        user: UserId,
        limit: usize,
        budget: Budget<StoredKey>,
    ) -> Result<Paged<StoredKey>> {
        let op = self.inner.fetch_public_keys(user, limit, budget);
        self.bound("fetch_public_keys", op).await
    }

    async fn post_private_key(
        &self,
        user: UserId,
        blob: &[u8],
        expected: Option<u64>,
        now: i64,
    ) -> Result<u64> {
        let op = self.inner.post_private_key(user, blob, expected, now);
        self.bound("post_private_key", op).await
    }

    async fn fetch_private_key(&self, user: UserId) -> Result<Option<(Vec<u8>, u64)>> {
        let op = self.inner.fetch_private_key(user);
        self.bound("fetch_private_key", op).await
    }
}

#[async_trait]
impl RoomStore for Deadline {
    async fn create_pair(&self, owner: UserId, ids: &PairIds, now: i64) -> Result<()> {
        let op = self.inner.create_pair(owner, ids, now);
        self.bound("create_pair", op).await
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
        let op = self.inner.send_invite(from, pair, to, body, now, caps);
        self.bound("send_invite", op).await
    }

    async fn fetch_invites(
        &self,
        user: UserId,
        after: i64,
        limit: usize,
        budget: Budget<InviteRecord>,
    ) -> Result<Paged<InviteRecord>> {
        let op = self.inner.fetch_invites(user, after, limit, budget);
        self.bound("fetch_invites", op).await
    }

    async fn last_invite_id(&self, user: UserId) -> Result<i64> {
        let op = self.inner.last_invite_id(user);
        self.bound("last_invite_id", op).await
    }

    async fn list_pairs(
        &self,
        user: UserId,
        after: Option<PairId>,
        include_departed: bool,
        limit: usize,
        budget: Budget<PairInfo>,
    ) -> Result<Paged<PairInfo>> {
        let op = self
            .inner
            .list_pairs(user, after, include_departed, limit, budget);
        self.bound("list_pairs", op).await
    }

    async fn leave_pair(&self, user: UserId, pair: PairId, now: i64) -> Result<PairIds> {
        let op = self.inner.leave_pair(user, pair, now);
        self.bound("leave_pair", op).await
    }

    async fn remove_member(
        &self,
        owner: UserId,
        pair: PairId,
        user: UserId,
        now: i64,
    ) -> Result<PairIds> {
        let op = self.inner.remove_member(owner, pair, user, now);
        self.bound("remove_member", op).await
    }
}

#[async_trait]
impl EventStore for Deadline {
    async fn append_batch(
        &self,
        batch: &[AppendRequest],
        max_gap: i64,
        now: i64,
    ) -> Result<Vec<Result<Appended>>> {
        let op = self.inner.append_batch(batch, max_gap, now);
        self.bound("append_batch", op).await
    }

    async fn stream_access(&self, user: UserId, stream: StreamId) -> Result<StreamAccess> {
        let op = self.inner.stream_access(user, stream);
        self.bound("stream_access", op).await
    }

    async fn fetch_events(
        &self,
        user: UserId,
        stream: StreamId,
        page: Page,
        limit: usize,
        budget: Budget<StoredEvent>,
    ) -> Result<EventPage> {
        let op = self.inner.fetch_events(user, stream, page, limit, budget);
        self.bound("fetch_events", op).await
    }

    async fn read_events(
        &self,
        stream: StreamId,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<EventRun> {
        let op = self.inner.read_events(stream, after, up_to, limit);
        self.bound("read_events", op).await
    }

    async fn stream_heads(&self, streams: &[Uuid]) -> Result<Vec<(Uuid, i64, i64)>> {
        let op = self.inner.stream_heads(streams);
        self.bound("stream_heads", op).await
    }
}

#[async_trait]
impl FederationStore for Deadline {
    async fn foreign_user(&self, who: &Foreign) -> Result<Option<UserId>> {
        let op = self.inner.foreign_user(who);
        self.bound("foreign_user", op).await
    }

    async fn check_new_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
    ) -> Result<PairIds> {
        let op = self.inner.check_new_member(from, pair, to, caps);
        self.bound("check_new_member", op).await
    }

    async fn add_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
        now: i64,
    ) -> Result<(PairIds, UserId)> {
        let op = self.inner.add_member(from, pair, to, caps, now);
        self.bound("add_member", op).await
    }

    async fn deliver_invite(
        &self,
        to: UserId,
        invite: Delivery<'_>,
        now: i64,
        caps: DeliveryCaps,
    ) -> Result<InviteRecord> {
        let op = self.inner.deliver_invite(to, invite, now, caps);
        self.bound("deliver_invite", op).await
    }
}

#[async_trait]
impl KtStore for Deadline {
    async fn kt_publish(
        &self,
        signer: &kt::HeadSigner,
        limits: &kt::PublishLimits,
        now_ms: u64,
    ) -> Result<kt::Published> {
        let op = self.inner.kt_publish(signer, limits, now_ms);
        self.bound("kt_publish", op).await
    }

    async fn kt_latest_head(&self) -> Result<Option<kt::TreeHead>> {
        let op = self.inner.kt_latest_head();
        self.bound("kt_latest_head", op).await
    }

    async fn kt_read(&self, query: &kt::KtQuery) -> Result<kt::KtRows> {
        let op = self.inner.kt_read(query);
        self.bound("kt_read", op).await
    }

    async fn kt_heads_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<kt::TreeHead>> {
        let op = self.inner.kt_heads_after(after, limit);
        self.bound("kt_heads_after", op).await
    }

    async fn kt_entries_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<kt::LogEntry>> {
        let op = self.inner.kt_entries_after(after, limit);
        self.bound("kt_entries_after", op).await
    }

    async fn kt_log_nodes_after(
        &self,
        level: u8,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, crate::merkle::log::Hash)>> {
        let op = self.inner.kt_log_nodes_after(level, after, limit);
        self.bound("kt_log_nodes_after", op).await
    }

    async fn kt_map_nodes_after(
        &self,
        after: Option<crate::merkle::map::Prefix>,
        limit: usize,
    ) -> Result<Vec<(crate::merkle::map::Prefix, crate::merkle::map::Stored)>> {
        let op = self.inner.kt_map_nodes_after(after, limit);
        self.bound("kt_map_nodes_after", op).await
    }

    async fn kt_misfiled_key(&self) -> Result<Option<(i64, i64, i64)>> {
        let op = self.inner.kt_misfiled_key();
        self.bound("kt_misfiled_key", op).await
    }

    async fn kt_misfiled_erasure(&self) -> Result<Option<(i64, Option<i64>)>> {
        let op = self.inner.kt_misfiled_erasure();
        self.bound("kt_misfiled_erasure", op).await
    }
}

#[async_trait]
impl KtEvidenceStore for Deadline {
    async fn kt_add_evidence(&self, e: &kt_evidence::Evidence) -> Result<bool> {
        let op = self.inner.kt_add_evidence(e);
        self.bound("kt_add_evidence", op).await
    }

    async fn kt_evidence(&self, limit: usize) -> Result<Vec<kt_evidence::Evidence>> {
        let op = self.inner.kt_evidence(limit);
        self.bound("kt_evidence", op).await
    }
}

#[async_trait]
impl super::erase::EraseStore for Deadline {
    async fn erase_user(
        &self,
        user: UserId,
        erase_messages: bool,
        now: i64,
    ) -> Result<super::erase::Erasure> {
        let op = self.inner.erase_user(user, erase_messages, now);
        self.bound("erase_user", op).await
    }

    async fn erased_at(&self, user: UserId) -> Result<Option<i64>> {
        let op = self.inner.erased_at(user);
        self.bound("erased_at", op).await
    }
}

#[async_trait]
impl Store for Deadline {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    async fn close(&self) {
        // A pool waits for every connection to come back; one stuck on a dead path must
        // not hold up a shutdown.
        if tokio::time::timeout(self.limit, self.inner.close())
            .await
            .is_err()
        {
            tracing::warn!("the database connections did not close within db_timeout_ms");
        }
    }
}

#[async_trait]
impl RetentionStore for Deadline {
    async fn set_retention(
        &self,
        owner: UserId,
        pair: PairId,
        policy: retention::Retention,
        now: i64,
    ) -> Result<()> {
        let op = self.inner.set_retention(owner, pair, policy, now);
        self.bound("set_retention", op).await
    }

    async fn sweep_targets(
        &self,
        default: retention::Retention,
        now: i64,
        limit: usize,
    ) -> Result<Vec<retention::SweepTarget>> {
        let op = self.inner.sweep_targets(default, now, limit);
        self.bound("sweep_targets", op).await
    }

    async fn advance_horizon(&self, stream: Uuid, from: i64, to: i64) -> Result<u64> {
        let op = self.inner.advance_horizon(stream, from, to);
        self.bound("advance_horizon", op).await
    }
}
