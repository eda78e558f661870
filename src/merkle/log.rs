//! The RFC 9162 Merkle log, computed from stored subtree hashes: leaf and node hashing
//! exactly as RFC 9162 §2.1.1 (SHA-256, leaf prefix 0x00, node prefix 0x01), the tree
//! head of any size, inclusion proofs (§2.1.3.1) and consistency proofs (§2.1.4.1), and the
//! verification of a consistency proof (§2.1.4.2, for the heads of other homeservers).
//!
//! Nothing here holds a tree. A store keeps the hash of every *complete* subtree — the
//! leaves `[index·2^level, (index+1)·2^level)` once all are in — as a [`Node`]; every
//! hash of the log (a head, a proof element) is one such node or combines O(log n) of
//! them. A caller asks [`needed_for_inclusion`] / [`needed_for_consistency`] which nodes
//! to fetch (one query), then computes with a lookup over what it fetched.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A complete subtree of the log: the leaves `[index << level, (index + 1) << level)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    /// 0 for a leaf.
    pub level: u8,
    /// Which subtree of that level, from the left.
    pub index: u64,
}

/// The hash of a leaf whose data is `data` (RFC 9162: SHA-256(0x00 ‖ data)).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node (RFC 9162: SHA-256(0x01 ‖ left ‖ right)).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The head of an empty log: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The hash of the leaves `[start, end)`, as the RFC's MTH of that range, from complete
/// subtrees given by `get`.
fn range_hash(start: u64, end: u64, get: &mut dyn FnMut(Node) -> Hash) -> Hash {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return get(Node {
            level: n.trailing_zeros() as u8,
            index: start >> n.trailing_zeros(),
        });
    }
    let k = split(n);
    let left = range_hash(start, start + k, get);
    let right = range_hash(start + k, end, get);
    node_hash(&left, &right)
}

/// The root of the log of `size` leaves.
pub fn root(size: u64, get: &mut dyn FnMut(Node) -> Hash) -> Hash {
    if size == 0 {
        empty_root()
    } else {
        range_hash(0, size, get)
    }
}

/// The inclusion proof of leaf `index` in the log of `size` leaves (RFC 9162
/// §2.1.3.1: PATH(index, D[size])), the hash nearest the leaf first. (Not on the wire:
/// a key proof goes through the map; kept for auditors and evidence.)
#[allow(dead_code)]
pub fn inclusion(index: u64, size: u64, get: &mut dyn FnMut(Node) -> Hash) -> Vec<Hash> {
    fn path(m: u64, start: u64, end: u64, get: &mut dyn FnMut(Node) -> Hash) -> Vec<Hash> {
        let n = end - start;
        if n == 1 {
            return Vec::new();
        }
        let k = split(n);
        if m < start + k {
            let mut p = path(m, start, start + k, get);
            p.push(range_hash(start + k, end, get));
            p
        } else {
            let mut p = path(m, start + k, end, get);
            p.push(range_hash(start, start + k, get));
            p
        }
    }
    assert!(index < size, "leaf {index} is not in a log of {size}");
    path(index, 0, size, get)
}

/// The consistency proof from the log of `old` leaves to the log of `new` (RFC 9162
/// §2.1.4.1: PROOF(old, D[new])); empty when `old` is 0 or equal to `new`.
pub fn consistency(old: u64, new: u64, get: &mut dyn FnMut(Node) -> Hash) -> Vec<Hash> {
    fn subproof(
        m: u64,
        start: u64,
        end: u64,
        whole: bool,
        get: &mut dyn FnMut(Node) -> Hash,
    ) -> Vec<Hash> {
        let n = end - start;
        if m == n {
            return if whole {
                Vec::new()
            } else {
                vec![range_hash(start, end, get)]
            };
        }
        let k = split(n);
        if m <= k {
            let mut p = subproof(m, start, start + k, whole, get);
            p.push(range_hash(start + k, end, get));
            p
        } else {
            let mut p = subproof(m - k, start + k, end, false, get);
            p.push(range_hash(start, start + k, get));
            p
        }
    }
    assert!(old <= new, "a log cannot shrink from {old} to {new}");
    if old == 0 || old == new {
        return Vec::new();
    }
    subproof(old, 0, new, true, get)
}

/// Whether `proof` is an RFC 9162 consistency proof (§2.1.4.2) from the log of
/// `old_size` leaves with root `old_root` to the log of `new_size` with root `new_root`.
/// From size 0 every log is consistent (the proof is empty); between equal sizes the
/// roots must be equal and the proof empty.
pub fn verify_consistency(
    (old_size, old_root): (u64, &Hash),
    (new_size, new_root): (u64, &Hash),
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == 0 {
        return proof.is_empty();
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path = proof.iter();
    let first = if old_size.is_power_of_two() {
        *old_root
    } else {
        match path.next() {
            Some(h) => *h,
            None => return false,
        }
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old_root && sr == *new_root && sn == 0
}

/// The nodes a computation needs, found by running it with a lookup that records.
fn recorded(run: impl FnOnce(&mut dyn FnMut(Node) -> Hash)) -> Vec<Node> {
    let mut nodes = Vec::new();
    run(&mut |n| {
        nodes.push(n);
        [0; 32]
    });
    nodes.sort();
    nodes.dedup();
    nodes
}

/// The complete subtrees [`inclusion`] and [`root`] need for `index` in `size`.
#[allow(dead_code)]
pub fn needed_for_inclusion(index: u64, size: u64) -> Vec<Node> {
    recorded(|get| {
        inclusion(index, size, get);
        root(size, get);
    })
}

/// The complete subtrees [`consistency`] needs from `old` to `new`, with the new root.
pub fn needed_for_consistency(old: u64, new: u64) -> Vec<Node> {
    recorded(|get| {
        consistency(old, new, get);
        root(new, get);
    })
}

/// The subtrees that appending leaf number `size - 1` completes, with the two children
/// each is made of (the leaf itself, level 0, is stored by the caller).
pub fn completed_by(size: u64) -> Vec<(Node, Node, Node)> {
    let mut out = Vec::new();
    let mut level = 1u8;
    while level < 64 && size.is_multiple_of(1u64 << level) {
        let index = (size >> level) - 1;
        let child = |i| Node {
            level: level - 1,
            index: i,
        };
        out.push((
            Node { level, index },
            child(2 * index),
            child(2 * index + 1),
        ));
        level += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ct_merkle::mem_backed_tree::MemoryBackedTree;
    use ct_merkle::{ConsistencyProof, HashableLeaf, InclusionProof, RootHash};

    use super::*;

    /// Leaves as ct-merkle hashes them (0x00 ‖ data).
    struct Leaf(Vec<u8>);
    impl HashableLeaf for Leaf {
        fn hash<H: ct_merkle::digest::Update>(&self, hasher: &mut H) {
            hasher.update(&self.0);
        }
    }

    /// A log kept the way a store keeps it: leaf hashes and completed subtrees.
    fn stored(leaves: &[Vec<u8>]) -> HashMap<Node, Hash> {
        let mut nodes = HashMap::new();
        for (i, data) in leaves.iter().enumerate() {
            nodes.insert(
                Node {
                    level: 0,
                    index: i as u64,
                },
                leaf_hash(data),
            );
            for (node, l, r) in completed_by(i as u64 + 1) {
                let h = node_hash(&nodes[&l], &nodes[&r]);
                nodes.insert(node, h);
            }
        }
        nodes
    }

    #[test]
    fn proofs_for_every_size_verify_under_an_independent_implementation() {
        let leaves: Vec<Vec<u8>> = (0..130u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let nodes = stored(&leaves);
        let mut get = |n: Node| nodes[&n];
        let mut oracle = MemoryBackedTree::<Sha256, Leaf>::new();
        for size in 1..=leaves.len() as u64 {
            oracle.push(Leaf(leaves[size as usize - 1].clone()));
            let head = root(size, &mut get);
            assert_eq!(
                head.as_slice(),
                oracle.root().as_bytes().as_slice(),
                "{size}"
            );
            let oracle_root = RootHash::<Sha256>::new(head.into(), size);
            for index in 0..size {
                let proof = inclusion(index, size, &mut get).concat();
                let needed = needed_for_inclusion(index, size);
                assert!(needed.iter().all(|n| nodes.contains_key(n)));
                let leaf = Leaf(leaves[index as usize].clone());
                let parsed = InclusionProof::<Sha256>::try_from_bytes(proof.clone()).unwrap();
                oracle_root
                    .verify_inclusion(&leaf, index, &parsed)
                    .unwrap_or_else(|e| panic!("{index} in {size}: {e:?}"));
                // Any flipped byte of the proof, or of the head, fails.
                for at in (0..proof.len()).step_by(7) {
                    let mut flipped = proof.clone();
                    flipped[at] ^= 0x80;
                    let bad = InclusionProof::<Sha256>::try_from_bytes(flipped).unwrap();
                    assert!(oracle_root.verify_inclusion(&leaf, index, &bad).is_err());
                }
                let mut bad_head = head;
                bad_head[index as usize % 32] ^= 1;
                let bad_root = RootHash::<Sha256>::new(bad_head.into(), size);
                assert!(bad_root.verify_inclusion(&leaf, index, &parsed).is_err());
            }
        }
        // Every pair of sizes up to the last: consistency proofs verify; a flipped byte
        // does not.
        for new in 1..=leaves.len() as u64 {
            let new_root = RootHash::<Sha256>::new(root(new, &mut get).into(), new);
            for old in 1..new {
                let old_root = RootHash::<Sha256>::new(root(old, &mut get).into(), old);
                let bytes = consistency(old, new, &mut get).concat();
                let proof = ConsistencyProof::<Sha256>::try_from_bytes(bytes.clone()).unwrap();
                new_root
                    .verify_consistency(&old_root, &proof)
                    .unwrap_or_else(|e| panic!("{old} to {new}: {e:?}"));
                let mut flipped = bytes;
                flipped[0] ^= 1;
                let bad = ConsistencyProof::<Sha256>::try_from_bytes(flipped).unwrap();
                assert!(new_root.verify_consistency(&old_root, &bad).is_err());
                // Our verifier agrees with the oracle, on good and bad proofs.
                let (o, n) = (root(old, &mut get), root(new, &mut get));
                let good = consistency(old, new, &mut get);
                assert!(
                    verify_consistency((old, &o), (new, &n), &good),
                    "{old}→{new}"
                );
                let mut bad = good.clone();
                if let Some(last) = bad.last_mut() {
                    last[3] ^= 1;
                }
                assert!(!verify_consistency((old, &o), (new, &n), &bad));
                let mut other = o;
                other[0] ^= 1;
                assert!(!verify_consistency((old, &other), (new, &n), &good));
                assert!(!verify_consistency((old, &o), (new, &other), &good));
            }
        }
    }

    #[test]
    fn the_empty_log_and_one_leaf() {
        assert_eq!(root(0, &mut |_| unreachable!()), empty_root());
        let leaf = leaf_hash(b"x");
        assert_eq!(root(1, &mut |_| leaf), leaf);
        assert!(consistency(0, 5, &mut |_| unreachable!()).is_empty());
    }
}
