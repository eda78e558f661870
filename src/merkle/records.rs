//! The bytes key transparency hashes and signs (docs/kt.md §1, §3, §4): a user's log
//! entry, the user's map key, and a tree head's signing input.

use sha2::{Digest, Sha256};

use super::log::Hash;

/// Label of an entry.
pub const ENTRY_LABEL: &[u8] = b"secretd/v1/kt-entry";
/// Label of a map key.
pub const MAP_KEY_LABEL: &[u8] = b"secretd/v1/kt-map-key";
/// Label of a head's signing input.
pub const HEAD_LABEL: &[u8] = b"secretd/v1/kt-head";

/// `ref(server, user)`: `u16 len ‖ server ‖ u64 user`.
pub fn user_ref(server: &str, user: u64) -> Vec<u8> {
    let name = server.as_bytes();
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + name.len() + 8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&name[..usize::from(len)]);
    out.extend_from_slice(&user.to_be_bytes());
    out
}

/// One user's log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The homeserver's `server_name`.
    pub server: &'a str,
    /// The user.
    pub user: u64,
    /// The user's entry number, from 1.
    pub seq: u64,
    /// SHA-256 of the key's SPKI DER; zeros for an erasure.
    pub fingerprint: Hash,
    /// When the key was posted, ms since the Unix epoch.
    pub posted_at_ms: u64,
    /// The hash of the user's previous entry; zeros for the first.
    pub prev_entry_hash: Hash,
}

impl Entry<'_> {
    /// The entry's bytes (the log leaf's data).
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = ENTRY_LABEL.to_vec();
        out.extend_from_slice(&user_ref(self.server, self.user));
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&self.posted_at_ms.to_be_bytes());
        out.extend_from_slice(&self.prev_entry_hash);
        out
    }

    /// The entry's hash: its RFC 9162 leaf hash, and its value in the map.
    pub fn hash(&self) -> Hash {
        super::log::leaf_hash(&self.bytes())
    }
}

/// A user's key in the map.
pub fn map_key(server: &str, user: u64) -> Hash {
    let mut h = Sha256::new();
    h.update(MAP_KEY_LABEL);
    h.update(user_ref(server, user));
    h.finalize().into()
}

/// What a head's signature covers.
pub fn head_input(
    server: &str,
    tree_size: u64,
    log_root: &Hash,
    map_root: &Hash,
    timestamp_ms: u64,
) -> Vec<u8> {
    let mut out = HEAD_LABEL.to_vec();
    let name = server.as_bytes();
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&tree_size.to_be_bytes());
    out.extend_from_slice(log_root);
    out.extend_from_slice(map_root);
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out
}

#[cfg(test)]
mod vectors {
    use std::collections::HashMap;

    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::super::log::{self, Node};
    use super::super::map;
    use super::*;

    /// docs/kt.md §6, recomputed by docs/kt_vectors.py.
    #[test]
    fn vectors() {
        let e1 = Entry {
            server: "a.test",
            user: 42,
            seq: 1,
            fingerprint: [0x11; 32],
            posted_at_ms: 1_000,
            prev_entry_hash: [0; 32],
        };
        let e2 = Entry {
            seq: 2,
            fingerprint: [0x22; 32],
            posted_at_ms: 2_000,
            prev_entry_hash: e1.hash(),
            ..e1.clone()
        };
        let e3 = Entry {
            user: 7,
            seq: 1,
            fingerprint: [0x33; 32],
            posted_at_ms: 3_000,
            prev_entry_hash: [0; 32],
            ..e1.clone()
        };
        let leaves: Vec<Hash> = [&e1, &e2, &e3].iter().map(|e| e.hash()).collect();
        let mut nodes = HashMap::new();
        for (i, h) in leaves.iter().enumerate() {
            nodes.insert(
                Node {
                    level: 0,
                    index: i as u64,
                },
                *h,
            );
            for (n, l, r) in log::completed_by(i as u64 + 1) {
                let h = log::node_hash(&nodes[&l], &nodes[&r]);
                nodes.insert(n, h);
            }
        }
        let log_root = log::root(3, &mut |n| nodes[&n]);
        let mut store = HashMap::new();
        let mut map_root = map::EMPTY;
        for (user, value) in [(42, e2.hash()), (7, e3.hash())] {
            let mut changes = map::Changes::new();
            map_root = map::set(
                &map_key("a.test", user),
                &value,
                &mut |p| store.get(p).copied(),
                &mut changes,
            );
            for (p, c) in changes {
                if let Some(s) = c {
                    store.insert(p, s);
                }
            }
        }
        let (_, path) = map::prove(&map_key("a.test", 42), &mut |p| store.get(p).copied()).unwrap();
        let input = head_input("a.test", 3, &log_root, &map_root, 4_000);
        let key = Ed25519KeyPair::from_seed_unchecked(&[0x01; 32]).unwrap();
        let signature = key.sign(&input);
        let hex = hex_of;
        let got = [
            ("entry1", hex(&e1.bytes())),
            ("entry1.hash", hex(&e1.hash())),
            ("entry2.hash", hex(&e2.hash())),
            ("entry3.hash", hex(&e3.hash())),
            ("log_root(3)", hex(&log_root)),
            ("map_key(42)", hex(&map_key("a.test", 42))),
            ("map_key(7)", hex(&map_key("a.test", 7))),
            ("map_root", hex(&map_root)),
            (
                "map_path(42)",
                path.iter().map(|h| hex(h)).collect::<Vec<_>>().join(","),
            ),
            ("head_input", hex(&input)),
            ("public_key", hex(key.public_key().as_ref())),
            ("signature", hex(signature.as_ref())),
        ];
        // The erased entry (docs/kt.md §1): user 42's entry 3, fingerprint of zeros.
        let e4 = Entry {
            seq: 3,
            fingerprint: [0; 32],
            posted_at_ms: 5_000,
            prev_entry_hash: e2.hash(),
            ..e1.clone()
        };
        nodes.insert(Node { level: 0, index: 3 }, e4.hash());
        for (n, l, r) in log::completed_by(4) {
            let h = log::node_hash(&nodes[&l], &nodes[&r]);
            nodes.insert(n, h);
        }
        let log_root4 = log::root(4, &mut |n| nodes[&n]);
        let mut changes = map::Changes::new();
        let map_root4 = map::set(
            &map_key("a.test", 42),
            &e4.hash(),
            &mut |p| store.get(p).copied(),
            &mut changes,
        );
        for (p, c) in changes {
            match c {
                Some(s) => store.insert(p, s),
                None => store.remove(&p),
            };
        }
        let (_, path4) =
            map::prove(&map_key("a.test", 42), &mut |p| store.get(p).copied()).unwrap();
        let got = got.into_iter().chain([
            ("erased", hex(&e4.bytes())),
            ("erased.hash", hex(&e4.hash())),
            ("log_root(4)", hex(&log_root4)),
            ("map_root(4)", hex(&map_root4)),
            (
                "map_path(42, 4)",
                path4.iter().map(|h| hex(h)).collect::<Vec<_>>().join(","),
            ),
        ]);
        let got: Vec<(&str, String)> = got.collect();
        let text: String = got.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let doc = include_str!("../../docs/kt.md");
        for (k, v) in &got {
            assert!(
                doc.contains(&format!("{k} = {v}")),
                "docs/kt.md §6 lacks or differs on {k}; computed:\n{text}"
            );
        }
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
