//! What receiving hands out: an event decrypted and authenticated (or why not), and a
//! stream's readable history.

use crate::event::Kind;
use crate::proto::secret::PostedMessage;
use crate::user::UserRef;

use super::StreamKind;
use super::remote::Frame;

/// What a received event said.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    /// A chat message.
    Text(String),
    /// A member vouched for a key.
    TrustKey {
        /// Whose key.
        user: UserRef,
        /// Its fingerprint.
        fingerprint: Vec<u8>,
    },
    /// The room's name/photo/trusted users were set.
    RoomState {
        /// The new name.
        name: String,
    },
    /// Keys were rotated.
    Rekey {
        /// The new generation.
        generation: u32,
        /// Who was excluded.
        removed: Vec<UserRef>,
    },
    /// Not an event: the server said the room's retention removed the stream's events
    /// before this one (`history_starts_at`), events this device never read. The
    /// notice's `event_id` is that first kept event; its sender and times are empty.
    HistoryRemoved,
}

/// One received event, decrypted and authenticated, or why not.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The pair.
    pub pair_id: String,
    /// Which stream.
    pub stream: StreamKind,
    /// The event id.
    pub event_id: u64,
    /// The ratchet counter.
    pub counter: u64,
    /// The sender as the server reports them, named as this device's homeserver names
    /// users (`42`, `42@other.homeserver`).
    pub sender: UserRef,
    /// The server's time, ms since the Unix epoch.
    pub posted_at_ms: i64,
    /// The sender's clock, ms since the Unix epoch (0 when not decrypted).
    pub client_time_ms: i64,
    /// True when the event used an older epoch than the newest this device holds for the
    /// stream (posted with keys a removed member may also hold).
    pub stale_epoch: bool,
    /// The content, or why the event was rejected.
    pub content: std::result::Result<Content, String>,
}

impl Incoming {
    /// The notice that the stream's history before `starts_at` was removed by the room's
    /// retention ([`Content::HistoryRemoved`]).
    pub(super) fn history_removed(pair_id: &str, stream: StreamKind, starts_at: u64) -> Incoming {
        Incoming {
            pair_id: pair_id.to_string(),
            stream,
            event_id: starts_at,
            counter: 0,
            sender: UserRef::default(),
            posted_at_ms: 0,
            client_time_ms: 0,
            stale_epoch: false,
            content: Ok(Content::HistoryRemoved),
        }
    }

    /// The report that events `from..=to` of a stream are missing where the server
    /// announced no retention horizon: event ids are dense, so the server withheld or
    /// deleted them. An error entry at `from`, its sender and times empty.
    pub(super) fn events_missing(
        pair_id: &str,
        stream: StreamKind,
        from: u64,
        to: u64,
    ) -> Incoming {
        let which = match from == to {
            true => format!("event {from} is"),
            false => format!("events {from} to {to} are"),
        };
        Incoming {
            pair_id: pair_id.to_string(),
            stream,
            event_id: from,
            counter: 0,
            sender: UserRef::default(),
            posted_at_ms: 0,
            client_time_ms: 0,
            stale_epoch: false,
            content: Err(format!(
                "{which} missing: the server withheld or deleted them without a retention \
                 horizon (event ids have no gaps on an honest server)"
            )),
        }
    }

    /// The event `m` of a room's stream with what opening it gave: the content or why
    /// not, whether its epoch is an older one, and the sender's clock.
    /// Users in it are named as this device's homeserver names them (`frame`).
    pub(super) fn of(
        pair_id: &str,
        stream: StreamKind,
        m: &PostedMessage,
        frame: &Frame,
        (content, stale_epoch, client_time_ms): (std::result::Result<Content, String>, bool, i64),
    ) -> Incoming {
        let content = content.map(|c| match c {
            Content::TrustKey { user, fingerprint } => Content::TrustKey {
                user: frame.to_home(&user),
                fingerprint,
            },
            Content::Rekey {
                generation,
                removed,
            } => Content::Rekey {
                generation,
                removed: removed.iter().map(|u| frame.to_home(u)).collect(),
            },
            other => other,
        });
        Incoming {
            pair_id: pair_id.to_string(),
            stream,
            event_id: m.event_id,
            counter: counter_of(m),
            sender: frame.to_home(&sender_of(m)),
            posted_at_ms: posted_at_ms(m),
            client_time_ms,
            stale_epoch,
            content,
        }
    }
}

/// A stream's visible history.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    /// The events this device can read, in order (rejected ones included, with a reason).
    pub events: Vec<Incoming>,
    /// Events before this device's visible point (or in epochs it was never given).
    pub hidden: usize,
}

fn posted_at_ms(m: &PostedMessage) -> i64 {
    m.posted_at.as_ref().map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000)
    })
}

/// The sender of `m` as the pair's homeserver names them.
pub(super) fn sender_of(m: &PostedMessage) -> UserRef {
    UserRef {
        homeserver: m.sender_homeserver.clone(),
        user_id: m.sender,
    }
}

/// The event's ratchet counter (0 when the server sent none).
pub(super) fn counter_of(m: &PostedMessage) -> u64 {
    m.message.as_ref().map_or(0, |e| e.id)
}

pub(super) fn content_of(kind: &Kind) -> Content {
    match kind {
        Kind::Text(t) => Content::Text(t.body.clone()),
        Kind::TrustKey(t) => Content::TrustKey {
            user: t.user.clone().unwrap_or_default(),
            fingerprint: t.fingerprint.clone(),
        },
        Kind::RoomState(s) => Content::RoomState {
            name: s.name.clone(),
        },
        Kind::Rekey(r) => Content::Rekey {
            generation: r.generation,
            removed: r.removed.clone(),
        },
    }
}
