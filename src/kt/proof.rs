//! Proofs against the newest head: a user's newest entries with the map path of the
//! newest, and the consistency proof from the client's last head. The store reads them
//! on one connection (`store::kt::read`), against the head the publisher last saw (kept
//! in memory; another replica's newer head is learnt at the next epoch) or else the
//! newest stored one; an epoch that commits in between shows as a map path that does not
//! lead to that head, and the read is made again against the newest stored head. Nothing
//! is served that was not checked here against the head it goes out with.

use std::time::Instant;

use super::Kt;
use super::cache::{CACHED_BITS, Known};
use crate::domain::UserId;
use crate::error::{Error, Result};
use crate::merkle::NodeMap;
use crate::merkle::log::{self, Hash};
use crate::merkle::map::{self, Prefix, Stored};
use crate::merkle::records;
use crate::proto;
use crate::store::StoredKey;
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
    /// Read against the newest stored head rather than the one the publisher last saw
    /// (which lags up to an epoch behind a head another replica published).
    pub newest_stored: bool,
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

/// The map path of `key` with the newest entry's hash as value, checked against `head`;
/// `get` gives the node at a prefix (None: not read; Some(None): read, nothing there).
fn map_path(
    key: &Hash,
    value: &Hash,
    head: &TreeHead,
    get: &dyn Fn(&Prefix) -> Option<Option<Stored>>,
) -> MapPath {
    let mut deeper = false;
    let proved = map::prove(key, &mut |p| {
        get(p).unwrap_or_else(|| {
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

/// What one read of a proof came to.
enum Step {
    /// The proof, checked against its head.
    Proved(proto::KeyProof),
    /// The user's leaf lies deeper than what was read: read again to the bottom,
    /// against this head.
    Deeper(TreeHead),
    /// The map moved on since the head: read again against the newest stored one.
    Moved,
}

impl Kt {
    /// This server's newest head and the consistency proof from `known`.
    pub async fn head(&self, known: u64) -> Result<proto::GetTreeHeadResponse> {
        let query = KtQuery {
            user: None,
            consistency_from: known,
            head: None,
            keys: 0,
            log_known: NodeMap::default(),
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
        let mut depth = None;
        // The first read is against the head the publisher last saw (unless the client
        // knows a larger tree: another replica published it); the others, after the map
        // moved on, against the newest stored one.
        let mut against = self.first_head(r);
        for _ in 0..ATTEMPTS {
            let (_, step) = self.read_once(r, depth, against.take(), 0).await?;
            match step? {
                Step::Proved(proof) => return Ok(proof),
                Step::Deeper(head) => {
                    depth = Some(256);
                    against = Some(head);
                }
                Step::Moved => {}
            }
        }
        Err(Error::Unavailable(format!(
            "the key log kept changing while the proof of user {} was read, or its map does \
             not hold the user's newest entry; retry (if it persists, run secretd kt-verify)",
            r.user
        )))
    }

    /// The user's newest public keys (at most `keys`, newest first) and, when one read
    /// proves them, the proof of `r` — on Postgres in one statement, FetchKey's one round
    /// trip. The proof is None when that read did not prove (no head yet, the map moved
    /// on, a leaf deeper than read, a proof that cannot be built): [`Kt::proof_when`]
    /// reads it again and says why. Only a `known_tree_size` above the head refuses.
    pub async fn keys_and_proof(
        &self,
        r: &ProofRequest,
        keys: usize,
    ) -> Result<(Vec<StoredKey>, Option<proto::KeyProof>)> {
        let (rows, step) = self.read_once(r, None, self.first_head(r), keys).await?;
        let proof = match step {
            Ok(Step::Proved(proof)) => Some(proof),
            Ok(_) => None,
            Err(e) if e.code() == tonic::Code::InvalidArgument => return Err(e),
            Err(_) => None,
        };
        Ok((rows.keys, proof))
    }

    /// The head a first read of `r` is made against (None: the newest stored one).
    fn first_head(&self, r: &ProofRequest) -> Option<TreeHead> {
        if r.newest_stored {
            return None;
        }
        self.newest_head()
            .filter(|h| h.tree_size >= r.known_tree_size)
    }

    /// One read of the proof of `r` (and `keys` of the user's keys) against `against`,
    /// the map's cached upper levels (`cache.rs`) not read again: the rows, and what they
    /// came to (an error about the proof only: the caller decides; a failed read is the
    /// outer error).
    async fn read_once(
        &self,
        r: &ProofRequest,
        depth: Option<u16>,
        against: Option<TreeHead>,
        keys: usize,
    ) -> Result<(KtRows, Result<Step>)> {
        let map_key = records::map_key(&self.server_name, r.user.get().max(0) as u64);
        let (cached, log_known) = match &against {
            Some(head) => {
                let from = r.known_tree_size;
                let log_known = match from > 0 && from < head.tree_size {
                    true => self
                        .log_cache
                        .known(&log::needed_for_consistency(from, head.tree_size)),
                    false => NodeMap::default(),
                };
                (self.map_cache.known(&map_key, head), log_known)
            }
            None => (Known::default(), NodeMap::default()),
        };
        let log_cached = log_known.len();
        let query = KtQuery {
            user: Some(UserQuery {
                user: r.user,
                map_key,
                after_seq: r.after_seq,
                max_entries: r.max_entries,
                map_depth: depth,
                map_from_bits: cached.from_bits,
            }),
            consistency_from: r.known_tree_size,
            head: against,
            keys,
            log_known,
        };
        let rows = self.store.kt_read(&query).await?;
        if rows.log.len() > log_cached {
            self.log_cache.learn(&rows.log);
        }
        let step = self.step(r, &map_key, &rows, &cached);
        Ok((rows, step))
    }

    /// What `rows` (read with the `cached` nodes left out) prove of `r`.
    fn step(
        &self,
        r: &ProofRequest,
        map_key: &Hash,
        rows: &KtRows,
        cached: &Known,
    ) -> Result<Step> {
        let head = rows.head.as_ref().ok_or_else(no_head)?;
        check_known(r.known_tree_size, head)?;
        let consistency = consistency(r.known_tree_size, head, rows)?;
        let proof = |map_path: Vec<Hash>| proto::KeyProof {
            head: Some(wire::tree_head(head)),
            map_path: map_path.into_iter().map(|h| h.to_vec()).collect(),
            entries: rows.entries.iter().map(wire::key_log_entry).collect(),
            consistency,
        };
        let Some(newest) = rows.entries.first() else {
            return Ok(Step::Proved(proof(Vec::new())));
        };
        let get = |p: &Prefix| cached.nodes.get(p).or_else(|| rows.map.get(p)).copied();
        Ok(match map_path(map_key, &newest.entry_hash, head, &get) {
            MapPath::Proved(path) => {
                if cached.from_bits < CACHED_BITS {
                    self.map_cache
                        .learn(map_key, &newest.entry_hash, &path, head, &get);
                }
                Step::Proved(proof(path))
            }
            MapPath::Deeper => Step::Deeper(head.clone()),
            MapPath::Moved => Step::Moved,
        })
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
