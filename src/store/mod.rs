//! Storage: one trait, [`Store`], with a Postgres backend (`postgres/`, production and
//! scale-out) and a bundled-SQLite backend (`sqlite/`, the embedded default). Both run
//! their embedded migrations at start and pass the same test suite.
//!
//! Ordering and membership are enforced here, inside the database transaction: an append
//! locks the stream's head row, checks that the sender is a member, applies the counter
//! rules (`append.rs`) and assigns the next dense event id in the same transaction, so id
//! order is commit order. Leaving or removing a member locks the same rows and bumps the
//! streams' `member_epoch`, which the fan-out uses to re-check access (see `hub/`).

/// The counter rules ([`append::plan_batch`]) and their model ([`append::check`]):
/// public only for the fuzz targets in `fuzz/`, not part of the server's API.
#[doc(hidden)]
pub mod append;
pub mod backup;
#[cfg(test)]
mod contract;
pub mod deadline;
pub mod erase;
mod errors;
pub mod kt;
#[cfg(test)]
mod kt_contract;
pub mod kt_evidence;
#[cfg(test)]
mod kt_evidence_contract;
pub mod kt_publish;
pub mod kt_rows;
mod migrations;
mod page;
pub mod postgres;
pub mod retention;
mod sql;
pub mod sqlite;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

pub use errors::*;
pub use kt::KtStore;
pub use kt_evidence::KtEvidenceStore;
pub use page::{Budget, Paged, collect_read};
pub use retention::RetentionStore;

pub use crate::domain::{Foreign, PairId, StreamId, UserId};
use crate::error::Result;
use crate::keycheck::CanonicalKey;

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Bundled SQLite file (single process).
    Sqlite,
    /// Postgres (any number of replicas).
    Postgres,
}

impl Backend {
    /// A short lower-case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A stored public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// SPKI DER.
    pub spki_der: Vec<u8>,
    /// SHA-256 of `spki_der`.
    pub fingerprint: Vec<u8>,
    /// When it was posted (µs since the epoch).
    pub posted_at: i64,
}

/// A `public_keys` row as selected by both backends: (spki_der, fingerprint, posted_at).
pub(crate) type KeyRow = (Vec<u8>, Vec<u8>, i64);

impl From<KeyRow> for StoredKey {
    fn from((spki_der, fingerprint, posted_at): KeyRow) -> Self {
        StoredKey {
            spki_der,
            fingerprint,
            posted_at,
        }
    }
}

/// What posting a public key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostKeyOutcome {
    /// The key was already current.
    Unchanged,
    /// The key is now current.
    Changed,
}

/// The three ids of a channel pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairIds {
    /// The pair.
    pub pair_id: Uuid,
    /// Its message stream.
    pub message_id: Uuid,
    /// Its state stream.
    pub state_id: Uuid,
}

impl PairIds {
    /// Fresh random ids.
    pub fn generate() -> Self {
        PairIds {
            pair_id: Uuid::new_v4(),
            message_id: Uuid::new_v4(),
            state_id: Uuid::new_v4(),
        }
    }

    /// Both streams of the pair.
    pub fn streams(&self) -> [Uuid; 2] {
        [self.message_id, self.state_id]
    }
}

/// A channel pair and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairInfo {
    /// Ids.
    pub ids: PairIds,
    /// Owner's user id (negative: a foreign user, named in `foreign`).
    pub owner: i64,
    /// Members, ascending (foreign ones, negative, first).
    pub members: Vec<i64>,
    /// Who the foreign members (negative ids) are, and the foreign remover of a departed
    /// pair.
    pub foreign: Vec<(i64, Foreign)>,
    /// Set when the caller is no longer a member (listed with `include_departed`): then
    /// `owner` is 0 and `members` empty, so a departed user learns nothing new about the
    /// pair.
    pub departed: Option<Departure>,
}

/// How and when a user stopped being a member of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    /// The owner who removed them (negative: a foreign user); `None`: they left.
    pub removed_by: Option<i64>,
    /// When, in microseconds since the Unix epoch.
    pub at: i64,
}

/// Reads the foreign members the stores list as lines of `"<id> <user id> <homeserver>"`.
pub(crate) fn parse_foreign_members(lines: &str) -> Result<Vec<(i64, Foreign)>> {
    lines
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            line.split_once(' ')
                .and_then(|(id, rest)| Some((id.parse::<i64>().ok()?, Foreign::from_sql(rest)?)))
                .ok_or_else(|| {
                    crate::error::Error::Internal(format!(
                        "foreign member {line:?} in the database is not \"<id> <user> <homeserver>\""
                    ))
                })
        })
        .collect()
}

/// The caps SendInvite enforces (README "Limits"); 0 turns one off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InviteCaps {
    /// `max_pending_invites_per_sender`: invites from one user to another into pairs the
    /// invitee is still a member of (self-invites are not counted).
    pub pending_per_sender: u64,
    /// `max_members_per_pair`.
    pub members_per_pair: u64,
}

impl InviteCaps {
    /// Refuses a new member when the pair already has `members` (the invitee is not one of
    /// them).
    pub fn check_members(&self, members: i64) -> Result<()> {
        let cap = self.members_per_pair;
        if cap > 0 && members.max(0) as u64 >= cap {
            return Err(too_many_members(cap));
        }
        Ok(())
    }

    /// Refuses an invite from `from` to `to` when `pending` of theirs are pending already.
    pub fn check_pending(&self, from: i64, to: i64, pending: i64) -> Result<()> {
        let cap = self.pending_per_sender;
        if from != to && cap > 0 && pending.max(0) as u64 >= cap {
            return Err(too_many_pending(to, cap));
        }
        Ok(())
    }

    /// The most pending invites worth counting (one more than the cap is never needed).
    pub fn pending_scan_limit(&self) -> i64 {
        i64::try_from(self.pending_per_sender).unwrap_or(i64::MAX)
    }
}

/// A stored invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    /// Dense per invitee, from 1.
    pub invite_id: i64,
    /// The pair invited into.
    pub pair: PairIds,
    /// The inviter (negative: a foreign user, named in `from_origin`).
    pub from_user: i64,
    /// Who a foreign inviter is; `None` for a local one.
    pub from_origin: Option<Foreign>,
    /// The homeserver the pair lives on; empty for this one.
    pub pair_homeserver: String,
    /// Opaque invite bytes.
    pub body: Vec<u8>,
    /// When it was sent (µs).
    pub sent_at: i64,
}

/// An invite row (local `invites` joined with its pair, or `remote_invites`), as selected
/// by both backends: (invite_id, pair_id, message_id, state_id, from_user, body, sent_at,
/// pair_homeserver, foreign inviter as `"<user> <homeserver>"`).
pub(crate) type InviteRow = (
    i64,
    Uuid,
    Uuid,
    Uuid,
    i64,
    Vec<u8>,
    i64,
    String,
    Option<String>,
);

impl InviteRecord {
    /// The record of an invite another homeserver delivered (its answer to
    /// [`FederationStore::deliver_invite`]; the inviter is left unnamed).
    pub(crate) fn delivered(
        invite_id: i64,
        pair: &PairIds,
        pair_homeserver: &str,
        from: UserId,
        body: &[u8],
        sent_at: i64,
    ) -> Self {
        InviteRecord {
            invite_id,
            pair: *pair,
            from_user: from.get(),
            from_origin: None,
            pair_homeserver: pair_homeserver.to_string(),
            body: body.to_vec(),
            sent_at,
        }
    }

    /// Builds a record from an [`InviteRow`].
    pub(crate) fn from_row(row: InviteRow) -> Self {
        let (invite_id, pair_id, message_id, state_id, from_user, body, sent_at, pair_hs, from) =
            row;
        InviteRecord {
            invite_id,
            pair: PairIds {
                pair_id,
                message_id,
                state_id,
            },
            from_user,
            from_origin: from.as_deref().and_then(Foreign::from_sql),
            pair_homeserver: pair_hs,
            body,
            sent_at,
        }
    }
}

/// One post waiting to be appended.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// Target stream.
    pub stream_id: Uuid,
    /// The authenticated sender.
    pub sender: i64,
    /// Who a foreign sender is (carried into the new event); `None` for a local one.
    pub sender_origin: Option<Foreign>,
    /// Ratchet counter (1 ..= i64::MAX).
    pub counter: i64,
    /// Ciphertext.
    pub body: Bytes,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its stream.
    pub stream_id: Uuid,
    /// Dense position in the stream, from 1.
    pub event_id: i64,
    /// Ratchet counter.
    pub counter: i64,
    /// Sender's user id (negative: a foreign user, named in `sender_origin`).
    pub sender: i64,
    /// Who a foreign sender is; `None` for a local one.
    pub sender_origin: Option<Foreign>,
    /// Server time of acceptance (µs).
    pub posted_at: i64,
    /// Ciphertext.
    pub body: Bytes,
}

/// A successful append.
#[derive(Debug, Clone)]
pub enum Appended {
    /// Stored now. `member_epoch` is the stream's membership epoch at commit.
    New {
        /// The event as stored.
        event: StoredEvent,
        /// The stream's `member_epoch` when the event was appended.
        member_epoch: i64,
    },
    /// An exact retry of an event stored earlier.
    Retry {
        /// The original event id.
        event_id: i64,
    },
}

impl Appended {
    /// The event id to answer with.
    pub fn event_id(&self) -> i64 {
        match self {
            Appended::New { event, .. } => event.event_id,
            Appended::Retry { event_id } => *event_id,
        }
    }
}

/// A member's view of a stream's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAccess {
    /// Newest event id (0 = empty).
    pub head_event_id: i64,
    /// Membership epoch at the time of the check.
    pub member_epoch: i64,
}

/// Which page of a stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Events with id > the value, ascending.
    After(i64),
    /// The last events with id < the value, ascending.
    Before(i64),
}

/// A page of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    /// Ascending.
    pub events: Vec<StoredEvent>,
    /// More exist in the paging direction.
    pub has_more: bool,
    /// Stream head at the time of the read.
    pub head_event_id: i64,
    /// The stream's membership epoch at the time of the read (the reader was a member).
    pub member_epoch: i64,
    /// The stream's horizon at the time of the read: events below it were deleted by
    /// retention (0 or 1: none were).
    pub first_event_id: i64,
}

/// Events read for the fan-out, with the stream's membership epoch at read time (never
/// older than the epoch any of these events was appended under).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventRun {
    /// Ascending.
    pub events: Vec<StoredEvent>,
    /// The stream's current membership epoch.
    pub member_epoch: i64,
}

/// Users' public keys and private-key backups.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Makes `key` the user's current key (or does nothing if it already is). A key the
    /// user had before and replaced is ALREADY_EXISTS.
    async fn post_public_key(
        &self,
        user: UserId,
        key: &CanonicalKey,
        now: i64,
    ) -> Result<PostKeyOutcome>;
    /// The user's keys, newest first (the current one first; empty if none): at most
    /// `limit` of them within `budget`; `has_more` when older keys exist.
    async fn fetch_public_keys(
        &self,
        user: UserId,
        limit: usize,
        budget: Budget<StoredKey>,
    ) -> Result<Paged<StoredKey>>;
    /// Stores the private-key blob; compare-and-set on `expected` (0 = none stored yet).
    /// Returns the new version.
    async fn post_private_key(
        &self,
        user: UserId,
        blob: &[u8],
        expected: Option<u64>,
        now: i64,
    ) -> Result<u64>;
    /// The blob and its version.
    async fn fetch_private_key(&self, user: UserId) -> Result<Option<(Vec<u8>, u64)>>;
}

/// Channel pairs, membership and invites.
#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Creates a pair with `owner` as owner and only member.
    async fn create_pair(&self, owner: UserId, ids: &PairIds, now: i64) -> Result<()>;
    /// Stores an invite from a member and makes the invitee a member, within `caps`.
    async fn send_invite(
        &self,
        from: UserId,
        pair: PairId,
        to: UserId,
        body: &[u8],
        now: i64,
        caps: InviteCaps,
    ) -> Result<InviteRecord>;
    /// The user's invites with id > `after`, oldest first: at most `limit` within `budget`.
    async fn fetch_invites(
        &self,
        user: UserId,
        after: i64,
        limit: usize,
        budget: Budget<InviteRecord>,
    ) -> Result<Paged<InviteRecord>>;
    /// The id of the user's newest invite (0 = none).
    async fn last_invite_id(&self, user: UserId) -> Result<i64>;
    /// Pairs the user is a member of (with `include_departed`, also those they left or
    /// were removed from and are not a member of again, with their [`Departure`]), oldest
    /// first (by creation time, then pair id), after the pair `after` (which must be one
    /// of those listed: [`cursor_denied`] otherwise): at most `limit` within `budget`.
    async fn list_pairs(
        &self,
        user: UserId,
        after: Option<PairId>,
        include_departed: bool,
        limit: usize,
        budget: Budget<PairInfo>,
    ) -> Result<Paged<PairInfo>>;
    /// Removes the user from the pair (ownership passes on if they owned it) and records
    /// the departure.
    async fn leave_pair(&self, user: UserId, pair: PairId, now: i64) -> Result<PairIds>;
    /// The owner removes another member; the departure names the owner.
    async fn remove_member(
        &self,
        owner: UserId,
        pair: PairId,
        user: UserId,
        now: i64,
    ) -> Result<PairIds>;
}

/// Stream events: ordered appends and reads.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends a batch of posts in one transaction. The outer error means nothing was
    /// written; otherwise each post has its own outcome, in the order given.
    async fn append_batch(
        &self,
        batch: &[AppendRequest],
        max_gap: i64,
        now: i64,
    ) -> Result<Vec<Result<Appended>>>;
    /// Checks that the user may read the stream and returns its head.
    async fn stream_access(&self, user: UserId, stream: StreamId) -> Result<StreamAccess>;
    /// A page of a stream's history for a member: at most `limit` events within `budget`,
    /// the ones nearest the cursor (for [`Page::Before`], the newest before it).
    async fn fetch_events(
        &self,
        user: UserId,
        stream: StreamId,
        page: Page,
        limit: usize,
        budget: Budget<StoredEvent>,
    ) -> Result<EventPage>;
    /// Events with `after < id <= up_to`, ascending, at most `limit`, without an access
    /// check (the fan-out checks access itself via the epoch).
    async fn read_events(
        &self,
        stream: StreamId,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<EventRun>;
    /// Current heads and membership epochs of the given streams: `(stream, head event id,
    /// member_epoch)` (unknown streams are left out).
    async fn stream_heads(&self, streams: &[Uuid]) -> Result<Vec<(Uuid, i64, i64)>>;
}

/// The caps on invites other homeservers deliver (README "Federation"); 0 turns one off.
/// A delivered invite is pending while it is younger than the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCaps {
    /// `federation.max_delivered_invites_per_invitee`: pending from one peer to one user.
    pub per_invitee: u64,
    /// `federation.max_delivered_invites_per_peer`: pending from one peer in total.
    pub per_peer: u64,
    /// `federation.delivered_invites_window_secs`, in microseconds.
    pub window_micros: i64,
}

impl DeliveryCaps {
    /// The pending invites worth counting for `cap` (one more is never needed).
    pub fn scan_limit(cap: u64) -> i64 {
        i64::try_from(cap).unwrap_or(i64::MAX)
    }

    /// Refuses a delivery when `count` pending invites (the oldest sent at `oldest`) have
    /// reached `cap`, with the time until the oldest stops counting. `per_peer` says which
    /// cap it is.
    pub fn check(
        &self,
        cap: u64,
        (count, oldest): (i64, Option<i64>),
        now: i64,
        peer: &str,
        to: UserId,
        per_peer: bool,
    ) -> Result<()> {
        if cap == 0 || (count.max(0) as u64) < cap {
            return Ok(());
        }
        let frees_at = oldest.unwrap_or(now).saturating_add(self.window_micros);
        let retry_after_ms = u64::try_from(frees_at.saturating_sub(now) / 1000)
            .unwrap_or(0)
            .max(1);
        Err(too_many_delivered(
            peer,
            to,
            cap,
            self.window_micros / 1_000_000,
            per_peer,
            retry_after_ms,
        ))
    }
}

/// An invite another homeserver delivers, as [`FederationStore::deliver_invite`] stores it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The homeserver the pair lives on (the caller).
    pub pair_homeserver: &'a str,
    /// The pair invited into.
    pub pair: &'a PairIds,
    /// The inviter.
    pub from: Inviter<'a>,
    /// The opaque invite.
    pub body: &'a [u8],
}

/// Who an invite another homeserver delivers is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inviter<'a> {
    /// One of our users.
    Local(UserId),
    /// A user of another homeserver, given an id here in the transaction that stores the
    /// invite (never for a refused delivery).
    Foreign(&'a Foreign),
}

/// Users of other homeservers and what federation stores for them (DESIGN §9). A foreign
/// user's row (`foreign_users`) is written only in a transaction that stores something
/// for them (a membership, a delivered invite from them), so a refused request leaves
/// none behind.
#[async_trait]
pub trait FederationStore: Send + Sync {
    /// The id this database knows `who` by (negative), or `None` when they hold nothing
    /// here.
    async fn foreign_user(&self, who: &Foreign) -> Result<Option<UserId>>;
    /// Checks, changing nothing, that member `from` may add foreign user `to` to the pair
    /// (within the member cap); the pair's ids. What SendInvite asks before delivering an
    /// invite to another homeserver.
    async fn check_new_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
    ) -> Result<PairIds>;
    /// Makes foreign user `to` (whose invite their homeserver accepted) a member, with the
    /// same checks as [`FederationStore::check_new_member`], giving them an id in the same
    /// transaction if they have none; a member already is one. The pair's ids and `to`'s
    /// id.
    async fn add_member(
        &self,
        from: UserId,
        pair: PairId,
        to: &Foreign,
        caps: InviteCaps,
        now: i64,
    ) -> Result<(PairIds, UserId)>;
    /// Stores an invite that homeserver `invite.pair_homeserver` delivered into its pair
    /// for local user `to`, unless the same one (pair, inviter, bytes) was
    /// stored before: then that one is returned. A new one over `caps` is
    /// RESOURCE_EXHAUSTED with the time until a pending one stops counting. A foreign
    /// inviter is given an id in the same transaction (the record's `from_user`). Local
    /// users only get invites this way once they have a key (the caller checks).
    async fn deliver_invite(
        &self,
        to: UserId,
        invite: Delivery<'_>,
        now: i64,
        caps: DeliveryCaps,
    ) -> Result<InviteRecord>;
}

/// Everything the service needs from a database. Each backend implements the parts in
/// its own files (`keys.rs`, `rooms.rs`, `events.rs`, `federation.rs`, `kt.rs`,
/// `kt_evidence.rs`).
#[async_trait]
pub trait Store:
    KeyStore
    + RoomStore
    + EventStore
    + FederationStore
    + KtStore
    + KtEvidenceStore
    + RetentionStore
    + erase::EraseStore
    + 'static
{
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// Closes the connections.
    async fn close(&self);
}

/// A shared, dynamically chosen store.
pub type DynStore = Arc<dyn Store>;

/// The client-side deadline of a database operation when none is configured (the
/// default of `db_timeout_ms`).
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of a SQLite file each connection maps into memory when none is configured
/// (the default of `sqlite_mmap_mb`), in MiB.
pub const DEFAULT_SQLITE_MMAP_MB: u64 = 256;

/// Opens the store named by `url` with the default deadline (see [`open_with_deadline`]).
pub async fn open(url: &str, max_connections: u32, replica_id: Uuid) -> anyhow::Result<DynStore> {
    open_with_deadline(
        url,
        max_connections,
        DEFAULT_DB_TIMEOUT,
        DEFAULT_SQLITE_MMAP_MB,
        replica_id,
    )
    .await
}

/// Opens the store named by `url` (`postgres://`, `postgresql://`, `sqlite:`) and runs its
/// migrations. Every operation of the returned store answers within `limit`
/// (UNAVAILABLE when the database does not; see [`deadline`]). `sqlite_mmap_mb`: how much
/// of a SQLite file each connection reads through a memory map (0: none; Postgres: unused).
/// `replica_id` tags this process's change notifications (Postgres).
pub async fn open_with_deadline(
    url: &str,
    max_connections: u32,
    limit: Duration,
    sqlite_mmap_mb: u64,
    replica_id: Uuid,
) -> anyhow::Result<DynStore> {
    let inner: DynStore = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(postgres::PgStore::open(url, max_connections, limit, replica_id).await?)
    } else if url.starts_with("sqlite:") {
        Arc::new(sqlite::SqliteStore::open(url, max_connections, limit, sqlite_mmap_mb).await?)
    } else {
        anyhow::bail!(
            "database_url is neither postgres://… nor sqlite://…; leave it empty for the \
             embedded SQLite file in the data directory"
        )
    };
    Ok(Arc::new(deadline::Deadline::new(
        inner,
        limit,
        max_connections,
    )))
}

/// Runs the migrations of the store named by `url` and closes it.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let store = open(url, 1, Uuid::new_v4()).await?;
    store.close().await;
    Ok(())
}
