//! Posting: catch up, take the next counter in the newest epoch, sign, encrypt with a
//! fresh salt, post; on a refused counter (FAILED_PRECONDITION, or ALREADY_EXISTS from
//! older servers) resync, advance past the head named in the trailers, re-encrypt and
//! retry; after a transport failure re-send the identical bytes (exactly once).

use tonic::Code;

use super::Device;
use super::receiving::StreamKind;
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

impl Device {
    /// Sends a chat message to a room.
    pub async fn send_text(&mut self, room: &str, text: &str) -> Result<Sent> {
        let pair_id = self.room(room)?.pair_id.clone();
        let kind = Kind::Text(event::Text {
            body: text.to_string(),
        });
        self.post_event(&pair_id, StreamKind::Message, kind).await
    }

    /// Posts one event: catch up, take the next counter in the newest epoch, sign, encrypt
    /// with a fresh salt, post; a refused counter repeats all of it past the new head.
    pub(crate) async fn post_event(
        &mut self,
        pair_id: &str,
        kind: StreamKind,
        what: Kind,
    ) -> Result<Sent> {
        let mut floor = 0;
        for refused in 0..MAX_POST_ATTEMPTS {
            self.catch_up(pair_id, kind).await?;
            let stream = self.stream_of(pair_id, kind)?;
            let (epoch_id, epoch) = stream
                .current_epoch()
                .ok_or_else(|| Error::State(format!("no keys to post in room {pair_id}")))?;
            let counter = stream.last_counter.max(epoch.cursor.counter).max(floor) + 1;
            let point = epoch.cursor.advanced_unbounded(counter);
            let stream_id = stream.stream_id.clone();
            let epoch_bytes: [u8; 16] = hex::decode(epoch_id)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::State("a saved epoch id is not 16 bytes of hex".into()))?;
            let stream_bytes = uuid_bytes(&stream_id)?;
            let body = event::body(self.me.clone(), &self.identity, what.clone());
            let plaintext =
                event::sign_event(&self.identity, &stream_bytes, counter, &epoch_bytes, &body)?;
            let pos = Position {
                stream: &stream_bytes,
                counter,
                epoch: &epoch_bytes,
                sender: &self.me,
            };
            let sealed =
                envelope::seal_event(&message_key(&point.key), pos, &random()?, &plaintext);
            if let Some(gate) = &mut self.post_gate {
                let _ = gate.reached.send(counter);
                gate.resume.recv().await;
            }
            match self.post_exactly_once(&stream_id, counter, sealed).await {
                Ok(event_id) => {
                    return Ok(Sent {
                        event_id,
                        counter,
                        refused,
                    });
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(Code::FailedPrecondition | Code::AlreadyExists)
                    ) =>
                {
                    if let Error::Rpc { status, .. } = &e {
                        floor = head_of(status).map_or(counter, |h| h.counter);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::State(format!(
            "gave up posting to room {pair_id} after {MAX_POST_ATTEMPTS} refused counters: the stream is too busy"
        )))
    }

    /// Posts, re-sending the identical request after a transport failure, or after the
    /// delay a RESOURCE_EXHAUSTED answer names in `retry-after-ms` (at most 10 s).
    async fn post_exactly_once(
        &self,
        stream_id: &str,
        counter: u64,
        sealed: Vec<u8>,
    ) -> Result<u64> {
        let mut tries = 0;
        loop {
            let outcome = self
                .api
                .post_message(stream_id, counter, sealed.clone())
                .await;
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
