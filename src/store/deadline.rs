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

/// A store whose every operation answers within `limit` (UNAVAILABLE when it cannot), at
/// most [`Deadline::in_progress`] of them at a time.
pub struct Deadline {
    inner: DynStore,
    limit: Duration,
    /// Operations in progress. One that finds none free waits here, within its deadline,
    /// as a small future: the backend's future of an operation (several KiB on Postgres,
    /// held while it waits for a pooled connection) is only made once it may run.
    /// Without this, 10,000 streaming calls opening at once held 10,000 of them, and
    /// the allocator kept that peak resident after they were freed.
    permits: tokio::sync::Semaphore,
}

/// Store operations in progress per pooled connection (`db_max_connections`); more wait
/// for their turn (within their deadline), each holding a few bytes.
pub const IN_PROGRESS_PER_CONNECTION: usize = 4;

impl Deadline {
    /// Wraps `inner`, whose pool holds `connections` connections.
    pub fn new(inner: DynStore, limit: Duration, connections: u32) -> Self {
        let permits = Self::in_progress(connections);
        Deadline {
            inner,
            limit,
            permits: tokio::sync::Semaphore::new(permits),
        }
    }

    /// How many operations run at once over a pool of `connections`:
    /// [`IN_PROGRESS_PER_CONNECTION`] per connection, so the pool always has work queued
    /// and an operation waiting for SQLite's single writer does not hold back the readers.
    pub fn in_progress(connections: u32) -> usize {
        (connections.max(1) as usize).saturating_mul(IN_PROGRESS_PER_CONNECTION)
    }

    /// Runs the operation `op` makes within the deadline, once it may start. On expiry
    /// the operation is marked abandoned *before* it is dropped, so the connection it
    /// holds is closed, not reused.
    async fn bound<T, F>(&self, what: &'static str, op: impl FnOnce() -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let abandoned = Arc::new(AtomicBool::new(false));
        let op = ABANDONED.scope(abandoned.clone(), async {
            // Never closed, so acquiring fails only if it were; then run unbounded.
            let _permit = self.permits.acquire().await.ok();
            op().await
        });
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
        self.bound("post_public_key", || {
            self.inner.post_public_key(user, key, now)
        })
        .await
    }

    async fn fetch_public_keys(
        &self,
        user: UserId,
        limit: usize,
        budget: Budget<StoredKey>,
    ) -> Result<Paged<StoredKey>> {
        self.bound("fetch_public_keys", || {
            self.inner.fetch_public_keys(user, limit, budget)
        })
        .await
    }

    async fn post_private_key(
        &self,
        user: UserId,
        blob: &[u8],
        expected: Option<u64>,
        now: i64,
    ) -> Result<u64> {
        self.bound("post_private_key", || {
            self.inner.post_private_key(user, blob, expected, now)
        })
        .await
    }

    async fn fetch_private_key(&self, user: UserId) -> Result<Option<(Vec<u8>, u64)>> {
        self.bound("fetch_private_key", || self.inner.fetch_private_key(user))
            .await
    }
}

#[async_trait]
impl RoomStore for Deadline {
    async fn create_pair(&self, owner: UserId, ids: &PairIds, now: i64) -> Result<()> {
        self.bound("create_pair", || self.inner.create_pair(owner, ids, now))
            .await
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
        self.bound("send_invite", || {
            self.inner.send_invite(from, pair, to, body, now, caps)
        })
        .await
    }

    async fn fetch_invites(
        &self,
        user: UserId,
        after: i64,
        limit: usize,
        budget: Budget<InviteRecord>,
    ) -> Result<Paged<InviteRecord>> {
        self.bound("fetch_invites", || {
            self.inner.fetch_invites(user, after, limit, budget)
        })
        .await
    }

    async fn last_invite_id(&self, user: UserId) -> Result<i64> {
        self.bound("last_invite_id", || self.inner.last_invite_id(user))
            .await
    }

    async fn list_pairs(
        &self,
        user: UserId,
        after: Option<PairId>,
        include_departed: bool,
        limit: usize,
        budget: Budget<PairInfo>,
    ) -> Result<Paged<PairInfo>> {
        self.bound("list_pairs", || {
            self.inner
                .list_pairs(user, after, include_departed, limit, budget)
        })
        .await
    }

    async fn leave_pair(&self, user: UserId, pair: PairId, now: i64) -> Result<PairIds> {
        self.bound("leave_pair", || self.inner.leave_pair(user, pair, now))
            .await
    }

    async fn remove_member(
        &self,
        owner: UserId,
        pair: PairId,
        user: UserId,
        now: i64,
    ) -> Result<PairIds> {
        self.bound("remove_member", || {
            self.inner.remove_member(owner, pair, user, now)
        })
        .await
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
        self.bound("append_batch", || {
            self.inner.append_batch(batch, max_gap, now)
        })
        .await
    }

    async fn stream_access(&self, user: UserId, stream: StreamId) -> Result<StreamAccess> {
        self.bound("stream_access", || self.inner.stream_access(user, stream))
            .await
    }

    async fn fetch_events(
        &self,
        user: UserId,
        stream: StreamId,
        page: Page,
        limit: usize,
        budget: Budget<StoredEvent>,
    ) -> Result<EventPage> {
        self.bound("fetch_events", || {
            self.inner.fetch_events(user, stream, page, limit, budget)
        })
        .await
    }

    async fn read_events(
        &self,
        stream: StreamId,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<EventRun> {
        self.bound("read_events", || {
            self.inner.read_events(stream, after, up_to, limit)
        })
        .await
    }

    async fn stream_heads(&self, streams: &[Uuid]) -> Result<Vec<(Uuid, i64, i64)>> {
        self.bound("stream_heads", || self.inner.stream_heads(streams))
            .await
    }
}

#[async_trait]
impl FederationStore for Deadline {
    async fn foreign_user(&self, who: &Foreign) -> Result<Option<UserId>> {
        self.bound("foreign_user", || self.inner.foreign_user(who))
            .await
    }

    async fn check_new_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
    ) -> Result<PairIds> {
        self.bound("check_new_member", || {
            self.inner.check_new_member(from, pair, to, caps)
        })
        .await
    }

    async fn add_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
        now: i64,
    ) -> Result<(PairIds, UserId)> {
        self.bound("add_member", || {
            self.inner.add_member(from, pair, to, caps, now)
        })
        .await
    }

    async fn deliver_invite(
        &self,
        to: UserId,
        invite: Delivery<'_>,
        now: i64,
        caps: DeliveryCaps,
    ) -> Result<InviteRecord> {
        self.bound("deliver_invite", || {
            self.inner.deliver_invite(to, invite, now, caps)
        })
        .await
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
        self.bound("kt_publish", || {
            self.inner.kt_publish(signer, limits, now_ms)
        })
        .await
    }

    async fn kt_latest_head(&self) -> Result<Option<kt::TreeHead>> {
        self.bound("kt_latest_head", || self.inner.kt_latest_head())
            .await
    }

    async fn kt_read(&self, query: &kt::KtQuery) -> Result<kt::KtRows> {
        self.bound("kt_read", || self.inner.kt_read(query)).await
    }

    async fn kt_heads_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<kt::TreeHead>> {
        self.bound("kt_heads_after", || self.inner.kt_heads_after(after, limit))
            .await
    }

    async fn kt_entries_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<kt::LogEntry>> {
        self.bound("kt_entries_after", || {
            self.inner.kt_entries_after(after, limit)
        })
        .await
    }

    async fn kt_log_nodes_after(
        &self,
        level: u8,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, crate::merkle::log::Hash)>> {
        self.bound("kt_log_nodes_after", || {
            self.inner.kt_log_nodes_after(level, after, limit)
        })
        .await
    }

    async fn kt_map_nodes_after(
        &self,
        after: Option<crate::merkle::map::Prefix>,
        limit: usize,
    ) -> Result<Vec<(crate::merkle::map::Prefix, crate::merkle::map::Stored)>> {
        self.bound("kt_map_nodes_after", || {
            self.inner.kt_map_nodes_after(after, limit)
        })
        .await
    }

    async fn kt_misfiled_key(&self) -> Result<Option<(i64, i64, i64)>> {
        self.bound("kt_misfiled_key", || self.inner.kt_misfiled_key())
            .await
    }

    async fn kt_misfiled_erasure(&self) -> Result<Option<(i64, Option<i64>)>> {
        self.bound("kt_misfiled_erasure", || self.inner.kt_misfiled_erasure())
            .await
    }
}

#[async_trait]
impl KtEvidenceStore for Deadline {
    async fn kt_add_evidence(&self, e: &kt_evidence::Evidence) -> Result<bool> {
        self.bound("kt_add_evidence", || self.inner.kt_add_evidence(e))
            .await
    }

    async fn kt_evidence(&self, limit: usize) -> Result<Vec<kt_evidence::Evidence>> {
        self.bound("kt_evidence", || self.inner.kt_evidence(limit))
            .await
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
        self.bound("erase_user", || {
            self.inner.erase_user(user, erase_messages, now)
        })
        .await
    }

    async fn erased_at(&self, user: UserId) -> Result<Option<i64>> {
        self.bound("erased_at", || self.inner.erased_at(user)).await
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
        self.bound("set_retention", || {
            self.inner.set_retention(owner, pair, policy, now)
        })
        .await
    }

    async fn sweep_targets(
        &self,
        default: retention::Retention,
        now: i64,
        limit: usize,
    ) -> Result<Vec<retention::SweepTarget>> {
        self.bound("sweep_targets", || {
            self.inner.sweep_targets(default, now, limit)
        })
        .await
    }

    async fn advance_horizon(&self, stream: Uuid, from: i64, to: i64) -> Result<u64> {
        self.bound("advance_horizon", || {
            self.inner.advance_horizon(stream, from, to)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Notify;

    use super::*;

    /// A deadline store over a real (SQLite) store; the tests run their own operations
    /// through `bound`.
    async fn deadline(limit: Duration, connections: u32) -> (Deadline, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("d.db").display());
        let inner = open(&url, 1, Uuid::new_v4()).await.unwrap();
        (Deadline::new(inner, limit, connections), dir)
    }

    /// Lets spawned operations run until they block.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_operation_past_the_limit_is_made_only_when_one_finishes() {
        let (store, _dir) = deadline(Duration::from_secs(30), 1).await;
        let store = Arc::new(store);
        let n = Deadline::in_progress(1);
        let (release, made) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let mut running = Vec::new();
        for _ in 0..=n {
            let (store, release, made) = (store.clone(), release.clone(), made.clone());
            running.push(tokio::spawn(async move {
                store
                    .bound("test", || {
                        made.fetch_add(1, Ordering::SeqCst);
                        async move {
                            release.notified().await;
                            Ok(())
                        }
                    })
                    .await
            }));
        }
        settle().await;
        assert_eq!(
            made.load(Ordering::SeqCst),
            n,
            "the one past the limit was made"
        );
        release.notify_one();
        settle().await;
        assert_eq!(
            made.load(Ordering::SeqCst),
            n + 1,
            "a finished one let the next start"
        );
        for _ in 0..n {
            release.notify_one();
            settle().await;
        }
        for r in running {
            r.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiting_for_a_turn_counts_against_the_deadline() {
        let limit = Duration::from_millis(200);
        let (store, _dir) = deadline(limit, 1).await;
        // Every turn taken, and kept past the deadline.
        let taken = store
            .permits
            .acquire_many(Deadline::in_progress(1) as u32)
            .await
            .unwrap();
        let made = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let waited = store
            .bound("wait", || {
                made.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .await;
        let Err(Error::Unavailable(message)) = waited else {
            panic!("{waited:?}");
        };
        assert!(message.contains("db_timeout_ms"), "{message}");
        assert!(started.elapsed() >= limit);
        assert_eq!(made.load(Ordering::SeqCst), 0, "made without a turn");
        drop(taken);
        let ran = store.bound("after", || async { Ok(7) }).await;
        assert_eq!(ran.unwrap(), 7);
    }
}
