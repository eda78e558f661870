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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::domain::UserId;
use crate::shutdown::Signal;
use crate::store::{PairIds, StoredEvent};

/// Locks a std mutex, ignoring poisoning (no code panics while holding these locks; if
/// one ever did, the protected data is still consistent field by field).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

mod connection;
mod ring;
mod slot;

pub use connection::{Connection, ConnectionGuard, SessionWork, StreamSet};
pub use ring::Budget;
pub use slot::{Frame, Read, Slot, Watch};

/// The fan-out hub of one process.
pub struct Hub {
    ring_events: usize,
    ring_bytes: usize,
    budget: Arc<Budget>,
    streams: Mutex<HashMap<Uuid, Arc<Slot>>>,
    users: Mutex<HashMap<UserId, Vec<Arc<Connection>>>>,
    next_id: AtomicU64,
    /// The server's shutdown: once it begins, calls registered later end at once.
    shutdown: Signal,
    /// Runs inside [`Hub::watch`] between taking the slot and joining it (unit tests of
    /// the watch/unwatch interleavings).
    #[cfg(test)]
    watch_hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Hub {
    /// A hub keeping up to `ring_events` encoded events (and at most 1 MiB) per watched
    /// stream, and at most `ring_budget` bytes in all rings together; `shutdown` is the
    /// server's (see [`Hub::stop_all`]).
    pub fn new(ring_events: usize, ring_budget: usize, shutdown: Signal) -> Arc<Self> {
        Arc::new(Hub {
            ring_events: ring_events.max(1),
            ring_bytes: 1 << 20,
            budget: Budget::new(ring_budget),
            streams: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown,
            #[cfg(test)]
            watch_hook: Mutex::new(None),
        })
    }

    /// Registers a StreamMessagePosting call of `user`; `None` when the user already has
    /// `limit` open calls on this process.
    pub fn register(self: &Arc<Self>, user: UserId, limit: usize) -> Option<ConnectionGuard> {
        let conn = Arc::new(Connection::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
        ));
        let mut users = lock(&self.users);
        let list = users.entry(user).or_default();
        if list.len() >= limit {
            return None;
        }
        list.push(conn.clone());
        // Read under the users lock, so a concurrent stop_all cannot miss this call.
        if self.shutdown.is_draining() {
            conn.stop();
        }
        crate::telemetry::connections(1);
        Some(ConnectionGuard {
            hub: self.clone(),
            conn,
        })
    }

    /// Graceful shutdown, called once the shutdown signal is in `Phase::Draining`
    /// (`crate::shutdown::Phase`): every open call (and any registered later) ends with
    /// UNAVAILABLE at once.
    pub fn stop_all(&self) {
        for list in lock(&self.users).values() {
            for c in list {
                c.stop();
            }
        }
    }

    /// Starts watching a stream; the returned slot is what the connection reads from.
    ///
    /// The slot is taken from the map and then joined under its own lock. If the stream's
    /// last watcher left in between and removed the slot from the map (a reconnect: the
    /// old call tears down while the new one subscribes), the slot is marked removed and
    /// this watch starts over with a fresh slot, so it never joins an orphan that
    /// publishes no longer reach.
    pub fn watch(self: &Arc<Self>, conn: &Arc<Connection>, stream: Uuid) -> Watch {
        loop {
            let slot = lock(&self.streams)
                .entry(stream)
                .or_insert_with(|| Arc::new(Slot::new(stream, self.budget.clone())))
                .clone();
            #[cfg(test)]
            if let Some(hook) = lock(&self.watch_hook).take() {
                hook();
            }
            let mut st = lock(&slot.state);
            if st.removed {
                continue;
            }
            st.watchers.push(conn.clone());
            drop(st);
            crate::telemetry::subscriptions(1);
            return Watch {
                hub: self.clone(),
                conn: conn.clone(),
                slot,
            };
        }
    }

    /// Stops watching; the slot (and its ring) goes when its last watcher does.
    fn unwatch(&self, conn: &Connection, slot: &Arc<Slot>) {
        let mut streams = lock(&self.streams);
        let mut st = lock(&slot.state);
        if let Some(i) = st.watchers.iter().position(|c| c.id() == conn.id()) {
            st.watchers.swap_remove(i);
            crate::telemetry::subscriptions(-1);
        }
        if st.watchers.is_empty()
            && let Some(current) = streams.get(&slot.stream)
            && Arc::ptr_eq(current, slot)
        {
            streams.remove(&slot.stream);
            // Under the slot's lock: a watch that took this slot before it left the map
            // sees the mark and starts over.
            st.removed = true;
            st.ring.clear();
        }
    }

    /// True when some local connection watches the stream (so publishing is worth an
    /// encoding).
    pub fn is_watched(&self, stream: &Uuid) -> bool {
        lock(&self.streams).contains_key(stream)
    }

    /// The newest event id this process knows committed on a watched stream (`None` when
    /// no local call watches it).
    pub fn known_head(&self, stream: &Uuid) -> Option<i64> {
        let slot = lock(&self.streams).get(stream).cloned()?;
        Some(slot.head())
    }

    /// Records that `head` is committed (read from the database); wakes watchers if it is
    /// news.
    pub fn observe_head(&self, stream: Uuid, head: i64) {
        if let Some(slot) = lock(&self.streams).get(&stream).cloned() {
            slot.observe_head(head);
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
            if f.event_id != st.head + 1 || f.member_epoch < st.min_epoch {
                st.ring.clear();
            }
            st.head = f.event_id;
            if f.member_epoch < st.min_epoch {
                continue;
            }
            st.ring.push(f, self.ring_events, self.ring_bytes);
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
        // One watched-or-not lookup per stream of the batch, not one per event.
        let mut by_stream: HashMap<Uuid, Option<Vec<Frame>>> = HashMap::new();
        for (event, epoch) in events {
            let frames = by_stream
                .entry(event.stream_id)
                .or_insert_with(|| self.is_watched(&event.stream_id).then(Vec::new));
            if let Some(frames) = frames {
                frames.push(Frame::encode(event, epoch));
            }
        }
        for (stream, frames) in by_stream {
            if let Some(frames) = frames {
                self.publish(stream, frames);
            }
        }
    }

    /// Tells the user's connections that they have a new invite.
    pub fn invite_sent(&self, user: UserId) {
        if let Some(list) = lock(&self.users).get(&user) {
            for c in list {
                c.wake_invites();
            }
        }
    }

    /// Tells the user's connections to re-check their access to the pair's streams.
    pub fn membership_changed(&self, pair: &PairIds, user: UserId) {
        if let Some(list) = lock(&self.users).get(&user) {
            for c in list {
                c.wake_recheck(&pair.streams(), i64::MAX);
            }
        }
    }

    /// Forgets the frames cached for `stream` (its events were rewritten by an erasure
    /// that left the stream at membership epoch `epoch`): readers behind the head read
    /// them again from the database, and frames of events appended before `epoch` but
    /// published only now (a commit racing the erasure) are not cached either.
    pub fn forget_frames(&self, stream: &Uuid, epoch: i64) {
        if let Some(slot) = lock(&self.streams).get(stream).cloned() {
            let mut st = lock(&slot.state);
            st.ring.clear();
            st.min_epoch = st.min_epoch.max(epoch);
        }
    }

    /// The streams some local call watches.
    pub fn watched_streams(&self) -> Vec<Uuid> {
        lock(&self.streams).keys().copied().collect()
    }

    /// Repairs a watched stream after notifications may have been missed: `head` and
    /// `epoch` were just read from the database. Moves the head (readers behind go to the
    /// database) and asks subscriptions verified at an older epoch to re-check access.
    pub fn repair(&self, stream: Uuid, head: i64, epoch: i64) {
        if let Some(slot) = lock(&self.streams).get(&stream).cloned() {
            slot.observe_head(head);
            slot.recheck_below(epoch);
        }
    }

    /// Wakes every local call to look for invites (some may have been missed).
    pub fn wake_all_invites(&self) {
        for list in lock(&self.users).values() {
            for c in list {
                c.wake_invites();
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
