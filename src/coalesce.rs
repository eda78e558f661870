//! Write coalescing for accepted connections: the frames of many calls on one connection
//! leave in one write instead of one write each.
//!
//! Why: live delivery is one small gRPC message per subscription, and each subscription's
//! body is a task of its own. hyper's HTTP/2 connection task writes whatever frames are
//! queued when it runs; on a vectored socket h2 also writes every DATA payload over 256
//! bytes (a 512-byte event) on its own, before it takes the next frame. The profile of
//! 1,000 subscribers (BENCHMARKS.md, issue 23) spent half of the server's CPU under
//! `writev`, about one call per two deliveries.
//!
//! What [`Coalescing`] changes, for the server's side of each connection only:
//! - it reports a socket without vectored writes, so h2 copies payloads of up to 1 KiB into
//!   its own 16 KiB write buffer instead of writing each one on its own;
//! - the first small write after a flush yields to the runtime once (it wakes its own task
//!   and answers `Pending`): the tasks that are ready run first and queue their frames, and
//!   the connection's next turn writes them all. Later writes, and any write of
//!   [`YIELD_BELOW`] bytes or more, go straight to the socket.
//!
//! Nothing is held beyond h2's own buffer (no extra bytes per connection, idle or not), a
//! write waits at most one turn of the scheduler, and the bytes and their order are
//! exactly h2's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A write this large already carries many frames (or one large one): it goes out at once.
pub const YIELD_BELOW: usize = 8 * 1024;

/// An accepted connection whose small writes wait one scheduler turn for company
/// (see the module's documentation).
#[derive(Debug)]
pub struct Coalescing<T> {
    inner: T,
    /// This flush cycle has already yielded once: write through until the next flush.
    yielded: bool,
}

impl<T> Coalescing<T> {
    /// Wraps a connection.
    pub fn new(inner: T) -> Self {
        Coalescing {
            inner,
            yielded: false,
        }
    }
}

impl<T: Connected> Connected for Coalescing<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.yielded && !buf.is_empty() && buf.len() < YIELD_BELOW {
            self.yielded = true;
            // Back of the run queue: the ready tasks queue their frames first.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.yielded = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// No: h2 then copies small DATA payloads into its write buffer (see the module).
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// Counts the wakes of the task that polls.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A socket that records each write it takes.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn context() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        (wakes.clone(), Waker::from(wakes))
    }

    #[test]
    fn a_small_write_yields_once_per_flush_then_goes_through() {
        let (wakes, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalescing::new(Recorder::default());
        let mut c = Pin::new(&mut c);
        assert!(c.as_mut().poll_write(&mut cx, b"frame").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "it must wake itself");
        assert!(c.inner.writes.is_empty(), "nothing written while yielding");
        let Poll::Ready(Ok(5)) = c.as_mut().poll_write(&mut cx, b"frame") else {
            panic!("the second try writes")
        };
        let Poll::Ready(Ok(4)) = c.as_mut().poll_write(&mut cx, b"more") else {
            panic!("later writes of the cycle write")
        };
        assert!(c.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(c.inner.flushes, 1);
        // A new cycle yields again.
        assert!(c.as_mut().poll_write(&mut cx, b"next").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(c.inner.writes, vec![b"frame".to_vec(), b"more".to_vec()]);
    }

    #[test]
    fn a_large_write_goes_out_at_once() {
        let (wakes, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalescing::new(Recorder::default());
        let big = vec![7u8; YIELD_BELOW];
        let Poll::Ready(Ok(n)) = Pin::new(&mut c).poll_write(&mut cx, &big) else {
            panic!("a large write is not delayed")
        };
        assert_eq!(n, YIELD_BELOW);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert!(!c.is_write_vectored());
    }

    #[test]
    fn an_empty_write_is_not_delayed() {
        let (wakes, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalescing::new(Recorder::default());
        assert!(Pin::new(&mut c).poll_write(&mut cx, b"").is_ready());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }
}
