//! SQL both backends run as is: written once, with `$N` placeholders (Postgres' own, and
//! accepted by sqlx's SQLite driver as numbered parameters).
//!
//! What differs stays in the backends (`postgres/`, `sqlite/`): appends (multi-row
//! `UNNEST` and one NOTIFY vs. row by row on the single writer), paging with `LATERAL`
//! vs. a read transaction, compare-and-set of private keys in one statement vs. in a
//! transaction, row locks (`FOR UPDATE`, `FOR SHARE`) vs. the single writer, and
//! member lists as arrays vs. `group_concat`. The store contract tests
//! (`store/contract.rs`) run every method on both backends.

/// A user's keys, newest first: `(spki_der, fingerprint, posted_at)`; `$1` user, `$2`
/// limit.
pub(crate) const FETCH_PUBLIC_KEYS: &str = "SELECT spki_der, fingerprint, posted_at \
     FROM public_keys WHERE user_id = $1 ORDER BY seq DESC LIMIT $2";

/// A user's current key: `(seq, fingerprint)`; `$1` user.
pub(crate) const CURRENT_PUBLIC_KEY: &str =
    "SELECT seq, fingerprint FROM public_keys WHERE user_id = $1 ORDER BY seq DESC LIMIT 1";

/// Whether the user had this key before: `seq`; `$1` user, `$2` fingerprint.
pub(crate) const KNOWN_PUBLIC_KEY: &str =
    "SELECT seq FROM public_keys WHERE user_id = $1 AND fingerprint = $2";

/// A new current key; `$1` user, `$2` seq, `$3` SPKI DER, `$4` fingerprint, `$5` time.
pub(crate) const INSERT_PUBLIC_KEY: &str = "INSERT INTO public_keys \
     (user_id, seq, spki_der, fingerprint, posted_at) VALUES ($1, $2, $3, $4, $5)";

/// Whether the user has posted any key; `$1` user.
pub(crate) const HAS_PUBLIC_KEY: &str = "SELECT 1 FROM public_keys WHERE user_id = $1 LIMIT 1";

/// The private-key backup and its version; `$1` user.
pub(crate) const FETCH_PRIVATE_KEY: &str =
    "SELECT blob, version FROM private_keys WHERE user_id = $1";

/// The private-key backup's version; `$1` user.
pub(crate) const PRIVATE_KEY_VERSION: &str = "SELECT version FROM private_keys WHERE user_id = $1";

/// A user's invites after a cursor, oldest first, as an [`InviteRow`](super::InviteRow):
/// invites into our pairs and invites other homeservers delivered into theirs, merged by
/// id (they share the inbox sequence); `$1` user, `$2` after, `$3` limit.
pub(crate) const FETCH_INVITES: &str = "SELECT x.invite_id, x.pair_id, x.message_id, \
     x.state_id, x.from_user, x.body, x.sent_at, x.pair_homeserver, \
     CASE WHEN x.from_user < 0 THEN (SELECT CAST(f.user_id AS TEXT) || ' ' || f.homeserver \
                                     FROM foreign_users f WHERE f.id = x.from_user) END \
     FROM (SELECT * FROM (SELECT i.invite_id, i.pair_id, p.message_id, p.state_id, i.from_user, \
                                 i.body, i.sent_at, CAST('' AS TEXT) AS pair_homeserver \
                          FROM invites i JOIN channel_pairs p ON p.pair_id = i.pair_id \
                          WHERE i.to_user = $1 AND i.invite_id > $2 ORDER BY i.invite_id LIMIT $3) l \
           UNION ALL \
           SELECT * FROM (SELECT r.invite_id, r.pair_id, r.message_id, r.state_id, r.from_user, \
                                 r.body, r.sent_at, r.pair_homeserver \
                          FROM remote_invites r \
                          WHERE r.to_user = $1 AND r.invite_id > $2 ORDER BY r.invite_id LIMIT $3) r) x \
     ORDER BY x.invite_id LIMIT $3";

/// The column that names an event's foreign sender as `"<user id> <homeserver>"` (NULL for
/// a local one, without a lookup), for a query whose events table is `e`; a macro so that
/// `concat!` can splice it into the backends' event queries.
macro_rules! sender_origin {
    () => {
        "CASE WHEN e.sender < 0 THEN (SELECT CAST(f.user_id AS TEXT) || ' ' || f.homeserver \
         FROM foreign_users f WHERE f.id = e.sender) END"
    };
}
pub(crate) use sender_origin;

/// A foreign user's id; `$1` homeserver, `$2` user id on it.
pub(crate) const FOREIGN_USER_ID: &str =
    "SELECT id FROM foreign_users WHERE homeserver = $1 AND user_id = $2";

/// An invite delivered before (same pair, inviter and bytes) to `$1`: `(invite_id,
/// sent_at)`; `$2` pair homeserver, `$3` pair, `$4` inviter, `$5` bytes.
pub(crate) const DELIVERED_BEFORE: &str = "SELECT invite_id, sent_at FROM remote_invites \
     WHERE to_user = $1 AND pair_homeserver = $2 AND pair_id = $3 AND from_user = $4 \
     AND body = $5 ORDER BY invite_id LIMIT 1";

/// The invites homeserver `$2` delivered to `$1` since `$3` (µs), oldest first, counted up
/// to `$4`: `(count, oldest sent_at)`.
pub(crate) const DELIVERED_TO_SINCE: &str = "SELECT count(*), min(d.sent_at) FROM \
     (SELECT sent_at FROM remote_invites WHERE to_user = $1 AND pair_homeserver = $2 \
      AND sent_at > $3 ORDER BY sent_at LIMIT $4) AS d";

/// The invites homeserver `$1` delivered to anyone since `$2` (µs), oldest first, counted
/// up to `$3`: `(count, oldest sent_at)`.
pub(crate) const DELIVERED_BY_SINCE: &str = "SELECT count(*), min(d.sent_at) FROM \
     (SELECT sent_at FROM remote_invites WHERE pair_homeserver = $1 AND sent_at > $2 \
      ORDER BY sent_at LIMIT $3) AS d";

/// A delivered invite; `$1` to, `$2` invite id, `$3` pair homeserver, `$4` pair, `$5`
/// message stream, `$6` state stream, `$7` inviter, `$8` bytes, `$9` time.
pub(crate) const INSERT_REMOTE_INVITE: &str = "INSERT INTO remote_invites (to_user, invite_id, \
     pair_homeserver, pair_id, message_id, state_id, from_user, body, sent_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Takes the next invite id of `$1`'s inbox (the row lock serialises invites to one user).
pub(crate) const NEXT_INVITE_ID: &str = "INSERT INTO inboxes (user_id, last_invite_id) \
     VALUES ($1, 1) ON CONFLICT (user_id) DO UPDATE SET last_invite_id = inboxes.last_invite_id + 1 \
     RETURNING last_invite_id";

/// The id of a user's newest invite; `$1` user.
pub(crate) const LAST_INVITE_ID: &str = "SELECT last_invite_id FROM inboxes WHERE user_id = $1";

/// Invites from `$2` to `$1` into pairs `$1` is still a member of, counted up to `$3`.
pub(crate) const PENDING_INVITES: &str = "SELECT count(*) FROM (SELECT 1 FROM invites i \
     JOIN members m ON m.pair_id = i.pair_id AND m.user_id = i.to_user \
     WHERE i.to_user = $1 AND i.from_user = $2 LIMIT $3) AS p";

/// When a pair the user is a member of was created (the cursor of ListChannelPairs);
/// `$1` user, `$2` pair.
pub(crate) const PAIR_CREATED_FOR_MEMBER: &str = "SELECT p.created_at FROM channel_pairs p \
     JOIN members m ON m.pair_id = p.pair_id AND m.user_id = $1 WHERE p.pair_id = $2";

/// The same cursor when departed pairs are listed too: the pair `$2` must be one `$1` is
/// a member of or departed from.
pub(crate) const PAIR_CREATED_FOR_MEMBER_OR_DEPARTED: &str = "SELECT p.created_at \
     FROM channel_pairs p WHERE p.pair_id = $2 \
     AND (EXISTS (SELECT 1 FROM members m WHERE m.pair_id = p.pair_id AND m.user_id = $1) \
     OR EXISTS (SELECT 1 FROM departures d WHERE d.pair_id = p.pair_id AND d.user_id = $1))";

/// Records that `$1` left pair `$2` (`$3` NULL) or was removed by the owner `$3`, at `$4`;
/// a later departure from the same pair replaces an earlier one.
pub(crate) const RECORD_DEPARTURE: &str = "INSERT INTO departures \
     (user_id, pair_id, removed_by, departed_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (user_id, pair_id) DO UPDATE \
     SET removed_by = excluded.removed_by, departed_at = excluded.departed_at";

/// Whether `$2` is a member of pair `$1`.
pub(crate) const IS_MEMBER: &str = "SELECT 1 FROM members WHERE pair_id = $1 AND user_id = $2";

/// A member's view of a stream: `(head_event_id, member_epoch)`, no row without access;
/// `$1` user, `$2` stream.
pub(crate) const STREAM_ACCESS: &str = "SELECT s.head_event_id, s.member_epoch FROM streams s \
     JOIN members m ON m.pair_id = s.pair_id AND m.user_id = $1 WHERE s.stream_id = $2";

/// The columns of a [`HeadRow`](super::kt::HeadRow), for a query whose heads table is
/// unaliased; a macro so that `concat!` can splice it.
macro_rules! kt_head_columns {
    () => {
        "tree_size, server_name, log_root, map_root, timestamp_ms, signature, key_id"
    };
}

/// The columns of an [`EntryRow`](super::kt::EntryRow).
macro_rules! kt_entry_columns {
    () => {
        "leaf_index, user_id, seq, fingerprint, posted_at_ms, prev_entry_hash, entry_hash"
    };
}

/// This server's newest head, as a [`HeadRow`](super::kt::HeadRow).
pub(crate) const KT_LATEST_HEAD: &str = concat!(
    "SELECT ",
    kt_head_columns!(),
    " FROM kt_heads WHERE homeserver = '' ORDER BY tree_size DESC LIMIT 1"
);

/// This server's heads with a size above `$1`, ascending, at most `$2`.
pub(crate) const KT_HEADS_AFTER: &str = concat!(
    "SELECT ",
    kt_head_columns!(),
    " FROM kt_heads WHERE homeserver = '' AND tree_size > $1 ORDER BY tree_size LIMIT $2"
);

/// A new head of this server; `$1` size, `$2` server name, `$3` log root, `$4` map root,
/// `$5` timestamp, `$6` signature, `$7` key id.
pub(crate) const KT_INSERT_HEAD: &str = "INSERT INTO kt_heads (homeserver, tree_size, \
     server_name, log_root, map_root, timestamp_ms, signature, key_id) \
     VALUES ('', $1, $2, $3, $4, $5, $6, $7)";

/// Re-signs the head of size `$1` (same roots): `$2` server name, `$3` timestamp,
/// `$4` signature, `$5` key id.
pub(crate) const KT_RESIGN_HEAD: &str = "UPDATE kt_heads SET server_name = $2, \
     timestamp_ms = $3, signature = $4, key_id = $5 WHERE homeserver = '' AND tree_size = $1";

/// A user's entries: user `$1`, seq above `$2`, leaf below `$3`, newest first, at most
/// `$4`; as [`EntryRow`](super::kt::EntryRow)s.
pub(crate) const KT_USER_ENTRIES: &str = concat!(
    "SELECT ",
    kt_entry_columns!(),
    " FROM kt_entries WHERE user_id = $1 AND seq > $2 AND leaf_index < $3 \
     ORDER BY seq DESC LIMIT $4"
);

/// Entries with a leaf index above `$1`, ascending, at most `$2`.
pub(crate) const KT_ENTRIES_AFTER: &str = concat!(
    "SELECT ",
    kt_entry_columns!(),
    " FROM kt_entries WHERE leaf_index > $1 ORDER BY leaf_index LIMIT $2"
);

/// The users of the oldest `$1` keys not yet logged (with repeats), oldest first.
pub(crate) const KT_PENDING_USERS: &str = "SELECT user_id FROM public_keys \
     WHERE kt_leaf IS NULL ORDER BY posted_at, user_id, seq LIMIT $1";

/// Erasures not yet published by the key transparency publisher, oldest first, at most
/// `$1`: (user, erased_at).
pub(crate) const KT_PENDING_ERASURES: &str = "SELECT user_id, erased_at FROM erased_users \
     WHERE NOT kt_published ORDER BY erased_at, user_id LIMIT $1";

/// Marks the erasure of `$1` published, with the leaf `$2` of its erased entry (NULL: the
/// user had no entry, none was appended).
pub(crate) const KT_ERASURE_PUBLISHED: &str = "UPDATE erased_users \
     SET kt_published = TRUE, kt_leaf = $2 WHERE user_id = $1 AND NOT kt_published";

/// The first published erasure the log does not record as it should: (user, leaf). With
/// a leaf, the entry there is not a zero-fingerprint (`$1`) entry of the user; without
/// one, the user has an entry all the same.
pub(crate) const KT_MISFILED_ERASURE: &str = "SELECT u.user_id, u.kt_leaf \
     FROM erased_users u LEFT JOIN kt_entries e ON e.leaf_index = u.kt_leaf \
     WHERE u.kt_published AND ((u.kt_leaf IS NOT NULL AND (e.leaf_index IS NULL \
     OR e.user_id <> u.user_id OR e.fingerprint <> $1)) OR (u.kt_leaf IS NULL AND EXISTS \
     (SELECT 1 FROM kt_entries x WHERE x.user_id = u.user_id))) \
     ORDER BY u.user_id LIMIT 1";

/// Log subtrees of level `$1` with an index above `$2`, ascending, at most `$3`.
pub(crate) const KT_LOG_NODES_AFTER: &str = "SELECT idx, hash FROM kt_log_nodes \
     WHERE level = $1 AND idx > $2 ORDER BY idx LIMIT $3";

/// Map nodes after (`$1` bits, `$2` path), in key order, at most `$3`.
pub(crate) const KT_MAP_NODES_AFTER: &str = "SELECT bits, path, interior_hash, leaf_key, \
     leaf_value FROM kt_map_nodes WHERE (bits, path) > ($1, $2) ORDER BY bits, path LIMIT $3";

/// The first logged key whose entry does not record it: (user, seq, leaf).
pub(crate) const KT_MISFILED_KEY: &str = "SELECT p.user_id, p.seq, p.kt_leaf \
     FROM public_keys p LEFT JOIN kt_entries e ON e.leaf_index = p.kt_leaf \
     WHERE p.kt_leaf IS NOT NULL AND (e.leaf_index IS NULL OR e.user_id <> p.user_id \
     OR e.fingerprint <> p.fingerprint) ORDER BY p.kt_leaf LIMIT 1";
