//! Domain types: the ids a request names, parsed once where they enter.
//!
//! Every id has a private field and is made by `parse` (request data, with the actionable
//! INVALID_ARGUMENT message the client sees) or by the crate itself (the token's subject,
//! rows read back from the database). The store traits take these types, so
//! `remove_member(owner, pair, user)` cannot be called with a pair id in a user's place,
//! and handlers never see an id that was not checked.
//!
//! **Users and federation.** DESIGN §9 makes a user `(homeserver, user_id)`. Three types:
//! [`UserRef`] is a user as a request names them (homeserver included, ours normalised to
//! local); [`Foreign`] is a user of another homeserver, named as that server names them;
//! [`UserId`] is the id *this database* knows a user by. Local users keep their own id
//! (1 ..= 2^63-1, the token's `sub`); a foreign user who is a member here, invited someone
//! or posted gets a negative id from the `foreign_users` table the first time they are
//! needed. So every table keeps one integer per user, user 2 of b (say -7) is never user 2
//! of a (2), and only the edges (the auth layer, the wire conversions, the SQL that reads
//! names back) ever deal with homeservers.

/// The hasher of the hot in-memory maps keyed by values the server made (stream ids, key
/// transparency node keys): foldhash, where SipHash showed in the profiles. Not for keys
/// a client chooses freely.
pub type FastHash = foldhash::fast::RandomState;

use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use crate::error::Error;

/// A user as this database knows them: a local user's own id (1 ..= 2^63-1, the auth
/// service's user id, the token's `sub`), or the negative id given to a [`Foreign`] user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(i64);

impl UserId {
    /// Parses a user id from a request field: 1 ..= 2^63-1.
    pub fn parse(field: &str, value: u64) -> Result<Self, Error> {
        match i64::try_from(value) {
            Ok(v) if v >= 1 => Ok(UserId(v)),
            _ if value == 0 => Err(Error::invalid(format!(
                "{field} is required (user ids start at 1)"
            ))),
            _ => Err(Error::invalid(format!(
                "{field} {value} is above the largest user id 2^63-1"
            ))),
        }
    }

    /// A user id the crate already trusts: a verified token's subject, or a value read
    /// back from the database.
    pub(crate) fn trusted(value: i64) -> Self {
        UserId(value)
    }

    /// The id of a foreign caller who holds nothing here (no membership, never invited):
    /// no row names it, so every membership check refuses it.
    pub const NOBODY: UserId = UserId(0);

    /// Whether this is the id of a user of another homeserver.
    pub fn is_foreign(self) -> bool {
        self.0 < 0
    }

    /// The id as stored in the database.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user named in a request: a homeserver (empty = this one) and that server's user id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserRef {
    /// The homeserver as the request named it; empty for this one.
    homeserver: String,
    /// The user's id on that homeserver.
    user: UserId,
}

impl UserRef {
    /// Parses the `(homeserver, user_id)` fields of a request (`field` names the user id
    /// field in errors).
    pub fn parse(homeserver: &str, field: &str, user: u64) -> Result<Self, Error> {
        Ok(UserRef {
            homeserver: homeserver.to_string(),
            user: UserId::parse(field, user)?,
        })
    }

    /// The user as a user of this homeserver (named by an empty homeserver or by
    /// `server_name`), or as a [`Foreign`] user of the homeserver named.
    pub fn resolve(self, server_name: &str) -> Result<UserId, Foreign> {
        if self.homeserver.is_empty() || self.homeserver == server_name {
            Ok(self.user)
        } else {
            Err(Foreign {
                homeserver: self.homeserver.into(),
                user: self.user,
            })
        }
    }
}

/// A user of another homeserver, as that homeserver names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Foreign {
    /// Their homeserver's `server_name` (never ours, never empty).
    pub homeserver: Arc<str>,
    /// Their user id on that homeserver.
    pub user: UserId,
}

impl Foreign {
    /// Reads the `"<user id> <homeserver>"` form the stores' SQL builds for a foreign user
    /// (see `store::sql::FOREIGN_NAME`).
    pub(crate) fn from_sql(text: &str) -> Option<Foreign> {
        let (user, homeserver) = text.split_once(' ')?;
        let user = user.parse::<i64>().ok().filter(|u| *u >= 1)?;
        (!homeserver.is_empty()).then(|| Foreign {
            homeserver: homeserver.into(),
            user: UserId(user),
        })
    }

    /// The user id on their homeserver, as the wire carries it.
    pub fn wire_id(&self) -> u64 {
        self.user.get() as u64
    }
}

/// Checks a homeserver name that arrives from another server (a `DeliverInvite`'s inviter):
/// 1 to 253 bytes of letters, digits and `.-:[]_` (a DNS name or an address, with a port).
pub fn check_homeserver_name(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} {name:?} is not a homeserver name (1 to 253 letters, digits and .-:[]_)"
        )))
    }
}

/// Parses a UUID in canonical lower-case hyphenated form (what the server hands out).
fn parse_uuid(field: &str, value: &str) -> Result<Uuid, Error> {
    let parsed = Uuid::try_parse(value).ok().filter(|u| {
        // Only the canonical form: 36 chars, lower-case, hyphenated.
        value.len() == 36 && u.hyphenated().to_string() == value
    });
    parsed.ok_or_else(|| {
        if value.is_empty() {
            Error::invalid(format!("{field} is required"))
        } else {
            Error::invalid(format!(
                "{field} {value:?} is not a UUID in canonical lower-case hyphenated form \
                 (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
            ))
        }
    })
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// Parses a request field: a UUID in canonical lower-case hyphenated form.
            pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
                parse_uuid(field, value).map($name)
            }

            /// The UUID, as stored in the database.
            pub fn get(self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A channel pair's id.
    PairId
);
uuid_id!(
    /// A stream's id (a pair's message or state stream).
    StreamId
);

impl StreamId {
    /// A stream id the crate already trusts (parsed earlier, or read from the database).
    pub(crate) fn trusted(value: Uuid) -> Self {
        StreamId(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuids_pass() {
        let u = Uuid::new_v4();
        let canonical = u.hyphenated().to_string();
        assert_eq!(StreamId::parse("stream_id", &canonical).unwrap().get(), u);
        assert_eq!(
            PairId::parse("pair_id", &canonical).unwrap().to_string(),
            canonical
        );
        for bad in [
            String::new(),
            canonical.to_uppercase(),
            u.simple().to_string(),
            format!("{{{canonical}}}"),
            format!("urn:uuid:{canonical}"),
            "not-a-uuid".to_string(),
        ] {
            assert!(StreamId::parse("stream_id", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids_are_checked() {
        assert!(UserId::parse("user_id", 0).is_err());
        assert!(UserId::parse("user_id", 1u64 << 63).is_err());
        assert_eq!(UserId::parse("user_id", 5).unwrap().get(), 5);
    }

    #[test]
    fn users_resolve_to_local_or_foreign() {
        let local = UserRef::parse("", "user_id", 7).unwrap();
        assert_eq!(local.resolve("a.example").unwrap().get(), 7);
        let named = UserRef::parse("a.example", "user_id", 7).unwrap();
        assert_eq!(named.resolve("a.example").unwrap().get(), 7);
        let foreign = UserRef::parse("b.example", "user_id", 7).unwrap();
        let f = foreign.resolve("a.example").unwrap_err();
        assert_eq!((&*f.homeserver, f.user.get()), ("b.example", 7));
        assert_eq!(Foreign::from_sql("7 b.example"), Some(f));
        for bad in ["", "7", "0 b", "x b", "7 "] {
            assert_eq!(Foreign::from_sql(bad), None, "{bad}");
        }
        assert!(check_homeserver_name("h", "b.example:8448").is_ok());
        for bad in ["", "a b", "a\nb", &"x".repeat(254)] {
            assert!(check_homeserver_name("h", bad).is_err(), "{bad}");
        }
    }
}
