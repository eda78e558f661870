//! Opening one event: the checks that need no network (order, gap, epoch open or
//! closed, decryption, sender, kind against stream), then authentication against the
//! room's trust, the device's pins and the signer's key; and the history view, which
//! opens a whole stream again from each epoch's origin.

use super::incoming::{Incoming, Transcript, content_of, counter_of, sender_of};
use super::trust::check_trusted;
use super::{Device, StreamKind};
use crate::crypto::envelope::{self, Position};
use crate::crypto::ratchet::{ChainPoint, message_key};
use crate::crypto::uuid_bytes;
use crate::error::{Error, Result};
use crate::event::{self, Kind};
use crate::proto::secret::PostedMessage;
use crate::state::StreamState;
use crate::user;

/// What decrypting one event produced before authentication.
pub(super) struct Opened {
    pub(super) epoch_id: String,
    pub(super) generation: u32,
    pub(super) point: ChainPoint,
    pub(super) stale: bool,
    pub(super) signed: event::SignedEvent,
    pub(super) body: event::EventBody,
}

impl Opened {
    pub(super) fn kind(&self) -> &Kind {
        self.body.kind.as_ref().expect("parse_event checks it")
    }
}

/// Where each kind of event belongs.
fn check_kind(kind: &Kind, stream: StreamKind, generation: u32) -> Result<()> {
    let wrong = |what: &str, belongs: &str| {
        Err(Error::Protocol(format!(
            "a {what} event on the {} stream: it belongs on the {belongs} stream",
            match stream {
                StreamKind::Message => "message",
                StreamKind::State => "state",
            }
        )))
    };
    match (kind, stream) {
        (Kind::Text(_), StreamKind::State) => wrong("chat message", "message"),
        (Kind::TrustKey(_), StreamKind::Message) => wrong("TrustKey", "state"),
        (Kind::RoomState(_), StreamKind::Message) => wrong("RoomState", "state"),
        (Kind::Rekey(r), _) if r.generation != generation => Err(Error::Protocol(format!(
            "a Rekey announcing generation {} sent with the keys of generation {generation}",
            r.generation
        ))),
        _ => Ok(()),
    }
}

/// Decrypts `m` with the stream's epochs (advancing from each epoch's cursor, or from its
/// origin when the cursor is past the event), refusing events of a closed epoch and
/// events whose kind does not belong on the stream.
pub(super) fn open_with(
    stream: &StreamState,
    kind: StreamKind,
    m: &PostedMessage,
    max_gap: u64,
) -> Result<Opened> {
    let encrypted = m
        .message
        .as_ref()
        .ok_or_else(|| Error::Protocol("the server sent an event without a message".into()))?;
    let env = envelope::parse(&encrypted.message)?;
    let stream_bytes = uuid_bytes(&m.stream_id)?;
    let epoch_id = hex::encode(env.epoch);
    let epoch = stream
        .epochs
        .get(&epoch_id)
        .ok_or_else(|| Error::UnknownEpoch {
            stream: m.stream_id.clone(),
            epoch: epoch_id.clone(),
        })?;
    let counter = encrypted.id;
    if let Some(closed) = stream.closed_after(epoch)
        && counter > closed
    {
        return Err(Error::Protocol(format!(
            "posted with retired keys: generation {} closed at counter {closed}, when the keys \
             were rotated (this event is at counter {counter})",
            epoch.generation
        )));
    }
    let from = if counter > epoch.cursor.counter {
        &epoch.cursor
    } else {
        &epoch.origin
    };
    let point = from.advanced_to(counter, max_gap)?;
    let sender = sender_of(m);
    let pos = Position {
        stream: &stream_bytes,
        counter,
        epoch: &env.epoch,
        sender: &sender,
    };
    let plaintext = envelope::open_event(&message_key(&point.key), pos, &env)?;
    let (signed, body) = event::parse_event(&plaintext)?;
    if body.sender.as_ref() != Some(&sender) {
        return Err(Error::Protocol(format!(
            "the event claims another sender than user {} who posted it",
            user::display(&sender)
        )));
    }
    check_kind(
        body.kind.as_ref().expect("parse_event checks it"),
        kind,
        epoch.generation,
    )?;
    let newest = stream.newest_generation().unwrap_or(0);
    Ok(Opened {
        stale: epoch.generation < newest,
        generation: epoch.generation,
        epoch_id,
        point,
        signed,
        body,
    })
}

/// The counter rules a reader checks before opening: counters only grow along a stream
/// (an event at or below the last accepted counter is a replay or a reordering), by at
/// most `max_gap` at a time.
pub(super) fn check_order(counter: u64, accepted: u64, head: u64, max_gap: u64) -> Result<()> {
    if counter <= accepted {
        return Err(Error::Protocol(format!(
            "replayed or out of order: counter {counter} is not after counter {accepted}, the \
             last this device accepted on this stream"
        )));
    }
    let gap = counter - head.min(counter);
    if gap > max_gap {
        return Err(Error::GapTooLarge {
            counter,
            gap,
            limit: max_gap,
        });
    }
    Ok(())
}

impl Device {
    /// Checks the signer is trusted in the room, agrees with the device's pin, and that
    /// the signature verifies.
    pub(super) async fn authenticate(
        &mut self,
        pair_id: &str,
        m: &PostedMessage,
        opened: Opened,
    ) -> Result<Opened> {
        let sender = sender_of(m);
        let fp = opened.body.sender_fingerprint.clone();
        check_trusted(self.room(pair_id)?, &sender, &fp)?;
        let key = self
            .signer_key(&self.frame(pair_id)?.to_home(&sender), &fp)
            .await?;
        let epoch: [u8; 16] = hex::decode(&opened.epoch_id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .expect("epoch ids come from parsed envelopes");
        event::verify_event(
            &key,
            &uuid_bytes(&m.stream_id)?,
            counter_of(m),
            &epoch,
            &opened.signed,
        )?;
        // The heads the sender saw of this device's homeserver's log must be heads of the
        // log this device sees.
        self.check_gossip(&user::display(&sender), &opened.body.seen_heads)
            .await?;
        Ok(opened)
    }

    /// The room's message history this device can read, from the start of the stream,
    /// with ratchets restarted from each epoch's origin (the state stream is caught up
    /// first so trust is current). The reader's rules apply as when the events arrived:
    /// replays, closed epochs and misplaced kinds are shown as rejected.
    pub async fn history(&mut self, room: &str) -> Result<Transcript> {
        let pair_id = self.room(room)?.pair_id.clone();
        self.catch_up_room(&pair_id).await?;
        let mut stream = self.stream_of(&pair_id, StreamKind::Message)?.clone();
        for e in stream.epochs.values_mut() {
            e.cursor = e.origin.clone();
        }
        let mut transcript = Transcript::default();
        let api = self.api_for(&pair_id).await?;
        let events = match api.fetch_messages_after(&stream.stream_id, 0).await {
            Ok(events) => events,
            Err(e) => return Err(self.room_refused(&pair_id, e).await),
        };
        let (mut accepted, mut head) = (0, 0);
        for m in events {
            let counter = counter_of(&m);
            let ordered = check_order(counter, accepted, head, self.max_gap);
            if ordered.is_ok() {
                head = head.max(counter);
            }
            let opened = match ordered
                .and_then(|()| open_with(&stream, StreamKind::Message, &m, self.max_gap))
            {
                Err(Error::NotVisible { .. } | Error::UnknownEpoch { .. }) => {
                    transcript.hidden += 1;
                    continue;
                }
                Err(e) => Err(e),
                Ok(o) => self.authenticate(&pair_id, &m, o).await,
            };
            let outcome = match opened {
                Ok(o) => {
                    accepted = counter;
                    if let Some(e) = stream.epochs.get_mut(&o.epoch_id) {
                        e.cursor = o.point.clone();
                    }
                    (Ok(content_of(o.kind())), o.stale, o.body.client_time_ms)
                }
                Err(e) => (Err(e.to_string()), false, 0),
            };
            let frame = self.frame(&pair_id)?;
            transcript.events.push(Incoming::of(
                &pair_id,
                StreamKind::Message,
                &m,
                &frame,
                outcome,
            ));
        }
        Ok(transcript)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_only_grow_and_by_bounded_steps() {
        assert!(check_order(5, 4, 4, 10).is_ok());
        assert!(check_order(14, 4, 4, 10).is_ok());
        let replay = check_order(4, 4, 9, 10).unwrap_err().to_string();
        assert!(
            replay.starts_with("protocol violation: replayed or out of order"),
            "{replay}"
        );
        assert!(matches!(
            check_order(15, 4, 4, 10),
            Err(Error::GapTooLarge { gap: 11, .. })
        ));
        assert!(matches!(
            check_order(u64::MAX, 4, 4, 10),
            Err(Error::GapTooLarge { .. })
        ));
    }
}
