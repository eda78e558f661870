//! The session task of a StreamMessagePosting call: control messages, catch-up from the
//! database, access re-checks and invites (the slow path; live delivery is in `mod.rs`).

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::{Call, Sub};
use crate::error::Error;
use crate::hub::{ConnectionGuard, Read, SessionWork};
use crate::proto::stream_message_posting_response::Event;
use crate::proto::{CaughtUp, ManageStream, PreEncoded, SubscriptionError};
use crate::service::AppState;
use crate::store::Page;
use crate::wire::{self, parse_id};

/// Events read from the database per page when the ring does not cover a cursor.
const DB_PAGE: usize = 256;
/// Pages read for one subscription before the session looks at its other work.
const PAGES_PER_ROUND: usize = 4;
/// Invites read per page.
const INVITE_PAGE: usize = 100;

/// Why a session stops.
enum Stop {
    /// The client went away: just end.
    Quietly,
    /// End the call with this status (the client resumes by cursor).
    With(Status),
}

type Flow = Result<(), Stop>;

/// What catch-up does next, decided under the call's lock.
enum Next {
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

pub(super) struct Session {
    /// Dropped with the session: tells the inbound reader to stop.
    _alive: tokio::sync::oneshot::Sender<()>,
    state: Arc<AppState>,
    guard: ConnectionGuard,
    call: Arc<Call>,
    user: i64,
    invite_cursor: i64,
}

impl Session {
    pub(super) fn new(
        state: Arc<AppState>,
        guard: ConnectionGuard,
        call: Arc<Call>,
        alive: tokio::sync::oneshot::Sender<()>,
        user: i64,
    ) -> Self {
        Session {
            _alive: alive,
            state,
            guard,
            call,
            user,
            invite_cursor: 0,
        }
    }

    pub(super) async fn run(mut self, control: mpsc::UnboundedReceiver<ManageStream>) {
        let end = match self.serve(control).await {
            Err(Stop::With(status)) => Some(status),
            _ => None,
        };
        let subs: Vec<Sub> = {
            let mut inner = self.call.lock();
            inner.finished = true;
            inner.end = end;
            inner.subs.drain().map(|(_, s)| s).collect()
        };
        let conn = self.guard.connection().clone();
        for sub in subs {
            self.state.hub.unwatch(&conn, &sub.slot);
        }
        conn.wake_outbound();
    }

    async fn serve(&mut self, mut control: mpsc::UnboundedReceiver<ManageStream>) -> Flow {
        self.invite_cursor = self
            .state
            .store
            .last_invite_id(self.user)
            .await
            .map_err(db_stop)?;
        let conn = self.guard.connection().clone();
        let mut work = SessionWork::default();
        loop {
            if conn.is_closed() {
                return Err(Stop::Quietly);
            }
            let mut busy = false;
            while let Ok(m) = control.try_recv() {
                self.manage(m).await?;
                busy = true;
            }
            conn.swap_session_work(&mut work);
            if !work.is_empty() {
                busy = true;
                for &stream in &work.recheck {
                    self.recheck(stream).await?;
                }
                if work.invites {
                    self.deliver_invites().await?;
                }
                for &stream in &work.streams {
                    self.catch_up(stream).await?;
                }
                work.clear();
            }
            if !busy {
                conn.woken().await;
            }
        }
    }

    /// Queues a frame, waiting while the ready queue is full.
    async fn push(&self, frame: PreEncoded) -> Flow {
        loop {
            {
                let mut inner = self.call.lock();
                if self.guard.connection().is_closed() {
                    return Err(Stop::Quietly);
                }
                if inner.ready.len() < self.call.cap {
                    inner.ready.push_back(frame);
                    break;
                }
                inner.waiting_for_room = true;
            }
            self.wait_for_room().await?;
        }
        self.guard.connection().wake_outbound();
        Ok(())
    }

    async fn wait_for_room(&self) -> Flow {
        self.guard.connection().wake_outbound();
        self.call.room.notified().await;
        if self.guard.connection().is_closed() {
            return Err(Stop::Quietly);
        }
        Ok(())
    }

    async fn push_error(&self, stream_id: &str, err: &Error) -> Flow {
        self.push(wire::frame(Event::SubscriptionError(SubscriptionError {
            stream_id: stream_id.to_string(),
            code: err.code() as i32,
            message: err.to_string(),
        })))
        .await
    }

    async fn manage(&mut self, m: ManageStream) -> Flow {
        for name in &m.unsubscribe_to {
            match parse_id("unsubscribe_to", name) {
                Ok(stream) => self.forget(stream),
                Err(e) => self.push_error(name, &e).await?,
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

    /// Drops a subscription without telling the client.
    fn forget(&self, stream: Uuid) {
        let removed = self.call.lock().subs.remove(&stream);
        if let Some(sub) = removed {
            self.state.hub.unwatch(self.guard.connection(), &sub.slot);
        }
    }

    /// Starts (or, for a resume, repositions) a subscription. `after` = None means live
    /// from the current head.
    async fn subscribe(&mut self, name: String, after: Option<u64>) -> Flow {
        let stream = match parse_id("stream_id", &name) {
            Ok(s) => s,
            Err(e) => return self.push_error(&name, &e).await,
        };
        let (existing, count) = {
            let inner = self.call.lock();
            (
                inner.subs.get(&stream).map(|s| s.slot.clone()),
                inner.subs.len(),
            )
        };
        if existing.is_some() && after.is_none() {
            return Ok(()); // already live
        }
        let max = self.state.settings.max_subscriptions_per_connection;
        if existing.is_none() && count >= max {
            let e = Error::ResourceExhausted(format!(
                "this call already holds {max} subscriptions (max_subscriptions_per_connection); \
                 unsubscribe from some or open another call"
            ));
            return self.push_error(&name, &e).await;
        }
        // Watch before reading the head, so nothing committed after the read is missed.
        let conn = self.guard.connection().clone();
        let is_new = existing.is_none();
        let slot = match existing {
            Some(slot) => slot,
            None => self.state.hub.watch(&conn, stream),
        };
        // A refused new subscription stops watching; a refused resume ends the old one.
        let refuse = |this: &Self, e: Error| {
            if is_new {
                this.state.hub.unwatch(&conn, &slot);
            } else {
                this.forget(stream);
            }
            e
        };
        let access = match self.state.store.stream_access(self.user, stream).await {
            Ok(a) => a,
            Err(e @ (Error::PermissionDenied(_) | Error::NotFound(_))) => {
                let e = refuse(self, e);
                return self.push_error(&name, &e).await;
            }
            Err(other) => return Err(db_stop(other)),
        };
        let head = access.head_event_id;
        let cursor = match after {
            None => head,
            Some(a) if a <= head as u64 => a as i64,
            Some(a) => {
                let e = refuse(
                    self,
                    Error::invalid(format!(
                        "after_event_id {a} is beyond the stream's head event id {head}; resume \
                         from an event id you have received"
                    )),
                );
                return self.push_error(&name, &e).await;
            }
        };
        self.call.lock().subs.insert(
            stream,
            Sub {
                name,
                slot,
                cursor,
                db_head: head,
                verified_epoch: access.member_epoch,
                catch_up_to: Some(head),
                live: false,
            },
        );
        self.catch_up(stream).await
    }

    /// Ends a subscription because access was lost, telling the client.
    async fn revoke(&self, stream: Uuid) -> Flow {
        let removed = self.call.lock().subs.remove(&stream);
        if let Some(sub) = removed {
            self.state.hub.unwatch(self.guard.connection(), &sub.slot);
            let err = Error::PermissionDenied(
                "you are no longer a member of this stream's channel pair (you left or were \
                 removed); the subscription has ended"
                    .into(),
            );
            self.push_error(&sub.name, &err).await?;
        }
        Ok(())
    }

    /// Re-checks access to a stream (after a membership change, or before a frame with a
    /// newer membership epoch goes out).
    async fn recheck(&self, stream: Uuid) -> Flow {
        if !self.call.lock().subs.contains_key(&stream) {
            return Ok(());
        }
        match self.state.store.stream_access(self.user, stream).await {
            Ok(access) => {
                if let Some(sub) = self.call.lock().subs.get_mut(&stream) {
                    sub.verified_epoch = sub.verified_epoch.max(access.member_epoch);
                    sub.db_head = sub.db_head.max(access.head_event_id);
                }
                Ok(())
            }
            Err(Error::PermissionDenied(_)) => self.revoke(stream).await,
            Err(e) => Err(db_stop(e)),
        }
    }

    /// Brings a subscription the session owns up to the ring, then makes it live.
    async fn catch_up(&self, stream: Uuid) -> Flow {
        let conn = self.guard.connection().clone();
        let mut pages = 0;
        loop {
            let next = self.step(stream);
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

    /// One step of catch-up under the lock: queue ring frames, or say what to do.
    fn step(&self, stream: Uuid) -> Next {
        let mut inner = self.call.lock();
        let cap = self.call.cap;
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
                    sub.cursor = frame.event_id;
                    ready.push_back(frame.bytes);
                }
                Next::Again
            }
            Read::FromDatabase { .. } => Next::Page(sub.cursor),
            Read::UpToDate if sub.cursor < sub.db_head => Next::Page(sub.cursor),
            Read::UpToDate => {
                if sub.catch_up_to.is_some_and(|t| sub.cursor >= t) {
                    sub.catch_up_to = None;
                    ready.push_back(wire::frame(Event::CaughtUp(CaughtUp {
                        stream_id: sub.name.clone(),
                        head_event_id: sub.cursor as u64,
                    })));
                }
                sub.live = true;
                Next::Live
            }
        }
    }

    /// Reads one page after `cursor` from the database (checking access in the same read)
    /// and queues it.
    async fn page_from_db(&self, stream: Uuid, cursor: i64) -> Flow {
        let page = match self
            .state
            .store
            .fetch_events(self.user, stream, Page::After(cursor), DB_PAGE)
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
        {
            let mut inner = self.call.lock();
            let super::CallInner { subs, ready, .. } = &mut *inner;
            let Some(sub) = subs.get_mut(&stream) else {
                return Ok(());
            };
            if sub.cursor != cursor || sub.live {
                return Ok(()); // repositioned meanwhile: the next step starts over
            }
            // One page may exceed the queue's capacity; the next step waits for room.
            for (event_id, frame) in frames {
                sub.cursor = event_id;
                ready.push_back(frame);
            }
            sub.verified_epoch = sub.verified_epoch.max(page.member_epoch);
            sub.db_head = sub.db_head.max(page.head_event_id);
            if page.events.is_empty() {
                // Nothing after the cursor is stored: never spin on a head we cannot reach.
                sub.db_head = sub.cursor;
            }
        }
        self.guard.connection().wake_outbound();
        Ok(())
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
                self.push(wire::frame(Event::Invite(wire::received_invite(invite))))
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
