//! A stream's ring of the newest encoded events, and the byte budget all rings share.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Frame;

/// The bytes every ring of one hub may hold together (`fanout_ring_budget_bytes`).
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// `used`, as `secretd_fanout_ring_bytes`.
    gauge: metrics::Gauge,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            gauge: crate::telemetry::ring_budget(limit),
        })
    }

    /// Bytes held by rings now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if they fit.
    fn take(&self, n: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.limit)
            })
            .is_ok();
        if taken {
            self.gauge.increment(n as f64);
        }
        taken
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.decrement(n as f64);
    }
}

/// The newest events of one stream, contiguous and ending at the stream's head (or
/// empty). Its bytes count against the hub's [`Budget`] until they leave the ring.
pub(super) struct Ring {
    frames: VecDeque<Frame>,
    bytes: usize,
    budget: Arc<Budget>,
}

impl Ring {
    pub(super) fn new(budget: Arc<Budget>) -> Self {
        Ring {
            frames: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// Appends the frame that follows the ring's last one (the caller empties the ring
    /// first when it does not follow), dropping the oldest frames to stay within
    /// `max_events` and `max_bytes` (one frame is kept even if larger). When the global
    /// budget is spent, this ring gives back what it holds and keeps the frame only if
    /// it then fits: a frame not kept leaves the ring empty, so readers behind the head
    /// go to the database and nothing is lost. Returns whether the frame was kept.
    pub(super) fn push(&mut self, frame: Frame, max_events: usize, max_bytes: usize) -> bool {
        let len = frame.bytes.len();
        while !self.frames.is_empty()
            && (self.frames.len() >= max_events || self.bytes + len > max_bytes)
        {
            self.pop_front();
        }
        if !self.budget.take(len) {
            crate::telemetry::ring_budget_spent();
            self.clear();
            if !self.budget.take(len) {
                return false;
            }
        }
        self.bytes += len;
        self.frames.push_back(frame);
        true
    }

    /// Empties the ring, giving its bytes back to the budget.
    pub(super) fn clear(&mut self) {
        self.frames.clear();
        self.budget.give(std::mem::take(&mut self.bytes));
    }

    fn pop_front(&mut self) {
        if let Some(old) = self.frames.pop_front() {
            self.bytes -= old.bytes.len();
            self.budget.give(old.bytes.len());
        }
    }

    /// The oldest frame kept.
    pub(super) fn front(&self) -> Option<&Frame> {
        self.frames.front()
    }

    /// The frames, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Frame> {
        self.frames.iter()
    }

    /// Bytes held.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}
