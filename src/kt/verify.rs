//! `secretd kt-verify`: the operator's audit of the key transparency log (DESIGN §12).
//!
//! Everything is recomputed from the entries' own fields and compared with what the
//! database stores and what the heads signed, reading every table in pages:
//!
//! 1. every head: signed by this server's key for this `server_name`, and of the sizes
//!    the log went through (a head of size 0 is the empty log), the newest covering
//!    every entry;
//! 2. every entry, in log order: its hash from its fields (docs/kt.md §1), its chain
//!    (seq counting from 1 per user, `prev_entry_hash` the user's previous entry's hash);
//! 3. at each head's size, the RFC 9162 root of the entries so far and the root of the
//!    map of each user's newest entry, against the head's roots;
//! 4. every stored subtree of the log (`kt_log_nodes`) and every map node
//!    (`kt_map_nodes`) against the recomputed ones, none missing and none extra;
//! 5. every logged key (`public_keys.kt_leaf`) is recorded by the entry at its leaf;
//! 6. every published erasure (`erased_users`, migration 0010) with a leaf points at a
//!    zero-fingerprint entry of that user, one without a leaf is of a user with no entry,
//!    and no entry follows a user's erased entry.
//!
//! The first difference stops it, named. It holds the map in memory (a few hundred
//! bytes per user) and one hash per entry.

use std::collections::{HashMap, HashSet};

use ring::signature::{ED25519, UnparsedPublicKey};

use crate::merkle::log::{self, Hash};
use crate::merkle::map::{self, Prefix, Stored};
use crate::merkle::records;
use crate::store::DynStore;
use crate::store::kt::TreeHead;
use crate::store::kt_publish::ERASED_FINGERPRINT;

/// Rows read per page.
const PAGE: usize = 5_000;

/// What checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Heads checked.
    pub heads: u64,
    /// Entries in the log.
    pub entries: u64,
    /// Users with an entry.
    pub users: u64,
    /// Stored log subtrees checked.
    pub log_nodes: u64,
    /// Stored map nodes checked.
    pub map_nodes: u64,
    /// The newest head.
    pub newest: Option<TreeHead>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key transparency log verified: {} heads, {} entries of {} users, {} log subtrees \
             and {} map nodes match what was recomputed from the entries",
            self.heads, self.entries, self.users, self.log_nodes, self.map_nodes
        )?;
        if let Some(h) = &self.newest {
            write!(
                f,
                "; the newest head (tree size {}, signed at {} ms by key {}) is this server's",
                h.tree_size, h.timestamp_ms, h.key_id
            )?;
        }
        Ok(())
    }
}

/// The key the heads must be signed with.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// This server's `server_name`.
    pub server_name: &'a str,
    /// The raw Ed25519 public key.
    pub public_key: &'a [u8],
    /// Its key id.
    pub key_id: &'a str,
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// A difference between the log and what it should be.
fn mismatch(what: String) -> anyhow::Error {
    anyhow::anyhow!("key transparency log mismatch: {what}")
}

/// The heads, read in pages, in size order.
struct Heads<'a> {
    store: &'a DynStore,
    page: std::collections::VecDeque<TreeHead>,
    after: Option<u64>,
    done: bool,
}

impl Heads<'_> {
    async fn peek(&mut self) -> anyhow::Result<Option<&TreeHead>> {
        if self.page.is_empty() && !self.done {
            let page = self.store.kt_heads_after(self.after, PAGE).await?;
            self.done = page.len() < PAGE;
            self.after = page.last().map(|h| h.tree_size).or(self.after);
            self.page.extend(page);
        }
        Ok(self.page.front())
    }
}

/// Audits the log in `store` (see the module doc).
pub async fn verify(store: &DynStore, expected: &Expected<'_>) -> anyhow::Result<Report> {
    let verifier = UnparsedPublicKey::new(&ED25519, expected.public_key);
    let server = expected.server_name;
    let mut report = Report {
        heads: 0,
        entries: 0,
        users: 0,
        log_nodes: 0,
        map_nodes: 0,
        newest: None,
    };
    let mut heads = Heads {
        store,
        page: Default::default(),
        after: None,
        done: false,
    };
    let mut lasts: HashMap<i64, (u64, Hash)> = HashMap::new();
    let mut erased: HashSet<i64> = HashSet::new();
    let mut leaves: Vec<Hash> = Vec::new();
    let mut frontier: Vec<(u8, Hash)> = Vec::new();
    let mut map_nodes: HashMap<Prefix, Stored> = HashMap::new();
    let mut map_root = map::EMPTY;
    let mut after = None;
    let mut at_size = AtSize {
        verifier: &verifier,
        expected,
        report: &mut report,
    };
    at_size.check(&mut heads, 0, &frontier, &map_root).await?;
    loop {
        let page = store.kt_entries_after(after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.leaf_index);
        for e in page {
            let leaf = leaves.len() as u64;
            let at = format!(
                "the entry at leaf {} (user {}, seq {})",
                e.leaf_index, e.user, e.seq
            );
            if e.leaf_index != leaf {
                return Err(mismatch(format!("{at} is where leaf {leaf} should be")));
            }
            if erased.contains(&e.user) {
                return Err(mismatch(format!(
                    "{at} follows the user's erased entry: an erased user has no keys"
                )));
            }
            if e.fingerprint == ERASED_FINGERPRINT {
                erased.insert(e.user);
            }
            let (seq, prev) = lasts
                .get(&e.user)
                .map_or((1, [0; 32]), |(s, h)| (s + 1, *h));
            if e.seq != seq || e.prev_entry_hash != prev {
                return Err(mismatch(format!(
                    "{at} breaks the user's chain: expected seq {seq} after {}, found seq {} \
                     after {}",
                    hex(&prev),
                    e.seq,
                    hex(&e.prev_entry_hash)
                )));
            }
            let hash = e.record(server).hash();
            if hash != e.entry_hash {
                return Err(mismatch(format!(
                    "{at}: its fields hash to {} for server {server:?}, but entry_hash is {}",
                    hex(&hash),
                    hex(&e.entry_hash)
                )));
            }
            lasts.insert(e.user, (e.seq, hash));
            leaves.push(hash);
            push_leaf(&mut frontier, hash);
            let key = records::map_key(server, e.user.max(0) as u64);
            let mut changes = map::Changes::new();
            map_root = map::set(
                &key,
                &hash,
                &mut |p| map_nodes.get(p).copied(),
                &mut changes,
            );
            for (p, s) in changes {
                match s {
                    Some(s) => map_nodes.insert(p, s),
                    None => map_nodes.remove(&p),
                };
            }
            at_size
                .check(&mut heads, leaves.len() as u64, &frontier, &map_root)
                .await?;
        }
    }
    if let Some(head) = heads.peek().await? {
        return Err(mismatch(format!(
            "a head of tree size {} exists, but the log holds {} entries",
            head.tree_size,
            leaves.len()
        )));
    }
    let covered = report.newest.as_ref().map_or(0, |h| h.tree_size);
    if covered != leaves.len() as u64 {
        return Err(mismatch(format!(
            "the log holds {} entries, but the newest head covers {covered}: entries were \
             written without their head",
            leaves.len()
        )));
    }
    report.entries = leaves.len() as u64;
    report.users = lasts.len() as u64;
    report.log_nodes = check_log_nodes(store, leaves).await?;
    report.map_nodes = check_map_nodes(store, &map_nodes).await?;
    if let Some((user, seq, leaf)) = store.kt_misfiled_key().await? {
        return Err(mismatch(format!(
            "key {seq} of user {user} is marked logged at leaf {leaf} (public_keys.kt_leaf), \
             but that entry does not record it"
        )));
    }
    match store.kt_misfiled_erasure().await? {
        Some((user, Some(leaf))) => {
            return Err(mismatch(format!(
                "the erasure of user {user} is logged at leaf {leaf} (erased_users.kt_leaf), \
                 but that entry is not the user's erased entry (fingerprint of zeros)"
            )));
        }
        Some((user, None)) => {
            return Err(mismatch(format!(
                "the erasure of user {user} is marked published without an entry \
                 (erased_users.kt_leaf is NULL), but the log holds entries of that user"
            )));
        }
        None => {}
    }
    Ok(report)
}

/// Checks the heads of each size the log reaches.
struct AtSize<'a, 'k> {
    verifier: &'a UnparsedPublicKey<&'k [u8]>,
    expected: &'a Expected<'k>,
    report: &'a mut Report,
}

impl AtSize<'_, '_> {
    /// Checks every head of `size` (at most one) against the log's right edge and the
    /// map's root at that size; a head of a size the log skipped is a mismatch.
    async fn check(
        &mut self,
        heads: &mut Heads<'_>,
        size: u64,
        frontier: &[(u8, Hash)],
        map_root: &Hash,
    ) -> anyhow::Result<()> {
        while let Some(head) = heads.peek().await? {
            if head.tree_size > size {
                return Ok(());
            }
            let head = heads.page.pop_front().expect("peeked");
            check_head(&head, self.verifier, self.expected)?;
            if head.tree_size < size {
                return Err(mismatch(format!(
                    "the head of tree size {} was not met on the way to {size} entries",
                    head.tree_size
                )));
            }
            let log_root = frontier_root(frontier);
            if head.log_root != log_root {
                return Err(mismatch(format!(
                    "the head of tree size {size} signs the log root {}, but the first {size} \
                     entries hash to {}",
                    hex(&head.log_root),
                    hex(&log_root)
                )));
            }
            if head.map_root != *map_root {
                return Err(mismatch(format!(
                    "the head of tree size {size} signs the map root {}, but the users' newest \
                     entries among the first {size} give {}",
                    hex(&head.map_root),
                    hex(map_root)
                )));
            }
            self.report.heads += 1;
            self.report.newest = Some(head);
        }
        Ok(())
    }
}

/// A head's name, key and signature.
fn check_head(
    head: &TreeHead,
    verifier: &UnparsedPublicKey<&[u8]>,
    expected: &Expected<'_>,
) -> anyhow::Result<()> {
    let size = head.tree_size;
    if head.server_name != expected.server_name {
        return Err(mismatch(format!(
            "the head of tree size {size} is signed for server_name {:?}, not {:?}",
            head.server_name, expected.server_name
        )));
    }
    if head.key_id != expected.key_id {
        return Err(mismatch(format!(
            "the head of tree size {size} names key {}, not this server's key {}",
            head.key_id, expected.key_id
        )));
    }
    verifier
        .verify(&head.signed_bytes(), &head.signature)
        .map_err(|_| {
            mismatch(format!(
                "the signature of the head of tree size {size} does not verify under key {}",
                expected.key_id
            ))
        })
}

/// Appends a leaf to the log's right edge: (level, hash) of its complete subtrees,
/// largest first.
fn push_leaf(frontier: &mut Vec<(u8, Hash)>, leaf: Hash) {
    let mut node = (0u8, leaf);
    while let Some(&(level, left)) = frontier.last() {
        if level != node.0 {
            break;
        }
        frontier.pop();
        node = (level + 1, log::node_hash(&left, &node.1));
    }
    frontier.push(node);
}

/// The RFC 9162 root of the log whose right edge is `frontier`.
fn frontier_root(frontier: &[(u8, Hash)]) -> Hash {
    let mut iter = frontier.iter().rev();
    let Some(&(_, mut root)) = iter.next() else {
        return log::empty_root();
    };
    for (_, left) in iter {
        root = log::node_hash(left, &root);
    }
    root
}

/// Every stored log subtree against the ones the leaves make, level by level.
async fn check_log_nodes(store: &DynStore, leaves: Vec<Hash>) -> anyhow::Result<u64> {
    let mut level_hashes = leaves;
    let mut checked = 0;
    for level in 0u8..64 {
        let mut after = None;
        let mut seen = 0usize;
        'pages: loop {
            let page = store.kt_log_nodes_after(level, after, PAGE).await?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            after = Some(last);
            for (idx, hash) in page {
                let len = level_hashes.len();
                match usize::try_from(idx).unwrap_or(usize::MAX) {
                    i if i == seen && i < len => {
                        if level_hashes[i] != hash {
                            return Err(mismatch(format!(
                                "the stored log subtree (level {level}, index {idx}) is {}, but \
                                 the entries make it {}",
                                hex(&hash),
                                hex(&level_hashes[i])
                            )));
                        }
                        seen += 1;
                    }
                    // A gap: index `seen` is missing (said below).
                    i if i > seen && seen < len => break 'pages,
                    _ => {
                        return Err(mismatch(format!(
                            "the log subtree (level {level}, index {idx}) is stored, but the \
                             log has {len} of that level"
                        )));
                    }
                }
            }
        }
        if seen != level_hashes.len() {
            return Err(mismatch(format!(
                "the log subtree (level {level}, index {seen}) is not stored"
            )));
        }
        checked += seen as u64;
        if level_hashes.len() < 2 {
            // No complete subtree of the next level: none may be stored either.
            let extra = store.kt_log_nodes_after(level + 1, None, 1).await?;
            if let Some((idx, _)) = extra.first() {
                return Err(mismatch(format!(
                    "the log subtree (level {}, index {idx}) is stored, but the log has none \
                     of that level",
                    level + 1
                )));
            }
            break;
        }
        level_hashes = level_hashes
            .chunks_exact(2)
            .map(|p| log::node_hash(&p[0], &p[1]))
            .collect();
    }
    Ok(checked)
}

/// Every stored map node against the map the entries make.
async fn check_map_nodes(
    store: &DynStore,
    expected: &HashMap<Prefix, Stored>,
) -> anyhow::Result<u64> {
    let mut after = None;
    let mut seen = 0u64;
    loop {
        let page = store.kt_map_nodes_after(after, PAGE).await?;
        let Some(&(last, _)) = page.last() else {
            break;
        };
        after = Some(last);
        for (p, s) in page {
            if expected.get(&p) != Some(&s) {
                return Err(mismatch(format!(
                    "the map node at the {}-bit prefix {} is stored as {s:?}, but the entries \
                     make it {:?}",
                    p.bits,
                    hex(crate::store::kt::path_bytes(&p)),
                    expected.get(&p)
                )));
            }
            seen += 1;
        }
    }
    if seen != expected.len() as u64 {
        return Err(mismatch(format!(
            "{} map nodes are stored, but the entries make {}",
            seen,
            expected.len()
        )));
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_edge_gives_the_rfc_root() {
        let leaves: Vec<Hash> = (0..40u8).map(|i| log::leaf_hash(&[i])).collect();
        let mut frontier = Vec::new();
        assert_eq!(frontier_root(&frontier), log::empty_root());
        for (n, leaf) in leaves.iter().enumerate() {
            push_leaf(&mut frontier, *leaf);
            let size = n as u64 + 1;
            let mut stored = HashMap::new();
            for (i, h) in leaves[..=n].iter().enumerate() {
                stored.insert(
                    log::Node {
                        level: 0,
                        index: i as u64,
                    },
                    *h,
                );
                for (node, l, r) in log::completed_by(i as u64 + 1) {
                    let h = log::node_hash(&stored[&l], &stored[&r]);
                    stored.insert(node, h);
                }
            }
            assert_eq!(
                frontier_root(&frontier),
                log::root(size, &mut |n| stored[&n]),
                "{size}"
            );
        }
    }
}
