-- The key transparency "erased" entry (DESIGN §13, docs/kt.md §1 and §8). Additive only:
-- a replica of the previous version keeps working on this schema (its erasures insert
-- (user_id, erased_at) and leave the new columns at their defaults, which is exactly a
-- pending erasure; its publisher never reads them).

-- Each erasure is pending for the epoch publisher until kt_published is set: the epoch
-- that takes it appends the user's erased entry (fingerprint 32 zero bytes) and records
-- its leaf in kt_leaf, or, for a user with no logged entry, appends nothing and leaves
-- kt_leaf NULL. Erasures recorded before this migration start pending like new ones, so
-- the first epochs after the upgrade log them (the backfill). The partial index is the
-- publisher's queue, oldest first.
ALTER TABLE erased_users ADD COLUMN kt_published INTEGER NOT NULL DEFAULT 0;
ALTER TABLE erased_users ADD COLUMN kt_leaf INTEGER;
CREATE INDEX erased_users_kt_pending ON erased_users (erased_at, user_id)
    WHERE NOT kt_published;
