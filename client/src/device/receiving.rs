//! Receiving: each stream in event-id order, live or by catching up — the order and gap
//! rules, opening and authenticating ([`super::opening`]), applying state events, and
//! noticing a rotation this device was not given the keys of (it then stops posting
//! with the old ones).

use super::incoming::{Incoming, content_of, counter_of};
use super::opening::{Opened, check_order, open_with};
use super::trust::add_trust;
use super::{Device, StreamKind};
use crate::error::{Error, Result};
use crate::event::Kind;
use crate::proto::secret::PostedMessage;
use crate::state::{MissingEpoch, Room, StreamState};
use crate::user::UserRef;

impl Device {
    pub(crate) fn stream_of(&self, pair_id: &str, kind: StreamKind) -> Result<&StreamState> {
        let room = self.room(pair_id)?;
        Ok(match kind {
            StreamKind::Message => &room.message,
            StreamKind::State => &room.state,
        })
    }

    fn stream_mut(&mut self, pair_id: &str, kind: StreamKind) -> Result<&mut StreamState> {
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

    /// Catches a room up: the state stream first (trust), then the message stream; and
    /// retries rotation invites that could not be sent before. Returns every event
    /// processed since the last call that returned events (see
    /// [`Device::take_processed`]), these included.
    pub async fn sync_room(&mut self, room: &str) -> Result<Vec<Incoming>> {
        let pair_id = self.room(room)?.pair_id.clone();
        self.catch_up_room(&pair_id).await?;
        self.retry_rekeys(&pair_id).await?;
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
        let api = self.api_for(pair_id).await?;
        let (events, starts_at) = match api.fetch_history_after(&stream_id, after).await {
            Ok(read) => read,
            Err(e) => return Err(self.room_refused(pair_id, e).await),
        };
        let mut gap = self.max_gap;
        if starts_at > after.saturating_add(1) {
            // The room's retention removed events this device never read: say so, and let
            // the ratchet advance past their counters (each moved it by at most max_gap).
            self.processed
                .push(Incoming::history_removed(pair_id, kind, starts_at));
            gap = horizon_gap(self.max_gap, starts_at - after - 1);
        }
        // Event ids are dense above the horizon (DESIGN: durable, gapless history): a
        // hole the server did not announce as retention is events it withheld or
        // deleted. Say so; the events after it go through the usual rules.
        let mut expected = after.saturating_add(1).max(starts_at);
        for m in events {
            if m.event_id > expected {
                self.processed.push(Incoming::events_missing(
                    pair_id,
                    kind,
                    expected,
                    m.event_id - 1,
                ));
            }
            expected = m.event_id.saturating_add(1);
            self.process(pair_id, kind, m, gap).await?;
            gap = self.max_gap;
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
        if Some(m.event_id) == last.checked_add(1) {
            let gap = self.max_gap;
            self.process(&pair_id, kind, m, gap).await?;
        } else if m.event_id > last {
            self.catch_up(&pair_id, kind).await?;
        }
        Ok(self.take_processed())
    }

    /// Checks, decrypts, authenticates and applies the next event of a stream, moving
    /// the cursor past it whatever the outcome; its counter may be at most `gap` past
    /// the stream's head counter.
    async fn process(
        &mut self,
        pair_id: &str,
        kind: StreamKind,
        m: PostedMessage,
        gap: u64,
    ) -> Result<()> {
        let counter = counter_of(&m);
        let stream = self.stream_of(pair_id, kind)?;
        let ordered = check_order(counter, stream.accepted_counter, stream.last_counter, gap);
        let in_order = ordered.is_ok();
        let mut content = match ordered {
            Ok(()) => self.authenticate_next(pair_id, kind, &m, gap).await,
            Err(e) => Err(e),
        };
        if matches!(content, Err(Error::UnknownEpoch { .. })) {
            // A rotation we have not heard of: its invite may be waiting.
            self.accept_invites().await?;
            content = self.authenticate_next(pair_id, kind, &m, gap).await;
        }
        if kind == StreamKind::Message && matches!(content, Err(Error::Untrusted(_))) {
            // A TrustKey may have landed on the state stream since we read it.
            Box::pin(self.catch_up(pair_id, StreamKind::State)).await?;
            content = self.authenticate_next(pair_id, kind, &m, gap).await;
        }
        let stream = self.stream_mut(pair_id, kind)?;
        stream.last_event_id = m.event_id;
        if in_order {
            // A jump past the gap limit is not taken as the stream's head either: the
            // device would derive that far at its next post.
            stream.last_counter = stream.last_counter.max(counter);
        }
        let outcome = match content {
            // Before the point this device was invited from: not for its eyes, and not
            // an error (the history view counts these as hidden).
            Err(Error::NotVisible { .. }) => return Ok(()),
            Err(Error::UnknownEpoch { stream: s, epoch }) => {
                // Keys this device was never given. After the start of its newest epoch,
                // that is a rotation it has not received: fail closed.
                let begins = stream.current_epoch().map_or(0, |(_, e)| e.origin.counter);
                if counter > begins {
                    stream.missing_epoch = Some(MissingEpoch {
                        epoch: epoch.clone(),
                        counter,
                    });
                }
                let e = Error::UnknownEpoch { stream: s, epoch };
                (Err(e.to_string()), false, 0)
            }
            Ok(opened) => {
                self.accepted(pair_id, kind, counter, m.event_id, &opened)?;
                (
                    Ok(content_of(opened.kind())),
                    opened.stale,
                    opened.body.client_time_ms,
                )
            }
            Err(e) => (Err(e.to_string()), false, 0),
        };
        let frame = self.frame(pair_id)?;
        self.processed
            .push(Incoming::of(pair_id, kind, &m, &frame, outcome));
        Ok(())
    }

    /// Records an authenticated event: the stream's accepted counter, the epoch's cursor,
    /// a missing rotation that turned out to be a stale post, and its state.
    fn accepted(
        &mut self,
        pair_id: &str,
        kind: StreamKind,
        counter: u64,
        event_id: u64,
        opened: &Opened,
    ) -> Result<()> {
        let stream = self.stream_mut(pair_id, kind)?;
        stream.accepted_counter = counter;
        if let Some(epoch) = stream.epochs.get_mut(&opened.epoch_id)
            && opened.point.counter > epoch.cursor.counter
        {
            epoch.cursor = opened.point.clone();
        }
        let newest = stream.newest_generation();
        if newest == Some(opened.generation)
            && stream
                .missing_epoch
                .as_ref()
                .is_some_and(|missing| counter > missing.counter)
        {
            // A trusted member posted in the newest keys after the unknown ones: the room
            // went on without them.
            stream.missing_epoch = None;
        }
        if let Kind::TrustKey(_) | Kind::RoomState(_) = opened.kind() {
            self.apply_state(pair_id, event_id, opened.kind())?;
        }
        Ok(())
    }

    /// Decrypts the next event with the stream's cursors (advancing at most `gap`) and
    /// authenticates it.
    async fn authenticate_next(
        &mut self,
        pair_id: &str,
        kind: StreamKind,
        m: &PostedMessage,
        gap: u64,
    ) -> Result<Opened> {
        let opened = open_with(self.stream_of(pair_id, kind)?, kind, m, gap)?;
        self.authenticate(pair_id, m, opened).await
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
}

/// The most the ratchet derives in one step past a retention horizon: a server claiming a
/// far horizon must not make the device hash for long (2^22 steps: a few seconds).
const MAX_HORIZON_GAP: u64 = 1 << 22;

/// How far the first event after a horizon may move the counter: `max_gap` for it and
/// for each of the `removed` events before it, within [`MAX_HORIZON_GAP`].
fn horizon_gap(max_gap: u64, removed: u64) -> u64 {
    max_gap
        .saturating_mul(removed.saturating_add(1))
        .clamp(max_gap, MAX_HORIZON_GAP.max(max_gap))
}
