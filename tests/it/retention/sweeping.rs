//! The sweeper running during concurrent posts and subscriptions loses nothing it
//! should keep: every post acknowledged once, subscribers see ids only grow with every
//! jump over deleted events signalled by a CaughtUp, and the stream settles on its last
//! `max_events` — on SQLite and Postgres.

use std::time::{Duration, Instant};

use super::{ids, page, policy, sweeping_server, wait_for_horizon};
use crate::common::*;

both_backends!(retention_sweeping_during_posts_and_subscriptions_loses_nothing);

/// Everything a subscription receives up to the event `last`.
async fn read_to(mut sub: Subscription, last: u64) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let e = sub
            .next_within(60)
            .await
            .expect("stream ok")
            .expect("stream open");
        let done = matches!(&e, Event::Message(m) if m.event_id == last);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

/// Checks what a subscriber saw: ids only grow, and every jump over deleted events is
/// followed (before the next jump) by a CaughtUp whose `history_starts_at` is where the
/// jump landed — a signalled horizon, never a silent gap.
fn check_no_silent_gap(seen: &[Event], stream: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut unexplained: Option<u64> = None;
    for e in seen {
        match e {
            Event::Message(m) => {
                let prev = ids.last().copied().unwrap_or(0);
                assert!(m.event_id > prev, "ids go back: {prev} then {}", m.event_id);
                if m.event_id != prev + 1 {
                    assert!(unexplained.is_none(), "two jumps without a horizon between");
                    unexplained = Some(m.event_id);
                }
                ids.push(m.event_id);
            }
            Event::CaughtUp(c)
                if c.stream_id == stream
                    && c.history_starts_at > 0
                    && unexplained == Some(c.history_starts_at) =>
            {
                unexplained = None;
            }
            _ => {}
        }
    }
    assert_eq!(unexplained, None, "a gap no CaughtUp explained");
    ids
}

async fn retention_sweeping_during_posts_and_subscriptions_loses_nothing(b: Backend) {
    const POSTERS: u64 = 3;
    const EACH: u64 = 300;
    const TOTAL: u64 = POSTERS * EACH;
    let s = sweeping_server(b, 7).await;
    let owner = random_user();
    let mut co = s.client(owner).await;
    let pair = new_pair(&mut co).await;
    co.set_retention(policy(&pair, 0, 50)).await.unwrap();
    let stream = pair.message_id.clone();

    // A live subscriber from the start, and one resuming from 0 part-way through, each
    // reading as the events come.
    let mut live = Subscription::open(&mut s.client(owner).await)
        .await
        .unwrap();
    live.manage(&[&stream], &[], &[]);
    assert!(matches!(live.next().await, Event::CaughtUp(_)));
    let live = tokio::spawn(read_to(live, TOTAL));
    let mut posters = Vec::new();
    for p in 0..POSTERS {
        let mut c = s.client(owner).await;
        let stream = stream.clone();
        posters.push(tokio::spawn(async move {
            let bodies = (0..EACH).map(move |i| format!("{p}-{i}").into_bytes());
            post_all(&mut c, &stream, bodies).await
        }));
    }
    let mut late_client = s.client(owner).await;
    wait_for_head(&mut late_client, &stream, TOTAL / 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while late_client
        .fetch_messages(page(&stream, 0, 0, 1))
        .await
        .unwrap()
        .into_inner()
        .history_starts_at
        == 0
    {
        assert!(Instant::now() < deadline, "the sweeper never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late = Subscription::open(&mut late_client).await.unwrap();
    late.manage(&[], &[], &[(&stream, 0)]);
    let late = tokio::spawn(read_to(late, TOTAL));

    let mut acked = Vec::new();
    for p in posters {
        acked.extend(p.await.unwrap());
    }
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every post acknowledged once"
    );

    let live = check_no_silent_gap(&live.await.unwrap(), &stream);
    assert_eq!(live[0], 1, "the live subscriber saw the first event");
    let late = check_no_silent_gap(&late.await.unwrap(), &stream);
    assert!(
        late[0] > 1,
        "the late subscriber started at a horizon: {}",
        late[0]
    );
    // The sweeper settles on the last 50, nothing it should keep lost.
    let kept = wait_for_horizon(&mut co, &stream, TOTAL - 49).await;
    assert_eq!(
        ids(&kept.messages),
        (TOTAL - 49..=TOTAL).collect::<Vec<_>>()
    );
    s.stop().await;
}
