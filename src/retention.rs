//! The retention sweeper (README "Retention"): one task per process that, every
//! `retention_sweep_ms`, asks the store which streams hold events their pair's retention
//! (or the server's `retention_days`) no longer keeps, and deletes them oldest first in
//! transactions of at most `retention_batch` events, each moving the stream's horizon
//! (`first_event_id`) with it. The newest event of a stream is never deleted. Several
//! Postgres replicas may sweep at once: every step is idempotent (a batch already
//! deleted deletes nothing, a horizon only moves up). It stops at
//! [`Phase::Draining`](crate::shutdown::Phase), after the batch in progress.

use std::time::Duration;

use crate::config::Settings;
use crate::shutdown::Signal;
use crate::store::DynStore;
use crate::store::retention::Retention;

/// Streams one round of a pass reads; a pass goes on with the next round until no
/// stream is left above its retention.
const STREAMS_PER_ROUND: usize = 256;

/// The server's default retention: `retention_days`, no count limit.
pub fn default_policy(settings: &Settings) -> Retention {
    Retention {
        max_age_secs: i64::try_from(settings.retention_days.saturating_mul(86_400))
            .unwrap_or(i64::MAX),
        max_events: 0,
    }
}

/// The sweeper of one process.
pub struct Sweeper {
    store: DynStore,
    default: Retention,
    interval: Duration,
    batch: i64,
    signal: Signal,
}

impl Sweeper {
    /// A sweeper over `store` with the retention settings of `settings`.
    pub fn new(store: DynStore, settings: &Settings, signal: Signal) -> Self {
        Sweeper {
            store,
            default: default_policy(settings),
            interval: Duration::from_millis(settings.retention_sweep_ms),
            batch: i64::try_from(settings.retention_batch).unwrap_or(i64::MAX),
            signal,
        }
    }

    /// Spawns the task: a pass every interval until the server drains.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = self.signal.draining() => return,
                }
                if let Err(e) = self.pass().await {
                    tracing::warn!("retention sweep stopped early (the next one retries): {e}");
                }
            }
        })
    }

    /// One pass: every stream brought within its retention, batch by batch. Returns the
    /// number of events deleted.
    pub async fn pass(&self) -> crate::error::Result<u64> {
        let mut deleted = 0;
        loop {
            let now = crate::time::now_micros();
            let targets = self
                .store
                .sweep_targets(self.default, now, STREAMS_PER_ROUND)
                .await?;
            if targets.is_empty() {
                break;
            }
            for mut t in targets {
                while t.first.max(1) < t.target {
                    if self.signal.is_draining() {
                        return Ok(deleted);
                    }
                    let to = t.next_step(self.batch);
                    let n = self.store.advance_horizon(t.stream, t.first, to).await?;
                    crate::telemetry::retention_deleted(n);
                    deleted += n;
                    t.first = to;
                }
            }
        }
        if deleted > 0 {
            tracing::debug!(deleted, "retention: deleted expired events");
        }
        Ok(deleted)
    }
}
