//! A database outage in the middle of steady traffic, chaos-style: posters on a replica
//! whose path to Postgres goes silent (and later heals, leaving half-open connections
//! behind) retry as clients do; subscribers on that replica and on another one follow
//! the stream. Nothing acknowledged is lost, nothing is stored twice, and every
//! subscriber ends with every event once, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::common::*;
use secretd::proto::*;
use tonic::Code;

/// Posts `count` messages like a client: UNAVAILABLE → the same post again (it may have
/// been stored); a counter refusal → resync from the trailers, same body, next counter.
/// Returns (event id, body) of each acknowledged post.
async fn poster(
    mut c: Client,
    stream: String,
    who: usize,
    count: usize,
    unavailable: Arc<AtomicUsize>,
) -> Vec<(u64, Vec<u8>)> {
    let mut acked = Vec::new();
    let mut counter = 1;
    for i in 0..count {
        let body = format!("poster {who} post {i}").into_bytes();
        loop {
            match within(60, "a post", post(&mut c, &stream, counter, &body)).await {
                Ok(id) => {
                    acked.push((id, body));
                    counter += 1;
                    break;
                }
                Err(st) if st.code() == Code::Unavailable => {
                    unavailable.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(st) if st.code() == Code::FailedPrecondition => {
                    let head = st.metadata().get("secretd-head-counter").unwrap();
                    counter = head.to_str().unwrap().parse::<u64>().unwrap() + 1;
                }
                Err(other) => panic!("poster {who}: {other:?}"),
            }
        }
    }
    acked
}

/// Follows `stream` from the start until event `last`, reopening the call (and resuming
/// from the last event received) whenever it ends, as a client does. Returns the event
/// ids in the order received.
async fn follower(mut c: Client, stream: String, last: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = Vec::new();
    while ids.last().copied().unwrap_or(0) < last {
        let Ok(mut sub) = Subscription::open(&mut c).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        sub.manage(&[], &[], &[(&stream, ids.last().copied().unwrap_or(0))]);
        loop {
            let next = within(60, "the subscription", sub.rx.message()).await;
            match next {
                Ok(Some(StreamMessagePostingResponse {
                    event: Some(Event::Message(m)),
                })) => {
                    ids.push(m.event_id);
                    if m.event_id == last {
                        return ids;
                    }
                }
                Ok(Some(StreamMessagePostingResponse {
                    event: Some(Event::CaughtUp(_)),
                })) => {}
                Ok(Some(StreamMessagePostingResponse {
                    event: Some(Event::SubscriptionError(e)),
                })) if e.code == Code::Unavailable as i32 => break,
                Err(st) if st.code() == Code::Unavailable => break,
                other => panic!("follower: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_across_a_silent_database() {
    let Some(b) = Backend::postgres() else { return };
    let (proxy, a, other) = replicas_one_behind_proxy(&b).await;
    let owner = random_user();
    let mut on_other = other.client(owner).await;
    let pair = new_pair(&mut on_other).await;
    let st = pair.message_id.clone();
    const POSTERS: usize = 2;
    const EACH: usize = 40;
    const TOTAL: u64 = (POSTERS * EACH) as u64;
    let unavailable = Arc::new(AtomicUsize::new(0));
    let mut posters = Vec::new();
    for who in 0..POSTERS {
        let u = random_user();
        invite(&mut on_other, &mut other.client(u).await, &pair, u).await;
        let task = poster(
            a.client(u).await,
            st.clone(),
            who,
            EACH,
            unavailable.clone(),
        );
        posters.push(tokio::spawn(task));
    }
    let followers = [
        tokio::spawn(follower(a.client(owner).await, st.clone(), TOTAL)),
        tokio::spawn(follower(other.client(owner).await, st.clone(), TOTAL)),
    ];

    // A third of the way in, A's path to Postgres goes silent until the posters have
    // met it, then heals (the connections open at that moment stay half-open).
    let mut head = async || {
        let page = on_other.fetch_messages(FetchMessagesRequest {
            stream_id: st.clone(),
            ..Default::default()
        });
        page.await.unwrap().into_inner().head_event_id
    };
    while head().await < TOTAL / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.stall_all();
    within(60, "the posters meeting the outage", async {
        while unavailable.load(Ordering::SeqCst) < POSTERS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    proxy.heal();

    let mut acked: HashMap<u64, Vec<u8>> = HashMap::new();
    for p in posters {
        for (id, body) in p.await.unwrap() {
            assert!(
                acked.insert(id, body).is_none(),
                "event {id} acknowledged twice"
            );
        }
    }
    assert_eq!(acked.len() as u64, TOTAL);
    // Stored: exactly the acknowledged posts, dense, counters increasing.
    let all = fetch_all(&mut on_other, &st).await;
    assert_eq!(
        all.len() as u64,
        TOTAL,
        "nothing lost, nothing stored twice"
    );
    let mut last_counter = 0;
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.event_id, i as u64 + 1);
        let msg = m.message.as_ref().unwrap();
        assert!(msg.id > last_counter);
        last_counter = msg.id;
        assert_eq!(acked.get(&m.event_id), Some(&msg.message));
    }
    // Each subscriber, on either replica, saw every event once and in order.
    let expected: Vec<u64> = (1..=TOTAL).collect();
    for f in followers {
        assert_eq!(f.await.unwrap(), expected);
    }
    drop(proxy);
    a.stop().await;
    other.stop().await;
}
