//! Resumable subscriptions over StreamMessagePosting.
//!
//! A background task holds one call, remembers the last event id delivered per stream and
//! the last invite id, and when the call fails (UNAVAILABLE at a server shutdown, a
//! dropped connection, an expired token, the server ending the call) it reconnects with
//! backoff and resumes every stream from its cursor. Events reach the consumer exactly
//! once, in event-id order per stream: anything at or below a cursor is dropped, and a
//! hole (which the server's contract rules out) is filled from FetchMessages before the
//! event after it. Invites missed while disconnected are fetched with FetchInvites after
//! each (re)connect, before anything the new call delivers.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::Api;
use crate::proto::secret::stream_message_posting_response::Event;
use crate::proto::secret::{ManageStream, PostedMessage, ReceivedInvite, StreamCursor};

/// Events buffered for the consumer before the task stops reading the call (HTTP/2 flow
/// control then holds the server back).
pub const BUFFER: usize = 256;
/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a subscription delivers.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// The next event of a subscribed stream.
    Event(PostedMessage),
    /// A stream's backlog has been delivered (after every (re)connect).
    CaughtUp {
        /// The stream.
        stream_id: String,
        /// Its head event id when the backlog ended.
        head_event_id: u64,
    },
    /// The server ended one stream's subscription (not a member, removed, limit); the
    /// stream is not resumed again.
    Ended {
        /// The stream.
        stream_id: String,
        /// The gRPC code.
        code: Code,
        /// The server's explanation.
        message: String,
    },
    /// An invite addressed to the caller.
    Invite(ReceivedInvite),
    /// The call failed; the subscription reconnects and resumes by itself (with the
    /// connection's current token: see [`Api::set_token`]).
    Reconnecting {
        /// Why the call ended.
        reason: String,
        /// The status code it ended with, when the server sent one
        /// (UNAUTHENTICATED: the token expired or was refused).
        code: Option<Code>,
    },
}

enum Control {
    Add(Vec<(String, u64)>),
    Remove(Vec<String>),
}

/// A live, self-resuming subscription. Dropping it ends the call.
pub struct Subscription {
    rx: mpsc::Receiver<Delivery>,
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// The next delivery; None only if the task ended (it ends when the subscription is
    /// dropped).
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Follows more streams, each after its cursor (0 = from the first event).
    pub fn add(&self, cursors: Vec<(String, u64)>) {
        let _ = self.control.send(Control::Add(cursors));
    }

    /// Stops following streams.
    pub fn remove(&self, streams: Vec<String>) {
        let _ = self.control.send(Control::Remove(streams));
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Api {
    /// Subscribes to streams, each after its cursor (the last event id the caller has).
    /// With `invites_after` set, the caller's invites with a higher id are delivered too.
    pub fn subscribe(
        &self,
        cursors: Vec<(String, u64)>,
        invites_after: Option<u64>,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(BUFFER);
        let (control, control_rx) = mpsc::unbounded_channel();
        let state = Task {
            api: self.clone(),
            cursors: cursors.into_iter().collect(),
            last_invite: invites_after,
            tx,
        };
        let task = tokio::spawn(state.run(control_rx));
        Subscription { rx, control, task }
    }
}

struct Task {
    api: Api,
    cursors: BTreeMap<String, u64>,
    last_invite: Option<u64>,
    tx: mpsc::Sender<Delivery>,
}

/// Why one call ended.
enum Ended {
    /// The consumer is gone: stop.
    Stop,
    /// Reconnect, saying why.
    Retry(String, Option<Code>),
}

impl Task {
    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.one_call(&mut control, &mut backoff).await {
                Ended::Stop => return,
                Ended::Retry(reason, code) => {
                    if self
                        .tx
                        .send(Delivery::Reconnecting { reason, code })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn resume_message(&self) -> ManageStream {
        ManageStream {
            resume_from: self
                .cursors
                .iter()
                .map(|(s, &after)| StreamCursor {
                    stream_id: s.clone(),
                    after_event_id: after,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    async fn one_call(
        &mut self,
        control: &mut mpsc::UnboundedReceiver<Control>,
        backoff: &mut Duration,
    ) -> Ended {
        let (out, out_rx) = mpsc::channel::<ManageStream>(16);
        if !self.cursors.is_empty() {
            let _ = out.try_send(self.resume_message());
        }
        let mut stub = self.api.stub();
        let mut inbound = match stub
            .stream_message_posting(ReceiverStream::new(out_rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return Ended::Retry(describe(&status), Some(status.code())),
        };
        *backoff = MIN_BACKOFF;
        if let Some(after) = self.last_invite {
            match self.api.fetch_invites_after(after).await {
                Ok(invites) => {
                    for invite in invites {
                        if !self.deliver_invite(invite).await {
                            return Ended::Stop;
                        }
                    }
                }
                Err(e) => return Ended::Retry(e.to_string(), e.code()),
            }
        }
        loop {
            tokio::select! {
                c = control.recv() => {
                    let Some(c) = c else { return Ended::Stop };
                    let message = self.apply(c);
                    if out.send(message).await.is_err() {
                        return Ended::Retry("the call's request stream closed".into(), None);
                    }
                }
                m = inbound.message() => match m {
                    Ok(Some(r)) => {
                        if let Some(ended) = self.handle(r.event).await {
                            return ended;
                        }
                    }
                    Ok(None) => return Ended::Retry("the server ended the call".into(), None),
                    Err(status) => return Ended::Retry(describe(&status), Some(status.code())),
                }
            }
        }
    }

    fn apply(&mut self, c: Control) -> ManageStream {
        match c {
            Control::Add(cursors) => {
                let mut m = ManageStream::default();
                for (stream, after) in cursors {
                    self.cursors.insert(stream.clone(), after);
                    m.resume_from.push(StreamCursor {
                        stream_id: stream,
                        after_event_id: after,
                        ..Default::default()
                    });
                }
                m
            }
            Control::Remove(streams) => {
                for s in &streams {
                    self.cursors.remove(s);
                }
                ManageStream {
                    unsubscribe_to: streams,
                    ..Default::default()
                }
            }
        }
    }

    /// Handles one server message; Some when the call should end.
    async fn handle(&mut self, event: Option<Event>) -> Option<Ended> {
        let delivered = match event {
            Some(Event::Message(m)) => return self.deliver_event(m).await,
            Some(Event::CaughtUp(c)) if self.cursors.contains_key(&c.stream_id) => {
                self.tx
                    .send(Delivery::CaughtUp {
                        stream_id: c.stream_id,
                        head_event_id: c.head_event_id,
                    })
                    .await
            }
            Some(Event::SubscriptionError(e)) => {
                self.cursors.remove(&e.stream_id);
                self.tx
                    .send(Delivery::Ended {
                        stream_id: e.stream_id,
                        code: Code::from_i32(e.code),
                        message: e.message,
                    })
                    .await
            }
            Some(Event::Invite(invite)) => {
                return (!self.deliver_invite(invite).await).then_some(Ended::Stop);
            }
            _ => Ok(()),
        };
        delivered.is_err().then_some(Ended::Stop)
    }

    async fn deliver_invite(&mut self, invite: ReceivedInvite) -> bool {
        match self.last_invite {
            Some(last) if invite.invite_id > last => {
                self.last_invite = Some(invite.invite_id);
                self.tx.send(Delivery::Invite(invite)).await.is_ok()
            }
            _ => true,
        }
    }

    async fn deliver_event(&mut self, m: PostedMessage) -> Option<Ended> {
        let Some(&cursor) = self.cursors.get(&m.stream_id) else {
            return None; // unsubscribed meanwhile
        };
        if m.event_id <= cursor {
            return None; // already delivered
        }
        if m.event_id > cursor + 1 {
            // A hole: fill it from history before going on.
            let missed = match self.api.fetch_messages_after(&m.stream_id, cursor).await {
                Ok(missed) => missed,
                Err(e) => return Some(Ended::Retry(e.to_string(), e.code())),
            };
            for earlier in missed.into_iter().filter(|e| e.event_id < m.event_id) {
                if let Some(ended) = self.send_event(earlier).await {
                    return Some(ended);
                }
            }
        }
        self.send_event(m).await
    }

    async fn send_event(&mut self, m: PostedMessage) -> Option<Ended> {
        let cursor = self.cursors.entry(m.stream_id.clone()).or_insert(0);
        if m.event_id <= *cursor {
            return None;
        }
        *cursor = m.event_id;
        self.tx
            .send(Delivery::Event(m))
            .await
            .err()
            .map(|_| Ended::Stop)
    }
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
