//! Key transparency on SQLite: the rows of a proof after its head (the user's entries, the
//! map nodes on their path, the log nodes of a consistency proof) and the user's public
//! keys in one statement, as on Postgres. Every statement is a round trip to the
//! connection's worker thread, and those hops, not the B-tree lookups, were most of a
//! proof's cost here. The node lists go in as JSON arrays (`json_each`), so the statement's
//! text never changes and stays prepared; each part is planned on its primary key alone.

use std::fmt::Write;

use crate::merkle::log::Node;
use crate::merkle::map::Prefix;
use crate::store::kt;

/// A proof's entries, map nodes and log nodes and the user's keys in one statement, as
/// [`ProofRow`](crate::store::kt_rows::ProofRow)s. `?5`: the map prefixes as
/// `[[bits, "hex path"], …]`; `?6`: the log nodes as `[[level, idx], …]`.
pub(super) const PROOF_ROWS: &str = "\
    SELECT * FROM (SELECT 0, leaf_index, seq, posted_at_ms, fingerprint, prev_entry_hash, \
            entry_hash, NULL FROM kt_entries \
        WHERE user_id = ?1 AND seq > ?2 AND leaf_index < ?3 ORDER BY seq DESC LIMIT ?4) \
    UNION ALL \
    SELECT 1, n.bits, NULL, NULL, n.path, n.interior_hash, n.leaf_key, n.leaf_value \
    FROM json_each(?5) AS q JOIN kt_map_nodes n \
        ON n.bits = q.value ->> 0 AND n.path = unhex(q.value ->> 1) \
    UNION ALL \
    SELECT 2, n.level, n.idx, NULL, n.hash, NULL, NULL, NULL \
    FROM json_each(?6) AS q JOIN kt_log_nodes n \
        ON n.level = q.value ->> 0 AND n.idx = q.value ->> 1 \
    UNION ALL \
    SELECT * FROM (SELECT 3, seq, posted_at, NULL, spki_der, fingerprint, NULL, NULL \
        FROM public_keys WHERE user_id = ?7 ORDER BY seq DESC LIMIT ?8)";

/// `prefixes` as [`PROOF_ROWS`]'s `?5`.
pub(super) fn prefixes_json(prefixes: &[Prefix]) -> String {
    let mut out = String::with_capacity(2 + prefixes.len() * 80);
    out.push('[');
    for (i, p) in prefixes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "[{},\"", p.bits);
        for b in kt::path_bytes(p) {
            let _ = write!(out, "{b:02x}");
        }
        out.push_str("\"]");
    }
    out.push(']');
    out
}

/// `nodes` as [`PROOF_ROWS`]'s `?6`.
pub(super) fn nodes_json(nodes: &[Node]) -> String {
    let mut out = String::with_capacity(2 + nodes.len() * 16);
    out.push('[');
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "[{},{}]", n.level, kt::signed(n.index));
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_json_arrays_sqlite_reads_back() {
        let mut path = [0u8; 32];
        path[0] = 0xa5;
        path[1] = 0x80;
        let prefixes = [
            Prefix {
                bits: 0,
                path: [0; 32],
            },
            Prefix { bits: 9, path },
            Prefix {
                bits: 256,
                path: [0xff; 32],
            },
        ];
        assert_eq!(
            prefixes_json(&prefixes),
            format!("[[0,\"\"],[9,\"a580\"],[256,\"{}\"]]", "ff".repeat(32))
        );
        assert_eq!(prefixes_json(&[]), "[]");
        let nodes = [
            Node { level: 0, index: 7 },
            Node {
                level: 63,
                index: 0,
            },
        ];
        assert_eq!(nodes_json(&nodes), "[[0,7],[63,0]]");
        assert_eq!(nodes_json(&[]), "[]");
    }
}
