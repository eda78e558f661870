//! Graceful shutdown: one watch channel carrying the server's [`Phase`].
//!
//! `server.rs` owns the [`Trigger`] and moves the phase forward; everything that must stop
//! holds a [`Signal`] (a cheap clone) and waits for the phase it cares about:
//!
//! - [`Phase::Draining`] (SIGTERM): tonic stops accepting calls, the hub refuses new
//!   streaming calls, the change listener and the rate-limit sweeper stop;
//! - [`Phase::Finishing`] (in-flight calls are done, or the grace period ran out): the
//!   group-commit writers commit what is queued, refuse further posts and end.
//!
//! Two phases on one channel, because posts accepted while the server drains must still be
//! committed: the writers stop taking posts only once no call can send one.

use tokio::sync::watch;

/// How far a graceful shutdown has come. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation.
    Serving,
    /// No new calls; open streams end with UNAVAILABLE; in-flight calls finish.
    Draining,
    /// No call is left that could post: the writers commit their queues and stop.
    Finishing,
}

/// Moves the shutdown forward (held by the server).
#[derive(Debug)]
pub struct Trigger(watch::Sender<Phase>);

/// Learns of the shutdown (cloned into every task that must stop).
#[derive(Debug, Clone)]
pub struct Signal(watch::Receiver<Phase>);

/// A new shutdown channel in [`Phase::Serving`].
pub fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(Phase::Serving);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    /// Moves to `phase` (never backwards).
    pub fn advance(&self, phase: Phase) {
        self.0.send_if_modified(|current| {
            let moved = phase > *current;
            if moved {
                *current = phase;
            }
            moved
        });
    }
}

impl Signal {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }

    /// True once the shutdown has begun (any phase past [`Phase::Serving`]).
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Resolves once the phase is at least `phase` (at once if it already is).
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.0.clone();
        // An error means the trigger was dropped: nobody can move the phase any more, so
        // treat it as the end of the server.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Resolves once the shutdown has begun ([`Phase::Draining`]).
    pub async fn draining(&self) {
        self.reached(Phase::Draining).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward() {
        let (trigger, signal) = channel();
        assert!(!signal.is_draining());
        trigger.advance(Phase::Finishing);
        trigger.advance(Phase::Draining);
        assert_eq!(signal.phase(), Phase::Finishing);
        signal.draining().await;
        signal.reached(Phase::Finishing).await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_ends_the_wait() {
        let (trigger, signal) = channel();
        drop(trigger);
        signal.reached(Phase::Finishing).await;
    }
}
