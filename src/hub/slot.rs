//! One stream's live state: the newest committed event id and a ring of the newest
//! events, each encoded once.

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::ring::{Budget, Ring};
use super::{Connection, Hub, lock};
use crate::proto::PreEncoded;
use crate::store::StoredEvent;
use crate::wire;

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

pub(super) struct SlotState {
    pub(super) head: i64,
    pub(super) ring: Ring,
    pub(super) watchers: Vec<Arc<Connection>>,
    /// Taken out of the hub's map (its last watcher left): nobody may join it any more.
    pub(super) removed: bool,
    /// Frames appended at a membership epoch below this are never cached (an erasure
    /// rewrote the stream at this epoch: such a frame, published late, may hold
    /// ciphertext that is erased now; readers get it from the database instead).
    pub(super) min_epoch: i64,
}

/// One stream's live state.
pub struct Slot {
    pub(super) stream: Uuid,
    pub(super) state: Mutex<SlotState>,
}

impl Slot {
    pub(super) fn new(stream: Uuid, budget: Arc<Budget>) -> Self {
        Slot {
            stream,
            state: Mutex::new(SlotState {
                head: 0,
                ring: Ring::new(budget),
                watchers: Vec::new(),
                removed: false,
                min_epoch: 0,
            }),
        }
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

    /// Asks every watcher to re-check its access unless it verified it at membership
    /// epoch `epoch` or later (the stream's current epoch, read after the change listener
    /// was away: a removal may have gone unnoticed).
    pub(super) fn recheck_below(&self, epoch: i64) {
        for w in &lock(&self.state).watchers {
            w.wake_recheck(&[self.stream], epoch);
        }
    }

    /// Records that `head` is committed (read from the database: by the hub, or by a
    /// subscriber setting up, which seeds a new slot so that the next notification reads
    /// only the newer events). If it is news, the ring (which must end at the head)
    /// empties and every watcher is woken: those behind read the gap from the database.
    pub fn observe_head(&self, head: i64) {
        let mut st = lock(&self.state);
        if head > st.head {
            st.head = head;
            st.ring.clear();
            for w in &st.watchers {
                w.wake_stream(self.stream);
            }
        }
    }
}

/// A connection's watch on one stream, from [`Hub::watch`]: publishes to the stream wake
/// the connection, and the slot reads as the stream's live state. Dropping it stops
/// watching (the slot goes with its last watcher), so every path that took a watch, the
/// error paths included, gives it back.
pub struct Watch {
    pub(super) hub: Arc<Hub>,
    pub(super) conn: Arc<Connection>,
    pub(super) slot: Arc<Slot>,
}

impl std::ops::Deref for Watch {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        &self.slot
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.unwatch(&self.conn, &self.slot);
    }
}
