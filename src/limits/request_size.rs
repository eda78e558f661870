//! The request-size limit (`max_request_bytes`), answered as RESOURCE_EXHAUSTED with a
//! sentence naming it instead of tonic's bare OUT_OF_RANGE.
//!
//! [`guard`] wraps a call's request body and reads the 5-byte gRPC length prefix of each
//! message as the bytes flow past (nothing is copied or buffered). The first message over
//! the limit is not passed on: the body yields the RESOURCE_EXHAUSTED status as its error
//! instead, which tonic's decoder hands to the handler unchanged, so a unary call ends
//! with it. A streaming call has answered with its headers long before, so [`Trailing`]
//! wraps its response body and ends it with that status in the trailers. gRPC-Web
//! requests reach this point already translated into gRPC framing by `tonic-web`, which
//! also translates the answer back.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;

/// Bytes of the gRPC message prefix: a compression flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// The refusal shared by a call's request guard and its response.
#[derive(Default)]
pub struct Tripped {
    status: Mutex<Option<Status>>,
    /// Set after `status` (a response polled for every delivery skips the lock until then).
    set: AtomicBool,
    response: AtomicWaker,
}

impl Tripped {
    fn trip(&self, status: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        self.set.store(true, Ordering::Release);
        self.response.wake();
    }

    /// The refusal, if the request went over the limit (taken once).
    pub fn take(&self) -> Option<Status> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        self.status.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The refusal of a message of `len` bytes over `limit`.
pub fn too_large(len: u64, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "a request message of {len} bytes is over the limit of {limit} bytes (config key \
         max_request_bytes): blobs are at most 64 KiB, and a ManageStream should name fewer \
         streams; send smaller messages"
    ))
}

/// Wraps `req`'s body so that a message over `limit` bytes is refused; the returned
/// [`Tripped`] holds the refusal for the response.
pub fn guard(req: http::Request<Body>, limit: usize) -> (http::Request<Body>, Arc<Tripped>) {
    let tripped = Arc::new(Tripped::default());
    let shared = tripped.clone();
    let req = req.map(|inner| {
        Body::new(Guarded {
            inner,
            limit: limit as u64,
            prefix: [0; PREFIX],
            have: 0,
            remaining: 0,
            tripped: shared,
            failed: false,
        })
    });
    (req, tripped)
}

/// A request body that checks each message's length prefix.
struct Guarded {
    inner: Body,
    limit: u64,
    /// The prefix being read, `have` bytes of it so far.
    prefix: [u8; PREFIX],
    have: usize,
    /// Bytes of the current message still to pass.
    remaining: u64,
    tripped: Arc<Tripped>,
    failed: bool,
}

impl Guarded {
    /// Follows the framing through `chunk`; the length of the first message over the
    /// limit, if any.
    fn scan(&mut self, mut chunk: &[u8]) -> Option<u64> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() as u64);
                self.remaining -= skip;
                chunk = &chunk[skip as usize..];
                continue;
            }
            let take = (PREFIX - self.have).min(chunk.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&chunk[..take]);
            self.have += take;
            chunk = &chunk[take..];
            if self.have == PREFIX {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as u64;
                if len > self.limit {
                    return Some(len);
                }
                self.remaining = len;
            }
        }
        None
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref()
            && let Some(len) = self.scan(data)
        {
            self.failed = true;
            let status = too_large(len, self.limit as usize);
            self.tripped.trip(status.clone());
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A streaming call's response body that ends with the request's refusal, if it trips.
pub struct Trailing {
    inner: Body,
    tripped: Arc<Tripped>,
    done: bool,
}

impl Trailing {
    /// Wraps a response body.
    pub fn new(inner: Body, tripped: Arc<Tripped>) -> Self {
        Trailing {
            inner,
            tripped,
            done: false,
        }
    }
}

impl http_body::Body for Trailing {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        // Register first, so a trip between the check and the inner poll still wakes us.
        self.tripped.response.register(cx.waker());
        if let Some(status) = self.tripped.take() {
            self.done = true;
            let mut trailers = http::HeaderMap::new();
            return Poll::Ready(Some(match status.add_header(&mut trailers) {
                Ok(()) => Ok(Frame::trailers(trailers)),
                Err(status) => Err(status),
            }));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(limit: u64) -> Guarded {
        Guarded {
            inner: Body::empty(),
            limit,
            prefix: [0; PREFIX],
            have: 0,
            remaining: 0,
            tripped: Arc::default(),
            failed: false,
        }
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn follows_messages_split_anywhere() {
        let mut wire = message(10);
        wire.extend(message(0));
        wire.extend(message(100));
        wire.extend(message(101));
        // Every way of cutting the bytes in two finds the 101-byte message, and only it.
        for cut in 0..wire.len() {
            let mut g = guarded(100);
            let first = g.scan(&wire[..cut]);
            let second = g.scan(&wire[cut..]);
            assert_eq!(first.or(second), Some(101), "cut at {cut}");
        }
        let mut g = guarded(100);
        for byte in &wire[..wire.len() - 101 - PREFIX] {
            assert_eq!(g.scan(std::slice::from_ref(byte)), None);
        }
    }

    #[test]
    fn the_refusal_names_the_limit() {
        let status = too_large(1 << 20, 262_144);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("max_request_bytes"));
        assert!(status.message().contains("1048576"));
        assert!(!status.message().contains('%') && !status.message().contains('#'));
    }
}
