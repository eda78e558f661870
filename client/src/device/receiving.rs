//! Receiving: advance to each event's counter within the gap limit, decrypt,
//! authenticate, apply state events — live, by catching up, or over the whole history.

use std::collections::BTreeMap;

use super::trust::{add_trust, check_trusted};
use super::{Device, StreamKind};
use crate::crypto::envelope::{self, Position};
use crate::crypto::ratchet::{ChainPoint, message_key};
use crate::crypto::uuid_bytes;
use crate::error::{Error, Result};
use crate::event::{self, Kind};
use crate::proto::secret::PostedMessage;
use crate::state::{EpochState, Room};
use crate::user::{self, UserRef};

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
    /// The sender, as the server reports them.
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

/// A stream's visible history.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    /// The events this device can read, in order (rejected ones included, with a reason).
    pub events: Vec<Incoming>,
    /// Events before this device's visible point (or in epochs it was never given).
    pub hidden: usize,
}

/// What decrypting one event produced before authentication.
struct Opened {
    epoch_id: String,
    point: ChainPoint,
    stale: bool,
    signed: event::SignedEvent,
    body: event::EventBody,
}

fn posted_at_ms(m: &PostedMessage) -> i64 {
    m.posted_at
        .as_ref()
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// Decrypts `m` with the epochs given (advancing from each epoch's cursor, or from its
/// origin when the cursor is past the event).
fn open_with(
    epochs: &BTreeMap<String, EpochState>,
    m: &PostedMessage,
    max_gap: u64,
) -> Result<Opened> {
    let encrypted = m
        .message
        .as_ref()
        .ok_or_else(|| Error::Protocol("the server sent an event without a message".into()))?;
    let env = envelope::parse(&encrypted.message)?;
    let stream = uuid_bytes(&m.stream_id)?;
    let epoch_id = hex::encode(env.epoch);
    let epoch = epochs.get(&epoch_id).ok_or_else(|| Error::UnknownEpoch {
        stream: m.stream_id.clone(),
        epoch: epoch_id.clone(),
    })?;
    let counter = encrypted.id;
    let from = if counter > epoch.cursor.counter {
        &epoch.cursor
    } else {
        &epoch.origin
    };
    let point = from.advanced_to(counter, max_gap)?;
    let sender = user::local(m.sender);
    let pos = Position {
        stream: &stream,
        counter,
        epoch: &env.epoch,
        sender: &sender,
    };
    let plaintext = envelope::open_event(&message_key(&point.key), pos, &env)?;
    let (signed, body) = event::parse_event(&plaintext)?;
    if body.sender.as_ref() != Some(&sender) {
        return Err(Error::Protocol(format!(
            "the event claims another sender than user {} who posted it",
            m.sender
        )));
    }
    let newest = epochs.values().map(|e| e.generation).max().unwrap_or(0);
    Ok(Opened {
        stale: epoch.generation < newest,
        epoch_id,
        point,
        signed,
        body,
    })
}

fn content_of(kind: &Kind) -> Content {
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

impl Device {
    pub(crate) fn stream_of(
        &self,
        pair_id: &str,
        kind: StreamKind,
    ) -> Result<&crate::state::StreamState> {
        let room = self.room(pair_id)?;
        Ok(match kind {
            StreamKind::Message => &room.message,
            StreamKind::State => &room.state,
        })
    }

    fn stream_mut(
        &mut self,
        pair_id: &str,
        kind: StreamKind,
    ) -> Result<&mut crate::state::StreamState> {
        let room = self.room_mut(pair_id)?;
        Ok(match kind {
            StreamKind::Message => &mut room.message,
            StreamKind::State => &mut room.state,
        })
    }

    /// Which room and stream an event's stream id belongs to.
    pub fn locate(&self, stream_id: &str) -> Option<(String, StreamKind)> {
        self.state.rooms.values().find_map(|r| {
            if r.message.stream_id == stream_id {
                Some((r.pair_id.clone(), StreamKind::Message))
            } else if r.state.stream_id == stream_id {
                Some((r.pair_id.clone(), StreamKind::State))
            } else {
                None
            }
        })
    }

    /// Catches a room up: the state stream first (trust), then the message stream.
    /// Returns every event processed since the last call that returned events (see
    /// [`Device::take_processed`]), these included.
    pub async fn sync_room(&mut self, room: &str) -> Result<Vec<Incoming>> {
        let pair_id = self.room(room)?.pair_id.clone();
        self.catch_up_room(&pair_id).await?;
        Ok(self.take_processed())
    }

    /// Processes every event of one stream after the device's cursor; returns what
    /// [`Device::take_processed`] returns.
    pub async fn sync_stream(&mut self, pair_id: &str, kind: StreamKind) -> Result<Vec<Incoming>> {
        self.catch_up(pair_id, kind).await?;
        Ok(self.take_processed())
    }

    /// Every event processed since the last call, in processing order — including those
    /// processed on the way by posting, inviting or rotating, so a live view shows each
    /// event exactly once.
    pub fn take_processed(&mut self) -> Vec<Incoming> {
        std::mem::take(&mut self.processed)
    }

    pub(crate) async fn catch_up_room(&mut self, pair_id: &str) -> Result<()> {
        self.catch_up(pair_id, StreamKind::State).await?;
        self.catch_up(pair_id, StreamKind::Message).await
    }

    /// Processes the events of one stream after the device's cursor. A room the user
    /// left or was removed from is [`Error::RoomLost`] (marked so on the first refusal).
    pub(crate) async fn catch_up(&mut self, pair_id: &str, kind: StreamKind) -> Result<()> {
        if let Some(lost) = self.lost_error(pair_id) {
            return Err(lost);
        }
        let stream = self.stream_of(pair_id, kind)?;
        let (stream_id, after) = (stream.stream_id.clone(), stream.last_event_id);
        let events = match self.api.fetch_messages_after(&stream_id, after).await {
            Ok(events) => events,
            Err(e) => return Err(self.room_refused(pair_id, e).await),
        };
        for m in events {
            self.process(pair_id, kind, m).await?;
        }
        Ok(())
    }

    /// Handles one live event (from a subscription): processes it, or catches up first
    /// when events before it are missing; returns what [`Device::take_processed`]
    /// returns (nothing new for an event already processed).
    pub async fn receive(&mut self, m: PostedMessage) -> Result<Vec<Incoming>> {
        let Some((pair_id, kind)) = self.locate(&m.stream_id) else {
            return Ok(self.take_processed());
        };
        let last = self.stream_of(&pair_id, kind)?.last_event_id;
        if m.event_id == last + 1 {
            self.process(&pair_id, kind, m).await?;
        } else if m.event_id > last {
            self.catch_up(&pair_id, kind).await?;
        }
        Ok(self.take_processed())
    }

    /// Decrypts, authenticates and applies the next event of a stream, moving the cursor.
    async fn process(&mut self, pair_id: &str, kind: StreamKind, m: PostedMessage) -> Result<()> {
        let mut content = self.authenticate_next(pair_id, kind, &m).await;
        if matches!(content, Err(Error::UnknownEpoch { .. })) {
            // A rotation we have not heard of: its invite may be waiting.
            self.accept_invites().await?;
            content = self.authenticate_next(pair_id, kind, &m).await;
        }
        if kind == StreamKind::Message && matches!(content, Err(Error::Untrusted(_))) {
            // A TrustKey may have landed on the state stream since we read it.
            Box::pin(self.catch_up(pair_id, StreamKind::State)).await?;
            content = self.authenticate_next(pair_id, kind, &m).await;
        }
        let counter = m.message.as_ref().map_or(0, |e| e.id);
        let stream = self.stream_mut(pair_id, kind)?;
        stream.last_event_id = m.event_id;
        stream.last_counter = stream.last_counter.max(counter);
        if matches!(content, Err(Error::NotVisible { .. })) {
            // Before the point this device was invited from: not for its eyes, and not
            // an error (the history view counts these as hidden).
            return Ok(());
        }
        let (content, stale, client_time_ms) = match content {
            Ok(opened) => {
                let epoch = stream
                    .epochs
                    .get_mut(&opened.epoch_id)
                    .expect("opened with it");
                if opened.point.counter > epoch.cursor.counter {
                    epoch.cursor = opened.point.clone();
                }
                let kind = opened.body.kind.as_ref().expect("parse_event checks it");
                if let Kind::TrustKey(_) | Kind::RoomState(_) = kind {
                    self.apply_state(pair_id, m.event_id, kind)?;
                }
                (
                    Ok(content_of(kind)),
                    opened.stale,
                    opened.body.client_time_ms,
                )
            }
            Err(e) => (Err(e.to_string()), false, 0),
        };
        self.processed.push(Incoming {
            pair_id: pair_id.to_string(),
            stream: kind,
            event_id: m.event_id,
            counter,
            sender: user::local(m.sender),
            posted_at_ms: posted_at_ms(&m),
            client_time_ms,
            stale_epoch: stale,
            content,
        });
        Ok(())
    }

    /// Decrypts the next event with the stream's cursors and authenticates it.
    async fn authenticate_next(
        &mut self,
        pair_id: &str,
        kind: StreamKind,
        m: &PostedMessage,
    ) -> Result<Opened> {
        let opened = open_with(&self.stream_of(pair_id, kind)?.epochs, m, self.max_gap)?;
        self.authenticate(pair_id, m, opened).await
    }

    /// Checks the signer is trusted in the room and the signature verifies.
    async fn authenticate(
        &mut self,
        pair_id: &str,
        m: &PostedMessage,
        opened: Opened,
    ) -> Result<Opened> {
        let sender = user::local(m.sender);
        let fp = opened.body.sender_fingerprint.clone();
        check_trusted(self.room(pair_id)?, &sender, &fp)?;
        let key = self.key_of(&sender, &fp).await?;
        let counter = m.message.as_ref().map_or(0, |e| e.id);
        let epoch: [u8; 16] = hex::decode(&opened.epoch_id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .expect("epoch ids come from parsed envelopes");
        event::verify_event(
            &key,
            &uuid_bytes(&m.stream_id)?,
            counter,
            &epoch,
            &opened.signed,
        )?;
        Ok(opened)
    }

    /// Applies an authenticated state event to the room.
    fn apply_state(&mut self, pair_id: &str, event_id: u64, kind: &Kind) -> Result<()> {
        let room: &mut Room = self.room_mut(pair_id)?;
        let mut trust = |who: &Option<UserRef>, fp: &[u8]| {
            if let Some(who) = who {
                add_trust(room, who, fp);
            }
        };
        match kind {
            Kind::TrustKey(t) => trust(&t.user, &t.fingerprint),
            Kind::RoomState(s) => {
                for t in &s.trusted {
                    for fp in &t.fingerprints {
                        trust(&t.user, fp);
                    }
                }
                if event_id > room.name_set_at {
                    room.name = s.name.clone();
                    room.photo = s.photo.clone();
                    room.photo_url = s.photo_url.clone();
                    room.name_set_at = event_id;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The room's message history this device can read, from the start of the stream,
    /// with ratchets restarted from each epoch's origin (the state stream is caught up
    /// first so trust is current).
    pub async fn history(&mut self, room: &str) -> Result<Transcript> {
        let pair_id = self.room(room)?.pair_id.clone();
        self.catch_up_room(&pair_id).await?;
        let stream = self.stream_of(&pair_id, StreamKind::Message)?;
        let stream_id = stream.stream_id.clone();
        let mut epochs = stream.epochs.clone();
        for e in epochs.values_mut() {
            e.cursor = e.origin.clone();
        }
        let mut transcript = Transcript::default();
        let events = match self.api.fetch_messages_after(&stream_id, 0).await {
            Ok(events) => events,
            Err(e) => return Err(self.room_refused(&pair_id, e).await),
        };
        for m in events {
            let opened = match open_with(&epochs, &m, self.max_gap) {
                Err(Error::NotVisible { .. } | Error::UnknownEpoch { .. }) => {
                    transcript.hidden += 1;
                    continue;
                }
                Err(e) => Err(e),
                Ok(o) => self.authenticate(&pair_id, &m, o).await,
            };
            let (content, stale, client_time_ms) = match opened {
                Ok(o) => {
                    if let Some(e) = epochs.get_mut(&o.epoch_id) {
                        e.cursor = o.point.clone();
                    }
                    let kind = o.body.kind.as_ref().expect("parse_event checks it");
                    (Ok(content_of(kind)), o.stale, o.body.client_time_ms)
                }
                Err(e) => (Err(e.to_string()), false, 0),
            };
            transcript.events.push(Incoming {
                pair_id: pair_id.clone(),
                stream: StreamKind::Message,
                event_id: m.event_id,
                counter: m.message.as_ref().map_or(0, |e| e.id),
                sender: user::local(m.sender),
                posted_at_ms: posted_at_ms(&m),
                client_time_ms,
                stale_epoch: stale,
                content,
            });
        }
        Ok(transcript)
    }
}
