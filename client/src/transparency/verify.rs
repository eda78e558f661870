//! The checks of docs/kt.md §5 over plain values: a head's signature, a log consistency
//! proof, a map path, a user's chain of entries.

use ct_merkle::{ConsistencyProof, RootHash};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A signed tree head (docs/kt.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The homeserver's `server_name`.
    pub server_name: String,
    /// Entries in the log.
    pub tree_size: u64,
    /// The RFC 9162 root of the log.
    pub log_root: Hash,
    /// The root of the map.
    pub map_root: Hash,
    /// When the head was made, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Ed25519 over [`Head::signed_bytes`].
    pub signature: Vec<u8>,
}

/// One entry of a user's chain, as the server lists it (docs/kt.md §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The user's entry number, from 1.
    pub seq: u64,
    /// SHA-256 of the key's SPKI DER (zeros: the keys were erased).
    pub fingerprint: Hash,
    /// When the key was posted.
    pub posted_at_ms: u64,
    /// The hash of the previous entry (zeros for the first).
    pub prev_entry_hash: Hash,
}

/// The fingerprint of an erased entry: the entry records that the user's keys were
/// erased (docs/kt.md §1), and is never a usable key.
pub const ERASED: Hash = [0; 32];

fn refused(what: String) -> Error {
    Error::Untrusted(format!("key transparency: {what}"))
}

/// `u16 len ‖ server ‖ u64 user`.
fn user_ref(server: &str, user: u64) -> Vec<u8> {
    let mut out = (server.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(server.as_bytes());
    out.extend_from_slice(&user.to_be_bytes());
    out
}

impl Head {
    /// What the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"secretd/v1/kt-head".to_vec();
        out.extend_from_slice(&(self.server_name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.server_name.as_bytes());
        out.extend_from_slice(&self.tree_size.to_be_bytes());
        out.extend_from_slice(&self.log_root);
        out.extend_from_slice(&self.map_root);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out
    }

    /// Checks the signature under the server's Ed25519 public key (32 bytes).
    pub fn verify_signature(&self, server_key: &[u8]) -> Result<()> {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, server_key)
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| {
                refused(format!(
                    "the tree head of {} at size {} is not signed by its key",
                    self.server_name, self.tree_size
                ))
            })
    }

    /// Checks that `self` extends `older` (the RFC 9162 consistency proof `proof`, as the
    /// concatenation of its hashes); two heads of one size must be the same head.
    pub fn verify_extends(&self, older: &Head, proof: &[Hash]) -> Result<()> {
        if older.server_name != self.server_name {
            return Err(refused("heads of two different servers compared".into()));
        }
        if older.tree_size > self.tree_size {
            return Err(refused(format!(
                "the server's log shrank from {} to {} entries",
                older.tree_size, self.tree_size
            )));
        }
        if older.tree_size == self.tree_size || older.tree_size == 0 {
            if older.tree_size == self.tree_size && older.log_root != self.log_root {
                return Err(refused(format!(
                    "two different logs of size {} signed by {}: the server shows different \
                     people different keys",
                    self.tree_size, self.server_name
                )));
            }
            return Ok(());
        }
        let new_root = RootHash::<Sha256>::new(self.log_root.into(), self.tree_size);
        let old_root = RootHash::<Sha256>::new(older.log_root.into(), older.tree_size);
        let bytes: Vec<u8> = proof.concat();
        let proof = ConsistencyProof::<Sha256>::try_from_bytes(bytes)
            .map_err(|_| refused("a consistency proof is malformed".into()))?;
        new_root.verify_consistency(&old_root, &proof).map_err(|_| {
            refused(format!(
                "the log of {} at size {} does not extend the one this device saw at size {}: \
                 the server rewrote its history",
                self.server_name, self.tree_size, older.tree_size
            ))
        })
    }
}

impl Entry {
    /// The entry's bytes for user `user` of `server` (docs/kt.md §1).
    pub fn bytes(&self, server: &str, user: u64) -> Vec<u8> {
        let mut out = b"secretd/v1/kt-entry".to_vec();
        out.extend_from_slice(&user_ref(server, user));
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&self.posted_at_ms.to_be_bytes());
        out.extend_from_slice(&self.prev_entry_hash);
        out
    }

    /// Whether it records an erasure (its fingerprint is [`ERASED`]).
    pub fn is_erasure(&self) -> bool {
        self.fingerprint == ERASED
    }

    /// Its hash: SHA-256(0x00 ‖ bytes).
    pub fn hash(&self, server: &str, user: u64) -> Hash {
        let mut h = Sha256::new();
        h.update([0x00]);
        h.update(self.bytes(server, user));
        h.finalize().into()
    }
}

/// The map key of user `user` of `server`.
pub fn map_key(server: &str, user: u64) -> Hash {
    let mut h = Sha256::new();
    h.update(b"secretd/v1/kt-map-key");
    h.update(user_ref(server, user));
    h.finalize().into()
}

/// Checks a map path (docs/kt.md §3): `value` is `key`'s value under `root`.
pub fn verify_map_path(key: &Hash, value: &Hash, path: &[Hash], root: &Hash) -> Result<()> {
    if path.len() > 256 {
        return Err(refused("a map path longer than 256".into()));
    }
    let hash = |parts: &[&[u8]]| -> Hash {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    };
    let mut h = hash(&[&[0x02], key, value]);
    for (i, sibling) in path.iter().enumerate().rev() {
        let bit = key[i / 8] >> (7 - i % 8) & 1 == 1;
        h = if bit {
            hash(&[&[0x03], sibling, &h])
        } else {
            hash(&[&[0x03], &h, sibling])
        };
    }
    if h != *root {
        return Err(refused(
            "the map path does not lead to the head's map root: this is not the user's \
             logged key"
                .into(),
        ));
    }
    Ok(())
}

/// Checks a user's entries, newest first: seqs counting down by one to 1 or to where
/// the list stops, each `prev_entry_hash` the hash of the next; returns the newest
/// entry's hash (the map value).
pub fn verify_chain(server: &str, user: u64, entries: &[Entry]) -> Result<Hash> {
    let newest = entries
        .first()
        .ok_or_else(|| refused("no log entry for the key".into()))?;
    for pair in entries.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        if older.seq.checked_add(1) != Some(newer.seq)
            || newer.prev_entry_hash != older.hash(server, user)
        {
            return Err(refused(format!(
                "the log entries of user {user} do not chain (entry {} after {})",
                newer.seq, older.seq
            )));
        }
    }
    if let Some(oldest) = entries.last()
        && oldest.seq == 1
        && oldest.prev_entry_hash != [0; 32]
    {
        return Err(refused("the first log entry names a previous one".into()));
    }
    Ok(newest.hash(server, user))
}

/// Refuses the keys of a user whose served entries (newest first) hold an erased entry:
/// the log records that their keys were erased (docs/kt.md §1), so no key served for
/// them is theirs to use — the newest entry erased means the server serves a key of an
/// erased account, an older one that a key was logged after the erasure. `who` names the
/// user in the sentence, `server` their homeserver.
pub fn refuse_erased(server: &str, who: &str, entries: &[Entry]) -> Result<()> {
    match entries.iter().find(|e| e.is_erasure()) {
        Some(e) => Err(refused(format!(
            "the log of {server} records that user {who}'s account was erased (entry {}, \
             logged at {} ms): no key served for them is usable, and this one is refused",
            e.seq, e.posted_at_ms
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The vectors of docs/kt.md §6, checked with this module's own code.
    #[test]
    fn docs_vectors_verify() {
        let e1 = Entry {
            seq: 1,
            fingerprint: [0x11; 32],
            posted_at_ms: 1_000,
            prev_entry_hash: [0; 32],
        };
        let e2 = Entry {
            seq: 2,
            fingerprint: [0x22; 32],
            posted_at_ms: 2_000,
            prev_entry_hash: e1.hash("a.test", 42),
        };
        let doc = include_str!("../../../docs/kt.md");
        let value = |k: &str| -> String {
            let line = doc
                .lines()
                .find(|l| l.starts_with(&format!("{k} = ")))
                .unwrap_or_else(|| panic!("docs/kt.md has no {k}"));
            line[k.len() + 3..].to_string()
        };
        assert_eq!(hex::encode(e2.hash("a.test", 42)), value("entry2.hash"));
        let newest = verify_chain("a.test", 42, &[e2.clone(), e1.clone()]).unwrap();
        let root: Hash = unhex(&value("map_root"));
        let path: Vec<Hash> = value("map_path(42)").split(',').map(unhex).collect();
        verify_map_path(&map_key("a.test", 42), &newest, &path, &root).unwrap();
        let mut wrong = newest;
        wrong[3] ^= 1;
        assert!(verify_map_path(&map_key("a.test", 42), &wrong, &path, &root).is_err());
        let head = Head {
            server_name: "a.test".into(),
            tree_size: 3,
            log_root: unhex(&value("log_root(3)")),
            map_root: root,
            timestamp_ms: 4_000,
            signature: hex::decode(value("signature")).unwrap(),
        };
        let public: [u8; 32] = unhex(&value("public_key"));
        head.verify_signature(&public).unwrap();
        let mut forged = head.clone();
        forged.map_root[0] ^= 1;
        assert!(forged.verify_signature(&public).is_err());
        // The erased entry of §6: it chains to entry 2, its map path leads to the map
        // root of the log of four, and it is never a usable key.
        let erased = Entry {
            seq: 3,
            fingerprint: ERASED,
            posted_at_ms: 5_000,
            prev_entry_hash: e2.hash("a.test", 42),
        };
        assert_eq!(hex::encode(erased.bytes("a.test", 42)), value("erased"));
        assert_eq!(hex::encode(erased.hash("a.test", 42)), value("erased.hash"));
        let chain = [erased.clone(), e2.clone(), e1.clone()];
        let newest = verify_chain("a.test", 42, &chain).unwrap();
        let root4: Hash = unhex(&value("map_root(4)"));
        let path4: Vec<Hash> = value("map_path(42, 4)").split(',').map(unhex).collect();
        verify_map_path(&map_key("a.test", 42), &newest, &path4, &root4).unwrap();
        assert!(erased.is_erasure() && !e2.is_erasure());
        let refusal = refuse_erased("a.test", "42", &chain)
            .unwrap_err()
            .to_string();
        assert!(
            refusal.contains("user 42's account was erased (entry 3, logged at 5000 ms)"),
            "{refusal}"
        );
        assert!(refuse_erased("a.test", "42", &chain[1..]).is_ok());
        // A chain with a hole is refused.
        let mut broken = e2;
        broken.prev_entry_hash[0] ^= 1;
        assert!(verify_chain("a.test", 42, &[broken, e1]).is_err());
    }
}
