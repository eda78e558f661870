//! Overload is an answer, not a wait: the group-commit queue refuses posts once it is
//! full past `commit_queue_timeout_ms`, and a unary call past `unary_timeout_ms` ends with
//! DEADLINE_EXCEEDED. Both are driven by a real database lock that stalls the writer
//! ([`Stall`]), released by the test: no timing window is raced.

use std::time::Duration;

use tonic::Code;

use super::{Stall, throttled};
use crate::common::*;

both_backends!(
    a_full_commit_queue_answers_at_once,
    a_stalled_unary_call_meets_its_deadline
);

/// Fails the test instead of hanging when an answer never comes.
const PATIENCE: Duration = Duration::from_secs(30);

async fn a_full_commit_queue_answers_at_once(b: Backend) {
    const DEPTH: usize = 2;
    const POSTS: usize = DEPTH + 1 + 3;
    let server = TestServer::start_with(b, |s| {
        s.commit_writers = 1;
        s.commit_max_batch = 1;
        s.commit_queue_depth = DEPTH;
        s.commit_queue_timeout_ms = 300;
    })
    .await;
    let mut c = server.client(random_user()).await;
    let mut streams = Vec::new();
    for _ in 0..POSTS {
        streams.push(new_pair(&mut c).await.message_id);
    }
    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
    let stall = Stall::hold(&server, &names).await;

    // One post per stream. While the writer is stalled it holds one post and its queue
    // DEPTH more; every other post waits 300 ms for room and is refused.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, stream) in streams.iter().enumerate() {
        let (mut c, stream, tx) = (c.clone(), stream.clone(), tx.clone());
        tokio::spawn(async move {
            let body = format!("post {i}").into_bytes();
            let _ = tx.send((i, post(&mut c, &stream, 1, &body).await));
        });
    }
    let mut refused = Vec::new();
    while refused.len() < POSTS - DEPTH - 1 {
        let (i, result) = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("the refusals come while the writer is stalled")
            .unwrap();
        // Nothing can be acknowledged while the writer is stalled.
        let status = result.expect_err("nothing commits while the database is locked");
        throttled(&status, "commit_queue_depth");
        assert!(
            status.message().contains("commit_queue_timeout_ms"),
            "{status:?}"
        );
        refused.push(i);
    }

    stall.release().await;
    let mut acked = Vec::new();
    for _ in refused.len()..POSTS {
        let (i, result) = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("every queued post is answered once the lock is gone")
            .unwrap();
        match result {
            Ok(event_id) => acked.push((i, event_id)),
            // The writer may not have taken its first post before the queue filled: then
            // one more post found no room.
            Err(status) => {
                throttled(&status, "commit_queue_depth");
                refused.push(i);
            }
        }
    }
    assert!(
        (POSTS - DEPTH - 1..=POSTS - DEPTH).contains(&refused.len()),
        "{refused:?}"
    );
    // Nothing acknowledged is lost, nothing refused is stored.
    for (i, stream) in streams.iter().enumerate() {
        let events = fetch_all(&mut c, stream).await;
        match acked.iter().find(|(j, _)| *j == i) {
            Some((_, event_id)) => {
                assert_eq!(events.len(), 1, "stream {i}");
                assert_eq!(events[0].event_id, *event_id);
                let body = &events[0].message.as_ref().unwrap().message;
                assert_eq!(body, format!("post {i}").as_bytes());
            }
            None => assert!(events.is_empty(), "refused post {i} was stored"),
        }
    }
    // Recovered: a refused post goes through when retried.
    let again = refused[0];
    assert_eq!(
        post(&mut c, &streams[again], 1, b"retried").await.unwrap(),
        1
    );
    server.stop().await;
}

async fn a_stalled_unary_call_meets_its_deadline(b: Backend) {
    let server = TestServer::start_with(b, |s| s.unary_timeout_ms = 500).await;
    let mut c = server.client(random_user()).await;
    let stream = new_pair(&mut c).await.message_id;
    let stall = Stall::hold(&server, &[&stream]).await;
    let status = expect_code(
        post(&mut c, &stream, 1, b"slow").await,
        Code::DeadlineExceeded,
    );
    assert!(status.message().contains("unary_timeout_ms"), "{status:?}");
    assert!(status.message().contains("500 ms"), "{status:?}");
    // Reads do not wait for the writer: the server goes on answering.
    c.list_channel_pairs(secretd::proto::ListChannelPairsRequest::default())
        .await
        .unwrap();
    stall.release().await;
    // The post may or may not have been committed after all; the retry settles it
    // exactly once.
    assert_eq!(post(&mut c, &stream, 1, b"slow").await.unwrap(), 1);
    assert_eq!(fetch_all(&mut c, &stream).await.len(), 1);
    server.stop().await;
}
