//! Keeping the local hub in step with the database: events and membership changes made by
//! other replicas (Postgres LISTEN/NOTIFY), and commits whose publishing was in doubt.
//!
//! The hub (`hub/`) is memory only; this module is what reads the database on its behalf.
//! [`run_listener`] (started by `server.rs` on Postgres) decodes other replicas'
//! notifications (`store/postgres/notify.rs`) and hands them to [`Replica::apply`]; after
//! its connection drops it reconnects and calls [`Replica::repair_all`]. The group commit
//! (`commit.rs`) calls [`Replica::republish`] when a batch's COMMIT may have taken effect
//! without an answer.
//!
//! Layering: replica → hub, store (never the other way).

mod listener;

use std::collections::HashSet;
use std::sync::Arc;

use uuid::Uuid;

pub use listener::{listener_name, ping_channel, run_listener};

use crate::domain::{StreamId, UserId};
use crate::hub::{Frame, Hub};
use crate::store::DynStore;
use crate::store::postgres::notify::Change;

/// Most events one remote notification makes this process read from the database at
/// once; a larger jump only moves the head, and subscribers page the rest themselves.
const REMOTE_READ_LIMIT: usize = 256;

/// Reads from the database what the local hub has not seen, and publishes it there.
pub struct Replica {
    /// Where committed events and heads are read from.
    store: DynStore,
    /// Where they are published.
    hub: Arc<Hub>,
}

impl Replica {
    /// A replica reading from `store` for `hub`.
    pub fn new(store: DynStore, hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Replica { store, hub })
    }

    /// Applies changes another replica made.
    pub async fn apply(&self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Event { stream, head } => self.pull(stream, head).await,
                Change::Invite { user } => self.hub.invite_sent(UserId::trusted(user)),
                Change::Membership { pair, user } => {
                    self.hub.membership_changed(&pair, UserId::trusted(user))
                }
                Change::Erased { stream, epoch } => self.hub.forget_frames(&stream, epoch),
            }
        }
    }

    /// Re-reads the heads of `streams` and publishes whatever this process has not seen
    /// (used when committed events may not have been published: a batch whose answer was
    /// lost after its COMMIT). Streams nobody here watches are dropped from the set; on
    /// success the set is emptied. Returns false when the database could not be read
    /// (the set is kept for a retry).
    pub async fn republish(&self, streams: &mut HashSet<Uuid>) -> bool {
        streams.retain(|s| self.hub.is_watched(s));
        if streams.is_empty() {
            return true;
        }
        let list: Vec<Uuid> = streams.iter().copied().collect();
        match self.store.stream_heads(&list).await {
            Ok(heads) => {
                for (stream, head, _) in heads {
                    self.pull(stream, head).await;
                }
                streams.clear();
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot re-read stream heads after a failed commit; retrying");
                false
            }
        }
    }

    /// Reads new events on `stream` up to `head` once (another replica's, or this one's
    /// whose publishing was in doubt), and publishes them to every local watcher.
    async fn pull(&self, stream: Uuid, head: i64) {
        let Some(known) = self.hub.known_head(&stream) else {
            return;
        };
        if head <= known {
            return;
        }
        if (head - known) as usize > REMOTE_READ_LIMIT {
            self.hub.observe_head(stream, head);
            return;
        }
        match self
            .store
            .read_events(StreamId::trusted(stream), known, head, REMOTE_READ_LIMIT)
            .await
        {
            Ok(run) => {
                crate::telemetry::fanout_events_read(run.events.len());
                let epoch = run.member_epoch;
                self.hub
                    .publish(stream, run.events.iter().map(|e| Frame::encode(e, epoch)));
                // Whatever the read did not cover is still committed: let readers page it.
                if self.hub.known_head(&stream).is_some_and(|h| h < head) {
                    self.hub.observe_head(stream, head);
                }
            }
            Err(err) => {
                tracing::warn!(%stream, error = %err, "cannot read remote events; subscribers will page them");
                self.hub.observe_head(stream, head);
            }
        }
    }

    /// Used after the change listener reconnects (anything may have been missed): re-reads
    /// the heads and membership epochs of every watched stream, moves the heads (readers
    /// behind go to the database), asks every subscription verified at an older epoch to
    /// re-check its access (a removal may have gone unnoticed), and wakes every connection
    /// for invites.
    pub async fn repair_all(&self) {
        let streams = self.hub.watched_streams();
        for chunk in streams.chunks(1000) {
            match self.store.stream_heads(chunk).await {
                Ok(heads) => {
                    for (stream, head, epoch) in heads {
                        self.hub.repair(stream, head, epoch);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot repair stream heads"),
            }
        }
        self.hub.wake_all_invites();
    }
}
