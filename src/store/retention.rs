//! Retention in the stores (README "Retention"): each pair's setting, and the sweeper's
//! two steps — which streams have events to delete, and deleting one bounded batch of
//! them while moving the stream's horizon (`streams.first_event_id`) in the same
//! transaction, so a reader sees either an event or a horizon above it, never a silent
//! gap. The head (newest event) is never deleted: counters and resume keep working.
//!
//! Both steps are idempotent, so several Postgres replicas may sweep at once: a batch
//! another replica already deleted deletes nothing, and the horizon only moves up.

use async_trait::async_trait;
use uuid::Uuid;

use super::{Page, PairId, UserId};
use crate::error::{Error, Result};

/// A retention policy; each limit 0 = no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this many seconds are deleted.
    pub max_age_secs: i64,
    /// Only the newest this many events of a stream are kept.
    pub max_events: i64,
}

impl Retention {
    /// True when the policy deletes nothing.
    pub fn keeps_everything(&self) -> bool {
        self.max_age_secs == 0 && self.max_events == 0
    }
}

/// A stream with events to delete: those with `first <= id < target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepTarget {
    /// The stream.
    pub stream: Uuid,
    /// Its horizon now (0 or 1: nothing deleted yet).
    pub first: i64,
    /// The horizon its policy asks for (never above the head).
    pub target: i64,
}

impl SweepTarget {
    /// The horizon after the next batch of at most `batch` events.
    pub fn next_step(&self, batch: i64) -> i64 {
        self.target
            .min(self.first.max(1).saturating_add(batch.max(1)))
    }
}

/// Per-pair retention settings and the sweeper's reads and deletes.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Sets the pair's retention; only its owner may (a non-member, or an unknown pair,
    /// is refused like every pair RPC refuses them).
    async fn set_retention(
        &self,
        owner: UserId,
        pair: PairId,
        policy: Retention,
        now: i64,
    ) -> Result<()>;
    /// Streams whose policy (the pair's own, else `default`) asks for a horizon above the
    /// current one at time `now` (µs), at most `limit` of them.
    async fn sweep_targets(
        &self,
        default: Retention,
        now: i64,
        limit: usize,
    ) -> Result<Vec<SweepTarget>>;
    /// Moves the stream's horizon up to `to` (never past its head) and deletes its events
    /// with `from <= id < to`, in one transaction; the number of events deleted.
    async fn advance_horizon(&self, stream: Uuid, from: i64, to: i64) -> Result<u64>;
}

/// Stores a pair's setting (both backends run it as is): `$1` pair, `$2` max age,
/// `$3` max events, `$4` now.
pub(crate) const UPSERT: &str = "INSERT INTO pair_retention (pair_id, max_age_secs, max_events, set_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (pair_id) DO UPDATE \
     SET max_age_secs = $2, max_events = $3, set_at = $4";

/// Sweep targets from `(stream, first_event_id, target)` rows.
pub(crate) fn targets(rows: Vec<(Uuid, i64, i64)>) -> Vec<SweepTarget> {
    rows.into_iter()
        .map(|(stream, first, target)| SweepTarget {
            stream,
            first,
            target,
        })
        .collect()
}

/// What FetchMessages says in `history_starts_at` for a page read with horizon `first`:
/// the horizon when the request asked for events below it (a forward page from a cursor
/// before it, a backward page that reached it), else 0.
pub fn history_starts_at(page: Page, first: i64, has_more: bool) -> u64 {
    let asked_below = match page {
        Page::After(after) => after.saturating_add(1) < first,
        Page::Before(_) => !has_more && first > 1,
    };
    if asked_below { first as u64 } else { 0 }
}

/// The refusal of SetRetention by a member who is not the owner.
pub fn not_owner() -> Error {
    Error::PermissionDenied(
        "only the owner of the channel pair may set its retention; ask the owner \
         (ListChannelPairs names them)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stop_at_the_target() {
        let t = SweepTarget {
            stream: Uuid::nil(),
            first: 0,
            target: 991,
        };
        assert_eq!(t.next_step(500), 501);
        assert_eq!(SweepTarget { first: 501, ..t }.next_step(500), 991);
    }

    #[test]
    fn history_starts_at_only_below_the_horizon() {
        assert_eq!(history_starts_at(Page::After(0), 991, false), 991);
        assert_eq!(history_starts_at(Page::After(990), 991, false), 0);
        assert_eq!(history_starts_at(Page::After(0), 0, false), 0);
        assert_eq!(history_starts_at(Page::After(0), 1, false), 0);
        assert_eq!(history_starts_at(Page::Before(995), 991, false), 991);
        assert_eq!(history_starts_at(Page::Before(995), 991, true), 0);
    }
}
