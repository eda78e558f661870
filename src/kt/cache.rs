//! The map's upper levels in memory: every proof's path starts at the root, so the nodes
//! of the first [`CACHED_BITS`] levels are read by almost every proof and change only
//! when an epoch appends entries. They are kept here for one head (its tree size and map
//! root), filled from proofs that verified against that head, so a proof reads from the
//! database only the levels below (at 100,000 users: ~12 rows instead of ~37).
//!
//! **Only verified nodes.** A node is kept only after a proof through it was checked
//! against the head: a sibling's hash is part of the root the proof recomputes, and a
//! node on the path must equal the hash recomputed below it (compared here). A node read
//! from a database that moved on since the head does not pass, and is not kept. A proof
//! built from cached nodes is checked against the head like any other (`proof.rs`), so a
//! wrong cache can make a proof fail, never make a wrong one pass.
//!
//! **Bound.** At most 2^[`CACHED_BITS`] − 1 nodes (4,095 prefixes of 0 to 11 bits, under half a MiB), one head at
//! a time: a proof verified against a newer head (a larger tree) starts the cache anew;
//! re-signed heads (same size and roots) keep it.
//!
//! **The log's subtrees** ([`LogCache`]) never change once stored (the log only grows), so
//! those of a consistency proof covering [`LOG_CACHED_LEVEL`] levels or more are kept as
//! read, for every head, up to [`LOG_CACHED_NODES`] of them (then no more are added).

use std::sync::Mutex;

use crate::merkle::NodeMap;
use crate::merkle::log::{Hash, Node};
use crate::merkle::map::{self, Prefix, Stored};
use crate::store::kt::TreeHead;

/// Map levels kept in memory: prefixes of fewer bits than this (the root is 0 bits).
pub const CACHED_BITS: u16 = 12;

/// The cached upper levels of the map of one head.
#[derive(Default)]
pub struct MapCache {
    state: Mutex<Option<Levels>>,
}

/// The nodes of one head's upper levels known so far (None: verified empty).
struct Levels {
    tree_size: u64,
    map_root: Hash,
    nodes: NodeMap<Prefix, Option<Stored>>,
}

impl Levels {
    fn of(&self, head: &TreeHead) -> bool {
        self.tree_size == head.tree_size && self.map_root == head.map_root
    }
}

/// What the cache holds of one key's path.
#[derive(Debug, Default)]
pub struct Known {
    /// The cached nodes on the path and their siblings, from the root down.
    pub nodes: NodeMap<Prefix, Option<Stored>>,
    /// The first level the database must be read from (prefixes of fewer bits are
    /// all in `nodes`).
    pub from_bits: u16,
}

impl MapCache {
    /// The cached nodes of `key`'s path in the map of `head`, as far down as they go
    /// without a gap (or to the key's leaf).
    pub fn known(&self, key: &Hash, head: &TreeHead) -> Known {
        let state = self.state.lock().expect("not poisoned");
        let Some(levels) = state.as_ref().filter(|l| l.of(head)) else {
            return Known::default();
        };
        let mut known = Known::default();
        for bits in 0..CACHED_BITS {
            let p = Prefix::of(key, bits);
            let here = levels.nodes.get(&p);
            let sibling = match bits {
                0 => Some(&None),
                _ => levels.nodes.get(&p.sibling()),
            };
            let (Some(here), Some(sibling)) = (here, sibling) else {
                break;
            };
            known.nodes.insert(p, *here);
            if bits > 0 {
                known.nodes.insert(p.sibling(), *sibling);
            }
            known.from_bits = bits + 1;
            if !matches!(here, Some(Stored::Interior(_))) {
                // The path ends here: nothing below is read.
                known.from_bits = u16::MAX;
                break;
            }
        }
        known
    }

    /// Keeps the upper-level nodes of a proof of `key` with `value` (the siblings
    /// `path`) that verified against `head`, as `get` read them — those `get` returns for
    /// the path's prefixes and their siblings — when they agree with the proof.
    pub fn learn(
        &self,
        key: &Hash,
        value: &Hash,
        path: &[Hash],
        head: &TreeHead,
        get: &dyn Fn(&Prefix) -> Option<Option<Stored>>,
    ) {
        // The hash of each prefix on the path, recomputed from the leaf up.
        let depth = path.len();
        let mut hashes = vec![map::EMPTY; depth + 1];
        hashes[depth] = map::leaf_hash(key, value);
        for i in (0..depth).rev() {
            let below = hashes[i + 1];
            hashes[i] = match map::bit(key, i as u16) {
                true => map::interior_hash(&path[i], &below),
                false => map::interior_hash(&below, &path[i]),
            };
        }
        if hashes[0] != head.map_root {
            return;
        }
        let mut verified = Vec::new();
        for (i, hash) in hashes.iter().enumerate().take(usize::from(CACHED_BITS)) {
            let p = Prefix::of(key, i as u16);
            let Some(here) = get(&p) else { return };
            if here.map(|s| s.hash()) != Some(*hash) {
                return;
            }
            verified.push((p, here));
            if i > 0 {
                let sibling = p.sibling();
                let Some(there) = get(&sibling) else { return };
                if there.map_or(map::EMPTY, |s| s.hash()) != path[i - 1] {
                    return;
                }
                verified.push((sibling, there));
            }
        }
        let mut state = self.state.lock().expect("not poisoned");
        let fresh = match state.as_ref() {
            Some(l) if l.of(head) => false,
            // A newer head than the cached one (or none yet) starts the cache anew; an
            // older one is not kept.
            Some(l) if l.tree_size >= head.tree_size => return,
            _ => true,
        };
        if fresh {
            *state = Some(Levels {
                tree_size: head.tree_size,
                map_root: head.map_root,
                nodes: NodeMap::default(),
            });
        }
        if let Some(levels) = state.as_mut() {
            levels.nodes.extend(verified);
        }
    }
}

/// Log subtrees kept: those of this level and above (16 entries or more).
pub const LOG_CACHED_LEVEL: u8 = 4;

/// Most log subtrees kept (about 4 MiB; at 10^6 entries, every subtree of level 4 and
/// above is 2^20 / 2^4 × 2 ≈ 131,000, so the cache then holds the most read half).
pub const LOG_CACHED_NODES: usize = 65_536;

/// Stored log subtrees read before (immutable: the log only grows).
#[derive(Default)]
pub struct LogCache {
    nodes: Mutex<NodeMap<Node, Hash>>,
}

impl LogCache {
    /// The kept ones among `wanted`.
    pub fn known(&self, wanted: &[Node]) -> NodeMap<Node, Hash> {
        let nodes = self.nodes.lock().expect("not poisoned");
        wanted
            .iter()
            .filter_map(|n| nodes.get(n).map(|h| (*n, *h)))
            .collect()
    }

    /// Keeps the subtrees of `read` high enough to be worth it, while there is room.
    pub fn learn(&self, read: &NodeMap<Node, Hash>) {
        let mut nodes = self.nodes.lock().expect("not poisoned");
        for (n, h) in read {
            if nodes.len() >= LOG_CACHED_NODES {
                return;
            }
            if n.level >= LOG_CACHED_LEVEL {
                nodes.insert(*n, *h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(tree_size: u64, map_root: Hash) -> TreeHead {
        TreeHead {
            server_name: "s".into(),
            tree_size,
            log_root: [0; 32],
            map_root,
            timestamp_ms: 0,
            signature: Vec::new(),
            key_id: String::new(),
        }
    }

    /// A map's stored nodes.
    type Nodes = NodeMap<Prefix, Option<Stored>>;

    /// A map of `n` keys as its stored nodes, its root and its (key, value) pairs.
    fn build(n: u8) -> (Nodes, Hash, Vec<(Hash, Hash)>) {
        let mut nodes = Nodes::default();
        let mut root = map::EMPTY;
        let mut kv = Vec::new();
        for i in 0..n {
            let key = crate::merkle::records::map_key("s", u64::from(i));
            let value = [i; 32];
            let mut changes = map::Changes::new();
            root = map::set(
                &key,
                &value,
                &mut |p| nodes.get(p).copied().flatten(),
                &mut changes,
            );
            for (p, s) in changes {
                nodes.insert(p, s);
            }
            kv.push((key, value));
        }
        (nodes, root, kv)
    }

    #[test]
    fn keeps_only_what_a_proof_verified_and_only_for_its_head() {
        let (nodes, root, kv) = build(40);
        let cache = MapCache::default();
        let h = head(40, root);
        let get = |p: &Prefix| Some(nodes.get(p).copied().flatten());
        let (key, value) = kv[7];
        let (_, path) = map::prove(&key, &mut |p| nodes.get(p).copied().flatten()).unwrap();
        assert_eq!(cache.known(&key, &h).from_bits, 0, "empty at first");
        cache.learn(&key, &value, &path, &h, &get);
        let known = cache.known(&key, &h);
        assert_eq!(known.from_bits, u16::MAX, "the whole path is cached");
        // Every cached node is what the store holds.
        for (p, s) in &known.nodes {
            assert_eq!(nodes.get(p).copied().flatten(), *s);
        }
        // A proof from the cached nodes alone verifies.
        let (v, again) = map::prove(&key, &mut |p| known.nodes.get(p).copied().flatten()).unwrap();
        assert_eq!((v, &again), (value, &path));
        // Another head: nothing.
        assert_eq!(cache.known(&key, &head(41, root)).from_bits, 0);
        // A wrong value (a proof that does not verify) teaches nothing.
        let fresh = MapCache::default();
        fresh.learn(&key, &[9; 32], &path, &h, &get);
        assert_eq!(fresh.known(&key, &h).from_bits, 0);
        // A store that moved on (a node on the path differs) teaches nothing.
        let moved = |p: &Prefix| match p.bits {
            1 => Some(Some(Stored::Interior([1; 32]))),
            _ => get(p),
        };
        fresh.learn(&key, &value, &path, &h, &moved);
        assert_eq!(fresh.known(&key, &h).from_bits, 0);
        // A newer head starts anew; an older one is ignored.
        let (nodes2, root2, kv2) = build(41);
        let get2 = |p: &Prefix| Some(nodes2.get(p).copied().flatten());
        let (key2, value2) = kv2[40];
        let (_, path2) = map::prove(&key2, &mut |p| nodes2.get(p).copied().flatten()).unwrap();
        let h2 = head(41, root2);
        cache.learn(&key2, &value2, &path2, &h2, &get2);
        assert_eq!(cache.known(&key, &h).from_bits, 0, "the old head is gone");
        assert_eq!(cache.known(&key2, &h2).from_bits, u16::MAX);
        cache.learn(&key, &value, &path, &h, &get);
        assert_eq!(
            cache.known(&key, &h).from_bits,
            0,
            "an older head is not kept"
        );
    }

    #[test]
    fn log_subtrees_are_kept_from_their_level_up_and_within_the_bound() {
        let cache = LogCache::default();
        let node = |level, index| Node { level, index };
        let read: NodeMap<Node, Hash> = [(node(3, 1), [1; 32]), (node(4, 2), [2; 32])]
            .into_iter()
            .collect();
        cache.learn(&read);
        let known = cache.known(&[node(3, 1), node(4, 2), node(9, 0)]);
        assert_eq!(known, [(node(4, 2), [2; 32])].into_iter().collect());
        let many: NodeMap<Node, Hash> = (0..LOG_CACHED_NODES as u64 + 10)
            .map(|i| (node(5, i), [5; 32]))
            .collect();
        cache.learn(&many);
        assert_eq!(cache.nodes.lock().unwrap().len(), LOG_CACHED_NODES);
    }
}
