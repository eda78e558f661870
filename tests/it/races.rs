//! Races on purpose: many concurrent posters on one stream and on many streams, through
//! the real server, each behaving like a client (on a refused counter: fetch what it
//! missed, advance, re-post; sometimes re-send an acknowledged post as a network retry
//! would). Afterwards every stream must have dense ids, strictly increasing counters,
//! every acknowledged post exactly once, and nothing else.

use std::collections::{HashMap, HashSet};

use crate::common::*;
use secretd::proto::FetchMessagesRequest;
use tonic::Code;

both_backends!(many_posters_one_stream, many_posters_many_streams);

/// (event id, counter, body) of an acknowledged post.
type Ack = (u64, u64, Vec<u8>);

async fn poster(mut c: Client, stream: String, who: usize, posts: usize) -> Vec<Ack> {
    let mut acked = Vec::new();
    let mut counter = 1u64;
    let mut seen_event = 0u64; // how far this poster has read the stream
    let mut refusals = 0usize;
    for seq in 0..posts {
        let body = format!("poster {who} post {seq}").into_bytes();
        loop {
            match post(&mut c, &stream, counter, &body).await {
                Ok(event_id) => {
                    acked.push((event_id, counter, body.clone()));
                    // Sometimes the acknowledgement "got lost" and the client retries.
                    if seq % 5 == 0 {
                        assert_eq!(
                            post(&mut c, &stream, counter, &body).await.unwrap(),
                            event_id
                        );
                    }
                    counter += 1;
                    break;
                }
                // Every counter refusal is FAILED_PRECONDITION with the head in the
                // trailers (a counter taken by another poster included).
                Err(st) if st.code() == Code::FailedPrecondition => {
                    refusals += 1;
                    assert!(refusals < 100_000, "poster {who} starves");
                    if who.is_multiple_of(2) {
                        // Resync from the head named in the trailers.
                        let head: u64 = st
                            .metadata()
                            .get("secretd-head-counter")
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        counter = head + 1;
                    } else {
                        // Fetch what was missed and advance past it.
                        loop {
                            let page = c
                                .fetch_messages(FetchMessagesRequest {
                                    stream_id: stream.clone(),
                                    after_event_id: seen_event,
                                    before_event_id: 0,
                                    limit: 1000,
                                })
                                .await
                                .unwrap()
                                .into_inner();
                            if let Some(last) = page.messages.last() {
                                seen_event = last.event_id;
                                counter = counter.max(last.message.as_ref().unwrap().id + 1);
                            }
                            if !page.has_more {
                                break;
                            }
                        }
                    }
                }
                Err(other) => panic!("poster {who}: unexpected {other:?}"),
            }
        }
    }
    acked
}

async fn check_stream(c: &mut Client, stream: &str, acked: &[Ack]) {
    let all = fetch_all(c, stream).await;
    assert_eq!(
        all.len(),
        acked.len(),
        "every acknowledged post stored once, nothing else"
    );
    let mut last_counter = 0;
    let mut bodies = HashSet::new();
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.event_id, i as u64 + 1, "dense event ids");
        let msg = m.message.as_ref().unwrap();
        assert!(
            msg.id > last_counter,
            "counters strictly increase: {} after {last_counter}",
            msg.id
        );
        last_counter = msg.id;
        assert!(bodies.insert(msg.message.clone()), "duplicate event");
    }
    let by_id: HashMap<u64, (u64, Vec<u8>)> = all
        .iter()
        .map(|m| {
            (
                m.event_id,
                (
                    m.message.as_ref().unwrap().id,
                    m.message.as_ref().unwrap().message.clone(),
                ),
            )
        })
        .collect();
    for (event_id, counter, body) in acked {
        assert_eq!(
            by_id.get(event_id),
            Some(&(*counter, body.clone())),
            "ack of event {event_id} matches the stored event"
        );
    }
}

async fn many_posters_one_stream(b: Backend) {
    let s = TestServer::start(b).await;
    let owner = random_user();
    let mut co = s.client(owner).await;
    let pair = new_pair(&mut co).await;
    const POSTERS: usize = 16;
    const POSTS: usize = 25;
    let mut users = vec![owner];
    for _ in 1..POSTERS {
        let u = random_user();
        let mut cu = s.client(u).await;
        invite(&mut co, &mut cu, &pair, u).await;
        users.push(u);
    }
    let mut tasks = Vec::new();
    for (who, &u) in users.iter().enumerate() {
        let c = s.client(u).await;
        tasks.push(tokio::spawn(poster(c, pair.message_id.clone(), who, POSTS)));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), POSTERS * POSTS);
    check_stream(&mut co, &pair.message_id, &acked).await;
    s.stop().await;
}

async fn many_posters_many_streams(b: Backend) {
    // Several group-commit writers (Postgres; SQLite always has one), so streams are
    // sharded over concurrent transactions.
    let s = TestServer::start_with(b, |st| st.commit_writers = 3).await;
    const STREAMS: usize = 6;
    const POSTERS: usize = 6;
    const POSTS: usize = 15;
    let mut tasks = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let owner = random_user();
        let mut co = s.client(owner).await;
        let pair = new_pair(&mut co).await;
        let mut users = vec![owner];
        for _ in 1..POSTERS {
            let u = random_user();
            let mut cu = s.client(u).await;
            invite(&mut co, &mut cu, &pair, u).await;
            users.push(u);
        }
        // Half the posters write the message stream, half the state stream.
        let mut per_stream = vec![Vec::new(), Vec::new()];
        for (who, &u) in users.iter().enumerate() {
            let stream = if who % 2 == 0 {
                pair.message_id.clone()
            } else {
                pair.state_id.clone()
            };
            per_stream[who % 2].push(tokio::spawn(poster(s.client(u).await, stream, who, POSTS)));
        }
        tasks.push(per_stream);
        streams.push((owner, pair));
    }
    for (per_stream, (owner, pair)) in tasks.into_iter().zip(streams) {
        let mut co = s.client(owner).await;
        for (handles, stream) in per_stream
            .into_iter()
            .zip([&pair.message_id, &pair.state_id])
        {
            let mut acked = Vec::new();
            for h in handles {
                acked.extend(h.await.unwrap());
            }
            check_stream(&mut co, stream, &acked).await;
        }
    }
    s.stop().await;
}
