//! The in-process fan-out hub: stream id → local subscribers.
//!
//! The hub never queues events per subscriber. Per stream it keeps the newest committed
//! event id (`head`), a small ring of the newest events already encoded once as
//! `StreamMessagePostingResponse` frames, and the connections watching the stream. A
//! publish appends to the ring and only *wakes* the watchers; each connection then pulls
//! from its own cursor: from the ring when the ring still covers it, else from the
//! database in pages. So a slow subscriber costs a cursor, never memory or a poster's
//! time, and nothing is ever dropped: the database cursor is the truth.
//!
//! Frames carry the stream's membership epoch at append time. A connection re-checks
//! access whenever it meets a frame with a newer epoch than it last verified, so an event
//! appended after someone was removed never reaches them, even from another replica.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::task::AtomicWaker;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::pgnotify::{Change, ChangeSink};
use crate::proto::PreEncoded;
use crate::store::{DynStore, PairIds, StoredEvent};
use crate::wire;

/// Most events one remote notification makes the hub read from the database at once; a
/// larger jump only moves the head, and subscribers page the rest themselves.
const REMOTE_READ_LIMIT: usize = 256;

/// Locks a std mutex, ignoring poisoning (no code panics while holding these locks; if
/// one ever did, the protected data is still consistent field by field).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An event encoded once, shared by every subscriber that receives it.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The event id.
    pub event_id: i64,
    /// The stream's membership epoch when the event was appended (or later).
    pub member_epoch: i64,
    /// The encoded `StreamMessagePostingResponse`.
    pub bytes: PreEncoded,
}

impl Frame {
    /// Encodes an event.
    pub fn encode(event: &StoredEvent, member_epoch: i64) -> Self {
        Frame {
            event_id: event.event_id,
            member_epoch,
            bytes: wire::event_frame(event),
        }
    }
}

/// What a subscriber at a cursor gets from a stream's slot.
#[derive(Debug)]
pub enum Read {
    /// Nothing newer than the cursor is known.
    UpToDate,
    /// The next frames after the cursor, contiguous, ascending.
    Frames(Vec<Frame>),
    /// The ring no longer reaches back to the cursor: read up to `head` from the database.
    FromDatabase {
        /// The newest committed event id known.
        head: i64,
    },
}

struct SlotState {
    head: i64,
    ring: VecDeque<Frame>,
    ring_bytes: usize,
    watchers: Vec<Arc<Connection>>,
}

/// One stream's live state.
pub struct Slot {
    stream: Uuid,
    state: Mutex<SlotState>,
}

impl Slot {
    /// The stream this slot is for.
    pub fn stream(&self) -> Uuid {
        self.stream
    }

    /// Up to `max` frames after `cursor`, or where else to look.
    pub fn read_after(&self, cursor: i64, max: usize) -> Read {
        let st = lock(&self.state);
        if cursor >= st.head {
            return Read::UpToDate;
        }
        match st.ring.front() {
            Some(first) if first.event_id <= cursor + 1 => {
                let skip = (cursor + 1 - first.event_id) as usize;
                Read::Frames(st.ring.iter().skip(skip).take(max).cloned().collect())
            }
            _ => Read::FromDatabase { head: st.head },
        }
    }

    /// The newest committed event id known.
    pub fn head(&self) -> i64 {
        lock(&self.state).head
    }
}

/// Work for a call's session task (the slow path).
#[derive(Default, Debug)]
pub struct SessionWork {
    /// Streams whose subscription the session owns for now (catch-up from the database,
    /// membership re-check before a newer epoch).
    pub streams: HashSet<Uuid>,
    /// New invites may exist.
    pub invites: bool,
    /// Streams whose membership changed for this connection's user: re-check access.
    pub recheck: HashSet<Uuid>,
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
    user: i64,
    notify: Notify,
    outbound: AtomicWaker,
    live: Mutex<HashSet<Uuid>>,
    session: Mutex<SessionWork>,
    closed: AtomicBool,
    stopping: AtomicBool,
}

impl Connection {
    /// The authenticated user of the call.
    pub fn user(&self) -> i64 {
        self.user
    }

    /// Swaps the streams with news into `into` (which must be empty): no allocation once
    /// both sides have grown to their working size.
    pub fn swap_live(&self, into: &mut HashSet<Uuid>) {
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

    fn wake_invites(&self) {
        lock(&self.session).invites = true;
        self.notify.notify_one();
    }

    fn wake_recheck(&self, streams: &[Uuid]) {
        lock(&self.session).recheck.extend(streams.iter().copied());
        self.notify.notify_one();
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.outbound.wake();
        self.notify.notify_one();
    }
}

/// Removes the connection from the hub when dropped.
pub struct ConnectionGuard {
    hub: Arc<Hub>,
    conn: Arc<Connection>,
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

/// The fan-out hub of one process.
pub struct Hub {
    store: DynStore,
    ring_events: usize,
    ring_bytes: usize,
    streams: Mutex<HashMap<Uuid, Arc<Slot>>>,
    users: Mutex<HashMap<i64, Vec<Arc<Connection>>>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

impl Hub {
    /// A hub keeping up to `ring_events` encoded events (and at most 1 MiB) per watched
    /// stream.
    pub fn new(store: DynStore, ring_events: usize) -> Arc<Self> {
        Arc::new(Hub {
            store,
            ring_events: ring_events.max(1),
            ring_bytes: 1 << 20,
            streams: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        })
    }

    /// Registers a StreamMessagePosting call of `user`; `None` when the user already has
    /// `limit` open calls on this process.
    pub fn register(self: &Arc<Self>, user: i64, limit: usize) -> Option<ConnectionGuard> {
        let conn = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            notify: Notify::new(),
            outbound: AtomicWaker::new(),
            live: Mutex::new(HashSet::new()),
            session: Mutex::new(SessionWork::default()),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        let mut users = lock(&self.users);
        let list = users.entry(user).or_default();
        if list.len() >= limit {
            return None;
        }
        list.push(conn.clone());
        // Read under the users lock, so a concurrent stop_all cannot miss this call.
        if self.stopping.load(Ordering::Acquire) {
            conn.stop();
        }
        crate::telemetry::connections(1);
        Some(ConnectionGuard {
            hub: self.clone(),
            conn,
        })
    }

    /// Graceful shutdown: every open call (and any registered later) ends with
    /// UNAVAILABLE at once.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::Release);
        for list in lock(&self.users).values() {
            for c in list {
                c.stop();
            }
        }
    }

    /// Starts watching a stream; the returned slot is what the connection reads from.
    pub fn watch(&self, conn: &Arc<Connection>, stream: Uuid) -> Arc<Slot> {
        let slot = lock(&self.streams)
            .entry(stream)
            .or_insert_with(|| {
                Arc::new(Slot {
                    stream,
                    state: Mutex::new(SlotState {
                        head: 0,
                        ring: VecDeque::new(),
                        ring_bytes: 0,
                        watchers: Vec::new(),
                    }),
                })
            })
            .clone();
        lock(&slot.state).watchers.push(conn.clone());
        crate::telemetry::subscriptions(1);
        slot
    }

    /// Stops watching; the slot (and its ring) goes when its last watcher does.
    pub fn unwatch(&self, conn: &Connection, slot: &Arc<Slot>) {
        let mut streams = lock(&self.streams);
        let empty = {
            let mut st = lock(&slot.state);
            if let Some(i) = st.watchers.iter().position(|c| c.id == conn.id) {
                st.watchers.swap_remove(i);
                crate::telemetry::subscriptions(-1);
            }
            st.watchers.is_empty()
        };
        if empty
            && let Some(current) = streams.get(&slot.stream)
            && Arc::ptr_eq(current, slot)
        {
            streams.remove(&slot.stream);
        }
    }

    /// True when some local connection watches the stream (so publishing is worth an
    /// encoding).
    pub fn is_watched(&self, stream: &Uuid) -> bool {
        lock(&self.streams).contains_key(stream)
    }

    /// Records that `head` is committed (read from the database); wakes watchers if it is
    /// news.
    pub fn observe_head(&self, stream: Uuid, head: i64) {
        let Some(slot) = lock(&self.streams).get(&stream).cloned() else {
            return;
        };
        let mut st = lock(&slot.state);
        if head > st.head {
            st.head = head;
            st.ring.clear();
            st.ring_bytes = 0;
            for w in &st.watchers {
                w.wake_stream(stream);
            }
        }
    }

    /// Publishes committed events of one stream (ascending) to local watchers. Events at
    /// or below the known head are ignored; a gap empties the ring (readers then page the
    /// gap from the database).
    pub fn publish(&self, stream: Uuid, frames: impl IntoIterator<Item = Frame>) {
        let Some(slot) = lock(&self.streams).get(&stream).cloned() else {
            return;
        };
        let mut st = lock(&slot.state);
        let before = st.head;
        for f in frames {
            if f.event_id <= st.head {
                continue;
            }
            if f.event_id != st.head + 1 {
                st.ring.clear();
                st.ring_bytes = 0;
            }
            st.head = f.event_id;
            st.ring_bytes += f.bytes.len();
            st.ring.push_back(f);
            while st.ring.len() > self.ring_events
                || (st.ring_bytes > self.ring_bytes && st.ring.len() > 1)
            {
                if let Some(old) = st.ring.pop_front() {
                    st.ring_bytes -= old.bytes.len();
                }
            }
        }
        if st.head > before {
            for w in &st.watchers {
                w.wake_stream(stream);
            }
        }
    }

    /// Publishes events this process just committed (any streams, ascending per stream),
    /// encoding each once and only if someone here watches its stream.
    pub fn publish_committed<'a>(&self, events: impl IntoIterator<Item = (&'a StoredEvent, i64)>) {
        let mut by_stream: HashMap<Uuid, Vec<Frame>> = HashMap::new();
        for (event, epoch) in events {
            if by_stream.contains_key(&event.stream_id) || self.is_watched(&event.stream_id) {
                by_stream
                    .entry(event.stream_id)
                    .or_default()
                    .push(Frame::encode(event, epoch));
            }
        }
        for (stream, frames) in by_stream {
            self.publish(stream, frames);
        }
    }

    /// Tells the user's connections that they have a new invite.
    pub fn invite_sent(&self, user: i64) {
        if let Some(list) = lock(&self.users).get(&user) {
            for c in list {
                c.wake_invites();
            }
        }
    }

    /// Tells the user's connections to re-check their access to the pair's streams.
    pub fn membership_changed(&self, pair: &PairIds, user: i64) {
        if let Some(list) = lock(&self.users).get(&user) {
            for c in list {
                c.wake_recheck(&pair.streams());
            }
        }
    }

    /// Reads another replica's new events on `stream` up to `head` once, and publishes
    /// them to every local watcher.
    async fn pull_remote(&self, stream: Uuid, head: i64) {
        let Some(slot) = lock(&self.streams).get(&stream).cloned() else {
            return;
        };
        let known = slot.head();
        if head <= known {
            return;
        }
        if (head - known) as usize > REMOTE_READ_LIMIT {
            self.observe_head(stream, head);
            return;
        }
        match self
            .store
            .read_events(stream, known, head, REMOTE_READ_LIMIT)
            .await
        {
            Ok(run) => {
                let epoch = run.member_epoch;
                self.publish(stream, run.events.iter().map(|e| Frame::encode(e, epoch)));
                // Whatever the read did not cover is still committed: let readers page it.
                self.observe_head_if_gap(stream, head);
            }
            Err(err) => {
                tracing::warn!(%stream, error = %err, "cannot read remote events; subscribers will page them");
                self.observe_head(stream, head);
            }
        }
    }

    fn observe_head_if_gap(&self, stream: Uuid, head: i64) {
        let Some(slot) = lock(&self.streams).get(&stream).cloned() else {
            return;
        };
        if slot.head() < head {
            self.observe_head(stream, head);
        }
    }

    /// Re-reads the heads of every watched stream from the database and wakes every
    /// connection for invites (used after the change listener reconnects).
    pub async fn repair_all(&self) {
        let streams: Vec<Uuid> = lock(&self.streams).keys().copied().collect();
        for chunk in streams.chunks(1000) {
            match self.store.stream_heads(chunk).await {
                Ok(heads) => {
                    for (stream, head) in heads {
                        self.observe_head(stream, head);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot repair stream heads"),
            }
        }
        for list in lock(&self.users).values() {
            for c in list {
                c.wake_invites();
            }
        }
    }
}

impl ChangeSink for Hub {
    async fn apply(&self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Event { stream, head } => self.pull_remote(stream, head).await,
                Change::Invite { user } => self.invite_sent(user),
                Change::Membership { pair, user } => self.membership_changed(&pair, user),
            }
        }
    }

    async fn resync(&self) {
        self.repair_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    async fn hub() -> (Arc<Hub>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = crate::store::open(&url, 1, Uuid::new_v4()).await.unwrap();
        (Hub::new(store, 4), dir)
    }

    fn event(stream: Uuid, id: i64) -> StoredEvent {
        StoredEvent {
            stream_id: stream,
            event_id: id,
            counter: id,
            sender: 1,
            posted_at: 0,
            body: Bytes::from(vec![id as u8; 100]),
        }
    }

    #[tokio::test]
    async fn one_encoding_is_shared_by_every_watcher() {
        let (hub, _dir) = hub().await;
        let stream = Uuid::new_v4();
        let g1 = hub.register(1, 10).unwrap();
        let g2 = hub.register(2, 10).unwrap();
        let s1 = hub.watch(g1.connection(), stream);
        let s2 = hub.watch(g2.connection(), stream);
        hub.publish_committed([(&event(stream, 1), 0), (&event(stream, 2), 0)]);
        let (Read::Frames(a), Read::Frames(b)) = (s1.read_after(0, 10), s2.read_after(0, 10))
        else {
            panic!("frames expected");
        };
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                x.bytes.0.as_ptr(),
                y.bytes.0.as_ptr(),
                "same buffer, encoded once"
            );
        }
        // Both connections were woken for the stream.
        for g in [&g1, &g2] {
            let mut live = HashSet::new();
            g.connection().swap_live(&mut live);
            assert!(live.contains(&stream));
        }
    }

    #[tokio::test]
    async fn the_ring_is_bounded_and_gaps_send_readers_to_the_database() {
        let (hub, _dir) = hub().await;
        let stream = Uuid::new_v4();
        let g = hub.register(1, 10).unwrap();
        let slot = hub.watch(g.connection(), stream);
        let events: Vec<StoredEvent> = (1..=10).map(|i| event(stream, i)).collect();
        hub.publish_committed(events.iter().map(|e| (e, 0)));
        // Ring of 4: events 7..=10 are in memory, a cursor before that reads the database.
        assert!(matches!(
            slot.read_after(2, 10),
            Read::FromDatabase { head: 10 }
        ));
        let Read::Frames(f) = slot.read_after(6, 10) else {
            panic!()
        };
        assert_eq!(
            f.iter().map(|f| f.event_id).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        assert!(matches!(slot.read_after(10, 10), Read::UpToDate));
        // A gap (events 11..=12 committed elsewhere, unseen) empties the ring.
        hub.publish_committed([(&event(stream, 13), 0)]);
        assert!(matches!(
            slot.read_after(10, 10),
            Read::FromDatabase { head: 13 }
        ));
        // Re-publishing old events changes nothing.
        hub.publish_committed([(&event(stream, 12), 0)]);
        assert_eq!(slot.head(), 13);
        // The slot goes with its last watcher.
        hub.unwatch(g.connection(), &slot);
        assert!(!hub.is_watched(&stream));
    }

    #[tokio::test]
    async fn connection_limit_is_per_user() {
        let (hub, _dir) = hub().await;
        let a = hub.register(7, 2).unwrap();
        let _b = hub.register(7, 2).unwrap();
        assert!(hub.register(7, 2).is_none());
        assert!(hub.register(8, 2).is_some());
        drop(a);
        assert!(hub.register(7, 2).is_some());
    }
}
