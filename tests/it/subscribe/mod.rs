//! Subscribe, the server-streaming twin of StreamMessagePosting for a fixed set of streams:
//! ordering, gapless resume, CaughtUp, per-stream errors, removal and invites
//! (`delivery.rs`, on SQLite and Postgres), limits, token expiry and shutdown
//! (`limits.rs`).

mod delivery;
mod limits;

use secretd::proto::{StreamCursor, SubscribeRequest};

/// A request resuming `resume` and following `live` from now.
fn request(resume: &[(&str, u64)], live: &[&str]) -> SubscribeRequest {
    SubscribeRequest {
        resume_from: resume
            .iter()
            .map(|(s, a)| StreamCursor {
                stream_id: s.to_string(),
                after_event_id: *a,
            })
            .collect(),
        subscribe_to: live.iter().map(|s| s.to_string()).collect(),
        invites_after: None,
    }
}
