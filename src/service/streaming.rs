//! StreamMessagePosting: one bidirectional call carrying any number of subscriptions and
//! the caller's new invites.
//!
//! Each call is a task ([`Session`]) holding a cursor per subscription. The hub only wakes
//! it; the session pulls each stream from its cursor — from the hub's ring of encoded
//! frames when it covers the cursor, else from the database in pages — and pushes frames
//! into a small bounded channel that tonic drains as the client reads. A client that stops
//! reading blocks only its own session; its cursor stays put and it resumes from the
//! database when it reads again. The response headers go out as soon as the call is
//! accepted, before any catch-up work.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::error::Error;
use crate::hub::{Connection, ConnectionGuard, Frame, Pending, Read, Slot};
use crate::proto::stream_message_posting_response::Event;
use crate::proto::{CaughtUp, ManageStream, PreEncoded, SubscriptionError};
use crate::service::{AppState, shutting_down};
use crate::store::Page;
use crate::wire::{self, parse_id};

/// Events delivered for one stream before the session looks at its other work.
const ROUND_BUDGET: usize = 512;
/// Events read from the database per page when the ring does not cover a cursor.
const DB_PAGE: usize = 256;
/// Invites read per page.
const INVITE_PAGE: usize = 100;

/// The streaming-call handler plugged into [`super::router::SecretRouter`].
pub struct Handler {
    state: Arc<AppState>,
}

impl Handler {
    /// A handler over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Handler { state }
    }
}

type CallFuture = Pin<Box<dyn Future<Output = Result<Response<Outbound>, Status>> + Send>>;

impl tonic::server::StreamingService<ManageStream> for Handler {
    type Response = PreEncoded;
    type ResponseStream = Outbound;
    type Future = CallFuture;

    fn call(&mut self, req: Request<Streaming<ManageStream>>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let user = crate::auth::Caller::of(&req)?;
            let limit = state.settings.max_connections_per_user;
            let guard = state.hub.register(user, limit).ok_or_else(|| {
                crate::telemetry::rpc("StreamMessagePosting", Code::ResourceExhausted);
                Status::resource_exhausted(format!(
                    "you already have {limit} open StreamMessagePosting calls on this server \
                     (max_connections_per_user); close one or retry later"
                ))
            })?;
            let conn = guard.connection().clone();
            let (tx, rx) = mpsc::channel(state.settings.connection_buffer);
            let (control_tx, control_rx) = mpsc::unbounded_channel();
            let end = Arc::new(Mutex::new(None));
            let stop = Box::pin(shutting_down(state.shutdown.clone()));
            let (alive, session_gone) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(read_inbound(
                req.into_inner(),
                control_tx,
                conn.clone(),
                session_gone,
            ));
            let session = Session {
                _alive: alive,
                conn: conn.clone(),
                guard,
                user,
                out: tx,
                end: end.clone(),
                subs: HashMap::new(),
                invite_cursor: 0,
                state,
            };
            tokio::spawn(session.run(control_rx));
            Ok(Response::new(Outbound {
                rx: ReceiverStream::new(rx),
                stop: Some(stop),
                conn,
                end,
            }))
        })
    }
}

/// Forwards the client's ManageStream messages to the session. The session itself waits
/// on one thing only (its hub wake-up), so a delivery costs one task wake. Ends (dropping
/// the request stream, so the HTTP/2 stream closes) when the session is gone.
async fn read_inbound(
    mut inbound: Streaming<ManageStream>,
    control: mpsc::UnboundedSender<ManageStream>,
    conn: Arc<Connection>,
    mut session_gone: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            _ = &mut session_gone => return,
        };
        match message {
            Ok(Some(m)) => {
                if control.send(m).is_err() {
                    return;
                }
                conn.wake();
            }
            // The client finished sending; the session keeps serving until it hangs up.
            Ok(None) => return,
            Err(_) => {
                conn.close();
                return;
            }
        }
    }
}

/// The response stream: the session's frames, cut short by a final UNAVAILABLE as soon
/// as the server begins shutting down (even when the client's buffer is full), and ended
/// with the session's final status if it stopped on an error.
pub struct Outbound {
    rx: ReceiverStream<Result<PreEncoded, Status>>,
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    conn: Arc<Connection>,
    end: Arc<Mutex<Option<Status>>>,
}

impl Stream for Outbound {
    type Item = Result<PreEncoded, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.stop.as_mut() {
            None => return Poll::Ready(None),
            Some(stop) => {
                if stop.as_mut().poll(cx).is_ready() {
                    self.stop = None;
                    return Poll::Ready(Some(Err(Status::unavailable(
                        "the server is shutting down; reconnect and resume from the last event \
                         id you received on each stream",
                    ))));
                }
            }
        }
        match Pin::new(&mut self.rx).poll_next(cx) {
            Poll::Ready(None) => {
                self.stop = None;
                let end = self.end.lock().unwrap_or_else(|e| e.into_inner()).take();
                Poll::Ready(end.map(Err))
            }
            other => other,
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // The call is over (client gone, or ended): let the session go.
        self.conn.close();
    }
}

/// One subscription of a session.
struct Sub {
    /// The stream id as the client wrote it (for CaughtUp and errors).
    name: String,
    slot: Arc<Slot>,
    /// Last event id delivered.
    cursor: i64,
    /// Newest event id known committed from this session's own database reads.
    db_head: i64,
    /// Membership epoch at which access was last verified.
    verified_epoch: i64,
    /// Send CaughtUp once the cursor reaches this.
    catch_up_to: Option<i64>,
}

/// Why a session stops.
enum Stop {
    /// The client went away or the server is stopping: just end.
    Quietly,
    /// End the call with this status (the client resumes by cursor).
    With(Status),
}

type Flow = Result<(), Stop>;

struct Session {
    /// Dropped with the session: tells the inbound reader to stop.
    _alive: tokio::sync::oneshot::Sender<()>,
    state: Arc<AppState>,
    guard: ConnectionGuard,
    conn: Arc<Connection>,
    user: i64,
    out: mpsc::Sender<Result<PreEncoded, Status>>,
    /// The status the call ends with if the session stops on an error.
    end: Arc<Mutex<Option<Status>>>,
    subs: HashMap<Uuid, Sub>,
    invite_cursor: i64,
}

impl Session {
    async fn run(mut self, control: mpsc::UnboundedReceiver<ManageStream>) {
        if let Err(Stop::With(status)) = self.serve(control).await {
            *self.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        }
        for (_, sub) in self.subs.drain() {
            self.state.hub.unwatch(&self.conn, &sub.slot);
        }
        drop(self.guard);
    }

    async fn serve(&mut self, mut control: mpsc::UnboundedReceiver<ManageStream>) -> Flow {
        self.invite_cursor = self
            .state
            .store
            .last_invite_id(self.user)
            .await
            .map_err(db_stop)?;
        let mut work = Pending::default();
        loop {
            if self.conn.is_closed() {
                return Err(Stop::Quietly);
            }
            let mut busy = false;
            while let Ok(m) = control.try_recv() {
                self.manage(m).await?;
                busy = true;
            }
            self.conn.swap_pending(&mut work);
            if !work.is_empty() {
                busy = true;
                for &stream in &work.recheck {
                    self.recheck(stream).await?;
                }
                if work.invites {
                    self.deliver_invites().await?;
                }
                for &stream in &work.streams {
                    self.deliver(stream).await?;
                }
                work.clear();
            }
            if !busy {
                self.conn.woken().await;
            }
        }
    }

    async fn send(&self, frame: PreEncoded) -> Flow {
        self.out.send(Ok(frame)).await.map_err(|_| Stop::Quietly)
    }

    async fn send_error(&self, stream_id: &str, err: &Error) -> Flow {
        self.send(wire::frame(Event::SubscriptionError(SubscriptionError {
            stream_id: stream_id.to_string(),
            code: err.code() as i32,
            message: err.to_string(),
        })))
        .await
    }

    async fn manage(&mut self, m: ManageStream) -> Flow {
        for name in &m.unsubscribe_to {
            match parse_id("unsubscribe_to", name) {
                Ok(stream) => {
                    if let Some(sub) = self.subs.remove(&stream) {
                        self.state.hub.unwatch(&self.conn, &sub.slot);
                    }
                }
                Err(e) => self.send_error(name, &e).await?,
            }
        }
        for name in m.subscribe_to {
            self.subscribe(name, None).await?;
        }
        for cursor in m.resume_from {
            self.subscribe(cursor.stream_id, Some(cursor.after_event_id))
                .await?;
        }
        Ok(())
    }

    /// Starts (or, for a resume, repositions) a subscription. `after` = None means live
    /// from the current head.
    async fn subscribe(&mut self, name: String, after: Option<u64>) -> Flow {
        let stream = match parse_id("stream_id", &name) {
            Ok(s) => s,
            Err(e) => return self.send_error(&name, &e).await,
        };
        let existing = self.subs.contains_key(&stream);
        if existing && after.is_none() {
            return Ok(()); // already live
        }
        let max = self.state.settings.max_subscriptions_per_connection;
        if !existing && self.subs.len() >= max {
            let e = Error::ResourceExhausted(format!(
                "this call already holds {max} subscriptions (max_subscriptions_per_connection); \
                 unsubscribe from some or open another call"
            ));
            return self.send_error(&name, &e).await;
        }
        // Watch before reading the head, so nothing committed after the read is missed.
        let slot = match self.subs.get(&stream) {
            Some(sub) => sub.slot.clone(),
            None => self.state.hub.watch(&self.conn, stream),
        };
        let access = match self.state.store.stream_access(self.user, stream).await {
            Ok(a) => a,
            Err(e) => {
                self.end(stream, &slot);
                return match e {
                    Error::PermissionDenied(_) | Error::NotFound(_) => {
                        self.send_error(&name, &e).await
                    }
                    other => Err(db_stop(other)),
                };
            }
        };
        let head = access.head_event_id;
        let cursor = match after {
            None => head,
            Some(a) if a <= head as u64 => a as i64,
            Some(a) => {
                self.end(stream, &slot);
                let e = Error::invalid(format!(
                    "after_event_id {a} is beyond the stream's head event id {head}; resume from \
                     an event id you have received"
                ));
                return self.send_error(&name, &e).await;
            }
        };
        self.subs.insert(
            stream,
            Sub {
                name,
                slot,
                cursor,
                db_head: head,
                verified_epoch: access.member_epoch,
                catch_up_to: Some(head),
            },
        );
        self.conn.wake_stream(stream);
        Ok(())
    }

    /// Forgets a subscription without telling the client.
    fn end(&mut self, stream: Uuid, slot: &Arc<Slot>) {
        self.subs.remove(&stream);
        self.state.hub.unwatch(&self.conn, slot);
    }

    /// Ends a subscription because access was lost, telling the client.
    async fn revoke(&mut self, stream: Uuid, err: Error) -> Flow {
        if let Some(sub) = self.subs.remove(&stream) {
            self.state.hub.unwatch(&self.conn, &sub.slot);
            let err = match err {
                Error::PermissionDenied(_) => Error::PermissionDenied(
                    "you are no longer a member of this stream's channel pair (you left or were \
                     removed); the subscription has ended"
                        .into(),
                ),
                other => other,
            };
            self.send_error(&sub.name, &err).await?;
        }
        Ok(())
    }

    /// Re-checks access to a stream after a membership change.
    async fn recheck(&mut self, stream: Uuid) -> Flow {
        if !self.subs.contains_key(&stream) {
            return Ok(());
        }
        match self.state.store.stream_access(self.user, stream).await {
            Ok(access) => {
                if let Some(sub) = self.subs.get_mut(&stream) {
                    sub.verified_epoch = sub.verified_epoch.max(access.member_epoch);
                    sub.db_head = sub.db_head.max(access.head_event_id);
                }
                Ok(())
            }
            Err(e @ Error::PermissionDenied(_)) => self.revoke(stream, e).await,
            Err(e) => Err(db_stop(e)),
        }
    }

    /// Delivers a stream's events after its cursor, up to a budget per round.
    async fn deliver(&mut self, stream: Uuid) -> Flow {
        let mut budget = ROUND_BUDGET;
        loop {
            let Some(sub) = self.subs.get(&stream) else {
                return Ok(());
            };
            if budget == 0 {
                // More to do: come back after the other work.
                self.conn.wake_stream(stream);
                return Ok(());
            }
            let (cursor, db_head) = (sub.cursor, sub.db_head);
            match sub.slot.read_after(cursor, budget.min(DB_PAGE)) {
                Read::Frames(frames) => {
                    for frame in frames {
                        if !self.admit(stream, &frame).await? {
                            return Ok(());
                        }
                        self.send(frame.bytes).await?;
                        if let Some(sub) = self.subs.get_mut(&stream) {
                            sub.cursor = frame.event_id;
                        }
                        budget -= 1;
                    }
                }
                Read::FromDatabase { .. } => {
                    budget = budget.saturating_sub(self.page_from_db(stream).await?);
                }
                Read::UpToDate if cursor < db_head => {
                    budget = budget.saturating_sub(self.page_from_db(stream).await?);
                }
                Read::UpToDate => break,
            }
        }
        if let Some(sub) = self.subs.get_mut(&stream)
            && sub.catch_up_to.is_some_and(|t| sub.cursor >= t)
        {
            sub.catch_up_to = None;
            let caught = wire::frame(Event::CaughtUp(CaughtUp {
                stream_id: sub.name.clone(),
                head_event_id: sub.cursor as u64,
            }));
            self.send(caught).await?;
        }
        Ok(())
    }

    /// Checks a live frame's membership epoch; re-verifies access when the epoch moved.
    /// Returns false when the subscription has ended.
    async fn admit(&mut self, stream: Uuid, frame: &Frame) -> Result<bool, Stop> {
        let verified = self
            .subs
            .get(&stream)
            .map_or(i64::MAX, |s| s.verified_epoch);
        if frame.member_epoch <= verified {
            return Ok(true);
        }
        self.recheck(stream).await?;
        Ok(self.subs.contains_key(&stream))
    }

    /// Reads one page after the cursor from the database (checking access in the same
    /// read) and sends it. Returns how many events were sent (at least 1, so a caller's
    /// budget always shrinks).
    async fn page_from_db(&mut self, stream: Uuid) -> Result<usize, Stop> {
        let Some(sub) = self.subs.get(&stream) else {
            return Ok(0);
        };
        let cursor = sub.cursor;
        let page = match self
            .state
            .store
            .fetch_events(self.user, stream, Page::After(cursor), DB_PAGE)
            .await
        {
            Ok(p) => p,
            Err(e @ Error::PermissionDenied(_)) => {
                self.revoke(stream, e).await?;
                return Ok(0);
            }
            Err(e) => return Err(db_stop(e)),
        };
        let sent = page.events.len();
        for event in &page.events {
            self.send(wire::event_frame(event)).await?;
        }
        if let Some(sub) = self.subs.get_mut(&stream) {
            if let Some(last) = page.events.last() {
                sub.cursor = last.event_id;
            }
            sub.verified_epoch = sub.verified_epoch.max(page.member_epoch);
            sub.db_head = sub.db_head.max(page.head_event_id);
            if sent == 0 {
                // Nothing after the cursor is stored: never spin on a head we cannot reach.
                sub.db_head = sub.cursor;
            }
        }
        Ok(sent.max(1))
    }

    async fn deliver_invites(&mut self) -> Flow {
        loop {
            let invites = self
                .state
                .store
                .fetch_invites(self.user, self.invite_cursor, INVITE_PAGE)
                .await
                .map_err(db_stop)?;
            let n = invites.len();
            for invite in invites {
                self.invite_cursor = invite.invite_id;
                self.send(wire::frame(Event::Invite(wire::received_invite(invite))))
                    .await?;
            }
            if n < INVITE_PAGE {
                return Ok(());
            }
        }
    }
}

/// A database failure ends the call with its status; the client reconnects and resumes
/// from its cursors, so nothing is lost.
fn db_stop(err: Error) -> Stop {
    Stop::With(err.into())
}
