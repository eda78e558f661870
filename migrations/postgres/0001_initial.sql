-- secretd schema (Postgres). Times are microseconds since the Unix epoch (BIGINT), the
-- same representation as the SQLite schema.

-- Users' RSA public keys, one row per key ever posted; the highest seq is current.
CREATE TABLE public_keys (
    user_id     BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    spki_der    BYTEA  NOT NULL,
    fingerprint BYTEA  NOT NULL,
    posted_at   BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq),
    UNIQUE (user_id, fingerprint)
);

-- Password-encrypted private-key blobs (opaque), versioned for compare-and-set.
CREATE TABLE private_keys (
    user_id    BIGINT PRIMARY KEY,
    blob       BYTEA  NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Channel pairs: one encrypted room = a message stream + a state stream.
CREATE TABLE channel_pairs (
    pair_id    UUID   PRIMARY KEY,
    message_id UUID   NOT NULL UNIQUE,
    state_id   UUID   NOT NULL UNIQUE,
    owner      BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE members (
    pair_id   UUID   NOT NULL REFERENCES channel_pairs (pair_id),
    user_id   BIGINT NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (pair_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, pair_id);

-- One head row per stream: appends lock it, take the next event id and move the counter
-- in the same transaction. member_epoch is bumped whenever a member leaves or is removed.
CREATE TABLE streams (
    stream_id     UUID   PRIMARY KEY,
    pair_id       UUID   NOT NULL REFERENCES channel_pairs (pair_id),
    head_event_id BIGINT NOT NULL DEFAULT 0,
    head_counter  BIGINT NOT NULL DEFAULT 0,
    member_epoch  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX streams_by_pair ON streams (pair_id);

-- Opaque encrypted events, dense event_id per stream.
CREATE TABLE events (
    stream_id UUID   NOT NULL,
    event_id  BIGINT NOT NULL,
    counter   BIGINT NOT NULL,
    sender    BIGINT NOT NULL,
    posted_at BIGINT NOT NULL,
    body      BYTEA  NOT NULL,
    PRIMARY KEY (stream_id, event_id)
);
CREATE UNIQUE INDEX events_by_counter ON events (stream_id, counter);

-- Per-invitee invite sequence (the row serialises invites to one user, so ids are dense
-- and commit in order).
CREATE TABLE inboxes (
    user_id        BIGINT PRIMARY KEY,
    last_invite_id BIGINT NOT NULL
);

CREATE TABLE invites (
    to_user   BIGINT NOT NULL,
    invite_id BIGINT NOT NULL,
    pair_id   UUID   NOT NULL REFERENCES channel_pairs (pair_id),
    from_user BIGINT NOT NULL,
    body      BYTEA  NOT NULL,
    sent_at   BIGINT NOT NULL,
    PRIMARY KEY (to_user, invite_id)
);
