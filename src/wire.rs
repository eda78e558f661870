//! Conversions between stored records and protobuf messages, and the parsing of ids that
//! arrive in requests.

use uuid::Uuid;

use crate::error::Error;
use crate::proto::{self, stream_message_posting_response::Event};
use crate::store::{InviteRecord, PairIds, StoredEvent, StoredKey};
use crate::time::to_timestamp;

/// Parses a channel-pair or stream id: a UUID in canonical lower-case hyphenated form.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, Error> {
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

/// Checks a user id from a request: 1 ..= 2^63-1.
pub fn parse_user_id(field: &str, value: u64) -> Result<i64, Error> {
    match i64::try_from(value) {
        Ok(v) if v >= 1 => Ok(v),
        _ if value == 0 => Err(Error::invalid(format!(
            "{field} is required (user ids start at 1)"
        ))),
        _ => Err(Error::invalid(format!(
            "{field} {value} is above the largest user id 2^63-1"
        ))),
    }
}

/// The proto form of a pair's ids.
pub fn channel_pair(ids: &PairIds) -> proto::ChannelPair {
    proto::ChannelPair {
        message_id: ids.message_id.hyphenated().to_string(),
        state_id: ids.state_id.hyphenated().to_string(),
        pair_id: ids.pair_id.hyphenated().to_string(),
    }
}

/// The proto form of a stored key.
pub fn key(k: StoredKey) -> proto::Key {
    proto::Key {
        key_data: k.spki_der,
        fingerprint: k.fingerprint,
        posted_at: Some(to_timestamp(k.posted_at)),
    }
}

/// The proto form of a stored event.
pub fn posted_message(e: &StoredEvent) -> proto::PostedMessage {
    proto::PostedMessage {
        message: Some(proto::EncryptedMessage {
            message: e.body.to_vec(),
            id: e.counter as u64,
        }),
        stream_id: e.stream_id.hyphenated().to_string(),
        event_id: e.event_id as u64,
        sender: e.sender as u64,
        posted_at: Some(to_timestamp(e.posted_at)),
    }
}

/// The proto form of a stored invite.
pub fn received_invite(i: InviteRecord) -> proto::ReceivedInvite {
    proto::ReceivedInvite {
        invite_id: i.invite_id as u64,
        pair: Some(channel_pair(&i.pair)),
        from_user: i.from_user as u64,
        invite: i.body,
        sent_at: Some(to_timestamp(i.sent_at)),
    }
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

    #[test]
    fn only_canonical_uuids_pass() {
        let u = Uuid::new_v4();
        let canonical = u.hyphenated().to_string();
        assert_eq!(parse_id("stream_id", &canonical).unwrap(), u);
        for bad in [
            String::new(),
            canonical.to_uppercase(),
            u.simple().to_string(),
            format!("{{{canonical}}}"),
            format!("urn:uuid:{canonical}"),
            "not-a-uuid".to_string(),
        ] {
            assert!(parse_id("stream_id", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids_are_checked() {
        assert!(parse_user_id("user_id", 0).is_err());
        assert!(parse_user_id("user_id", 1u64 << 63).is_err());
        assert_eq!(parse_user_id("user_id", 5).unwrap(), 5);
    }
}
