//! The hub's handle on one StreamMessagePosting call and the work it is woken for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Hub, lock};
use crate::domain::UserId;

/// A set of stream ids, hashed with foldhash: the live set is filled and drained once per
/// delivery, where SipHash showed in the profile. Keys are stream ids the server made.
pub type StreamSet = HashSet<Uuid, crate::domain::FastHash>;

/// Work for a call's session task (the slow path).
#[derive(Default, Debug)]
pub struct SessionWork {
    /// Streams whose subscription the session owns for now (catch-up from the database,
    /// membership re-check before a newer epoch).
    pub streams: HashSet<Uuid>,
    /// New invites may exist.
    pub invites: bool,
    /// Streams whose membership may have changed for this connection's user: re-check
    /// access if the subscription's verified membership epoch is below the value
    /// (`i64::MAX`: always).
    pub recheck: HashMap<Uuid, i64>,
}

impl SessionWork {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && !self.invites && self.recheck.is_empty()
    }

    /// Forgets everything, keeping the allocations.
    pub fn clear(&mut self) {
        self.streams.clear();
        self.invites = false;
        self.recheck.clear();
    }
}

/// The hub's handle on one StreamMessagePosting call.
///
/// A call has two consumers: its response stream (polled by the HTTP/2 stack; serves live
/// subscriptions straight from the rings, so a delivery costs one task wake) and its
/// session task (control messages, database catch-up, access re-checks, invites). A
/// publish marks the stream in `live` and wakes the response stream; everything else
/// wakes the session.
pub struct Connection {
    id: u64,
    user: UserId,
    notify: Notify,
    outbound: AtomicWaker,
    live: Mutex<StreamSet>,
    session: Mutex<SessionWork>,
    closed: AtomicBool,
    stopping: AtomicBool,
}

impl Connection {
    pub(super) fn new(id: u64, user: UserId) -> Self {
        Connection {
            id,
            user,
            notify: Notify::new(),
            outbound: AtomicWaker::new(),
            live: Mutex::new(StreamSet::default()),
            session: Mutex::new(SessionWork::default()),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Swaps the streams with news into `into` (which must be empty): no allocation once
    /// both sides have grown to their working size.
    pub fn swap_live(&self, into: &mut StreamSet) {
        std::mem::swap(&mut *lock(&self.live), into);
    }

    /// Swaps the session's work into `into` (which must be empty).
    pub fn swap_session_work(&self, into: &mut SessionWork) {
        std::mem::swap(&mut *lock(&self.session), into);
    }

    /// Marks the call as over (client gone) and wakes its session.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// True once [`Connection::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// True once the server began shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Wakes the session without marking anything (e.g. a control message is queued).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Waits until the session is woken (returns at once if woken since the last wait).
    pub async fn woken(&self) {
        self.notify.notified().await
    }

    /// Registers the response stream's waker (call before looking for work).
    pub fn register_outbound(&self, waker: &std::task::Waker) {
        self.outbound.register(waker);
    }

    /// Wakes the response stream.
    pub fn wake_outbound(&self) {
        self.outbound.wake();
    }

    /// Marks a stream as having news for the response stream and wakes it.
    pub fn wake_stream(&self, stream: Uuid) {
        lock(&self.live).insert(stream);
        self.outbound.wake();
    }

    /// Marks a stream as having news again without waking anyone (the response stream
    /// that calls this is about to return a frame and be polled again).
    pub fn requeue_live(&self, stream: Uuid) {
        lock(&self.live).insert(stream);
    }

    /// Hands a stream's subscription to the session task and wakes it.
    pub fn wake_session_for(&self, stream: Uuid) {
        lock(&self.session).streams.insert(stream);
        self.notify.notify_one();
    }

    pub(super) fn wake_invites(&self) {
        lock(&self.session).invites = true;
        self.notify.notify_one();
    }

    pub(super) fn wake_recheck(&self, streams: &[Uuid], epoch_below: i64) {
        {
            let mut work = lock(&self.session);
            for &s in streams {
                let e = work.recheck.entry(s).or_insert(epoch_below);
                *e = (*e).max(epoch_below);
            }
        }
        self.notify.notify_one();
    }

    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.outbound.wake();
        self.notify.notify_one();
    }
}

/// Removes the connection from the hub when dropped.
pub struct ConnectionGuard {
    pub(super) hub: Arc<Hub>,
    pub(super) conn: Arc<Connection>,
}

impl ConnectionGuard {
    /// The registered connection.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut users = lock(&self.hub.users);
        if let Some(list) = users.get_mut(&self.conn.user) {
            list.retain(|c| c.id != self.conn.id);
            if list.is_empty() {
                users.remove(&self.conn.user);
            }
        }
        crate::telemetry::connections(-1);
    }
}
