//! StreamMessagePosting: one bidirectional call carrying any number of subscriptions and
//! the caller's new invites; Subscribe (`subscribe.rs`) is the same call for a fixed set
//! of streams, fed by one control message instead of the request stream.
//!
//! A call has two halves sharing one [`Call`] (its subscriptions with their cursors and a
//! small queue of frames ready to send):
//!
//! - the **response stream** ([`Outbound`], this file), polled by the HTTP/2 stack. The
//!   hub wakes it when a watched stream has news; it serves every *live* subscription
//!   straight from the stream's ring of frames encoded once, advancing the cursor. One
//!   delivery is one task wake and a reference-count increment.
//! - the **session task** (`session.rs`): control messages, catch-up from the database,
//!   access re-checks, invites. A subscription that is not live (resuming, fallen behind
//!   the ring, or meeting a newer membership epoch) belongs to the session until it has
//!   caught up with the ring; then it is handed back.
//!
//! Both halves append to the ready queue and move cursors under the same lock, so the
//! frames of a stream leave in event-id order. The queue holds at most `connection_buffer`
//! frames (plus one database page): a client that stops reading stops the response stream
//! from being polled, its cursors stay put, and nothing is dropped or buffered without
//! bound. Response headers are sent as soon as the call is accepted.

mod body;
mod catchup;
mod session;
pub mod subscribe;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::hub::{Connection, Read, StreamSet, Watch};
use crate::proto::{ManageStream, PreEncoded};
use crate::service::AppState;

/// ManageStream messages a call queues for its session before it stops reading the
/// request body (HTTP/2 flow control then holds the client back).
pub const CONTROL_QUEUE: usize = 4;

pub use body::{Frames, NoFrames};

/// Where a streaming handler leaves its call's response stream (`body.rs`).
pub type Opened = body::Opened<Outbound>;

/// The streaming-call handler plugged into [`super::router::SecretRouter`]: it opens the
/// call and leaves its response stream in the router's [`Opened`] slot (tonic gets no
/// stream to encode; the router sends the frames through [`Frames`]).
pub struct Handler {
    state: Arc<AppState>,
    opened: Opened,
}

impl Handler {
    /// A handler over the shared state that leaves the call's response stream in `opened`.
    pub fn new(state: Arc<AppState>, opened: Opened) -> Self {
        Handler { state, opened }
    }
}

pub(crate) type CallFuture =
    Pin<Box<dyn Future<Output = Result<Response<NoFrames>, Status>> + Send>>;

impl tonic::server::StreamingService<ManageStream> for Handler {
    type Response = PreEncoded;
    type ResponseStream = NoFrames;
    type Future = CallFuture;

    fn call(&mut self, req: Request<Streaming<ManageStream>>) -> Self::Future {
        let state = self.state.clone();
        let opened = self.opened.clone();
        Box::pin(async move {
            let caller = crate::auth::Caller::get(&req)?;
            let max_ids = state.settings.max_stream_ids_per_message;
            let (outbound, control) = open(state, &caller, "StreamMessagePosting")?;
            tokio::spawn(read_inbound(req.into_inner(), control, max_ids));
            opened.put(outbound);
            Ok(Response::new(tokio_stream::empty()))
        })
    }
}

/// Where a call's session takes its control messages from: StreamMessagePosting feeds it
/// from the request stream ([`read_inbound`]), Subscribe with the one message its request
/// makes and then nothing. Dropping it ends no call: a session without control messages
/// goes on serving what it has.
pub(crate) struct ControlSource {
    tx: mpsc::Sender<Control>,
    conn: Arc<Connection>,
    /// Resolves when the session is gone.
    session_gone: tokio::sync::oneshot::Receiver<()>,
}

/// Opens a subscription call of `caller` (`method` names it in metrics): registers it
/// under the user's cap (`max_connections_per_user`, shared by StreamMessagePosting and
/// Subscribe), starts its session task, and returns the response stream and the source
/// that feeds the session.
pub(crate) fn open(
    state: Arc<AppState>,
    caller: &crate::auth::Caller,
    method: &'static str,
) -> Result<(Outbound, ControlSource), Status> {
    let user = caller.user;
    let limit = state.settings.max_connections_per_user;
    let guard = state.hub.register(user, limit).ok_or_else(|| {
        crate::telemetry::rpc(method, Code::ResourceExhausted);
        Status::resource_exhausted(format!(
            "you already have {limit} open subscription calls (StreamMessagePosting and \
             Subscribe together) on this server (max_connections_per_user); close one or \
             retry later"
        ))
    })?;
    let conn = guard.connection().clone();
    let call = Arc::new(Call {
        inner: Mutex::new(CallInner::default()),
        room: Notify::new(),
        cap: state.settings.connection_buffer.max(1),
    });
    let (tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (alive, session_gone) = tokio::sync::oneshot::channel::<()>();
    let session = session::Session::new(state, guard, call.clone(), alive, user, caller.limit_key);
    tokio::spawn(session.run(control_rx));
    let outbound = Outbound {
        call,
        conn: conn.clone(),
        live: StreamSet::default(),
        expiry: Box::pin(tokio::time::sleep(until(caller.expires_at))),
        done: false,
    };
    let source = ControlSource {
        tx,
        conn,
        session_gone,
    };
    Ok((outbound, source))
}

impl ControlSource {
    /// Hands the session one message without waiting (the queue of a new call has room),
    /// then lets go: the session applies it and serves the call from then on.
    pub(crate) fn send_only(self, message: ManageStream) {
        // A full queue or a session already gone both mean the call is ending anyway.
        if self.tx.try_send(Box::new(Ok(message))).is_ok() {
            self.conn.wake();
        }
    }
}

/// What the inbound reader hands the session: a message to apply, or the status that
/// ends the call because a message broke a rule. Boxed: tokio's channel allocates a block
/// of 32 slots for every call, which held ~3.3 KiB of unboxed messages per idle call.
pub(crate) type Control = Box<Result<ManageStream, Status>>;

/// How long from now until `expires_at` (unix seconds); zero if it has passed.
fn until(expires_at: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(expires_at).saturating_sub(now)
}

/// Forwards the client's ManageStream messages to the session, at most [`CONTROL_QUEUE`]
/// ahead of it: while the session is busy (for instance waiting for a client that does
/// not read), this task waits too and stops reading the request body, so HTTP/2 flow
/// control holds the client back and the server buffers a bounded amount. A message
/// naming more than `max_ids` stream ids ends the call with INVALID_ARGUMENT (after the
/// messages before it). Ends (dropping the request stream, so the HTTP/2 stream closes)
/// when the session is gone.
async fn read_inbound(mut inbound: Streaming<ManageStream>, source: ControlSource, max_ids: usize) {
    let ControlSource {
        tx: control,
        conn,
        mut session_gone,
    } = source;
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            _ = &mut session_gone => return,
        };
        let item = match message {
            Ok(Some(m)) => {
                let ids = m.subscribe_to.len() + m.unsubscribe_to.len() + m.resume_from.len();
                if ids > max_ids {
                    Err(Status::invalid_argument(format!(
                        "a ManageStream message named {ids} stream ids; at most {max_ids} are \
                         accepted in one message (max_stream_ids_per_message): split it into \
                         several messages, then reconnect and resume by cursor"
                    )))
                } else {
                    Ok(m)
                }
            }
            // The client finished sending; the call goes on until it hangs up.
            Ok(None) => return,
            Err(_) => {
                conn.close();
                return;
            }
        };
        let last = item.is_err();
        let sent = tokio::select! {
            r = control.send(Box::new(item)) => r.is_ok(),
            _ = &mut session_gone => false,
        };
        if !sent {
            return;
        }
        conn.wake();
        if last {
            return;
        }
    }
}

/// State shared by a call's response stream and its session task.
pub(crate) struct Call {
    inner: Mutex<CallInner>,
    /// Signalled when the response stream took frames and the session waits for room.
    room: Notify,
    /// `connection_buffer`: frames the ready queue holds before producers wait.
    cap: usize,
}

#[derive(Default)]
pub(crate) struct CallInner {
    subs: HashMap<Uuid, Sub, crate::domain::FastHash>,
    ready: VecDeque<PreEncoded>,
    /// The session waits for room in `ready`.
    waiting_for_room: bool,
    /// The session has stopped; `end` is the status to finish with, if any.
    finished: bool,
    end: Option<Status>,
}

impl Call {
    fn lock(&self) -> MutexGuard<'_, CallInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One subscription of a call.
pub(crate) struct Sub {
    /// The stream id as the client wrote it (for CaughtUp and errors).
    name: String,
    /// The stream's slot; dropping the subscription stops watching it.
    slot: Watch,
    /// Last event id delivered (queued for sending).
    cursor: i64,
    /// Newest event id known committed from this call's own database reads.
    db_head: i64,
    /// Membership epoch at which access was last verified.
    verified_epoch: i64,
    /// Send CaughtUp once the cursor reaches this.
    catch_up_to: Option<i64>,
    /// The stream's horizon when a database read found events after the cursor deleted
    /// by retention (0 = none): said in the next CaughtUp (`history_starts_at`).
    history_starts_at: i64,
    /// Served by the response stream from the ring (else the session owns it).
    live: bool,
}

/// The response stream of a call: serves live subscriptions from the rings and hands
/// anything else to the session. Ends with UNAVAILABLE as soon as the server begins
/// shutting down (even when the client's buffer is full), with UNAUTHENTICATED when the
/// caller's token expires (its `exp` plus the leeway), or with the session's final status
/// if it stopped on an error.
pub struct Outbound {
    call: Arc<Call>,
    conn: Arc<Connection>,
    /// Reused buffer for the streams with news.
    live: StreamSet,
    /// Fires when the caller's token expires.
    expiry: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Stream for Outbound {
    type Item = Result<PreEncoded, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.conn.is_stopping() {
            this.done = true;
            return Poll::Ready(Some(Err(Status::unavailable(
                "the server is shutting down; reconnect and resume from the last event id you \
                 received on each stream",
            ))));
        }
        if this.expiry.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(Status::unauthenticated(
                "your token has expired; reconnect with a fresh token and resume from the last \
                 event id you received on each stream",
            ))));
        }
        // Register before looking for work, so a wake in between is not lost.
        this.conn.register_outbound(cx.waker());
        loop {
            let mut inner = this.call.lock();
            if let Some(frame) = inner.ready.pop_front() {
                if inner.waiting_for_room {
                    inner.waiting_for_room = false;
                    this.call.room.notify_one();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if inner.finished {
                this.done = true;
                return Poll::Ready(inner.end.take().map(Err));
            }
            this.conn.swap_live(&mut this.live);
            if this.live.is_empty() {
                return Poll::Pending;
            }
            serve_live(&mut inner, &mut this.live, &this.conn, this.call.cap);
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // The call is over (client gone, or ended): let the session go.
        self.conn.close();
        self.call.room.notify_one();
    }
}

/// Moves frames of live subscriptions with news from the rings into the ready queue.
fn serve_live(inner: &mut CallInner, streams: &mut StreamSet, conn: &Connection, cap: usize) {
    let CallInner { subs, ready, .. } = inner;
    for stream in streams.drain() {
        if ready.len() >= cap {
            // Full: come back to this stream on the next poll.
            conn.requeue_live(stream);
            continue;
        }
        let Some(sub) = subs.get_mut(&stream) else {
            continue;
        };
        if !sub.live {
            continue; // the session owns it and hands it back when caught up
        }
        let room = cap - ready.len();
        match sub.slot.read_after(sub.cursor, room) {
            Read::Frames(frames) => {
                let full = frames.len() == room;
                for frame in frames {
                    if frame.member_epoch > sub.verified_epoch {
                        // Membership changed since we last checked: the session re-checks
                        // access in the database before this frame may go out.
                        sub.live = false;
                        conn.wake_session_for(stream);
                        break;
                    }
                    sub.cursor = frame.event_id;
                    ready.push_back(frame.bytes);
                }
                if full && sub.live {
                    conn.requeue_live(stream);
                }
            }
            Read::FromDatabase { .. } => {
                sub.live = false;
                conn.wake_session_for(stream);
            }
            Read::UpToDate if sub.cursor < sub.db_head => {
                sub.live = false;
                conn.wake_session_for(stream);
            }
            Read::UpToDate => {}
        }
    }
}
