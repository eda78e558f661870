//! Transport limits: the request-size limit over HTTP/2 and gRPC-Web (unary,
//! StreamMessagePosting and Subscribe), HTTP/2 streams per connection, calls in flight per connection, and the
//! rate-limit delay reaching a browser through CORS.

use std::time::Duration;

use secretd::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use super::{Stall, no_rate_limits, pairs_of};
use crate::common::*;

/// A message one byte over the default `max_request_bytes` (256 KiB).
const OVER: usize = 256 * 1024 + 1;

#[track_caller]
fn names_the_size_limit(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_request_bytes"), "{status:?}");
    assert!(status.message().contains("262144"), "{status:?}");
}

#[tokio::test]
async fn an_oversize_request_names_the_limit_over_http2() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut c = server.client(random_user()).await;
    let stream = new_pair(&mut c).await.message_id;
    // Unary: a ciphertext far over the limit (not the 64 KiB blob rule: the transport's).
    let status = post(&mut c, &stream, 1, &vec![7u8; OVER])
        .await
        .unwrap_err();
    names_the_size_limit(&status);
    // StreamMessagePosting: the call ends with the same status in its trailers.
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[&"x".repeat(OVER)], &[], &[]);
    let status = sub.next_within(10).await.unwrap_err();
    names_the_size_limit(&status);
    // Subscribe: refused as a whole with the same status.
    let request = proto::SubscribeRequest {
        subscribe_to: vec!["x".repeat(OVER)],
        ..Default::default()
    };
    let status = Subscription::subscribe(&mut c, request)
        .await
        .map(|_| ())
        .unwrap_err();
    names_the_size_limit(&status);
    // The connection and the server go on: both kinds of call work again.
    assert_eq!(post(&mut c, &stream, 1, b"small").await.unwrap(), 1);
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[], &[], &[(&stream, 0)]);
    let (events, head) = sub.until_caught_up(&stream).await;
    assert_eq!((events.len(), head), (1, 1));
    server.stop().await;
}

/// One gRPC-Web call over HTTP/1.1 (`Connection: close`): the request is written while
/// the response is read, since the server may answer before it has read the whole body.
async fn grpc_web(server: &TestServer, method: &str, user: u64, frame: Vec<u8>) -> String {
    let head = format!(
        "POST /protocol.secret.v1.SecretService/{method} HTTP/1.1\r\nHost: x\r\n\
         Origin: https://chat.example\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        server.token(user),
        frame.len()
    );
    let socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = socket.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&frame).await;
        wr
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
    drop(writer.await);
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// A gRPC message prefix claiming `len` bytes, followed by them.
fn frame_of(len: usize) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.resize(5 + len, 0);
    f
}

#[tokio::test]
async fn an_oversize_request_names_the_limit_over_grpc_web() {
    let server = TestServer::start(Backend::Sqlite).await;
    let user = random_user();
    for method in ["PostMessage", "StreamMessagePosting", "Subscribe"] {
        let answer = grpc_web(&server, method, user, frame_of(OVER)).await;
        assert!(answer.starts_with("http/1.1 200"), "{method}: {answer}");
        let compact = answer.replace(' ', "");
        assert!(compact.contains("grpc-status:8"), "{method}: {answer}");
        assert!(answer.contains("max_request_bytes"), "{method}: {answer}");
        assert!(answer.contains("262144"), "{method}: {answer}");
    }
    // A well-sized gRPC-Web call is served (an empty GenerateChannelPairRequest).
    let answer = grpc_web(&server, "GenerateChannelPair", user, frame_of(0)).await;
    assert!(
        answer.replace(' ', "").contains("grpc-status:0"),
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_browser_sees_the_retry_delay() {
    let server = TestServer::start_with(Backend::Sqlite, |s| {
        s.rate_pairs_per_sec = 1.0;
        s.rate_pairs_burst = 1;
    })
    .await;
    let user = random_user();
    let first = grpc_web(&server, "GenerateChannelPair", user, frame_of(0)).await;
    assert!(first.replace(' ', "").contains("grpc-status:0"), "{first}");
    let second = grpc_web(&server, "GenerateChannelPair", user, frame_of(0)).await;
    let compact = second.replace(' ', "");
    assert!(compact.contains("grpc-status:8"), "{second}");
    assert!(compact.contains("\r\nretry-after-ms:"), "{second}");
    let exposed = compact
        .lines()
        .find(|l| l.starts_with("access-control-expose-headers:"))
        .unwrap_or_else(|| panic!("no expose header: {second}"));
    assert!(exposed.contains("retry-after-ms"), "{second}");
    server.stop().await;
}

/// Lists the client's pairs in a task of its own; the task answers how many there are.
fn spawn_list(c: &Client) -> tokio::task::JoinHandle<Result<usize, tonic::Status>> {
    let mut c = c.clone();
    tokio::spawn(async move {
        c.list_channel_pairs(proto::ListChannelPairsRequest::default())
            .await
            .map(|r| r.into_inner().pairs.len())
    })
}

/// A post of `c`'s user (on a new pair) that waits for the writer, stalled by a database
/// lock until the returned [`Stall`] is released.
async fn stalled_post(
    server: &TestServer,
    c: &Client,
) -> (Stall, tokio::task::JoinHandle<Result<u64, tonic::Status>>) {
    let mut c = c.clone();
    let stream = new_pair(&mut c).await.message_id;
    let stall = Stall::hold(server, &[&stream]).await;
    let stuck = tokio::spawn(async move { post(&mut c, &stream, 1, b"stalled").await });
    (stall, stuck)
}

/// True if `task` is still waiting after the server had ample time to answer it.
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    tokio::time::sleep(Duration::from_millis(500)).await;
    !task.is_finished()
}

#[tokio::test]
async fn calls_in_flight_per_connection_are_limited() {
    let server = TestServer::start_with(Backend::Sqlite, |s| {
        s.max_in_flight_per_connection = 1;
        no_rate_limits(s);
    })
    .await;
    let c = server.client(random_user()).await;
    // The post waits for the stalled writer and keeps the connection's one slot.
    let (stall, stuck) = stalled_post(&server, &c).await;
    let queued = spawn_list(&c);
    assert!(
        still_waiting(&queued).await,
        "a second call on the connection waits"
    );
    // Another connection is served meanwhile (a read: the database is locked for writes).
    pairs_of(&mut server.client(random_user()).await).await;
    stall.release().await;
    assert_eq!(stuck.await.unwrap().unwrap(), 1);
    assert_eq!(queued.await.unwrap().unwrap(), 1);
    server.stop().await;
}

#[tokio::test]
async fn http2_streams_per_connection_are_limited() {
    let server = TestServer::start_with(Backend::Sqlite, |s| {
        s.http2_max_concurrent_streams = 2;
        no_rate_limits(s);
    })
    .await;
    let mut c = server.client(random_user()).await;
    let stream = new_pair(&mut c).await.message_id;
    let mut first = Subscription::open(&mut c).await.unwrap();
    first.manage(&[&stream], &[], &[]);
    assert!(matches!(first.next().await, Event::CaughtUp(_)));
    let second = Subscription::open(&mut c).await.unwrap();
    // Both of the connection's streams are taken: the client holds a third call back
    // until one ends (the server advertised the limit in its HTTP/2 SETTINGS).
    let third = spawn_list(&c);
    assert!(
        still_waiting(&third).await,
        "a third stream waits for a free one"
    );
    let mut other = server.client(random_user()).await;
    new_pair(&mut other).await;
    drop(second);
    assert_eq!(third.await.unwrap().unwrap(), 1);
    // The first call is still live.
    post(&mut c, &stream, 1, b"live").await.unwrap();
    assert!(matches!(first.next().await, Event::Message(_)));
    server.stop().await;
}

#[tokio::test]
async fn calls_in_flight_per_user_are_capped() {
    let server = TestServer::start_with(Backend::Sqlite, |s| {
        s.max_in_flight_per_user = 1;
        no_rate_limits(s);
    })
    .await;
    let user = random_user();
    let (stall, stuck) = stalled_post(&server, &server.client(user).await).await;
    // The same user on another connection: refused as soon as the post holds the slot
    // (until then, the read is simply served).
    let mut again = server.client(user).await;
    let started = std::time::Instant::now();
    let refused = loop {
        assert!(started.elapsed() < Duration::from_secs(30), "never refused");
        let read = again
            .list_channel_pairs(proto::ListChannelPairsRequest::default())
            .await;
        match read {
            Ok(_) => assert!(!stuck.is_finished(), "the post cannot finish while stalled"),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_in_flight_per_user"),
        "{refused:?}"
    );
    assert!(refused.metadata().get("retry-after-ms").is_none());
    // Another user is not affected.
    pairs_of(&mut server.client(random_user()).await).await;
    stall.release().await;
    assert_eq!(stuck.await.unwrap().unwrap(), 1);
    again
        .list_channel_pairs(proto::ListChannelPairsRequest::default())
        .await
        .unwrap();
    server.stop().await;
}
