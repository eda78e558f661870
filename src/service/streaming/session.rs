//! The session task of a StreamMessagePosting call: control messages, catch-up from the
//! database, access re-checks and invites (the slow path; live delivery is in `mod.rs`).

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::{Call, Control, Sub};
use crate::domain::{StreamId, UserId};
use crate::error::Error;
use crate::hub::{ConnectionGuard, SessionWork};
use crate::proto::stream_message_posting_response::Event;
use crate::proto::{ManageStream, PreEncoded, SubscriptionError};
use crate::service::AppState;
use crate::wire;

/// Invites read per page (at most 64 KiB each: one page is at most 1 MiB per call).
const INVITE_PAGE: usize = 16;

/// Why a session stops.
pub(super) enum Stop {
    /// The client went away: just end.
    Quietly,
    /// End the call with this status (the client resumes by cursor).
    With(Status),
}

pub(super) type Flow = Result<(), Stop>;

pub(super) struct Session {
    /// Dropped with the session: tells the inbound reader to stop.
    _alive: tokio::sync::oneshot::Sender<()>,
    pub(super) state: Arc<AppState>,
    pub(super) guard: ConnectionGuard,
    pub(super) call: Arc<Call>,
    pub(super) user: UserId,
    /// The key of the caller's rate limits ([`crate::auth::Caller::limit_key`]).
    limit_key: i64,
    /// The newest invite id sent (or skipped by `invites_after`); newer ones go out live.
    invite_cursor: i64,
    /// Every invite after this id, up to `invite_cursor`, was sent on this call (or
    /// skipped by `invites_after`).
    invites_from: i64,
}

impl Session {
    pub(super) fn new(
        state: Arc<AppState>,
        guard: ConnectionGuard,
        call: Arc<Call>,
        alive: tokio::sync::oneshot::Sender<()>,
        user: UserId,
        limit_key: i64,
    ) -> Self {
        Session {
            _alive: alive,
            state,
            guard,
            call,
            user,
            limit_key,
            invite_cursor: 0,
            invites_from: 0,
        }
    }

    pub(super) async fn run(mut self, control: mpsc::Receiver<Control>) {
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
        drop(subs); // stops watching their streams
        self.guard.connection().wake_outbound();
    }

    async fn serve(&mut self, mut control: mpsc::Receiver<Control>) -> Flow {
        self.invite_cursor = self
            .state
            .store
            .last_invite_id(self.user)
            .await
            .map_err(db_stop)?;
        self.invites_from = self.invite_cursor;
        let conn = self.guard.connection().clone();
        let mut work = SessionWork::default();
        loop {
            if conn.is_closed() {
                return Err(Stop::Quietly);
            }
            let mut busy = false;
            while let Ok(m) = control.try_recv() {
                self.manage((*m).map_err(Stop::With)?).await?;
                busy = true;
            }
            conn.swap_session_work(&mut work);
            if !work.is_empty() {
                busy = true;
                for (&stream, &below) in &work.recheck {
                    if self.verified_below(stream, below) {
                        self.recheck(stream).await?;
                    }
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

    pub(super) async fn wait_for_room(&self) -> Flow {
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
        if let Some(after) = m.invites_after {
            self.invites_after(i64::try_from(after).unwrap_or(i64::MAX))
                .await?;
        }
        for name in &m.unsubscribe_to {
            match StreamId::parse("unsubscribe_to", name).map(StreamId::get) {
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
        drop(removed); // outside the call's lock
    }

    /// Starts (or, for a resume, repositions) a subscription. `after` = None means live
    /// from the current head.
    async fn subscribe(&mut self, name: String, after: Option<u64>) -> Flow {
        let rate = crate::limits::RateClass::Subscriptions;
        if let Err(e) = self.state.limits.check(rate, self.limit_key) {
            return self.push_error(&name, &e).await;
        }
        let stream = match StreamId::parse("stream_id", &name).map(StreamId::get) {
            Ok(s) => s,
            Err(e) => return self.push_error(&name, &e).await,
        };
        let (existing, count) = {
            let inner = self.call.lock();
            (inner.subs.contains_key(&stream), inner.subs.len())
        };
        if existing && after.is_none() {
            return Ok(()); // already live
        }
        let max = self.state.settings.max_subscriptions_per_connection;
        if !existing && count >= max {
            let e = Error::ResourceExhausted(format!(
                "this call already holds {max} subscriptions (max_subscriptions_per_connection); \
                 unsubscribe from some or open another call"
            ));
            return self.push_error(&name, &e).await;
        }
        // Watch before reading the head, so nothing committed after the read is missed.
        // Every return before the subscription is stored drops the watch, which stops it.
        let watch = (!existing).then(|| self.state.hub.watch(self.guard.connection(), stream));
        let access = match self
            .state
            .store
            .stream_access(self.user, StreamId::trusted(stream))
            .await
        {
            Ok(a) => a,
            Err(e @ (Error::PermissionDenied(_) | Error::NotFound(_))) => {
                // A refused resume also ends the subscription it would have moved.
                drop(watch);
                self.forget(stream);
                return self.push_error(&name, &e).await;
            }
            Err(other) => return Err(db_stop(other)),
        };
        let head = access.head_event_id;
        // Seed the slot's head with our read (a new slot starts at 0): the next
        // notification of another replica's post then reads just the new events, once.
        match &watch {
            Some(w) => w.observe_head(head),
            None => {
                if let Some(sub) = self.call.lock().subs.get(&stream) {
                    sub.slot.observe_head(head);
                }
            }
        }
        let cursor = match after {
            None => head,
            Some(a) if a <= head as u64 => a as i64,
            Some(a) => {
                drop(watch);
                self.forget(stream);
                let e = Error::invalid(format!(
                    "after_event_id {a} is beyond the stream's head event id {head}; resume \
                     from an event id you have received"
                ));
                return self.push_error(&name, &e).await;
            }
        };
        {
            let mut inner = self.call.lock();
            match watch {
                Some(slot) => {
                    inner.subs.insert(
                        stream,
                        Sub {
                            name,
                            slot,
                            cursor,
                            db_head: head,
                            verified_epoch: access.member_epoch,
                            catch_up_to: Some(head),
                            history_starts_at: 0,
                            live: false,
                        },
                    );
                }
                // A resume repositions the subscription in place (it keeps its watch).
                None => {
                    if let Some(sub) = inner.subs.get_mut(&stream) {
                        sub.name = name;
                        sub.cursor = cursor;
                        sub.db_head = head;
                        sub.verified_epoch = access.member_epoch;
                        sub.catch_up_to = Some(head);
                        sub.history_starts_at = 0;
                        sub.live = false;
                    }
                }
            }
        }
        self.catch_up(stream).await
    }

    /// Ends a subscription because access was lost, telling the client.
    pub(super) async fn revoke(&self, stream: Uuid) -> Flow {
        let removed = self.call.lock().subs.remove(&stream);
        if let Some(sub) = removed {
            drop(sub.slot); // stops watching
            let err = Error::PermissionDenied(
                "you are no longer a member of this stream's channel pair (you left or were \
                 removed); the subscription has ended"
                    .into(),
            );
            self.push_error(&sub.name, &err).await?;
        }
        Ok(())
    }

    /// True when the call subscribes to the stream and verified its access at a
    /// membership epoch below `epoch`.
    fn verified_below(&self, stream: Uuid, epoch: i64) -> bool {
        self.call
            .lock()
            .subs
            .get(&stream)
            .is_some_and(|s| s.verified_epoch < epoch)
    }

    /// Re-checks access to a stream (after a membership change, or before a frame with a
    /// newer membership epoch goes out).
    pub(super) async fn recheck(&self, stream: Uuid) -> Flow {
        if !self.call.lock().subs.contains_key(&stream) {
            return Ok(());
        }
        match self
            .state
            .store
            .stream_access(self.user, StreamId::trusted(stream))
            .await
        {
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

    /// `invites_after`: sends the caller's invites after `after` that this call has not
    /// sent yet, oldest first (those from before the call opened); invites up to `after`
    /// that this call has not sent are never sent on it.
    async fn invites_after(&mut self, after: i64) -> Flow {
        if after >= self.invites_from {
            self.invite_cursor = self.invite_cursor.max(after);
        } else {
            self.send_invites(after, self.invites_from).await?;
            self.invites_from = after;
        }
        Ok(())
    }

    /// Sends the invites that arrived since the last ones sent.
    async fn deliver_invites(&mut self) -> Flow {
        self.invite_cursor = self.send_invites(self.invite_cursor, i64::MAX).await?;
        Ok(())
    }

    /// Sends the caller's invites with `after < id <= up_to`, oldest first, a page at a
    /// time; returns the last id sent (`after` if none).
    async fn send_invites(&self, mut after: i64, up_to: i64) -> Result<i64, Stop> {
        loop {
            let budget = crate::service::paging::invites_budget(&self.state.settings);
            let page = self
                .state
                .store
                .fetch_invites(self.user, after, INVITE_PAGE, budget)
                .await
                .map_err(db_stop)?;
            for invite in page.items {
                if invite.invite_id > up_to {
                    return Ok(after);
                }
                after = invite.invite_id;
                self.push(wire::frame(Event::Invite(wire::received_invite(invite))))
                    .await?;
            }
            if !page.has_more {
                return Ok(after);
            }
        }
    }
}

/// A database failure ends the call with its status; the client reconnects and resumes
/// from its cursors, so nothing is lost.
pub(super) fn db_stop(err: Error) -> Stop {
    Stop::With(err.into())
}
