//! Conversions between stored records and protobuf messages, and the parsing of ids that
//! arrive in requests.

use prost::Message;

use crate::domain::Foreign;
use crate::proto::{self, stream_message_posting_response::Event};
use crate::store::kt::{LogEntry, TreeHead};
use crate::store::{InviteRecord, PairIds, PairInfo, StoredEvent, StoredKey};
use crate::time::to_timestamp;

/// Bytes a gRPC frame adds in front of each message (compressed flag and length).
pub const GRPC_FRAME_HEADER: usize = 5;

/// The proto form of a pair's ids.
pub fn channel_pair(ids: &PairIds) -> proto::ChannelPair {
    proto::ChannelPair {
        message_id: ids.message_id.hyphenated().to_string(),
        state_id: ids.state_id.hyphenated().to_string(),
        pair_id: ids.pair_id.hyphenated().to_string(),
    }
}

/// The proto form of a stored key.
pub fn key(mut k: StoredKey) -> proto::Key {
    let der = std::mem::take(&mut k.spki_der);
    key_with(&k, der)
}

/// `k` in proto form with `key_data` = `der`.
fn key_with(k: &StoredKey, der: Vec<u8>) -> proto::Key {
    proto::Key {
        key_data: der,
        fingerprint: k.fingerprint.clone(),
        posted_at: Some(to_timestamp(k.posted_at)),
    }
}

/// The proto form of a signed tree head.
pub fn tree_head(h: &TreeHead) -> proto::TreeHead {
    proto::TreeHead {
        server_name: h.server_name.clone(),
        tree_size: h.tree_size,
        log_root: h.log_root.to_vec(),
        map_root: h.map_root.to_vec(),
        timestamp_ms: h.timestamp_ms,
        signature: h.signature.clone(),
        key_id: h.key_id.clone(),
    }
}

/// The proto form of a log entry.
pub fn key_log_entry(e: &LogEntry) -> proto::KeyLogEntry {
    proto::KeyLogEntry {
        seq: e.seq,
        fingerprint: e.fingerprint.to_vec(),
        posted_at_ms: e.posted_at_ms,
        prev_entry_hash: e.prev_entry_hash.to_vec(),
        leaf_index: e.leaf_index,
    }
}

/// The proto form of a stored event (copying the ciphertext).
pub fn posted_message(e: &StoredEvent) -> proto::PostedMessage {
    posted_message_with(e, Some(e.body.to_vec()))
}

/// The proto form of a stored event, taking over its ciphertext without a copy.
pub fn into_posted_message(mut e: StoredEvent) -> proto::PostedMessage {
    let body = Vec::from(std::mem::take(&mut e.body));
    posted_message_with(&e, Some(body))
}

/// `e` in proto form with the ciphertext `body` (`None`: no `message` field).
fn posted_message_with(e: &StoredEvent, body: Option<Vec<u8>>) -> proto::PostedMessage {
    // A post is never empty: an empty body is an erased event (store::erase). `e.body`
    // may have been taken into `body` already.
    let erased = body.as_ref().map_or(e.body.is_empty(), Vec::is_empty);
    proto::PostedMessage {
        message: body.map(|message| proto::EncryptedMessage {
            message,
            id: e.counter as u64,
        }),
        stream_id: e.stream_id.hyphenated().to_string(),
        event_id: e.event_id as u64,
        sender: user_id(e.sender, e.sender_origin.as_ref()),
        posted_at: Some(to_timestamp(e.posted_at)),
        sender_homeserver: homeserver(e.sender_origin.as_ref()),
        erased,
    }
}

/// The proto form of a stored invite.
pub fn received_invite(mut i: InviteRecord) -> proto::ReceivedInvite {
    let body = std::mem::take(&mut i.body);
    received_invite_with(&i, body)
}

/// `i` in proto form with the invite bytes `body`.
fn received_invite_with(i: &InviteRecord, body: Vec<u8>) -> proto::ReceivedInvite {
    proto::ReceivedInvite {
        invite_id: i.invite_id as u64,
        pair: Some(channel_pair(&i.pair)),
        from_user: user_id(i.from_user, i.from_origin.as_ref()),
        invite: body,
        sent_at: Some(to_timestamp(i.sent_at)),
        from_homeserver: homeserver(i.from_origin.as_ref()),
        pair_homeserver: i.pair_homeserver.clone(),
    }
}

/// A user id as the wire carries it: a local user's own id, or a foreign user's id on
/// their homeserver (`origin`). A foreign id whose name was not found (never expected:
/// `foreign_users` rows are never deleted) goes out as 0, never as a local user's id.
fn user_id(id: i64, origin: Option<&Foreign>) -> u64 {
    match origin {
        Some(f) => f.wire_id(),
        None if id < 0 => 0,
        None => id as u64,
    }
}

/// The homeserver next to a user id on the wire: empty for ours.
fn homeserver(origin: Option<&Foreign>) -> String {
    origin.map(|f| f.homeserver.to_string()).unwrap_or_default()
}

/// The proto form of a pair with its members: `member_refs` names everyone with their
/// homeserver; the draft's `members` lists the local members only, so a client that does
/// not know homeservers never takes user 2 of another server for our user 2.
pub fn pair_info(p: PairInfo) -> proto::ChannelPairInfo {
    let origin = |id: i64| p.foreign.iter().find(|(f, _)| *f == id).map(|(_, who)| who);
    proto::ChannelPairInfo {
        pair: Some(channel_pair(&p.ids)),
        owner: user_id(p.owner, origin(p.owner)),
        member_refs: p
            .members
            .iter()
            .map(|&m| proto::UserRef {
                homeserver: homeserver(origin(m)),
                user_id: user_id(m, origin(m)),
            })
            .collect(),
        members: p
            .members
            .iter()
            .filter(|&&m| m > 0)
            .map(|&m| m as u64)
            .collect(),
        owner_homeserver: homeserver(origin(p.owner)),
        departed: p.departed.map(|d| proto::Departure {
            removed_by: d.removed_by.map(|by| proto::UserRef {
                homeserver: homeserver(origin(by)),
                user_id: user_id(by, origin(by)),
            }),
            departed_at: Some(to_timestamp(d.at)),
        }),
    }
}

/// Bytes a field numbered 1 to 15 takes when it holds `len` encoded bytes (a message,
/// one element of a repeated message field, or a non-empty `bytes`): key, length, value.
pub fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Bytes a `bytes` field numbered 1 to 15 of `len` bytes takes (none when empty).
fn bytes_field_len(len: usize) -> usize {
    if len == 0 { 0 } else { field_len(len) }
}

/// What an event adds to a response as one `PostedMessage` element, without copying its
/// ciphertext.
pub fn posted_message_size(e: &StoredEvent) -> usize {
    let encrypted = proto::EncryptedMessage {
        message: Vec::new(),
        id: e.counter as u64,
    };
    let encrypted_len = encrypted.encoded_len() + bytes_field_len(e.body.len());
    field_len(posted_message_with(e, None).encoded_len() + field_len(encrypted_len))
}

/// What an invite adds to a response as one `ReceivedInvite` element, without copying it.
pub fn received_invite_size(i: &InviteRecord) -> usize {
    field_len(received_invite_with(i, Vec::new()).encoded_len() + bytes_field_len(i.body.len()))
}

/// What a key adds to a response as one `Key` element (or as `current_key`).
pub fn key_size(k: &StoredKey) -> usize {
    field_len(key_with(k, Vec::new()).encoded_len() + bytes_field_len(k.spki_der.len()))
}

/// What a pair adds to a response as one `ChannelPairInfo` element.
pub fn pair_info_size(p: &PairInfo) -> usize {
    field_len(pair_info(p.clone()).encoded_len())
}

/// One `StreamMessagePostingResponse` frame, encoded once.
pub fn frame(event: Event) -> proto::PreEncoded {
    proto::PreEncoded::encode(&proto::StreamMessagePostingResponse { event: Some(event) })
}

/// The encoded frame carrying a posted event (shared by every subscriber).
pub fn event_frame(e: &StoredEvent) -> proto::PreEncoded {
    frame(Event::Message(posted_message(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// A foreign user for every other `n`.
    fn foreign(n: i64) -> Option<Foreign> {
        (n % 2 == 1).then(|| Foreign {
            homeserver: format!("hs{n}.example").into(),
            user: crate::domain::UserId::trusted(n),
        })
    }

    #[test]
    fn item_sizes_are_exact() {
        let stream_id = Uuid::new_v4();
        for (len, counter) in [(0, 1), (1, 127), (127, 128), (128, 1 << 40), (16_383, 7)] {
            for len in [len, len + 65_536 - 16_383] {
                let e = StoredEvent {
                    stream_id,
                    event_id: counter * 3,
                    counter,
                    sender: counter + 1,
                    sender_origin: foreign(counter),
                    posted_at: 1_750_000_000_123_456,
                    body: bytes::Bytes::from(vec![7u8; len]),
                };
                let page = proto::FetchMessagesResponse {
                    messages: vec![posted_message(&e)],
                    ..Default::default()
                };
                assert_eq!(posted_message_size(&e), page.encoded_len(), "{len}");
                assert_eq!(into_posted_message(e.clone()), posted_message(&e));
                let i = InviteRecord {
                    invite_id: counter,
                    pair: PairIds::generate(),
                    from_user: counter,
                    from_origin: foreign(counter + 1),
                    pair_homeserver: if counter % 2 == 0 {
                        "a.example:8443".into()
                    } else {
                        String::new()
                    },
                    body: vec![1u8; len],
                    sent_at: 5,
                };
                let page = proto::FetchInvitesResponse {
                    invites: vec![received_invite(i.clone())],
                    has_more: false,
                };
                assert_eq!(received_invite_size(&i), page.encoded_len(), "{len}");
                let k = StoredKey {
                    spki_der: vec![2u8; len],
                    fingerprint: vec![3u8; 32],
                    posted_at: counter,
                };
                let page = proto::FetchKeyResponse {
                    past_keys: vec![key(k.clone())],
                    ..Default::default()
                };
                assert_eq!(key_size(&k), page.encoded_len(), "{len}");
                let p = PairInfo {
                    ids: PairIds::generate(),
                    owner: -1,
                    members: (-3..=len as i64).filter(|&m| m != 0).collect(),
                    foreign: (-3..0)
                        .map(|id| {
                            (
                                id,
                                foreign(-id * 1000).unwrap_or_else(|| foreign(7).unwrap()),
                            )
                        })
                        .collect(),
                    departed: (len % 2 == 0).then_some(crate::store::Departure {
                        removed_by: Some(-2),
                        at: counter,
                    }),
                };
                let page = proto::ListChannelPairsResponse {
                    pairs: vec![pair_info(p.clone())],
                    has_more: false,
                };
                assert_eq!(pair_info_size(&p), page.encoded_len(), "{len}");
            }
        }
    }
}
