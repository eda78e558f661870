//! Requests parsed into domain types: one `TryFrom<proto::…Request>` per unary RPC that
//! carries data. A handler receives a value of these types or the client gets
//! INVALID_ARGUMENT with an actionable message; nothing past this point re-checks ids,
//! sizes or counters.
//!
//! What needs the server's settings is left to the handler: a [`UserRef`] becomes a
//! local [`UserId`](crate::domain::UserId) or a [`Foreign`](crate::domain::Foreign) user with
//! [`UserRef::resolve`].

use bytes::Bytes;

use crate::domain::{PairId, StreamId, UserRef};
use crate::error::Error;
use crate::keycheck::{self, CanonicalKey};
use crate::proto;
use crate::store::Page;

/// Largest opaque blob (ciphertext, invite, private key) in bytes: 64 KiB.
pub const MAX_BLOB: usize = 64 * 1024;
/// Page size when `limit` is 0.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size; larger limits are clamped.
pub const MAX_LIMIT: usize = 1000;

/// Checks an opaque blob's size: 1 byte to 64 KiB.
pub fn check_blob(field: &str, len: usize) -> Result<(), Error> {
    if len == 0 {
        return Err(Error::invalid(format!(
            "{field} is empty; it must hold 1 byte to 64 KiB"
        )));
    }
    if len > MAX_BLOB {
        return Err(Error::invalid(format!(
            "{field} is {len} bytes; the limit is {MAX_BLOB} bytes (64 KiB)"
        )));
    }
    Ok(())
}

/// Page size from a request's `limit`: 0 → 100, above 1000 → 1000.
pub fn page_limit(limit: u32) -> usize {
    match limit as usize {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    }
}

/// A cursor from a request: ids above 2^63-1 are past every stored id.
fn cursor(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// PostKey: the key in canonical form (validated RSA public key).
#[derive(Debug)]
pub struct PostKey {
    /// SPKI DER and fingerprint.
    pub key: CanonicalKey,
}

impl TryFrom<proto::PostKeyRequest> for PostKey {
    type Error = Error;
    fn try_from(r: proto::PostKeyRequest) -> Result<Self, Error> {
        Ok(PostKey {
            key: keycheck::canonicalize(&r.key_data)?,
        })
    }
}

/// FetchKey: whose key.
#[derive(Debug)]
pub struct FetchKey {
    /// The user named.
    pub user: UserRef,
    /// The size of the last tree head of ours the client verified (0: none).
    pub known_tree_size: u64,
}

impl TryFrom<proto::FetchKeyRequest> for FetchKey {
    type Error = Error;
    fn try_from(r: proto::FetchKeyRequest) -> Result<Self, Error> {
        Ok(FetchKey {
            user: UserRef::parse(&r.homeserver, "user_id", r.user_id)?,
            known_tree_size: r.known_tree_size,
        })
    }
}

/// MonitorKey: whose entries, after which seq, from which tree size.
#[derive(Debug)]
pub struct MonitorKey {
    /// The user named.
    pub user: UserRef,
    /// Entries with a larger seq are wanted.
    pub after_seq: u64,
    /// The size of the last tree head of ours the client verified (0: none).
    pub known_tree_size: u64,
}

impl TryFrom<proto::MonitorKeyRequest> for MonitorKey {
    type Error = Error;
    fn try_from(r: proto::MonitorKeyRequest) -> Result<Self, Error> {
        Ok(MonitorKey {
            user: UserRef::parse(&r.homeserver, "user_id", r.user_id)?,
            after_seq: r.after_seq,
            known_tree_size: r.known_tree_size,
        })
    }
}

/// PostPrivateKey: the encrypted backup and the compare-and-set version.
#[derive(Debug)]
pub struct PostPrivateKey {
    /// The blob (1 byte to 64 KiB).
    pub blob: Vec<u8>,
    /// The version the client expects to replace (`Some(0)`: none stored yet; `None`:
    /// overwrite whatever is stored).
    pub expected_version: Option<u64>,
}

impl TryFrom<proto::PostPrivateKeyRequest> for PostPrivateKey {
    type Error = Error;
    fn try_from(r: proto::PostPrivateKeyRequest) -> Result<Self, Error> {
        check_blob("key_data", r.key_data.len())?;
        Ok(PostPrivateKey {
            blob: r.key_data,
            expected_version: r.expected_version,
        })
    }
}

/// SendInvite: into which pair, to whom, the opaque invite.
#[derive(Debug)]
pub struct SendInvite {
    /// The pair invited into.
    pub pair: PairId,
    /// The invitee as named (of this homeserver or another).
    pub to: UserRef,
    /// The invite bytes (1 byte to 64 KiB).
    pub invite: Vec<u8>,
    /// The fingerprint of the invitee's key the invite was encrypted to, if the client
    /// gave one (32 bytes): the invite is refused when the invitee's current key differs.
    pub key_fingerprint: Option<Vec<u8>>,
}

/// Checks an optional key fingerprint field: empty (not given) or a SHA-256 (32 bytes).
pub fn key_fingerprint(field: &str, value: Vec<u8>) -> Result<Option<Vec<u8>>, Error> {
    match value.len() {
        0 => Ok(None),
        32 => Ok(Some(value)),
        n => Err(Error::invalid(format!(
            "{field} has {n} bytes; it must be empty or the 32-byte SHA-256 fingerprint \
             FetchKey returned"
        ))),
    }
}

impl TryFrom<proto::SendInviteRequest> for SendInvite {
    type Error = Error;
    fn try_from(r: proto::SendInviteRequest) -> Result<Self, Error> {
        let pair = PairId::parse("pair_id", &r.pair_id)?;
        let to = UserRef::parse(&r.homeserver, "user_id", r.user_id)?;
        check_blob("invite", r.invite.len())?;
        Ok(SendInvite {
            pair,
            to,
            invite: r.invite,
            key_fingerprint: key_fingerprint("key_fingerprint", r.key_fingerprint)?,
        })
    }
}

/// FetchInvites: a page of the caller's invites.
#[derive(Debug)]
pub struct FetchInvites {
    /// Invites with a larger id.
    pub after: i64,
    /// Page size.
    pub limit: usize,
}

impl From<proto::FetchInvitesRequest> for FetchInvites {
    fn from(r: proto::FetchInvitesRequest) -> Self {
        FetchInvites {
            after: cursor(r.after_invite_id),
            limit: page_limit(r.limit),
        }
    }
}

/// ListChannelPairs: a page of the caller's pairs.
#[derive(Debug)]
pub struct ListChannelPairs {
    /// Pairs after this one (`None`: from the first).
    pub after: Option<PairId>,
    /// Also the pairs the caller departed.
    pub include_departed: bool,
    /// Page size.
    pub limit: usize,
}

impl TryFrom<proto::ListChannelPairsRequest> for ListChannelPairs {
    type Error = Error;
    fn try_from(r: proto::ListChannelPairsRequest) -> Result<Self, Error> {
        let after = match r.after_pair_id.as_str() {
            "" => None,
            id => Some(PairId::parse("after_pair_id", id)?),
        };
        Ok(ListChannelPairs {
            after,
            include_departed: r.include_departed,
            limit: page_limit(r.limit),
        })
    }
}

/// LeaveChannelPair: the pair to leave.
#[derive(Debug)]
pub struct LeaveChannelPair {
    /// The pair.
    pub pair: PairId,
}

impl TryFrom<proto::LeaveChannelPairRequest> for LeaveChannelPair {
    type Error = Error;
    fn try_from(r: proto::LeaveChannelPairRequest) -> Result<Self, Error> {
        Ok(LeaveChannelPair {
            pair: PairId::parse("pair_id", &r.pair_id)?,
        })
    }
}

/// RemoveMember: which member of which pair.
#[derive(Debug)]
pub struct RemoveMember {
    /// The pair.
    pub pair: PairId,
    /// The member to remove (of this homeserver or another).
    pub user: UserRef,
}

impl TryFrom<proto::RemoveMemberRequest> for RemoveMember {
    type Error = Error;
    fn try_from(r: proto::RemoveMemberRequest) -> Result<Self, Error> {
        Ok(RemoveMember {
            pair: PairId::parse("pair_id", &r.pair_id)?,
            user: UserRef::parse(&r.homeserver, "user_id", r.user_id)?,
        })
    }
}

/// SetRetention: a pair's retention (each limit 0 = none of that kind).
#[derive(Debug)]
pub struct SetRetention {
    /// The pair.
    pub pair: PairId,
    /// Maximum age in seconds (0 ..= 2^63-1).
    pub max_age_secs: i64,
    /// Events kept per stream (0 ..= 2^63-1).
    pub max_events: i64,
}

impl TryFrom<proto::SetRetentionRequest> for SetRetention {
    type Error = Error;
    fn try_from(r: proto::SetRetentionRequest) -> Result<Self, Error> {
        let signed = |name: &str, v: u64| {
            i64::try_from(v).map_err(|_| {
                Error::invalid(format!(
                    "{name} is {v}; it must be at most 2^63-1 (0 = no limit)"
                ))
            })
        };
        Ok(SetRetention {
            pair: PairId::parse("pair_id", &r.pair_id)?,
            max_age_secs: signed("max_age_secs", r.max_age_secs)?,
            max_events: signed("max_events", r.max_events)?,
        })
    }
}

/// PostMessage: the ciphertext for a stream and its ratchet counter.
#[derive(Debug)]
pub struct PostMessage {
    /// The stream.
    pub stream: StreamId,
    /// The ratchet counter (1 ..= 2^63-1).
    pub counter: i64,
    /// The ciphertext (1 byte to 64 KiB).
    pub body: Bytes,
}

impl TryFrom<proto::PostMessageRequest> for PostMessage {
    type Error = Error;
    fn try_from(r: proto::PostMessageRequest) -> Result<Self, Error> {
        let stream = StreamId::parse("stream_id", &r.stream_id)?;
        let message = r.message.ok_or_else(|| {
            Error::invalid("message is required (the ciphertext and its ratchet counter)")
        })?;
        check_blob("message.message", message.message.len())?;
        let counter = match i64::try_from(message.id) {
            Ok(c) if c >= 1 => c,
            _ => {
                return Err(Error::invalid(format!(
                    "message.id (the ratchet counter) is {}; it must be between 1 and 2^63-1",
                    message.id
                )));
            }
        };
        Ok(PostMessage {
            stream,
            counter,
            body: Bytes::from(message.message),
        })
    }
}

/// FetchMessages: a page of a stream, forward or backward.
#[derive(Debug)]
pub struct FetchMessages {
    /// The stream.
    pub stream: StreamId,
    /// Which page.
    pub page: Page,
    /// Page size.
    pub limit: usize,
}

impl TryFrom<proto::FetchMessagesRequest> for FetchMessages {
    type Error = Error;
    fn try_from(r: proto::FetchMessagesRequest) -> Result<Self, Error> {
        let stream = StreamId::parse("stream_id", &r.stream_id)?;
        if r.after_event_id != 0 && r.before_event_id != 0 {
            return Err(Error::invalid(
                "set after_event_id (page forward) or before_event_id (page backward), not both",
            ));
        }
        let page = if r.before_event_id != 0 {
            Page::Before(cursor(r.before_event_id))
        } else {
            Page::After(cursor(r.after_event_id))
        };
        Ok(FetchMessages {
            stream,
            page,
            limit: page_limit(r.limit),
        })
    }
}
