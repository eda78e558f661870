-- Retention (README "Retention"): each stream's horizon and each pair's own setting.
-- Additive only: a replica of the previous version ignores both and keeps working.

-- The lowest event id a stream may still hold: the sweeper deleted every event below it
-- (0 or 1 = nothing deleted). Moved in the transaction that deletes, never past the head.
ALTER TABLE streams ADD COLUMN first_event_id BIGINT NOT NULL DEFAULT 0;

-- A pair's retention as its owner set it (SetRetention); pairs without a row follow the
-- server's `retention_days`. 0 = no limit of that kind.
CREATE TABLE pair_retention (
    pair_id      UUID   PRIMARY KEY REFERENCES channel_pairs (pair_id),
    max_age_secs BIGINT NOT NULL,
    max_events   BIGINT NOT NULL,
    set_at       BIGINT NOT NULL
);
