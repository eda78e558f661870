//! Proofs against the newest head: a user's newest entries with the map path of the
//! newest, and the consistency proof from the client's last head. The store reads them
//! on one connection (`store::kt::read`), against the head the publisher last saw (kept
//! in memory; another replica's newer head is learnt at the next epoch) or else the
//! newest stored one; an epoch that commits in between shows as a map path that does not
//! lead to that head, and the read is made again against the newest stored head. Nothing
//! is served that was not checked here against the head it goes out with.

use std::time::Instant;

use super::Kt;
use crate::domain::UserId;
use crate::error::{Error, Result};
use crate::merkle::log::{self, Hash};
use crate::merkle::map;
use crate::merkle::records;
use crate::proto;
use crate::store::kt::{KtQuery, KtRows, TreeHead, UserQuery};
use crate::wire;

/// Reads of a proof before giving up on a log that keeps moving under them.
const ATTEMPTS: usize = 4;

/// What a proof of a user's keys is asked for.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest {
    /// The (local) user.
    pub user: UserId,
    /// Entries with a seq above this (the newest always comes).
    pub after_seq: u64,
    /// Most entries, newest first.
    pub max_entries: usize,
    /// The client's last verified tree size (0: none).
    pub known_tree_size: u64,
}

/// The answer to a read before the first epoch.
fn no_head() -> Error {
    Error::Unavailable(
        "no key transparency tree head is published yet (a new database); retry in a moment".into(),
    )
}

/// Whether a refusal means only that nothing is published yet.
fn not_logged_yet(e: &Error) -> bool {
    matches!(e, Error::Unavailable(m) if m.starts_with("no key transparency tree head"))
}

/// INVALID_ARGUMENT unless the client's last tree size is at most the head's.
fn check_known(known: u64, head: &TreeHead) -> Result<()> {
    if known > head.tree_size {
        return Err(Error::invalid(format!(
            "known_tree_size {known} is above this server's newest tree head ({}): no head \
             of that size was published here; send the size of a head this server signed \
             (GetTreeHead)",
            head.tree_size
        )));
    }
    Ok(())
}

/// The consistency proof from `known` to the head, from the nodes read with it.
fn consistency(known: u64, head: &TreeHead, rows: &KtRows) -> Result<Vec<Vec<u8>>> {
    let mut missing = None;
    let proof = log::consistency(known, head.tree_size, &mut |n| {
        rows.log.get(&n).copied().unwrap_or_else(|| {
            missing = Some(n);
            [0; 32]
        })
    });
    if let Some(n) = missing {
        return Err(Error::Internal(format!(
            "the key log of {} entries lacks its subtree {n:?}; run secretd kt-verify",
            head.tree_size
        )));
    }
    Ok(proof.into_iter().map(|h| h.to_vec()).collect())
}

/// How a read of a map path turned out.
enum MapPath {
    /// The path, checked against the head.
    Proved(Vec<Hash>),
    /// The key lies deeper than what was read.
    Deeper,
    /// The map moved on since the head was read (or does not hold the entry).
    Moved,
}

/// The map path of `key` with the newest entry's hash as value, checked against `head`.
fn map_path(key: &Hash, value: &Hash, head: &TreeHead, rows: &KtRows) -> MapPath {
    let mut deeper = false;
    let proved = map::prove(key, &mut |p| {
        rows.map.get(p).copied().unwrap_or_else(|| {
            deeper = true;
            None
        })
    });
    match proved {
        _ if deeper => MapPath::Deeper,
        Some((v, path))
            if v == *value && map::root_from_proof(key, value, &path) == Some(head.map_root) =>
        {
            MapPath::Proved(path)
        }
        _ => MapPath::Moved,
    }
}

impl Kt {
    /// This server's newest head and the consistency proof from `known`.
    pub async fn head(&self, known: u64) -> Result<proto::GetTreeHeadResponse> {
        let query = KtQuery {
            user: None,
            consistency_from: known,
            head: None,
        };
        let rows = self.store.kt_read(&query).await?;
        let head = rows.head.as_ref().ok_or_else(no_head)?;
        check_known(known, head)?;
        Ok(proto::GetTreeHeadResponse {
            head: Some(wire::tree_head(head)),
            consistency: consistency(known, head, &rows)?,
            // The service fills in the key it signs with (`AppState.server_public_key`).
            public_key: Vec::new(),
        })
    }

    /// The proof of a user's newest entries against the newest head; `entries` is empty
    /// when the user has no entry in it.
    pub async fn proof(&self, r: &ProofRequest) -> Result<proto::KeyProof> {
        let map_key = records::map_key(&self.server_name, r.user.get().max(0) as u64);
        let mut depth = None;
        // The first read is against the head the publisher last saw (unless the client
        // knows a larger tree: another replica published it); the others, after the map
        // moved on, against the newest stored one.
        let mut against = self
            .newest_head()
            .filter(|h| h.tree_size >= r.known_tree_size);
        for _ in 0..ATTEMPTS {
            let query = KtQuery {
                user: Some(UserQuery {
                    user: r.user,
                    map_key,
                    after_seq: r.after_seq,
                    max_entries: r.max_entries,
                    map_depth: depth,
                }),
                consistency_from: r.known_tree_size,
                head: against.take(),
            };
            let rows = self.store.kt_read(&query).await?;
            let head = rows.head.as_ref().ok_or_else(no_head)?;
            check_known(r.known_tree_size, head)?;
            let consistency = consistency(r.known_tree_size, head, &rows)?;
            let map_path = match rows.entries.first() {
                None => Vec::new(),
                Some(newest) => match map_path(&map_key, &newest.entry_hash, head, &rows) {
                    MapPath::Proved(path) => path.into_iter().map(|h| h.to_vec()).collect(),
                    MapPath::Deeper => {
                        depth = Some(256);
                        against = rows.head.clone();
                        continue;
                    }
                    MapPath::Moved => continue,
                },
            };
            return Ok(proto::KeyProof {
                head: Some(wire::tree_head(head)),
                map_path,
                entries: rows.entries.iter().map(wire::key_log_entry).collect(),
                consistency,
            });
        }
        Err(Error::Unavailable(format!(
            "the key log kept changing while the proof of user {} was read, or its map does \
             not hold the user's newest entry; retry (if it persists, run secretd kt-verify)",
            r.user
        )))
    }

    /// The proof of `r`, read again each time a new head is published until `done` holds
    /// for it, `until` passes or the server drains; the last proof read (None when no
    /// head existed by then).
    pub async fn proof_when(
        &self,
        r: &ProofRequest,
        until: Instant,
        done: impl Fn(&proto::KeyProof) -> bool,
    ) -> Result<Option<proto::KeyProof>> {
        let mut published = self.watch();
        published.borrow_and_update();
        let mut last = None;
        loop {
            match self.proof(r).await {
                Ok(p) if done(&p) => return Ok(Some(p)),
                Ok(p) => last = Some(p),
                Err(e) if not_logged_yet(&e) => {}
                Err(e) => return Err(e),
            }
            let until = tokio::time::Instant::from_std(until);
            tokio::select! {
                changed = published.changed() => {
                    if changed.is_err() {
                        // The publisher is gone (the server drains): nothing more comes.
                        return Ok(last);
                    }
                }
                _ = tokio::time::sleep_until(until) => return Ok(last),
                _ = self.signal.draining() => return Ok(last),
            }
        }
    }
}
