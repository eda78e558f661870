-- Erasure of a user (DESIGN §13, README "Erase a user"). Additive only: a replica of the
-- previous version keeps working on this schema (it never reads the new column or table).

-- An event whose sender was erased with their messages: its body is empty (a post is
-- never empty) and this flag is set; id, counter, sender and time are kept, so ordering
-- and resume are unaffected. Adding a column with a constant default rewrites nothing.
ALTER TABLE events ADD COLUMN erased BOOLEAN NOT NULL DEFAULT FALSE;

-- Users whose account was erased, and when (µs). FetchKey of such a user says so, and
-- PostKey refuses them. Written once: a second erasure keeps the first time.
CREATE TABLE erased_users (
    user_id   BIGINT PRIMARY KEY,
    erased_at BIGINT NOT NULL
);
