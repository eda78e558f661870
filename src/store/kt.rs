//! Key transparency in the database (DESIGN §12; the bytes in docs/kt.md): the log's
//! entries and complete subtrees, the map's nodes and the signed heads (migration 0006),
//! and the one transaction that publishes an epoch.
//!
//! The backends implement two small traits over a connection — [`KtConn`] (the reads of
//! a proof) and [`KtTx`] (a publishing transaction's statements) — and the epoch itself
//! ([`publish`]) and the reads of a proof ([`read`]) are written once, here, over the
//! pure functions of `crate::merkle`.
//!
//! **An epoch** (one transaction, [`publish`], in `kt_publish.rs`): read the newest head;
//! take the keys not yet logged (`public_keys.kt_leaf IS NULL`) and the erasures not yet
//! published (`erased_users.kt_published` false, migration 0010), oldest first, at most
//! [`PublishLimits::max_entries`] (a user's pending keys always together, in seq order);
//! append one entry per key, each chained to the user's previous entry, and one "erased"
//! entry (fingerprint 32 zero bytes) per erasure of a user who has an entry (an erasure
//! of a user without one is marked done and logs nothing); store the log's
//! subtrees those appends complete; set each user's map value to their newest entry's
//! hash (reading the map's nodes through the transaction, with the epoch's own changes
//! laid over them); compute both roots; sign the head; write it all and the head, then
//! the caller commits. With nothing pending, the newest head is re-signed with a new
//! timestamp once it is [`PublishLimits::refresh_after_ms`] old (same size, same roots:
//! the row is updated, so one size still has one row). A fresh database gets a head of
//! size 0 at the first epoch.

use std::time::Duration;

use async_trait::async_trait;

use super::{StoredKey, UserId};
use crate::error::{Error, Result};
use crate::merkle::NodeMap;
use crate::merkle::log::{self, Hash, Node};
use crate::merkle::map::{self, Prefix, Stored};
use crate::merkle::records::{self, Entry};

/// A signed tree head as stored (docs/kt.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// The `server_name` the head was signed for.
    pub server_name: String,
    /// Entries in the log.
    pub tree_size: u64,
    /// The RFC 9162 root of the log.
    pub log_root: Hash,
    /// The map's root.
    pub map_root: Hash,
    /// When it was signed, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Ed25519 over [`TreeHead::signed_bytes`].
    pub signature: Vec<u8>,
    /// The signing key's id (as `secretd federation-key` prints it).
    pub key_id: String,
}

impl TreeHead {
    /// What the signature covers (docs/kt.md §4).
    pub fn signed_bytes(&self) -> Vec<u8> {
        records::head_input(
            &self.server_name,
            self.tree_size,
            &self.log_root,
            &self.map_root,
            self.timestamp_ms,
        )
    }
}

/// A log entry as stored (docs/kt.md §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its position in the log.
    pub leaf_index: u64,
    /// The (local) user.
    pub user: i64,
    /// The user's entry number, from 1.
    pub seq: u64,
    /// SHA-256 of the key's SPKI DER.
    pub fingerprint: Hash,
    /// When the key was posted, ms since the Unix epoch.
    pub posted_at_ms: u64,
    /// The user's previous entry's hash (zeros for the first).
    pub prev_entry_hash: Hash,
    /// The stored hash of this entry (its RFC 9162 leaf hash).
    pub entry_hash: Hash,
}

impl LogEntry {
    /// The entry's hashed record, for homeserver `server`.
    pub fn record<'a>(&self, server: &'a str) -> Entry<'a> {
        Entry {
            server,
            user: self.user.max(0) as u64,
            seq: self.seq,
            fingerprint: self.fingerprint,
            posted_at_ms: self.posted_at_ms,
            prev_entry_hash: self.prev_entry_hash,
        }
    }
}

/// Ed25519 signing of the bytes given.
pub type SignFn = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// Signs tree heads: the server's name and Ed25519 key (DESIGN §9).
pub struct HeadSigner {
    /// This homeserver's `server_name`, hashed into every entry, map key and head.
    pub server_name: String,
    /// The key's id.
    pub key_id: String,
    /// Ed25519 signature of the bytes.
    pub sign: SignFn,
}

impl std::fmt::Debug for HeadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadSigner")
            .field("server_name", &self.server_name)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The bounds of one epoch.
#[derive(Debug, Clone)]
pub struct PublishLimits {
    /// Most entries one epoch appends (`kt_max_entries_per_epoch`); the rest wait for the
    /// next. A user's pending keys are never split, so an epoch may append a few more.
    pub max_entries: usize,
    /// With nothing pending, the newest head is re-signed once it is this old.
    pub refresh_after_ms: u64,
    /// Test hook: sleep this long inside the transaction, everything written, before the
    /// commit (the crash tests kill the process there).
    pub pause_before_commit: Option<Duration>,
}

/// What an epoch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Another replica is publishing now (Postgres advisory lock): nothing done.
    Busy,
    /// Nothing pending, and the newest head is recent: nothing written.
    Unchanged(TreeHead),
    /// Nothing pending: the newest head re-signed with a new timestamp.
    Resigned(TreeHead),
    /// Entries appended under a new head (the first head of a fresh log: 0 entries).
    Appended {
        /// The new head.
        head: TreeHead,
        /// How many entries it added.
        entries: u64,
    },
}

/// A key waiting to be logged: a `public_keys` row whose `kt_leaf` is NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    /// The user.
    pub user: i64,
    /// The row's seq in `public_keys`.
    pub seq: i64,
    /// SHA-256 of the key.
    pub fingerprint: Vec<u8>,
    /// When it was posted (µs).
    pub posted_at: i64,
}

/// An erasure waiting for the publisher: an `erased_users` row whose `kt_published` is
/// false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingErasure {
    /// The user.
    pub user: i64,
    /// When they were erased (µs).
    pub erased_at: i64,
}

/// What a proof for one user reads.
#[derive(Debug, Clone)]
pub struct UserQuery {
    /// The user.
    pub user: UserId,
    /// Their map key ([`records::map_key`] of this server).
    pub map_key: Hash,
    /// Entries with a seq above this (0 = from the newest down); the newest entry comes
    /// even when it is not above it.
    pub after_seq: u64,
    /// Most entries, newest first.
    pub max_entries: usize,
    /// How deep to read the map below the root (None: [`default_depth`] of the log).
    pub map_depth: Option<u16>,
    /// Map prefixes shorter than this are not read (the caller holds them: `kt::cache`).
    pub map_from_bits: u16,
}

/// One read of a proof: the newest head and what proves things against it.
#[derive(Debug, Clone, Default)]
pub struct KtQuery {
    /// A user's entries and map path.
    pub user: Option<UserQuery>,
    /// The log size a consistency proof starts from (0 = none).
    pub consistency_from: u64,
    /// Read against this head (the newest the publisher knows of, kept in memory)
    /// instead of reading the newest stored one: one statement fewer. Rows read after it
    /// may be newer, as always; the caller checks them against it.
    pub head: Option<TreeHead>,
    /// Also read the user's newest public keys, at most this many (0: none), on the same
    /// connection — in the same statement on Postgres (FetchKey's keys and proof in one
    /// round trip).
    pub keys: usize,
    /// Log subtrees the caller holds already (`kt::cache`): not read again, and in
    /// [`KtRows::log`] as given.
    pub log_known: NodeMap<Node, Hash>,
}

/// What [`KtQuery`] read. Rows read after the head may be newer than it (another epoch
/// committed in between): the caller checks them against the head and reads again.
#[derive(Debug, Clone, Default)]
pub struct KtRows {
    /// The newest head; `None` before the first epoch.
    pub head: Option<TreeHead>,
    /// The user's entries within the head, newest first.
    pub entries: Vec<LogEntry>,
    /// Every map prefix read, with what is stored there (None: nothing).
    pub map: NodeMap<Prefix, Option<Stored>>,
    /// The log nodes of the consistency proof from `consistency_from` (none when that
    /// is 0 or not below the head's size).
    pub log: NodeMap<Node, Hash>,
    /// The user's public keys when [`KtQuery::keys`] asked for them, newest first (read
    /// even before the first head).
    pub keys: Vec<StoredKey>,
}

/// The database's side of key transparency, on both backends.
#[async_trait]
pub trait KtStore: Send + Sync {
    /// Publishes one epoch (see the module doc) in one transaction — Postgres: under a
    /// transaction-scoped advisory lock, [`Published::Busy`] when another replica holds
    /// it; SQLite: on the single writer.
    async fn kt_publish(
        &self,
        signer: &HeadSigner,
        limits: &PublishLimits,
        now_ms: u64,
    ) -> Result<Published>;
    /// The newest of this server's heads.
    async fn kt_latest_head(&self) -> Result<Option<TreeHead>>;
    /// Reads what a proof needs, on one connection.
    async fn kt_read(&self, query: &KtQuery) -> Result<KtRows>;
    /// This server's heads with a tree size above `after`, ascending, at most `limit`.
    async fn kt_heads_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<TreeHead>>;
    /// Log entries with a leaf index above `after`, ascending, at most `limit`.
    async fn kt_entries_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<LogEntry>>;
    /// Stored log subtrees of `level` with an index above `after`, ascending.
    async fn kt_log_nodes_after(
        &self,
        level: u8,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Hash)>>;
    /// Stored map nodes after `after` in (bits, path) order, at most `limit`.
    async fn kt_map_nodes_after(
        &self,
        after: Option<Prefix>,
        limit: usize,
    ) -> Result<Vec<(Prefix, Stored)>>;
    /// A logged key (`public_keys.kt_leaf` set) whose entry does not record it (another
    /// user or fingerprint at that leaf, or no entry), as (user, seq, leaf); None when
    /// every one does.
    async fn kt_misfiled_key(&self) -> Result<Option<(i64, i64, i64)>>;
    /// A published erasure that the log does not record as it should, as (user, leaf):
    /// with a leaf, the entry there is not a zero-fingerprint entry of that user; without
    /// one, the user has an entry all the same (so the erasure should have been logged).
    /// None when every one checks out.
    async fn kt_misfiled_erasure(&self) -> Result<Option<(i64, Option<i64>)>>;
}

/// How deep a read of the map goes by default for a log of `entries`: about log2 of the
/// users plus 8 levels (a key deeper than that is read again to the bottom).
pub fn default_depth(entries: u64) -> u16 {
    (64 - entries.leading_zeros() as u16 + 8).min(256)
}

/// The stored bytes of a prefix's path: its first `bits` bits, in whole bytes.
pub fn path_bytes(p: &Prefix) -> &[u8] {
    &p.path[..usize::from(p.bits).div_ceil(8)]
}

/// A prefix from its stored columns.
pub fn prefix_from(bits: i64, path: &[u8]) -> Result<Prefix> {
    let bad = || Error::Internal(format!("kt_map_nodes holds a bad prefix ({bits} bits)"));
    let bits = u16::try_from(bits)
        .ok()
        .filter(|b| *b <= 256)
        .ok_or_else(bad)?;
    if path.len() != usize::from(bits).div_ceil(8) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    out[..path.len()].copy_from_slice(path);
    Ok(Prefix { bits, path: out })
}

/// A map node from its stored columns.
pub fn stored_from(
    interior: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
) -> Result<Stored> {
    match (interior, key, value) {
        (Some(h), None, None) => Ok(Stored::Interior(hash32(&h, "kt_map_nodes.interior_hash")?)),
        (None, Some(k), Some(v)) => Ok(Stored::Leaf {
            key: hash32(&k, "kt_map_nodes.leaf_key")?,
            value: hash32(&v, "kt_map_nodes.leaf_value")?,
        }),
        _ => Err(Error::Internal(
            "a kt_map_nodes row is neither an interior node nor a leaf".into(),
        )),
    }
}

/// The columns (interior_hash, leaf_key, leaf_value) of a map node.
pub type MapColumns = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// A map node as its stored columns.
pub fn columns_of(s: &Stored) -> MapColumns {
    match s {
        Stored::Interior(h) => (Some(h.to_vec()), None, None),
        Stored::Leaf { key, value } => (None, Some(key.to_vec()), Some(value.to_vec())),
    }
}

/// A 32-byte column.
pub fn hash32(bytes: &[u8], what: &str) -> Result<Hash> {
    Hash::try_from(bytes)
        .map_err(|_| Error::Internal(format!("{what} is {} bytes, not 32", bytes.len())))
}

/// A non-negative BIGINT column as u64.
pub fn unsigned(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Internal(format!("{what} is negative ({v})")))
}

/// A u64 as a BIGINT parameter.
pub fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `kt_heads` row: (tree_size, server_name, log_root, map_root, timestamp_ms,
/// signature, key_id), as both backends select it.
pub type HeadRow = (i64, String, Vec<u8>, Vec<u8>, i64, Vec<u8>, String);

impl TryFrom<HeadRow> for TreeHead {
    type Error = Error;
    fn try_from(row: HeadRow) -> Result<Self> {
        let (size, server_name, log_root, map_root, ts, signature, key_id) = row;
        Ok(TreeHead {
            server_name,
            tree_size: unsigned(size, "kt_heads.tree_size")?,
            log_root: hash32(&log_root, "kt_heads.log_root")?,
            map_root: hash32(&map_root, "kt_heads.map_root")?,
            timestamp_ms: unsigned(ts, "kt_heads.timestamp_ms")?,
            signature,
            key_id,
        })
    }
}

/// A `kt_entries` row: (leaf_index, user_id, seq, fingerprint, posted_at_ms,
/// prev_entry_hash, entry_hash), as both backends select it.
pub type EntryRow = (i64, i64, i64, Vec<u8>, i64, Vec<u8>, Vec<u8>);

impl TryFrom<EntryRow> for LogEntry {
    type Error = Error;
    fn try_from(row: EntryRow) -> Result<Self> {
        let (leaf, user, seq, fingerprint, posted, prev, hash) = row;
        Ok(LogEntry {
            leaf_index: unsigned(leaf, "kt_entries.leaf_index")?,
            user,
            seq: unsigned(seq, "kt_entries.seq")?,
            fingerprint: hash32(&fingerprint, "kt_entries.fingerprint")?,
            posted_at_ms: unsigned(posted, "kt_entries.posted_at_ms")?,
            prev_entry_hash: hash32(&prev, "kt_entries.prev_entry_hash")?,
            entry_hash: hash32(&hash, "kt_entries.entry_hash")?,
        })
    }
}

/// The reads a proof makes, on one connection.
#[async_trait]
pub trait KtConn: Send {
    /// The newest of this server's heads.
    async fn latest_head(&mut self) -> Result<Option<TreeHead>>;
    /// The user's entries with seq above `after_seq` and leaf index below `below_leaf`,
    /// newest first, at most `limit`.
    async fn user_entries(
        &mut self,
        user: i64,
        after_seq: u64,
        below_leaf: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>>;
    /// The stored map nodes at these prefixes (absent ones left out).
    async fn map_nodes(&mut self, prefixes: &[Prefix]) -> Result<Vec<(Prefix, Stored)>>;
    /// The stored log subtrees among these (absent ones left out).
    async fn log_nodes(&mut self, nodes: &[Node]) -> Result<Vec<(Node, Hash)>>;
    /// A user's newest public keys, at most `limit`, newest first.
    async fn public_keys(&mut self, user: i64, limit: usize) -> Result<Vec<StoredKey>>;
    /// What a proof reads after its head, as [`KtConn::user_entries`] (when `entries` is
    /// given), [`KtConn::map_nodes`] (when the user has an entry: a backend that reads
    /// all in one statement may return the nodes anyway), [`KtConn::log_nodes`] and
    /// [`KtConn::public_keys`] (when `keys` is given) do. One statement per part here;
    /// Postgres makes it one round trip.
    async fn proof_rows(
        &mut self,
        entries: Option<EntriesQuery>,
        prefixes: &[Prefix],
        nodes: &[Node],
        keys: Option<KeysQuery>,
    ) -> Result<ProofRows> {
        let mut out = ProofRows::default();
        if let Some(q) = keys {
            out.keys = self.public_keys(q.user, q.limit).await?;
        }
        if let Some(q) = entries {
            out.entries = self
                .user_entries(q.user, q.after_seq, q.below_leaf, q.limit)
                .await?;
            if !out.entries.is_empty() {
                out.map = self.map_nodes(prefixes).await?;
            }
        }
        if !nodes.is_empty() {
            out.log = self.log_nodes(nodes).await?;
        }
        Ok(out)
    }
}

/// The entries [`KtConn::proof_rows`] reads: as [`KtConn::user_entries`]'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct EntriesQuery {
    /// The user.
    pub user: i64,
    /// Entries with a seq above this.
    pub after_seq: u64,
    /// Entries with a leaf index below this (the head's size).
    pub below_leaf: u64,
    /// Most entries, newest first.
    pub limit: usize,
}

/// The keys [`KtConn::proof_rows`] reads: as [`KtConn::public_keys`]'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct KeysQuery {
    /// The user.
    pub user: i64,
    /// Most keys, newest first.
    pub limit: usize,
}

/// What [`KtConn::proof_rows`] read.
#[derive(Debug, Default)]
pub struct ProofRows {
    /// The user's public keys, newest first.
    pub keys: Vec<StoredKey>,
    /// The user's entries, newest first.
    pub entries: Vec<LogEntry>,
    /// The map nodes found.
    pub map: Vec<(Prefix, Stored)>,
    /// The log nodes found.
    pub log: Vec<(Node, Hash)>,
}

/// An epoch's changes, written by [`KtTx::write`].
#[derive(Debug, Default)]
pub struct Epoch {
    /// New entries, in log order.
    pub entries: Vec<LogEntry>,
    /// New complete subtrees (leaves included).
    pub log_nodes: Vec<(Node, Hash)>,
    /// Map nodes to upsert (Some) or delete (None).
    pub map: Vec<(Prefix, Option<Stored>)>,
    /// `public_keys` rows now logged: (user, seq, leaf index).
    pub logged: Vec<(i64, i64, u64)>,
    /// Erasures now published: (user, the leaf of their erased entry, or None when the
    /// user had no entry and none was appended).
    pub erasures: Vec<(i64, Option<u64>)>,
    /// The new head (inserted).
    pub head: Option<TreeHead>,
}

/// The statements of a publishing transaction.
#[async_trait]
pub trait KtTx: KtConn {
    /// Keys not yet logged, oldest first: the users of the oldest `limit` pending rows,
    /// each with all their pending rows in seq order.
    async fn pending(&mut self, limit: usize) -> Result<Vec<PendingKey>>;
    /// Erasures not yet published, oldest first (erased_at, then user), at most `limit`.
    async fn pending_erasures(&mut self, limit: usize) -> Result<Vec<PendingErasure>>;
    /// The newest entry of each of these users who has one: (user, seq, entry hash).
    async fn last_entries(&mut self, users: &[i64]) -> Result<Vec<(i64, u64, Hash)>>;
    /// Writes an epoch.
    async fn write(&mut self, epoch: &Epoch) -> Result<()>;
    /// Replaces the timestamp and signature of the head of `head.tree_size`.
    async fn resign(&mut self, head: &TreeHead) -> Result<()>;
}

/// Binds a head's columns to `sql::KT_INSERT_HEAD` (both backends).
macro_rules! bind_new_head {
    ($query:expr, $h:expr) => {
        $query
            .bind($crate::store::kt::signed($h.tree_size))
            .bind(&$h.server_name)
            .bind(&$h.log_root[..])
            .bind(&$h.map_root[..])
            .bind($crate::store::kt::signed($h.timestamp_ms))
            .bind(&$h.signature)
            .bind(&$h.key_id)
    };
}
pub(crate) use bind_new_head;

/// Binds a head's columns to `sql::KT_RESIGN_HEAD` (both backends).
macro_rules! bind_resigned_head {
    ($query:expr, $h:expr) => {
        $query
            .bind($crate::store::kt::signed($h.tree_size))
            .bind(&$h.server_name)
            .bind($crate::store::kt::signed($h.timestamp_ms))
            .bind(&$h.signature)
            .bind(&$h.key_id)
    };
}
pub(crate) use bind_resigned_head;

/// The test hook of [`PublishLimits::pause_before_commit`]: sleeps inside the epoch's
/// transaction, everything written, when the epoch wrote anything.
pub async fn pause_before_commit(limits: &PublishLimits, published: &Published) {
    if let Some(pause) = limits.pause_before_commit
        && !matches!(published, Published::Unchanged(_) | Published::Busy)
    {
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            "key transparency: epoch written, pausing before COMMIT (test hook)"
        );
        tokio::time::sleep(pause).await;
    }
}

pub use super::kt_publish::publish;

/// Reads what `query` asks for on one connection.
pub async fn read(conn: &mut dyn KtConn, query: &KtQuery) -> Result<KtRows> {
    let head = match &query.head {
        Some(head) => Some(head.clone()),
        None => conn.latest_head().await?,
    };
    let keys = query
        .user
        .as_ref()
        .filter(|_| query.keys > 0)
        .map(|q| KeysQuery {
            user: q.user.get(),
            limit: query.keys,
        });
    let Some(head) = head else {
        // Before the first epoch: the keys alone.
        let mut rows = KtRows::default();
        if keys.is_some() {
            rows.keys = conn.proof_rows(None, &[], &[], keys).await?.keys;
        }
        return Ok(rows);
    };
    let size = head.tree_size;
    let mut rows = KtRows::default();
    let from = query.consistency_from;
    let mut nodes = match from > 0 && from < size {
        true => log::needed_for_consistency(from, size),
        false => Vec::new(),
    };
    nodes.retain(|n| !query.log_known.contains_key(n));
    let prefixes = match &query.user {
        Some(q) => {
            let mut needed = map::needed(
                &q.map_key,
                q.map_depth.unwrap_or_else(|| default_depth(size)),
            );
            needed.retain(|p| p.bits >= q.map_from_bits);
            needed
        }
        None => Vec::new(),
    };
    let entries = query.user.as_ref().map(|q| EntriesQuery {
        user: q.user.get(),
        after_seq: q.after_seq,
        below_leaf: size,
        limit: q.max_entries.max(1),
    });
    let read = conn.proof_rows(entries, &prefixes, &nodes, keys).await?;
    rows.keys = read.keys;
    rows.entries = read.entries;
    rows.log = read.log.into_iter().collect();
    rows.log
        .extend(query.log_known.iter().map(|(n, h)| (*n, *h)));
    if let Some(q) = &query.user {
        if rows.entries.is_empty() && q.after_seq > 0 {
            // Nothing above after_seq: the newest entry still comes.
            let newest = EntriesQuery {
                user: q.user.get(),
                after_seq: 0,
                below_leaf: size,
                limit: 1,
            };
            let again = conn.proof_rows(Some(newest), &prefixes, &[], None).await?;
            rows.entries = again.entries;
            rows.map = found(&prefixes, again.map);
        } else if !rows.entries.is_empty() {
            rows.map = found(&prefixes, read.map);
        }
    }
    rows.head = Some(head);
    Ok(rows)
}

/// Every prefix read, with the node found there (None: nothing).
fn found(prefixes: &[Prefix], nodes: Vec<(Prefix, Stored)>) -> NodeMap<Prefix, Option<Stored>> {
    let mut map: NodeMap<Prefix, Option<Stored>> = prefixes.iter().map(|p| (*p, None)).collect();
    for (p, s) in nodes {
        map.insert(p, Some(s));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip_through_their_columns() {
        let key = [0xA5u8; 32];
        for bits in [0u16, 1, 7, 8, 9, 255, 256] {
            let p = Prefix::of(&key, bits);
            let bytes = path_bytes(&p);
            assert_eq!(bytes.len(), usize::from(bits).div_ceil(8));
            assert_eq!(prefix_from(i64::from(bits), bytes).unwrap(), p);
        }
        assert!(prefix_from(257, &[0; 33]).is_err());
        assert!(prefix_from(9, &[0; 1]).is_err());
        assert_eq!(default_depth(0), 8);
        assert_eq!(default_depth(100_000), 25);
        assert_eq!(default_depth(u64::MAX), 72);
    }
}
