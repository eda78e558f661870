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

/// A user's invites after a cursor, oldest first, as an [`InviteRow`](super::InviteRow);
/// `$1` user, `$2` after, `$3` limit.
pub(crate) const FETCH_INVITES: &str = "SELECT i.invite_id, i.pair_id, p.message_id, \
     p.state_id, i.from_user, i.body, i.sent_at \
     FROM invites i JOIN channel_pairs p ON p.pair_id = i.pair_id \
     WHERE i.to_user = $1 AND i.invite_id > $2 ORDER BY i.invite_id LIMIT $3";

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

/// Whether `$2` is a member of pair `$1`.
pub(crate) const IS_MEMBER: &str = "SELECT 1 FROM members WHERE pair_id = $1 AND user_id = $2";

/// A member's view of a stream: `(head_event_id, member_epoch)`, no row without access;
/// `$1` user, `$2` stream.
pub(crate) const STREAM_ACCESS: &str = "SELECT s.head_event_id, s.member_epoch FROM streams s \
     JOIN members m ON m.pair_id = s.pair_id AND m.user_id = $1 WHERE s.stream_id = $2";
