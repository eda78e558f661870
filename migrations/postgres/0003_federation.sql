-- Federation (DESIGN §9): users of other homeservers, and invites into pairs that live on
-- other homeservers. Existing rows stay as they are: every user id already stored is a
-- local user (homeserver "").

-- A user of another homeserver who is a member here, sent an invite here or posted here,
-- gets an id of this database: a negative number (local users are 1 .. 2^63-1, so the two
-- can never meet). Every table that names a user (members, channel_pairs.owner,
-- events.sender, invites.from_user, inboxes) keeps one BIGINT; this table says which
-- (homeserver, user) a negative one is. Rows are never changed or deleted.
CREATE SEQUENCE foreign_user_ids;
CREATE TABLE foreign_users (
    id         BIGINT PRIMARY KEY CHECK (id < 0),
    homeserver TEXT   NOT NULL,
    user_id    BIGINT NOT NULL CHECK (user_id > 0),
    UNIQUE (homeserver, user_id)
);

-- Invites delivered by another homeserver (SecretFederationService.DeliverInvite) into one of
-- its pairs. They share the invitee's inbox sequence (inboxes) with local invites, so a
-- user's invite ids stay dense and FetchInvites merges both tables by id.
CREATE TABLE remote_invites (
    to_user         BIGINT NOT NULL,
    invite_id       BIGINT NOT NULL,
    pair_homeserver TEXT   NOT NULL,
    pair_id         UUID   NOT NULL,
    message_id      UUID   NOT NULL,
    state_id        UUID   NOT NULL,
    from_user       BIGINT NOT NULL,
    body            BYTEA  NOT NULL,
    sent_at         BIGINT NOT NULL,
    PRIMARY KEY (to_user, invite_id)
);
-- A repeated delivery (same pair, inviter and bytes) finds the invite it made before.
CREATE INDEX remote_invites_by_pair ON remote_invites (to_user, pair_homeserver, pair_id, from_user);
