//! Catch-up of one subscription by the session task: from the ring while it covers the
//! cursor, else from the database in pages (access checked in the same read), then the
//! subscription is handed back to the response stream as live.

use std::collections::VecDeque;

use uuid::Uuid;

use super::session::{Flow, Session, db_stop};
use super::{Call, Sub};
use crate::domain::StreamId;
use crate::error::Error;
use crate::hub::Read;
use crate::proto::stream_message_posting_response::Event;
use crate::proto::{CaughtUp, PreEncoded};
use crate::store::Page;
use crate::wire;

/// Events read from the database per page when the ring does not cover a cursor.
const DB_PAGE: usize = 256;
/// Pages read for one subscription before the session looks at its other work.
const PAGES_PER_ROUND: usize = 4;

/// What catch-up does next, decided under the call's lock.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Frames were queued; look again.
    Again,
    /// The ready queue is full: wait for the client to read.
    WaitForRoom,
    /// A frame carries this membership epoch, newer than the one verified.
    Recheck(i64),
    /// Read a page after this cursor from the database.
    Page(i64),
    /// Caught up with the ring: the subscription is live again.
    Live,
    /// The subscription is gone.
    Gone,
}

impl Session {
    /// Brings a subscription the session owns up to the ring, then makes it live.
    pub(super) async fn catch_up(&self, stream: Uuid) -> Flow {
        let conn = self.guard.connection().clone();
        let mut pages = 0;
        loop {
            let next = self.call.step(stream);
            match next {
                Next::Again => {}
                Next::WaitForRoom => self.wait_for_room().await?,
                Next::Recheck(epoch) => {
                    self.recheck(stream).await?;
                    // Still a member now, and epochs only grow: the frame's epoch (taken
                    // when it was appended or read) is covered by this check.
                    if let Some(sub) = self.call.lock().subs.get_mut(&stream) {
                        sub.verified_epoch = sub.verified_epoch.max(epoch);
                    }
                }
                Next::Page(cursor) => {
                    if pages == PAGES_PER_ROUND {
                        conn.wake_session_for(stream); // come back after the other work
                        return Ok(());
                    }
                    pages += 1;
                    self.page_from_db(stream, cursor).await?;
                }
                Next::Live => {
                    conn.wake_stream(stream); // anything published meanwhile goes out now
                    return Ok(());
                }
                Next::Gone => return Ok(()),
            }
        }
    }

    /// Reads one page after `cursor` from the database (checking access in the same read)
    /// and queues it.
    async fn page_from_db(&self, stream: Uuid, cursor: i64) -> Flow {
        crate::telemetry::catchup_page();
        let budget = crate::service::paging::events_budget(&self.state.settings);
        let page = match self
            .state
            .store
            .fetch_events(
                self.user,
                StreamId::trusted(stream),
                Page::After(cursor),
                DB_PAGE,
                budget,
            )
            .await
        {
            Ok(p) => p,
            Err(Error::PermissionDenied(_)) => return self.revoke(stream).await,
            Err(e) => return Err(db_stop(e)),
        };
        let frames: Vec<(i64, PreEncoded)> = page
            .events
            .iter()
            .map(|e| (e.event_id, wire::event_frame(e)))
            .collect();
        self.call.queue_page(stream, cursor, &page, frames);
        self.guard.connection().wake_outbound();
        Ok(())
    }
}

impl Call {
    /// One step of catch-up under the lock: queue ring frames, or say what to do.
    pub(super) fn step(&self, stream: Uuid) -> Next {
        let mut inner = self.lock();
        let cap = self.cap;
        let super::CallInner {
            subs,
            ready,
            waiting_for_room,
            ..
        } = &mut *inner;
        let Some(sub) = subs.get_mut(&stream) else {
            return Next::Gone;
        };
        if ready.len() >= cap {
            *waiting_for_room = true;
            return Next::WaitForRoom;
        }
        match sub.slot.read_after(sub.cursor, cap - ready.len()) {
            Read::Frames(frames) => {
                for frame in frames {
                    if frame.member_epoch > sub.verified_epoch {
                        return Next::Recheck(frame.member_epoch);
                    }
                    sub.queue(ready, frame.event_id, frame.bytes);
                }
                Next::Again
            }
            Read::FromDatabase { .. } => Next::Page(sub.cursor),
            Read::UpToDate if sub.cursor < sub.db_head => Next::Page(sub.cursor),
            Read::UpToDate => {
                sub.caught_up_if_due(ready);
                sub.live = true;
                Next::Live
            }
        }
    }

    /// Queues a page read from the database after `cursor`, unless the subscription was
    /// repositioned or went live meanwhile.
    fn queue_page(
        &self,
        stream: Uuid,
        cursor: i64,
        page: &crate::store::EventPage,
        frames: Vec<(i64, PreEncoded)>,
    ) {
        let mut inner = self.lock();
        let super::CallInner { subs, ready, .. } = &mut *inner;
        let Some(sub) = subs.get_mut(&stream) else {
            return;
        };
        if sub.cursor != cursor || sub.live {
            return; // repositioned meanwhile: the next step starts over
        }
        if page.first_event_id > cursor.saturating_add(1) {
            // Retention deleted events after the cursor: the page starts at the horizon,
            // and the CaughtUp at the end of this backlog says so (a subscription that was
            // live gets one too), never a silent gap.
            sub.history_starts_at = sub.history_starts_at.max(page.first_event_id);
            if sub.catch_up_to.is_none() {
                sub.catch_up_to = Some(page.head_event_id.max(cursor));
            }
        }
        // One page may exceed the queue's capacity; the next step waits for room.
        for (event_id, frame) in frames {
            sub.queue(ready, event_id, frame);
        }
        sub.verified_epoch = sub.verified_epoch.max(page.member_epoch);
        sub.db_head = sub.db_head.max(page.head_event_id);
        if page.events.is_empty() {
            // Nothing after the cursor is stored: never spin on a head we cannot reach.
            sub.db_head = sub.cursor;
        }
    }
}

impl Sub {
    /// Queues the subscription's next event, after its CaughtUp if the cursor has reached
    /// the head the subscription started from: a live subscription's CaughtUp comes
    /// before any event, and a resume's names exactly the head when it was handled, even
    /// when newer events are already waiting.
    fn queue(&mut self, ready: &mut VecDeque<PreEncoded>, event_id: i64, frame: PreEncoded) {
        self.caught_up_if_due(ready);
        self.cursor = event_id;
        ready.push_back(frame);
    }

    /// Queues CaughtUp once the cursor has reached the catch-up target.
    fn caught_up_if_due(&mut self, ready: &mut VecDeque<PreEncoded>) {
        if self.catch_up_to.is_some_and(|t| self.cursor >= t) {
            self.catch_up_to = None;
            ready.push_back(wire::frame(Event::CaughtUp(CaughtUp {
                stream_id: self.name.clone(),
                head_event_id: self.cursor as u64,
                history_starts_at: std::mem::take(&mut self.history_starts_at) as u64,
            })));
        }
    }
}
