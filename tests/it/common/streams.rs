//! Client-side helpers for StreamMessagePosting and Subscribe, and for posting like a
//! client.

use std::time::Duration;

use secretd::proto;
use tonic::{Code, Status};

use super::{Client, post};

/// One StreamMessagePosting or Subscribe call seen from the client.
pub struct Subscription {
    /// The request stream of a StreamMessagePosting call (None for Subscribe).
    tx: Option<tokio::sync::mpsc::UnboundedSender<proto::ManageStream>>,
    pub rx: tonic::Streaming<proto::StreamMessagePostingResponse>,
}

/// What the server sent, flattened.
pub use proto::stream_message_posting_response::Event;

impl Subscription {
    /// Opens the call; returns once the response headers arrived.
    pub async fn open(client: &mut Client) -> Result<Subscription, Status> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let rx = client
            .stream_message_posting(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Subscription { tx: Some(tx), rx })
    }

    /// Opens a Subscribe call; returns once the response headers arrived.
    pub async fn subscribe(
        client: &mut Client,
        request: proto::SubscribeRequest,
    ) -> Result<Subscription, Status> {
        let rx = client.subscribe(request).await?.into_inner();
        Ok(Subscription { tx: None, rx })
    }

    /// Sends a ManageStream.
    pub fn manage(&self, subscribe: &[&str], unsubscribe: &[&str], resume: &[(&str, u64)]) {
        self.send(proto::ManageStream {
            subscribe_to: subscribe.iter().map(|s| s.to_string()).collect(),
            unsubscribe_to: unsubscribe.iter().map(|s| s.to_string()).collect(),
            resume_from: resume
                .iter()
                .map(|(s, a)| proto::StreamCursor {
                    stream_id: s.to_string(),
                    after_event_id: *a,
                })
                .collect(),
            invites_after: None,
        });
    }

    /// Sends a ManageStream as given.
    pub fn send(&self, m: proto::ManageStream) {
        let tx = self
            .tx
            .as_ref()
            .expect("a Subscribe call takes no ManageStream");
        tx.send(m).expect("call open");
    }

    /// The next thing the server sends (panics after `secs` seconds of silence).
    pub async fn next_within(&mut self, secs: u64) -> Result<Option<Event>, Status> {
        match tokio::time::timeout(Duration::from_secs(secs), self.rx.message()).await {
            Ok(r) => r.map(|m| m.map(|m| m.event.expect("every response carries an event"))),
            Err(_) => panic!("nothing from the server within {secs} s"),
        }
    }

    /// The next event (10 s at most).
    pub async fn next(&mut self) -> Event {
        self.next_within(10)
            .await
            .expect("stream ok")
            .expect("stream open")
    }

    /// True if the server sends nothing for `millis` ms.
    pub async fn quiet_for(&mut self, millis: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(millis), self.rx.message())
            .await
            .is_err()
    }

    /// Reads until CaughtUp for `stream`, returning the events before it.
    pub async fn until_caught_up(&mut self, stream: &str) -> (Vec<proto::PostedMessage>, u64) {
        let mut events = Vec::new();
        loop {
            match self.next().await {
                Event::Message(m) => events.push(m),
                Event::CaughtUp(c) if c.stream_id == stream => return (events, c.head_event_id),
                other => panic!("unexpected {other:?} before CaughtUp"),
            }
        }
    }
}

/// Posts `bodies` on `stream` as one client would: on a refused counter it resyncs from
/// the trailers and tries again. Returns the acknowledged event ids.
pub async fn post_all(
    c: &mut Client,
    stream: &str,
    bodies: impl IntoIterator<Item = Vec<u8>>,
) -> Vec<u64> {
    let mut counter = 1u64;
    let mut ids = Vec::new();
    for body in bodies {
        loop {
            match post(c, stream, counter, &body).await {
                Ok(id) => {
                    ids.push(id);
                    counter += 1;
                    break;
                }
                Err(st) if st.code() == Code::FailedPrecondition => {
                    let head: u64 = st
                        .metadata()
                        .get("secretd-head-counter")
                        .expect("every counter refusal names the head")
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    counter = head.max(counter) + 1;
                }
                Err(other) => panic!("post failed: {other:?}"),
            }
        }
    }
    ids
}

/// The stream's head event id, as FetchMessages reports it.
pub async fn head_of(client: &mut Client, stream: &str) -> u64 {
    client
        .fetch_messages(proto::FetchMessagesRequest {
            stream_id: stream.to_string(),
            ..Default::default()
        })
        .await
        .expect("fetch")
        .into_inner()
        .head_event_id
}

/// Waits until the stream's head reaches `at_least`; returns the head.
pub async fn wait_for_head(client: &mut Client, stream: &str, at_least: u64) -> u64 {
    loop {
        let head = head_of(client, stream).await;
        if head >= at_least {
            return head;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
