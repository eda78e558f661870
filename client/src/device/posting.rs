//! Posting: catch up, take the next counter in the newest epoch, sign, encrypt with a
//! fresh salt, post; on a refused counter (FAILED_PRECONDITION, or ALREADY_EXISTS from
//! older servers) resync, advance past the head named in the trailers, re-encrypt and
//! retry; after a transport failure re-send the identical bytes (exactly once).

use tonic::Code;

use super::Device;
use super::StreamKind;
use std::time::Duration;

use crate::api::{head_of, retry_after};
use crate::crypto::envelope::{self, Position};
use crate::crypto::ratchet::message_key;
use crate::crypto::{random, uuid_bytes};
use crate::error::{Error, Result};
use crate::event::{self, Kind};

/// How many times a post is re-encrypted after refused counters before giving up.
pub const MAX_POST_ATTEMPTS: usize = 64;
/// The longest `retry-after-ms` a post waits out by itself; a longer one is returned to
/// the caller.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// How many times an identical post is re-sent after a transport failure (exactly-once:
/// the server answers a repeat with the original event id).
pub const MAX_RESENDS: usize = 3;

impl Outgoing {
    fn new(pair_id: String, kind: StreamKind, what: Kind) -> Outgoing {
        Outgoing {
            pair_id,
            kind,
            what,
            attempt: None,
            refused: 0,
            floor: 0,
        }
    }
}

/// A successful post.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// The event id the server gave it.
    pub event_id: u64,
    /// The ratchet counter it was encrypted at.
    pub counter: u64,
    /// How many counters the server refused before this one (taken by racing posters).
    pub refused: usize,
}

/// A test hook that holds every post attempt just before it is sent: the device reports
/// the counter on `reached` and waits for a message on `resume` (or for `resume` to be
/// dropped, which opens the gate for good). Deterministic tests of counter races use it.
#[doc(hidden)]
pub struct PostGate {
    /// Counters of attempts that reached the gate.
    pub reached: tokio::sync::mpsc::UnboundedSender<u64>,
    /// One message lets one attempt through.
    pub resume: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// A post on its way: what it says and, once sealed, the exact bytes at a counter.
///
/// Re-sending identical bytes is exactly-once (the server answers a repeat with the
/// original event id), so an `Outgoing` whose delivery failed for a transient reason
/// ([`Error::is_transient`]) can be handed to [`Device::deliver`] again later — after a
/// server restart, minutes later — and is stored at most once. A refused counter (taken
/// by someone else) proves the bytes were not stored; the next attempt re-encrypts.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pair_id: String,
    kind: StreamKind,
    what: Kind,
    attempt: Option<Attempt>,
    refused: usize,
    floor: u64,
}

/// Sealed bytes at a counter.
#[derive(Clone, Debug)]
struct Attempt {
    stream_id: String,
    counter: u64,
    sealed: Vec<u8>,
}

impl Outgoing {
    /// The room it goes to.
    pub fn pair_id(&self) -> &str {
        &self.pair_id
    }

    /// True once sealed bytes went to the server at least once (they may be stored).
    pub fn in_flight(&self) -> bool {
        self.attempt.is_some()
    }
}

impl Device {
    /// Sends a chat message to a room.
    pub async fn send_text(&mut self, room: &str, text: &str) -> Result<Sent> {
        let mut out = self.outgoing_text(room, text)?;
        self.deliver(&mut out).await
    }

    /// A chat message for a room, to hand to [`Device::deliver`] (once or until it is
    /// delivered).
    pub fn outgoing_text(&self, room: &str, text: &str) -> Result<Outgoing> {
        let pair_id = self.room(room)?.pair_id.clone();
        if let Some(e) = self.lost_error(&pair_id) {
            return Err(e);
        }
        let kind = Kind::Text(event::Text {
            body: text.to_string(),
        });
        Ok(Outgoing::new(pair_id, StreamKind::Message, kind))
    }

    /// Posts one event: catch up, take the next counter in the newest epoch, sign, encrypt
    /// with a fresh salt, post; a refused counter repeats all of it past the new head.
    pub(crate) async fn post_event(
        &mut self,
        pair_id: &str,
        kind: StreamKind,
        what: Kind,
    ) -> Result<Sent> {
        let mut out = Outgoing::new(pair_id.to_string(), kind, what);
        self.deliver(&mut out).await
    }

    /// Delivers `out`: seals it at the next counter (unless bytes from an earlier attempt
    /// are waiting, which go again as they are), posts, and on a refused counter
    /// re-encrypts past the head the server names. On a transient failure the sealed
    /// bytes stay in `out` for the next call.
    pub async fn deliver(&mut self, out: &mut Outgoing) -> Result<Sent> {
        while out.refused < MAX_POST_ATTEMPTS {
            let attempt = match out.attempt.take() {
                Some(a) => a,
                None => self.seal(out).await?,
            };
            if let Some(gate) = &mut self.post_gate {
                let _ = gate.reached.send(attempt.counter);
                gate.resume.recv().await;
            }
            let (stream_id, counter) = (attempt.stream_id.clone(), attempt.counter);
            let sealed = attempt.sealed.clone();
            out.attempt = Some(attempt);
            let api = self.api_for(&out.pair_id).await?;
            match self
                .post_exactly_once(&api, &stream_id, counter, sealed)
                .await
            {
                Ok(event_id) => {
                    out.attempt = None;
                    return Ok(Sent {
                        event_id,
                        counter,
                        refused: out.refused,
                    });
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(Code::FailedPrecondition | Code::AlreadyExists)
                    ) =>
                {
                    if let Error::Rpc { status, .. } = &e {
                        out.floor = head_of(status).map_or(counter, |h| h.counter);
                    }
                    out.attempt = None;
                    out.refused += 1;
                }
                Err(e) if e.code() == Some(Code::PermissionDenied) => {
                    out.attempt = None;
                    return Err(self.room_refused(&out.pair_id.clone(), e).await);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::State(format!(
            "gave up posting to room {} after {MAX_POST_ATTEMPTS} refused counters: the stream is too busy",
            out.pair_id
        )))
    }

    /// Catches up, then signs and encrypts `out` at the stream's next counter.
    async fn seal(&mut self, out: &Outgoing) -> Result<Attempt> {
        let (pair_id, kind) = (out.pair_id.as_str(), out.kind);
        self.catch_up(pair_id, kind).await?;
        if self.stream_of(pair_id, kind)?.rotation_missing() {
            // The new keys may be waiting in an invite.
            self.accept_invites().await?;
            if self.stream_of(pair_id, kind)?.rotation_missing() {
                return Err(Error::RotationMissing {
                    room: self.room(pair_id)?.name.clone(),
                });
            }
        }
        let stream = self.stream_of(pair_id, kind)?;
        let (epoch_id, epoch) = stream
            .current_epoch()
            .ok_or_else(|| Error::State(format!("no keys to post in room {pair_id}")))?;
        let head = stream.last_counter.max(epoch.cursor.counter).max(out.floor);
        // The head comes from the server (events, refusal trailers): never derive further
        // than a reader would, and never wrap.
        let counter = head
            .checked_add(1)
            .filter(|c| c - epoch.cursor.counter <= self.max_gap)
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "the server puts the stream's head at counter {head}, {} steps past this \
                     device's keys (counter {}): refusing to derive that far",
                    head.saturating_sub(epoch.cursor.counter),
                    epoch.cursor.counter
                ))
            })?;
        let point = epoch.cursor.advanced_unbounded(counter);
        let stream_id = stream.stream_id.clone();
        let epoch_bytes: [u8; 16] = hex::decode(epoch_id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::State("a saved epoch id is not 16 bytes of hex".into()))?;
        let stream_bytes = uuid_bytes(&stream_id)?;
        let me = self.me_in(pair_id)?;
        let mut body = event::body(me.clone(), &self.identity, out.what.clone());
        body.seen_heads = self.heads_to_gossip();
        let plaintext =
            event::sign_event(&self.identity, &stream_bytes, counter, &epoch_bytes, &body)?;
        let pos = Position {
            stream: &stream_bytes,
            counter,
            epoch: &epoch_bytes,
            sender: &me,
        };
        let sealed = envelope::seal_event(&message_key(&point.key), pos, &random()?, &plaintext);
        Ok(Attempt {
            stream_id,
            counter,
            sealed,
        })
    }

    /// Posts, re-sending the identical request after a transport failure, or after the
    /// delay a RESOURCE_EXHAUSTED answer names in `retry-after-ms` (at most 10 s).
    async fn post_exactly_once(
        &self,
        api: &crate::api::Api,
        stream_id: &str,
        counter: u64,
        sealed: Vec<u8>,
    ) -> Result<u64> {
        let mut tries = 0;
        loop {
            let outcome = api.post_message(stream_id, counter, sealed.clone()).await;
            let wait = match &outcome {
                Err(Error::Rpc { status, .. }) if tries < MAX_RESENDS => match status.code() {
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded => {
                        Some(Duration::from_millis(100 << tries))
                    }
                    // A rate limit or a full commit queue: nothing was stored, and the
                    // server says when to come back.
                    Code::ResourceExhausted => {
                        retry_after(status).filter(|d| *d <= MAX_RETRY_AFTER)
                    }
                    _ => None,
                },
                _ => None,
            };
            match (wait, outcome) {
                (Some(d), _) => {
                    tries += 1;
                    tokio::time::sleep(d).await;
                }
                (None, outcome) => return outcome,
            }
        }
    }
}
