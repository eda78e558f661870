-- Departures: which pairs a user left or was removed from, by whom and when, so that a
-- device that finds a room closed to it can tell its user what happened
-- (ListChannelPairs with include_departed). One row per (user, pair): a later departure
-- from the same pair replaces it. A row whose user is a member again (re-invited) is not
-- listed. Written in the transaction that deletes the membership.
CREATE TABLE departures (
    user_id     INTEGER NOT NULL,
    pair_id     BLOB    NOT NULL REFERENCES channel_pairs (pair_id),
    -- The owner who removed the user; NULL when the user left on their own.
    removed_by  INTEGER,
    departed_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, pair_id)
);
