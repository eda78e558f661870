//! The key-transparency map: a binary prefix tree over 256-bit keys (SHA-256 of a user's
//! name) whose leaves commit to each user's latest log entry, so that one map root
//! yields at most one value per key.
//!
//! Hashes (docs/kt.md specifies them byte for byte):
//! - an empty subtree is [`EMPTY`] (32 zero bytes, no hashing);
//! - a subtree holding exactly one key `k` with value `v`, at whatever depth, is the leaf
//!   hash `SHA-256(0x02 ‖ k ‖ v)`;
//! - a subtree holding two keys or more is `SHA-256(0x03 ‖ left ‖ right)`.
//!
//! A proof for key `k` is the sibling hashes from the root down to the depth where `k`
//! is alone in its subtree (about log2 of the number of keys); the verifier hashes back
//! up from `k`'s leaf. Nothing holds the tree: a store keeps one [`Stored`] node per
//! subtree of two keys or more and per key at the depth where it is alone, and every
//! operation reads O(depth) of them.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::log::Hash;

/// The hash of an empty subtree.
pub const EMPTY: Hash = [0; 32];

/// A position in the tree: the first `bits` bits of a key (the rest zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// How many leading bits count (0 = the root).
    pub bits: u16,
    /// The key's bits, those after `bits` cleared.
    pub path: Hash,
}

/// What a store keeps at a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Two keys or more below: the interior hash.
    Interior(Hash),
    /// Exactly one key below (`key`, with `value`): stored here, the highest prefix where
    /// it is alone.
    Leaf {
        /// The key.
        key: Hash,
        /// Its value.
        value: Hash,
    },
}

/// The leaf hash of `key` with `value`.
pub fn leaf_hash(key: &Hash, value: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x02]);
    h.update(key);
    h.update(value);
    h.finalize().into()
}

/// The hash of a subtree of two keys or more.
pub fn interior_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x03]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

impl Stored {
    /// The subtree hash this node stands for.
    pub fn hash(&self) -> Hash {
        match self {
            Stored::Interior(h) => *h,
            Stored::Leaf { key, value } => leaf_hash(key, value),
        }
    }
}

/// Bit `i` of `key` (0 = the most significant bit of the first byte).
pub fn bit(key: &Hash, i: u16) -> bool {
    key[usize::from(i / 8)] >> (7 - i % 8) & 1 == 1
}

impl Prefix {
    /// The first `bits` bits of `key`.
    pub fn of(key: &Hash, bits: u16) -> Prefix {
        // Whole bytes, then the leading bits of the next (a proof takes ~50 prefixes).
        let mut path = [0u8; 32];
        let whole = usize::from(bits / 8).min(32);
        path[..whole].copy_from_slice(&key[..whole]);
        let rest = bits % 8;
        if rest > 0 && whole < 32 {
            path[whole] = key[whole] & (0xFF << (8 - rest));
        }
        Prefix { bits, path }
    }

    /// The prefix one bit longer, with bit `self.bits` set to `one`.
    pub fn child(&self, one: bool) -> Prefix {
        let mut path = self.path;
        if one {
            path[usize::from(self.bits / 8)] |= 1 << (7 - self.bits % 8);
        }
        Prefix {
            bits: self.bits + 1,
            path,
        }
    }

    /// The other child of this prefix's parent.
    pub fn sibling(&self) -> Prefix {
        let i = self.bits - 1;
        let mut path = self.path;
        path[usize::from(i / 8)] ^= 1 << (7 - i % 8);
        Prefix {
            bits: self.bits,
            path,
        }
    }
}

/// The positions an operation on `key` reads: every prefix of the key down to `depth`
/// and their siblings (a store fetches them in one query).
pub fn needed(key: &Hash, depth: u16) -> Vec<Prefix> {
    let mut out = Vec::with_capacity(2 * usize::from(depth) + 1);
    out.push(Prefix::of(key, 0));
    for bits in 1..=depth.min(256) {
        let p = Prefix::of(key, bits);
        out.push(p);
        out.push(p.sibling());
    }
    out
}

/// An inclusion proof for `key`: the sibling hashes from the root down ([`EMPTY`] for
/// an empty sibling), or None when the key is not in the map.
pub fn prove(
    key: &Hash,
    get: &mut dyn FnMut(&Prefix) -> Option<Stored>,
) -> Option<(Hash, Vec<Hash>)> {
    let mut siblings = Vec::new();
    for bits in 0..=256u16 {
        match get(&Prefix::of(key, bits))? {
            Stored::Leaf { key: k, value } if k == *key => return Some((value, siblings)),
            Stored::Leaf { .. } => return None,
            Stored::Interior(_) => {
                let next = Prefix::of(key, bits + 1);
                siblings.push(get(&next.sibling()).map_or(EMPTY, |s| s.hash()));
            }
        }
    }
    None
}

/// The root a proof implies for `key` with `value`; the caller compares it with the
/// root of a head.
pub fn root_from_proof(key: &Hash, value: &Hash, siblings: &[Hash]) -> Option<Hash> {
    if siblings.len() > 256 {
        return None;
    }
    let mut h = leaf_hash(key, value);
    for (i, s) in siblings.iter().enumerate().rev() {
        h = if bit(key, i as u16) {
            interior_hash(s, &h)
        } else {
            interior_hash(&h, s)
        };
    }
    Some(h)
}

/// Writes to make, from setting keys: what a store upserts (Some) or deletes (None).
pub type Changes = HashMap<Prefix, Option<Stored>>;

/// Sets `key` to `value` in the map whose nodes `get` reads (with `changes` already made
/// visible through it by the caller), recording the writes in `changes`. Returns the new
/// root.
pub fn set(
    key: &Hash,
    value: &Hash,
    get: &mut dyn FnMut(&Prefix) -> Option<Stored>,
    changes: &mut Changes,
) -> Hash {
    let mut read = |p: &Prefix, changes: &Changes| match changes.get(p) {
        Some(c) => *c,
        None => get(p),
    };
    // Walk down to where the key is, or goes.
    let mut depth = 0u16;
    loop {
        let here = Prefix::of(key, depth);
        match read(&here, changes) {
            Some(Stored::Interior(_)) => depth += 1,
            None => {
                changes.insert(
                    here,
                    Some(Stored::Leaf {
                        key: *key,
                        value: *value,
                    }),
                );
                break;
            }
            Some(Stored::Leaf { key: k, .. }) if k == *key => {
                changes.insert(
                    here,
                    Some(Stored::Leaf {
                        key: *key,
                        value: *value,
                    }),
                );
                break;
            }
            Some(Stored::Leaf {
                key: other,
                value: other_value,
            }) => {
                // Both keys now below `here`: interior nodes down to where they part.
                let mut split = depth;
                while bit(key, split) == bit(&other, split) {
                    split += 1;
                }
                changes.insert(
                    Prefix::of(&other, split + 1),
                    Some(Stored::Leaf {
                        key: other,
                        value: other_value,
                    }),
                );
                changes.insert(
                    Prefix::of(key, split + 1),
                    Some(Stored::Leaf {
                        key: *key,
                        value: *value,
                    }),
                );
                depth = split + 1;
                break;
            }
        }
    }
    // Hash back up, every prefix above the key's leaf being interior.
    let mut h = read(&Prefix::of(key, depth), changes).map_or(EMPTY, |s| s.hash());
    for bits in (0..depth).rev() {
        let child = Prefix::of(key, bits + 1);
        let sibling = read(&child.sibling(), changes).map_or(EMPTY, |s| s.hash());
        h = if bit(key, bits) {
            interior_hash(&sibling, &h)
        } else {
            interior_hash(&h, &sibling)
        };
        changes.insert(Prefix::of(key, bits), Some(Stored::Interior(h)));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_keeps_exactly_its_leading_bits() {
        for key in [[0xFF; 32], [0xA5; 32], records_key()] {
            for bits in 0..=256u16 {
                let p = Prefix::of(&key, bits);
                for i in 0..256u16 {
                    assert_eq!(
                        bit(&p.path, i),
                        i < bits && bit(&key, i),
                        "bit {i} of {bits}"
                    );
                }
            }
        }
    }

    fn records_key() -> Hash {
        crate::merkle::records::map_key("s", 7)
    }

    /// The map's root from its definition: the recursive hash of a set of keys.
    fn reference_root(entries: &[(Hash, Hash)], bits: u16) -> Hash {
        match entries {
            [] => EMPTY,
            [(k, v)] => leaf_hash(k, v),
            _ => {
                let (ones, zeros): (Vec<_>, Vec<_>) =
                    entries.iter().partition(|(k, _)| bit(k, bits));
                interior_hash(
                    &reference_root(&zeros, bits + 1),
                    &reference_root(&ones, bits + 1),
                )
            }
        }
    }

    fn key(i: u32) -> Hash {
        Sha256::digest(i.to_be_bytes()).into()
    }

    #[test]
    fn set_and_prove_agree_with_the_definition() {
        let mut store: HashMap<Prefix, Stored> = HashMap::new();
        let mut entries: Vec<(Hash, Hash)> = Vec::new();
        for i in 0..300u32 {
            // New keys, and now and then a new value for an old one.
            let (k, v) = if i % 7 == 6 {
                (key(i / 2), key(10_000 + i))
            } else {
                (key(i), key(20_000 + i))
            };
            entries.retain(|(e, _)| *e != k);
            entries.push((k, v));
            let mut changes = Changes::new();
            let root = set(&k, &v, &mut |p| store.get(p).copied(), &mut changes);
            for (p, c) in changes {
                match c {
                    Some(s) => store.insert(p, s),
                    None => store.remove(&p),
                };
            }
            assert_eq!(root, reference_root(&entries, 0), "after {i}");
            for (k, v) in &entries {
                let (value, siblings) = prove(k, &mut |p| store.get(p).copied()).unwrap();
                assert_eq!(value, *v);
                assert_eq!(root_from_proof(k, v, &siblings), Some(root));
                assert!(siblings.len() < 40, "{} siblings", siblings.len());
                let mut other = *v;
                other[0] ^= 1;
                assert_ne!(root_from_proof(k, &other, &siblings), Some(root));
            }
            assert!(prove(&key(1_000_000), &mut |p| store.get(p).copied()).is_none());
        }
    }
}
