//! Checks of another homeserver's key transparency data against the Ed25519 key pinned
//! for it (docs/kt.md §5, §9): a tree head's signature and freshness, and a FetchUserKey
//! answer's proof — the map path of the newest entry to the head's map root, the chain of
//! the entries, that none of them records an erasure, and that the keys served are the
//! entries'. Pure functions: federation
//! (`crate::federation::client`, `crate::federation::heads`) calls them with what a peer
//! sent and says the peer's name when one fails.

use ring::signature::{ED25519, UnparsedPublicKey};

use crate::merkle::log::Hash;
use crate::merkle::{map, records};
use crate::proto;
use crate::store::kt::TreeHead;

/// How old (or how far ahead of this server's clock) a head served with a proof, or sent
/// by a peer as its own, may be: ten minutes. A server re-signs its newest head once it is
/// a minute old ([`super::HEAD_REFRESH_MS`]), so an honest server's heads are never older
/// than a minute and an epoch.
pub const HEAD_MAX_AGE_MS: u64 = 600_000;

/// The key a server's heads must be signed with: the one pinned for it.
#[derive(Debug, Clone, Copy)]
pub struct Pinned<'a> {
    /// The server's `server_name` (in every head it signs).
    pub server_name: &'a str,
    /// Its raw Ed25519 public key.
    pub public_key: &'a [u8],
}

/// A 32-byte field of a message, or why not.
fn hash32(bytes: &[u8], what: &str) -> Result<Hash, String> {
    Hash::try_from(bytes).map_err(|_| format!("{what} is {} bytes, not 32", bytes.len()))
}

/// The head's signature under the pinned key, its server name and key id: the head as
/// stored, or why it does not verify. Freshness is [`check_fresh`]'s.
pub fn check_head(head: &proto::TreeHead, pinned: Pinned<'_>) -> Result<TreeHead, String> {
    if head.server_name != pinned.server_name {
        return Err(format!(
            "the head names server {:?}, not {:?}",
            head.server_name, pinned.server_name
        ));
    }
    let key_id = crate::federation::key::key_id(pinned.public_key);
    if head.key_id != key_id {
        return Err(format!(
            "the head was signed by key {:?}, not by the key pinned for {:?} ({key_id})",
            head.key_id, pinned.server_name
        ));
    }
    let stored = TreeHead {
        server_name: head.server_name.clone(),
        tree_size: head.tree_size,
        log_root: hash32(&head.log_root, "the head's log_root")?,
        map_root: hash32(&head.map_root, "the head's map_root")?,
        timestamp_ms: head.timestamp_ms,
        signature: head.signature.clone(),
        key_id: head.key_id.clone(),
    };
    UnparsedPublicKey::new(&ED25519, pinned.public_key)
        .verify(&stored.signed_bytes(), &head.signature)
        .map_err(|_| {
            format!(
                "the head's signature does not verify under the key pinned for {:?}",
                pinned.server_name
            )
        })?;
    Ok(stored)
}

/// Whether a head signed at `timestamp_ms` is within [`HEAD_MAX_AGE_MS`] of `now_ms`.
pub fn check_fresh(head: &TreeHead, now_ms: u64) -> Result<(), String> {
    let ts = head.timestamp_ms;
    if now_ms.saturating_sub(ts) > HEAD_MAX_AGE_MS {
        return Err(format!(
            "the head (tree size {}) was signed {} s ago, more than the {} s a head may be \
             old (a stale head replayed)",
            head.tree_size,
            (now_ms - ts) / 1000,
            HEAD_MAX_AGE_MS / 1000
        ));
    }
    if ts.saturating_sub(now_ms) > HEAD_MAX_AGE_MS {
        return Err(format!(
            "the head (tree size {}) is dated {} s in the future",
            head.tree_size,
            (ts - now_ms) / 1000
        ));
    }
    Ok(())
}

/// The hash of `e`, an entry of `user` of `server` (docs/kt.md §1).
fn entry_hash(server: &str, user: u64, e: &proto::KeyLogEntry) -> Result<Hash, String> {
    Ok(records::Entry {
        server,
        user,
        seq: e.seq,
        fingerprint: hash32(&e.fingerprint, "an entry's fingerprint")?,
        posted_at_ms: e.posted_at_ms,
        prev_entry_hash: hash32(&e.prev_entry_hash, "an entry's prev_entry_hash")?,
    }
    .hash())
}

/// Checks a peer's FetchUserKey answer for `user` of `pinned`'s server: the proof's head
/// (signature and freshness at `now_ms`), the newest entry's map path to the head's map
/// root, the entries' chain, and that the current key is the newest entry's (and each
/// past key served the next entry's). The verified head, or why the proof does not
/// verify.
pub fn check_key_proof(
    proof: &proto::KeyProof,
    user: u64,
    current: &proto::Key,
    past: &[proto::Key],
    pinned: Pinned<'_>,
    now_ms: u64,
) -> Result<TreeHead, String> {
    let head = proof.head.as_ref().ok_or("the proof has no head")?;
    let head = check_head(head, pinned)?;
    check_fresh(&head, now_ms)?;
    let server = pinned.server_name;
    let newest = proof.entries.first().ok_or("the proof has no entry")?;
    if proof.map_path.len() > 256 {
        return Err(format!(
            "the map path has {} levels (at most 256)",
            proof.map_path.len()
        ));
    }
    let path = proof
        .map_path
        .iter()
        .map(|s| hash32(s, "a map path element"))
        .collect::<Result<Vec<_>, _>>()?;
    let value = entry_hash(server, user, newest)?;
    let key = records::map_key(server, user);
    if map::root_from_proof(&key, &value, &path) != Some(head.map_root) {
        return Err(format!(
            "the map path of user {user}'s newest entry does not lead to the head's map root"
        ));
    }
    for pair in proof.entries.windows(2) {
        if pair[0].seq != pair[1].seq.wrapping_add(1)
            || pair[0].prev_entry_hash.as_slice() != entry_hash(server, user, &pair[1])?
            || pair[0].leaf_index <= pair[1].leaf_index
        {
            return Err(format!(
                "entry {} of user {user} is not chained to entry {}",
                pair[0].seq, pair[1].seq
            ));
        }
    }
    for e in &proof.entries {
        if e.leaf_index >= head.tree_size {
            return Err(format!(
                "an entry's leaf index {} is not below the head's tree size {}",
                e.leaf_index, head.tree_size
            ));
        }
        if e.seq == 0 || (e.seq == 1 && e.prev_entry_hash.iter().any(|b| *b != 0)) {
            return Err(format!("entry {} of user {user} starts no chain", e.seq));
        }
    }
    // An erased entry (docs/kt.md §1) is never a usable key: the peer logged the
    // account as erased, and serves a key for it all the same.
    if let Some(e) = proof
        .entries
        .iter()
        .find(|e| e.fingerprint.len() == 32 && e.fingerprint.iter().all(|b| *b == 0))
    {
        return Err(format!(
            "the log records that user {user}'s account was erased (entry {}): no key \
             served for them is usable",
            e.seq
        ));
    }
    if newest.fingerprint != current.fingerprint {
        return Err(format!(
            "the current key served is not user {user}'s newest logged key (entry {})",
            newest.seq
        ));
    }
    for (i, (e, key)) in proof.entries.iter().skip(1).zip(past).enumerate() {
        if e.fingerprint != key.fingerprint {
            return Err(format!(
                "past key {i} served is not user {user}'s logged entry {}",
                e.seq
            ));
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    const SERVER: &str = "b.test";
    const USER: u64 = 42;

    fn entry(seq: u64, fingerprint: Hash, prev: &[u8], leaf: u64) -> proto::KeyLogEntry {
        proto::KeyLogEntry {
            seq,
            fingerprint: fingerprint.to_vec(),
            posted_at_ms: seq * 1_000,
            prev_entry_hash: prev.to_vec(),
            leaf_index: leaf,
        }
    }

    /// A proof of `entries` (newest first) in a map holding only this user, signed by
    /// `pair` now.
    fn proof(pair: &Ed25519KeyPair, entries: Vec<proto::KeyLogEntry>) -> proto::KeyProof {
        let value = entry_hash(SERVER, USER, &entries[0]).unwrap();
        let mut head = TreeHead {
            server_name: SERVER.into(),
            tree_size: 2,
            log_root: [7; 32],
            map_root: map::leaf_hash(&records::map_key(SERVER, USER), &value),
            timestamp_ms: 1_000_000,
            signature: Vec::new(),
            key_id: crate::federation::key::key_id(pair.public_key().as_ref()),
        };
        head.signature = pair.sign(&head.signed_bytes()).as_ref().to_vec();
        proto::KeyProof {
            head: Some(proto::TreeHead {
                server_name: head.server_name,
                tree_size: head.tree_size,
                log_root: head.log_root.to_vec(),
                map_root: head.map_root.to_vec(),
                timestamp_ms: head.timestamp_ms,
                signature: head.signature,
                key_id: head.key_id,
            }),
            map_path: Vec::new(),
            entries,
            consistency: Vec::new(),
        }
    }

    /// A peer that serves a key for a user its log records as erased is refused, naming
    /// the erasure; the same key with the entry before the erasure verifies.
    #[test]
    fn a_key_of_an_erased_account_does_not_verify() {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[3; 32]).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let pinned = Pinned {
            server_name: SERVER,
            public_key: &public,
        };
        let key = proto::Key {
            key_data: Vec::new(),
            fingerprint: vec![0x11; 32],
            posted_at: None,
        };
        let first = entry(1, [0x11; 32], &[0; 32], 0);
        let before = proof(&pair, vec![first.clone()]);
        check_key_proof(&before, USER, &key, &[], pinned, 1_000_000).unwrap();
        let erased = entry(2, [0; 32], &entry_hash(SERVER, USER, &first).unwrap(), 1);
        let after = proof(&pair, vec![erased, first]);
        let err = check_key_proof(&after, USER, &key, &[], pinned, 1_000_000).unwrap_err();
        assert_eq!(
            err,
            "the log records that user 42's account was erased (entry 2): no key served for \
             them is usable"
        );
    }
}
