-- Key transparency (DESIGN §12; every hashed byte in docs/kt.md): the log of every key
-- users post, the map of each user's newest entry, and the signed heads over both. The
-- publisher (src/kt/) writes all of it, one epoch per transaction.

-- The log entry that records each key: its leaf index, NULL until the publisher logs it.
-- Keys posted before this migration start NULL like new ones, so the first epochs log
-- them (the backfill), oldest first. The partial index is the publisher's queue.
ALTER TABLE public_keys ADD COLUMN kt_leaf INTEGER;
CREATE INDEX public_keys_kt_pending ON public_keys (posted_at, user_id, seq)
    WHERE kt_leaf IS NULL;

-- The log's entries (docs/kt.md §1), one per leaf. user_id is a local user (only they post
-- keys); seq counts the user's entries from 1; entry_hash = SHA-256(0x00 ‖ entry bytes),
-- the RFC 9162 leaf hash, which the user's next entry names as prev_entry_hash.
CREATE TABLE kt_entries (
    leaf_index      INTEGER PRIMARY KEY CHECK (leaf_index >= 0),
    user_id         INTEGER NOT NULL,
    seq             INTEGER NOT NULL CHECK (seq >= 1),
    fingerprint     BLOB    NOT NULL,
    posted_at_ms    INTEGER NOT NULL,
    prev_entry_hash BLOB    NOT NULL,
    entry_hash      BLOB    NOT NULL,
    UNIQUE (user_id, seq)
);

-- The log's complete subtrees (docs/kt.md §2): the hash of leaves
-- [idx·2^level, (idx+1)·2^level), written once when its last leaf is appended (level 0:
-- the leaf hash). Every root and proof of the log combines O(log n) of them.
CREATE TABLE kt_log_nodes (
    level INTEGER NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx   INTEGER NOT NULL CHECK (idx >= 0),
    hash  BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
);

-- The map's nodes (docs/kt.md §3), one per prefix: where two keys or more lie below it, the
-- interior hash; where exactly one does and the prefix above holds more, that key and its
-- value (the user's newest entry hash). `path` is the prefix's first `bits` bits in
-- ceil(bits/8) bytes, the bits after them zero (the root: bits 0, no bytes).
CREATE TABLE kt_map_nodes (
    bits          INTEGER NOT NULL CHECK (bits BETWEEN 0 AND 256),
    path          BLOB    NOT NULL,
    interior_hash BLOB,
    leaf_key      BLOB,
    leaf_value    BLOB,
    PRIMARY KEY (bits, path),
    CHECK ((interior_hash IS NULL) = (leaf_key IS NOT NULL)
           AND (leaf_key IS NULL) = (leaf_value IS NULL))
);

-- Signed tree heads (docs/kt.md §4). homeserver "" holds this server's own heads, each
-- written in the transaction that appended its entries: one row per tree size, so two
-- heads of one size never exist (an epoch with nothing new may re-sign the newest row
-- with a later timestamp; its roots never change). Heads of other homeservers can be kept
-- under their server names later.
CREATE TABLE kt_heads (
    homeserver   TEXT    NOT NULL,
    tree_size    INTEGER NOT NULL CHECK (tree_size >= 0),
    server_name  TEXT    NOT NULL,
    log_root     BLOB    NOT NULL,
    map_root     BLOB    NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    signature    BLOB    NOT NULL,
    key_id       TEXT    NOT NULL,
    PRIMARY KEY (homeserver, tree_size)
);
