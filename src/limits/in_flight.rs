//! Unary calls one user may have in progress on this replica (`max_in_flight_per_user`).
//!
//! Calls per connection are limited by the transport (`max_in_flight_per_connection`), but
//! a user may open any number of connections; this cap is what bounds the request and
//! response buffers one user can make the server hold (README "Limits"). A call counts
//! from admission until its response has been sent (or the client went away): a client
//! that does not read its answers keeps its slots. A user is remembered only while they
//! have a call in progress.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;

use crate::error::Error;

/// The calls in progress, per user.
pub struct InFlight {
    max: usize,
    calls: Arc<Mutex<HashMap<i64, usize>>>,
}

/// One call in progress; dropping it ends the call's count.
pub struct Slot {
    user: i64,
    calls: Arc<Mutex<HashMap<i64, usize>>>,
}

impl InFlight {
    /// At most `max` calls per user (0 = no cap).
    pub fn new(max: usize) -> Self {
        InFlight {
            max,
            calls: Arc::default(),
        }
    }

    /// Counts a call of `user`, or refuses it if they have `max` in progress already.
    pub fn enter(&self, user: i64) -> Result<Option<Slot>, Error> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let count = calls.entry(user).or_default();
        if *count >= self.max {
            return Err(Error::ResourceExhausted(format!(
                "you already have {} calls in progress on this server (config key \
                 max_in_flight_per_user); wait for some of them to finish",
                self.max
            )));
        }
        *count += 1;
        Ok(Some(Slot {
            user,
            calls: self.calls.clone(),
        }))
    }

    /// Users with calls in progress.
    pub fn users(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Keeps `slot` until `response`'s body has been sent or dropped.
pub fn hold_until_sent(response: http::Response<Body>, slot: Option<Slot>) -> http::Response<Body> {
    match slot {
        None => response,
        Some(slot) => response.map(|inner| Body::new(Holding { inner, _slot: slot })),
    }
}

/// A response body that holds its call's slot.
struct Holding {
    inner: Body,
    _slot: Slot,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = calls.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                calls.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_user_and_forgets_idle_users() {
        let gate = InFlight::new(2);
        let a1 = gate.enter(1).unwrap();
        let a2 = gate.enter(1).unwrap();
        let refused = gate.enter(1).err().expect("a third call is refused");
        assert!(refused.to_string().contains("max_in_flight_per_user"));
        let b = gate.enter(2).unwrap();
        drop(a1);
        let a3 = gate.enter(1).unwrap();
        assert_eq!(gate.users(), 2);
        drop((a2, a3, b));
        assert_eq!(gate.users(), 0);
        assert!(InFlight::new(0).enter(1).unwrap().is_none());
    }
}
