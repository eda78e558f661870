//! The response body of a streaming call: [`Frames`] sends the call's [`PreEncoded`] frames
//! as they are.
//!
//! tonic still reads the request (decoding, size limit, compression refusal, the Subscribe
//! request's one message) and builds the response's headers; the handler then leaves the
//! call's response stream in an [`Opened`] slot instead of giving tonic a stream to encode, and
//! the router puts a [`Frames`] body over it in place of tonic's. tonic's encoder copied
//! every delivery into a buffer of 8 KiB that each call kept for its whole life; a frame
//! here is already the gRPC message (prefix included), so a delivery ready alone goes to
//! the HTTP/2 stack as the very bytes the hub encoded, without a copy, and an idle call
//! holds no buffer. Frames ready together still leave as one chunk (up to
//! [`YIELD_THRESHOLD`]), as tonic's encoder sends them.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;

use crate::proto::{PreEncoded, YIELD_THRESHOLD};

/// The stream a handler gives tonic: none (the frames go through [`Frames`]).
pub type NoFrames = tokio_stream::Empty<Result<PreEncoded, Status>>;

/// Where a handler leaves the response stream `S` of the call it opened, for the router
/// to send through [`Frames`].
pub struct Opened<S>(Arc<Mutex<Option<S>>>);

impl<S> Clone for Opened<S> {
    fn clone(&self) -> Self {
        Opened(self.0.clone())
    }
}

impl<S> Default for Opened<S> {
    fn default() -> Self {
        Opened(Arc::default())
    }
}

impl<S> Opened<S>
where
    S: Stream<Item = Result<PreEncoded, Status>> + Unpin + Send + 'static,
{
    /// Keeps the call's response stream (the handler's last step).
    pub(crate) fn put(&self, outbound: S) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(outbound);
    }

    /// tonic's response with its body replaced by the opened call's frames; tonic's answer
    /// as it is when no call was opened (the request or the handler refused it).
    pub fn respond(self, response: http::Response<Body>) -> http::Response<Body> {
        let opened = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match opened {
            Some(outbound) => response.map(|_| Body::new(Frames::new(outbound))),
            None => response,
        }
    }
}

/// A streaming call's response body: its frames, then the trailers of its final status
/// (OK when the call's response stream ended, else the status it ended with).
pub struct Frames<S> {
    outbound: S,
    /// The status to send as trailers at the next poll (the stream has ended).
    ending: Option<Status>,
    /// The trailers went out.
    done: bool,
}

impl<S> Frames<S>
where
    S: Stream<Item = Result<PreEncoded, Status>> + Unpin,
{
    /// The body of a call's response stream.
    pub fn new(outbound: S) -> Self {
        Frames {
            outbound,
            ending: None,
            done: false,
        }
    }

    /// Polls the response stream for one more frame; the end of the stream (its status)
    /// is kept for the trailers.
    fn next(&mut self, cx: &mut Context<'_>) -> Poll<Option<PreEncoded>> {
        match Pin::new(&mut self.outbound).poll_next(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(frame)),
            Poll::Ready(Some(Err(status))) => {
                self.ending = Some(status);
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ending = Some(Status::ok(""));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The trailers of the status the stream ended with; the body is done after them.
    fn end(&mut self) -> Frame<Bytes> {
        self.done = true;
        let status = self.ending.take().unwrap_or_else(|| Status::ok(""));
        Frame::trailers(trailers(status))
    }
}

/// The trailers that carry `status` (a status whose message cannot be put in a header
/// still carries its code).
fn trailers(status: Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.clear();
        map.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    map
}

impl<S> http_body::Body for Frames<S>
where
    S: Stream<Item = Result<PreEncoded, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.ending.is_some() {
            return Poll::Ready(Some(Ok(this.end())));
        }
        let first = match this.next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(frame)) => frame,
            Poll::Ready(None) => return Poll::Ready(Some(Ok(this.end()))),
        };
        // Alone, the frame goes as it is; with others ready, they leave in one chunk.
        let mut chunk: Option<BytesMut> = None;
        while this.ending.is_none() {
            let len = chunk.as_ref().map_or(first.len(), BytesMut::len);
            if len >= YIELD_THRESHOLD {
                break;
            }
            let Poll::Ready(Some(frame)) = this.next(cx) else {
                break; // nothing more ready now (or the end, kept in `ending`)
            };
            let buf = chunk.get_or_insert_with(|| {
                let mut buf = BytesMut::with_capacity((4 * first.len()).max(8 * 1024));
                buf.put_slice(first.frame());
                buf
            });
            buf.put_slice(frame.frame());
        }
        let data = match chunk {
            Some(buf) => buf.freeze(),
            None => first.0,
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body::Body as _;

    use super::*;

    /// A response stream that yields its items, `None` standing for one Pending.
    struct Scripted(VecDeque<Option<Result<PreEncoded, Status>>>);

    impl Stream for Scripted {
        type Item = Result<PreEncoded, Status>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.0.pop_front() {
                Some(Some(item)) => Poll::Ready(Some(item)),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    fn frame(byte: u8, len: usize) -> PreEncoded {
        PreEncoded::encode(&crate::proto::CaughtUp {
            stream_id: String::from_utf8(vec![byte; len]).unwrap(),
            ..Default::default()
        })
    }

    /// Polls the body to its end: its data chunks and its trailers.
    async fn collect(
        items: Vec<Option<Result<PreEncoded, Status>>>,
    ) -> (Vec<Bytes>, http::HeaderMap) {
        let mut body = Frames::new(Scripted(items.into()));
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(chunk) => data.push(chunk),
                Err(frame) => trailers = Some(frame.into_trailers().unwrap()),
            }
        }
        assert!(body.is_end_stream());
        (data, trailers.expect("trailers"))
    }

    #[tokio::test]
    async fn a_frame_ready_alone_is_sent_as_the_same_bytes() {
        let a = frame(b'a', 10);
        let (data, trailers) = collect(vec![Some(Ok(a.clone())), None]).await;
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].as_ptr(), a.frame().as_ptr(), "copied");
        assert_eq!(data[0], a.frame());
        assert_eq!(trailers["grpc-status"], "0");
        // The prefix is the message's gRPC frame header.
        assert_eq!(data[0][0], 0);
        let len = u32::from_be_bytes(data[0][1..5].try_into().unwrap()) as usize;
        assert_eq!(len, data[0].len() - 5);
    }

    #[tokio::test]
    async fn frames_ready_together_leave_in_one_chunk_in_order() {
        let frames: Vec<_> = (0..5u8).map(|i| frame(b'a' + i, 100)).collect();
        let mut items: Vec<_> = frames
            .iter()
            .take(3)
            .cloned()
            .map(|f| Some(Ok(f)))
            .collect();
        items.push(None);
        items.extend(frames.iter().skip(3).cloned().map(|f| Some(Ok(f))));
        let (data, _) = collect(items).await;
        let expect = |r: std::ops::Range<usize>| -> Vec<u8> {
            frames[r].iter().flat_map(|f| f.frame().to_vec()).collect()
        };
        assert_eq!(data.len(), 2);
        assert_eq!(data[0].to_vec(), expect(0..3));
        assert_eq!(data[1].to_vec(), expect(3..5));
    }

    #[tokio::test]
    async fn a_chunk_stops_at_the_yield_threshold() {
        let big = frame(b'x', 10_000);
        let items = (0..8).map(|_| Some(Ok(big.clone()))).collect();
        let (data, _) = collect(items).await;
        let lens: Vec<usize> = data.iter().map(Bytes::len).collect();
        assert_eq!(lens.iter().sum::<usize>(), 8 * big.len());
        assert!(lens.len() > 1, "{lens:?}");
        assert!(
            lens.iter().all(|&l| l < YIELD_THRESHOLD + big.len()),
            "{lens:?}"
        );
    }

    #[tokio::test]
    async fn the_final_status_follows_the_frames_before_it() {
        let a = frame(b'a', 3);
        let ended = Status::unavailable("the server is shutting down; reconnect");
        let (data, trailers) = collect(vec![Some(Ok(a.clone())), Some(Err(ended))]).await;
        assert_eq!(data, vec![a.frame().clone()]);
        assert_eq!(
            trailers["grpc-status"],
            (tonic::Code::Unavailable as i32).to_string()
        );
        assert!(
            trailers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("shutting")
        );

        let (data, trailers) =
            collect(vec![None, Some(Err(Status::unauthenticated("expired")))]).await;
        assert!(data.is_empty());
        assert_eq!(
            trailers["grpc-status"],
            (tonic::Code::Unauthenticated as i32).to_string()
        );
    }
}
