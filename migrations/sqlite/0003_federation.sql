-- Federation (DESIGN §9): users of other homeservers, and invites into pairs that live on
-- other homeservers. Existing rows stay as they are: every user id already stored is a
-- local user (homeserver "").

-- A user of another homeserver who is a member here, sent an invite here or posted here,
-- gets an id of this database: a negative number (local users are 1 .. 2^63-1, so the two
-- can never meet). Every table that names a user (members, channel_pairs.owner,
-- events.sender, invites.from_user, inboxes) keeps one INTEGER; this table says which
-- (homeserver, user) a negative one is. Rows are never changed or deleted.
CREATE TABLE foreign_users (
    id         INTEGER PRIMARY KEY CHECK (id < 0),
    homeserver TEXT    NOT NULL,
    user_id    INTEGER NOT NULL CHECK (user_id > 0),
    UNIQUE (homeserver, user_id)
);

-- Invites delivered by another homeserver (SecretFederationService.DeliverInvite) into one of
-- its pairs. They share the invitee's inbox sequence (inboxes) with local invites, so a
-- user's invite ids stay dense and FetchInvites merges both tables by id.
CREATE TABLE remote_invites (
    to_user         INTEGER NOT NULL,
    invite_id       INTEGER NOT NULL,
    pair_homeserver TEXT    NOT NULL,
    pair_id         BLOB    NOT NULL,
    message_id      BLOB    NOT NULL,
    state_id        BLOB    NOT NULL,
    from_user       INTEGER NOT NULL,
    body            BLOB    NOT NULL,
    sent_at         INTEGER NOT NULL,
    PRIMARY KEY (to_user, invite_id)
);
-- A repeated delivery (same pair, inviter and bytes) finds the invite it made before.
CREATE INDEX remote_invites_by_pair ON remote_invites (to_user, pair_homeserver, pair_id, from_user);
