//! The rows of a proof read in one statement (after its head): the user's entries, the
//! map nodes on their path, the log nodes of a consistency proof and the user's public
//! keys, each row tagged with its kind, as Postgres' `proof_rows` selects them (each round
//! trip costs the server more CPU than the lookups themselves).

use crate::error::{Error, Result};
use crate::merkle::log::Node;
use crate::store::StoredKey;
use crate::store::kt::{self, LogEntry, ProofRows, hash32};

/// A row of a proof's one statement: (kind, a, b, c, d, e, f, g) — kind 0, an entry: (leaf_index,
/// seq, posted_at_ms, fingerprint, prev_entry_hash, entry_hash, NULL); kind 1, a map node:
/// (bits, NULL, NULL, path, interior_hash, leaf_key, leaf_value); kind 2, a log node:
/// (level, idx, NULL, hash, NULL, NULL, NULL); kind 3, a public key: (seq, posted_at, NULL,
/// spki_der, fingerprint, NULL, NULL).
pub type ProofRow = (
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// Sorts the rows of a proof's one statement (of user `user`) into their parts.
pub fn proof_parts(user: i64, rows: Vec<ProofRow>) -> Result<ProofRows> {
    let mut out = ProofRows::default();
    let mut keys = Vec::new();
    for (kind, a, b, c, d, e, f, g) in rows {
        let missing = || Error::Internal(format!("a proof row of kind {kind} lacks a column"));
        match kind {
            0 => out.entries.push(LogEntry::try_from((
                a,
                user,
                b.ok_or_else(missing)?,
                d,
                c.ok_or_else(missing)?,
                e.ok_or_else(missing)?,
                f.ok_or_else(missing)?,
            ))?),
            1 => out
                .map
                .push((kt::prefix_from(a, &d)?, kt::stored_from(e, f, g)?)),
            3 => keys.push((
                a,
                StoredKey {
                    spki_der: d,
                    fingerprint: e.ok_or_else(missing)?,
                    posted_at: b.ok_or_else(missing)?,
                },
            )),
            _ => {
                let bad = || Error::Internal(format!("kt_log_nodes holds level {a}"));
                out.log.push((
                    Node {
                        level: u8::try_from(a).map_err(|_| bad())?,
                        index: kt::unsigned(b.ok_or_else(missing)?, "kt_log_nodes.idx")?,
                    },
                    hash32(&d, "kt_log_nodes.hash")?,
                ));
            }
        }
    }
    // Newest first, whatever order the union came in.
    out.entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
    keys.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    out.keys = keys.into_iter().map(|(_, k)| k).collect();
    Ok(out)
}
