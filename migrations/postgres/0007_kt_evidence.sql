-- Evidence that another homeserver equivocated (DESIGN §12, docs/kt.md §9): two tree heads
-- it signed (each verified under the key pinned for it) that cannot both be honest — one
-- tree size with two different roots ('fork'), a larger tree size signed earlier than a
-- smaller one ('rollback'), or a newer head that its own consistency proof does not lead
-- to from the older ('inconsistent'). Written when federation finds them (in a
-- FetchUserKey proof or an ExchangeHeads round); while a homeserver has a row here,
-- FetchKey of its users is
-- FAILED_PRECONDITION. An operator deletes the rows once the matter is settled (and
-- restarts the replicas: each remembers what it read at start and since).
CREATE TABLE kt_evidence (
    homeserver     TEXT    NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('fork', 'rollback', 'inconsistent')),
    found_at_ms    BIGINT  NOT NULL,
    -- Where the second head came from: 'FetchUserKey' or 'ExchangeHeads from <peer>'.
    reported_by    TEXT    NOT NULL,
    -- The head seen first (a_) and the one that contradicts it (b_), as signed (docs/kt.md
    -- §4; server_name = homeserver).
    a_tree_size    BIGINT  NOT NULL,
    a_log_root     BYTEA   NOT NULL,
    a_map_root     BYTEA   NOT NULL,
    a_timestamp_ms BIGINT  NOT NULL,
    a_signature    BYTEA   NOT NULL,
    a_key_id       TEXT    NOT NULL,
    b_tree_size    BIGINT  NOT NULL,
    b_log_root     BYTEA   NOT NULL,
    b_map_root     BYTEA   NOT NULL,
    b_timestamp_ms BIGINT  NOT NULL,
    b_signature    BYTEA   NOT NULL,
    b_key_id       TEXT    NOT NULL,
    PRIMARY KEY (homeserver, a_signature, b_signature)
);
