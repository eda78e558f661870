//! The epoch publisher of key transparency (the module doc of `store::kt` says what an
//! epoch does), written once over [`KtTx`]: pending keys and pending erasures, oldest
//! first, become log entries, map values and a signed head in the caller's transaction.
//!
//! **Erasures** (DESIGN §13, docs/kt.md §1 and §8): an erasure of a user who has an entry
//! appends one "erased" entry — fingerprint 32 zero bytes, seq the user's last + 1,
//! `posted_at_ms` the erasure's time, chained to the user's previous entry — and makes it
//! the user's map value; an erasure of a user without an entry is marked done and appends
//! nothing. Either way `erased_users.kt_published` is set in the epoch's transaction.

use std::collections::{HashMap, HashSet};

use super::kt::{
    Epoch, HeadSigner, KtTx, LogEntry, PendingErasure, PendingKey, PublishLimits, Published,
    TreeHead, default_depth, hash32,
};
use crate::error::{Error, Result};
use crate::merkle::log::{self, Hash, Node};
use crate::merkle::map::{self, Prefix, Stored};
use crate::merkle::records::{self, Entry};

/// The fingerprint of an erased entry (docs/kt.md §1).
pub const ERASED_FINGERPRINT: Hash = [0u8; 32];

/// One thing an epoch logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item<'a> {
    /// A key not yet logged.
    Key(&'a PendingKey),
    /// An erasure not yet published.
    Erased(&'a PendingErasure),
}

impl Item<'_> {
    fn user(&self) -> i64 {
        match self {
            Item::Key(k) => k.user,
            Item::Erased(e) => e.user,
        }
    }
}

/// What an epoch takes, in log order: the oldest `limit` pending rows of both kinds (keys
/// by `posted_at`, erasures by `erased_at`; a key before an erasure of the same time),
/// each key's user bringing all their pending keys (`keys` holds them: the backends'
/// [`KtTx::pending`] reads every pending key of the users of the oldest `limit` keys).
/// With no erasure this is exactly [`KtTx::pending`]'s list.
fn oldest_first<'a>(
    keys: &'a [PendingKey],
    erasures: &'a [PendingErasure],
    limit: usize,
) -> Vec<Item<'a>> {
    // (time, kind 0 = key / 1 = erasure, user, seq or 0, index)
    let mut rows: Vec<(i64, u8, i64, i64, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.posted_at, 0, k.user, k.seq, i))
        .chain(
            erasures
                .iter()
                .enumerate()
                .map(|(i, e)| (e.erased_at, 1, e.user, 0, i)),
        )
        .collect();
    rows.sort_unstable();
    rows.truncate(limit);
    let mut out = Vec::new();
    let mut users_taken: HashSet<i64> = HashSet::new();
    for (_, kind, user, _, i) in rows {
        if kind == 1 {
            out.push(Item::Erased(&erasures[i]));
        } else if users_taken.insert(user) {
            // The user's pending keys together, in seq order (as `pending` lists them).
            let mut theirs: Vec<&PendingKey> = keys.iter().filter(|k| k.user == user).collect();
            theirs.sort_by_key(|k| k.seq);
            out.extend(theirs.into_iter().map(Item::Key));
        }
    }
    out
}

/// Publishes one epoch through `tx` (see the module doc of `store::kt`); the caller
/// commits.
pub async fn publish(
    tx: &mut dyn KtTx,
    signer: &HeadSigner,
    limits: &PublishLimits,
    now_ms: u64,
) -> Result<Published> {
    let last = tx.latest_head().await?;
    let now_ms = now_ms.max(last.as_ref().map_or(0, |h| h.timestamp_ms));
    let limit = limits.max_entries.max(1);
    let keys = tx.pending(limit).await?;
    let erasures = tx.pending_erasures(limit).await?;
    let pending = oldest_first(&keys, &erasures, limit);
    let sign = |size, log_root, map_root| {
        let mut head = TreeHead {
            server_name: signer.server_name.clone(),
            tree_size: size,
            log_root,
            map_root,
            timestamp_ms: now_ms,
            signature: Vec::new(),
            key_id: signer.key_id.clone(),
        };
        head.signature = (signer.sign)(&head.signed_bytes());
        head
    };
    if pending.is_empty() {
        return match last {
            None => {
                let head = sign(0, log::empty_root(), map::EMPTY);
                let epoch = Epoch {
                    head: Some(head.clone()),
                    ..Epoch::default()
                };
                tx.write(&epoch).await?;
                Ok(Published::Appended { head, entries: 0 })
            }
            Some(h) if now_ms.saturating_sub(h.timestamp_ms) >= limits.refresh_after_ms => {
                let head = sign(h.tree_size, h.log_root, h.map_root);
                tx.resign(&head).await?;
                Ok(Published::Resigned(head))
            }
            Some(h) => Ok(Published::Unchanged(h)),
        };
    }
    let start = last.as_ref().map_or(0, |h| h.tree_size);
    let server = signer.server_name.as_str();

    // The log's right edge: the complete subtrees the old root is made of.
    let frontier = log::needed_for_consistency(start, start);
    let mut nodes: HashMap<Node, Hash> = tx.log_nodes(&frontier).await?.into_iter().collect();
    if let Some(missing) = frontier.iter().find(|n| !nodes.contains_key(n)) {
        return Err(Error::Internal(format!(
            "the key log of {start} entries lacks its subtree {missing:?}; run secretd kt-verify"
        )));
    }

    // Each user's newest entry so far.
    let mut users: Vec<i64> = pending.iter().map(Item::user).collect();
    users.sort_unstable();
    users.dedup();
    let mut lasts: HashMap<i64, (u64, Hash)> = tx
        .last_entries(&users)
        .await?
        .into_iter()
        .map(|(u, seq, h)| (u, (seq, h)))
        .collect();

    // The map's nodes the batch walks through, read at once (deeper ones on demand).
    let map_keys: HashMap<i64, Hash> = users
        .iter()
        .map(|u| (*u, records::map_key(server, (*u).max(0) as u64)))
        .collect();
    let depth = default_depth(start + pending.len() as u64);
    let mut wanted: HashSet<Prefix> = HashSet::new();
    for key in map_keys.values() {
        wanted.extend(map::needed(key, depth));
    }
    let mut cache: HashMap<Prefix, Option<Stored>> = HashMap::with_capacity(wanted.len());
    read_map(tx, wanted.into_iter().collect(), &mut cache).await?;

    let mut epoch = Epoch::default();
    let mut changes = map::Changes::new();
    let mut map_root = last.as_ref().map_or(map::EMPTY, |h| h.map_root);
    for item in &pending {
        let user = item.user();
        let (fingerprint, posted_us) = match item {
            Item::Key(key) => {
                if key.user <= 0 {
                    return Err(Error::Internal(format!(
                        "public_keys holds a key of user {}, not a local user",
                        key.user
                    )));
                }
                (
                    hash32(&key.fingerprint, "public_keys.fingerprint")?,
                    key.posted_at,
                )
            }
            Item::Erased(erasure) => {
                if !lasts.contains_key(&user) {
                    // Nothing of theirs was ever logged: nothing to record as erased.
                    epoch.erasures.push((user, None));
                    continue;
                }
                (ERASED_FINGERPRINT, erasure.erased_at)
            }
        };
        let leaf = start + epoch.entries.len() as u64;
        let (seq, prev) = match lasts.get(&user) {
            Some((seq, hash)) => (seq + 1, *hash),
            None => (1, [0u8; 32]),
        };
        let entry = Entry {
            server,
            user: user as u64,
            seq,
            fingerprint,
            posted_at_ms: (posted_us.max(0) / 1000) as u64,
            prev_entry_hash: prev,
        };
        let hash = entry.hash();
        lasts.insert(user, (seq, hash));
        let leaf_node = Node {
            level: 0,
            index: leaf,
        };
        nodes.insert(leaf_node, hash);
        epoch.log_nodes.push((leaf_node, hash));
        for (node, left, right) in log::completed_by(leaf + 1) {
            let h = log::node_hash(&nodes[&left], &nodes[&right]);
            nodes.insert(node, h);
            epoch.log_nodes.push((node, h));
        }
        map_root = set_value(tx, &map_keys[&user], &hash, &mut cache, &mut changes).await?;
        epoch.entries.push(LogEntry {
            leaf_index: leaf,
            user,
            seq,
            fingerprint,
            posted_at_ms: entry.posted_at_ms,
            prev_entry_hash: prev,
            entry_hash: hash,
        });
        match item {
            Item::Key(key) => epoch.logged.push((key.user, key.seq, leaf)),
            Item::Erased(_) => epoch.erasures.push((user, Some(leaf))),
        }
    }
    let appended = epoch.entries.len() as u64;
    if appended == 0 {
        // Only erasures of users without an entry: marked done, and the newest head
        // re-signed (same size and roots) so the epoch commits like any other.
        return match last {
            None => {
                let head = sign(0, log::empty_root(), map::EMPTY);
                epoch.head = Some(head.clone());
                tx.write(&epoch).await?;
                Ok(Published::Appended { head, entries: 0 })
            }
            Some(h) => {
                tx.write(&epoch).await?;
                let head = sign(h.tree_size, h.log_root, h.map_root);
                tx.resign(&head).await?;
                Ok(Published::Resigned(head))
            }
        };
    }
    let size = start + appended;
    let log_root = log::root(size, &mut |n| nodes[&n]);
    let head = sign(size, log_root, map_root);
    epoch.map = changes.into_iter().collect();
    epoch.map.sort_by_key(|(p, _)| *p);
    epoch.head = Some(head.clone());
    tx.write(&epoch).await?;
    Ok(Published::Appended {
        head,
        entries: appended,
    })
}

/// Reads the map nodes at `prefixes` into `cache` (None for an empty one).
async fn read_map(
    tx: &mut dyn KtTx,
    prefixes: Vec<Prefix>,
    cache: &mut HashMap<Prefix, Option<Stored>>,
) -> Result<()> {
    let found = tx.map_nodes(&prefixes).await?;
    for p in prefixes {
        cache.insert(p, None);
    }
    for (p, s) in found {
        cache.insert(p, Some(s));
    }
    Ok(())
}

/// Sets `key` to `value` over the nodes read so far and the epoch's `changes`; reads the
/// key's path down to the bottom first if it goes deeper than what was read. The new
/// root.
async fn set_value(
    tx: &mut dyn KtTx,
    key: &Hash,
    value: &Hash,
    cache: &mut HashMap<Prefix, Option<Stored>>,
    changes: &mut map::Changes,
) -> Result<Hash> {
    for attempt in 0..2 {
        let mut missed = false;
        let mut mine = map::Changes::new();
        let root = map::set(
            key,
            value,
            &mut |p| match changes.get(p) {
                Some(c) => *c,
                None => cache.get(p).copied().unwrap_or_else(|| {
                    missed = true;
                    None
                }),
            },
            &mut mine,
        );
        if !missed {
            changes.extend(mine);
            return Ok(root);
        }
        if attempt == 0 {
            let deeper: Vec<Prefix> = map::needed(key, 256)
                .into_iter()
                .filter(|p| !cache.contains_key(p))
                .collect();
            read_map(tx, deeper, cache).await?;
        }
    }
    Err(Error::Internal(
        "the key map reads a prefix below 256 bits".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: i64, seq: i64, posted_at: i64) -> PendingKey {
        PendingKey {
            user,
            seq,
            fingerprint: vec![1; 32],
            posted_at,
        }
    }

    fn erased(user: i64, erased_at: i64) -> PendingErasure {
        PendingErasure { user, erased_at }
    }

    fn order(items: &[Item<'_>]) -> Vec<(char, i64, i64)> {
        items
            .iter()
            .map(|i| match i {
                Item::Key(k) => ('k', k.user, k.seq),
                Item::Erased(e) => ('e', e.user, 0),
            })
            .collect()
    }

    #[test]
    fn erasures_take_their_place_among_keys_oldest_first() {
        // As `pending(2)` lists them: users of the two oldest keys, all their keys.
        let keys = [key(1, 1, 10), key(1, 2, 30), key(2, 1, 20)];
        assert_eq!(
            order(&oldest_first(&keys, &[], 2)),
            [('k', 1, 1), ('k', 1, 2), ('k', 2, 1)],
            "no erasure: pending's own list"
        );
        let erasures = [erased(5, 15), erased(6, 40)];
        assert_eq!(
            order(&oldest_first(&keys, &erasures, 2)),
            [('k', 1, 1), ('k', 1, 2), ('e', 5, 0)],
            "the erasure of 15 is among the two oldest rows; user 2's key of 20 waits"
        );
        assert_eq!(
            order(&oldest_first(&keys, &erasures, 10)),
            [
                ('k', 1, 1),
                ('k', 1, 2),
                ('e', 5, 0),
                ('k', 2, 1),
                ('e', 6, 0)
            ]
        );
        assert_eq!(
            order(&oldest_first(&[], &erasures, 1)),
            [('e', 5, 0)],
            "at most the limit"
        );
        // A key and an erasure of the same time: the key first.
        let same = [key(3, 1, 50)];
        assert_eq!(
            order(&oldest_first(&same, &[erased(3, 50)], 5)),
            [('k', 3, 1), ('e', 3, 0)]
        );
    }
}
