//! Key transparency on Postgres: the rows of a proof after its head (the user's entries,
//! the map nodes on their path, the log nodes of a consistency proof) and the user's
//! public keys in one statement, so a FetchKey with its proof costs one round trip.

/// A proof's entries, map nodes and log nodes and the user's keys in one statement, as
/// [`ProofRow`](crate::store::kt_rows::ProofRow)s (one round trip; each part on its index as
/// alone: `kt_entries (user_id, seq)`, the two primary keys, `public_keys (user_id, seq)`).
pub(super) const PROOF_ROWS: &str = "\
    (SELECT 0::bigint, leaf_index, seq, posted_at_ms, fingerprint, prev_entry_hash, \
            entry_hash, NULL::bytea FROM kt_entries \
     WHERE user_id = $1 AND seq > $2 AND leaf_index < $3 ORDER BY seq DESC LIMIT $4) \
    UNION ALL \
    SELECT 1::bigint, n.bits::bigint, NULL::bigint, NULL::bigint, n.path, n.interior_hash, \
           n.leaf_key, n.leaf_value \
    FROM UNNEST($5::smallint[], $6::bytea[]) AS q(bits, path) \
    JOIN kt_map_nodes n ON n.bits = q.bits AND n.path = q.path \
    UNION ALL \
    SELECT 2::bigint, n.level::bigint, n.idx, NULL::bigint, n.hash, NULL::bytea, NULL::bytea, \
           NULL::bytea \
    FROM UNNEST($7::smallint[], $8::bigint[]) AS q(level, idx) \
    JOIN kt_log_nodes n ON n.level = q.level AND n.idx = q.idx \
    UNION ALL \
    (SELECT 3::bigint, seq, posted_at, NULL::bigint, spki_der, fingerprint, NULL::bytea, \
            NULL::bytea FROM public_keys \
     WHERE user_id = $9 ORDER BY seq DESC LIMIT $10)";
