-- secretd schema (SQLite). Times are microseconds since the Unix epoch (INTEGER), the
-- same representation as the Postgres schema. UUIDs are 16-byte BLOBs.

-- Users' RSA public keys, one row per key ever posted; the highest seq is current.
CREATE TABLE public_keys (
    user_id     INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    spki_der    BLOB   NOT NULL,
    fingerprint BLOB   NOT NULL,
    posted_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, seq),
    UNIQUE (user_id, fingerprint)
);

-- Password-encrypted private-key blobs (opaque), versioned for compare-and-set.
CREATE TABLE private_keys (
    user_id    INTEGER PRIMARY KEY,
    blob       BLOB   NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Channel pairs: one encrypted room = a message stream + a state stream.
CREATE TABLE channel_pairs (
    pair_id    BLOB   PRIMARY KEY,
    message_id BLOB   NOT NULL UNIQUE,
    state_id   BLOB   NOT NULL UNIQUE,
    owner      INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE members (
    pair_id   BLOB   NOT NULL REFERENCES channel_pairs (pair_id),
    user_id   INTEGER NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (pair_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, pair_id);

-- One head row per stream: appends lock it, take the next event id and move the counter
-- in the same transaction. member_epoch is bumped whenever a member leaves or is removed.
CREATE TABLE streams (
    stream_id     BLOB   PRIMARY KEY,
    pair_id       BLOB   NOT NULL REFERENCES channel_pairs (pair_id),
    head_event_id INTEGER NOT NULL DEFAULT 0,
    head_counter  INTEGER NOT NULL DEFAULT 0,
    member_epoch  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX streams_by_pair ON streams (pair_id);

-- Opaque encrypted events, dense event_id per stream.
CREATE TABLE events (
    stream_id BLOB   NOT NULL,
    event_id  INTEGER NOT NULL,
    counter   INTEGER NOT NULL,
    sender    INTEGER NOT NULL,
    posted_at INTEGER NOT NULL,
    body      BLOB   NOT NULL,
    PRIMARY KEY (stream_id, event_id)
);
CREATE UNIQUE INDEX events_by_counter ON events (stream_id, counter);

-- Per-invitee invite sequence (the row serialises invites to one user, so ids are dense
-- and commit in order).
CREATE TABLE inboxes (
    user_id        INTEGER PRIMARY KEY,
    last_invite_id INTEGER NOT NULL
);

CREATE TABLE invites (
    to_user   INTEGER NOT NULL,
    invite_id INTEGER NOT NULL,
    pair_id   BLOB   NOT NULL REFERENCES channel_pairs (pair_id),
    from_user INTEGER NOT NULL,
    body      BLOB   NOT NULL,
    sent_at   INTEGER NOT NULL,
    PRIMARY KEY (to_user, invite_id)
);
