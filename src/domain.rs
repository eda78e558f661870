//! Domain types: the ids a request names, parsed once where they enter.
//!
//! Every id has a private field and is made by `parse` (request data, with the actionable
//! INVALID_ARGUMENT message the client sees) or by the crate itself (the token's subject,
//! rows read back from the database). The store traits take these types, so
//! `remove_member(owner, pair, user)` cannot be called with a pair id in a user's place,
//! and handlers never see an id that was not checked.
//!
//! **Users and federation.** DESIGN §9 makes a user `(homeserver, user_id)`. secretd stores
//! local users only today, so the two parts are two types: [`UserId`] is a user of *this*
//! homeserver (what the tables, the token's `sub` and the rate limits key on), and
//! [`UserRef`] is a user named in a request, homeserver included. A `UserRef` becomes a
//! `UserId` only through [`UserRef::into_local`], which refuses foreign homeservers with
//! UNIMPLEMENTED. When federation arrives, the stores that must hold foreign users switch
//! their parameter from `UserId` to `UserRef` (and their tables gain a homeserver
//! column); the compiler then lists every call site that has to decide. `UserId` stays
//! what it is, so a local id can never be mistaken for user 5 of another server.

use std::fmt;

use uuid::Uuid;

use crate::error::Error;

/// A user of this homeserver: 1 ..= 2^63-1 (the auth service's user id, the token's
/// `sub`).
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

    /// The foreign homeserver named, or `None` for this one (an empty homeserver or
    /// `server_name`: our own name is normalised to local on the way in).
    pub fn foreign_homeserver(&self, server_name: &str) -> Option<&str> {
        (!self.homeserver.is_empty() && self.homeserver != server_name)
            .then_some(self.homeserver.as_str())
    }

    /// The user id on its homeserver (for a foreign user, an id of *that* server).
    pub fn user_on_homeserver(&self) -> UserId {
        self.user
    }

    /// The user as a user of this homeserver (named by an empty homeserver or by
    /// `server_name`); a foreign one is UNIMPLEMENTED until federation exists.
    pub fn into_local(self, server_name: &str) -> Result<UserId, Error> {
        if self.homeserver.is_empty() || self.homeserver == server_name {
            Ok(self.user)
        } else {
            Err(Error::Unimplemented(format!(
                "homeserver {:?} is not this server ({server_name:?}); reaching users on \
                 other homeservers needs federation, which secretd does not support yet",
                self.homeserver
            )))
        }
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
    fn only_local_users_become_user_ids() {
        let local = UserRef::parse("", "user_id", 7).unwrap();
        assert_eq!(local.into_local("a.example").unwrap().get(), 7);
        let named = UserRef::parse("a.example", "user_id", 7).unwrap();
        assert_eq!(named.into_local("a.example").unwrap().get(), 7);
        let foreign = UserRef::parse("b.example", "user_id", 7).unwrap();
        let err = foreign.into_local("a.example").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }
}
