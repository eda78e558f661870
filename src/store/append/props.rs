//! Property tests: [`plan_batch`](super::plan_batch) against the model in
//! [`check`](super::check), on generated streams and batches (small alphabets and close
//! counters, so retries, taken counters, gaps and in-batch races are common; and a
//! variant with counters and gaps anywhere up to `i64::MAX`).

use bytes::Bytes;
use proptest::prelude::*;
use uuid::Uuid;

use super::check::{Expected, History, Scenario, check, outcomes};
use crate::store::AppendRequest;

/// Three streams that exist, and one that does not.
fn stream(i: usize) -> Uuid {
    Uuid::from_u128(i as u128 + 1)
}

/// A history: counters rising by 1 ..= `step` from 0.
fn history(i: usize, step: i64) -> impl Strategy<Value = History> {
    let event = (1..=step, 1i64..=3, prop::sample::select(vec!["a", "b"]));
    (prop::collection::vec(event, 0..6), 0i64..3).prop_map(move |(events, member_epoch)| {
        let mut counter = 0;
        let events = events
            .into_iter()
            .map(|(d, sender, body)| {
                counter += d;
                (counter, sender, body.as_bytes().to_vec())
            })
            .collect();
        History {
            stream: stream(i),
            events,
            member_epoch,
        }
    })
}

/// A batch of posts whose counters are `offset` away from their stream's committed head.
fn scenario(
    offsets: impl Strategy<Value = i64> + Clone + 'static,
    gaps: impl Strategy<Value = i64>,
) -> impl Strategy<Value = Scenario> {
    let post = (
        0usize..4,
        1i64..=3,
        offsets,
        prop::sample::select(vec!["a", "b"]),
    );
    let outsider = (0usize..4, 1i64..=3);
    (
        (history(0, 3), history(1, 3), history(2, 9)),
        prop::collection::vec(outsider, 0..2),
        prop::collection::vec(post, 0..24),
        gaps,
    )
        .prop_map(|((h0, h1, h2), outsiders, posts, max_gap)| {
            let streams = vec![h0, h1, h2];
            let head = |i: usize| {
                streams
                    .get(i)
                    .and_then(|h| h.events.last())
                    .map_or(0, |e| e.0)
            };
            let batch = posts
                .into_iter()
                .map(|(i, sender, offset, body)| AppendRequest {
                    stream_id: stream(i),
                    sender,
                    sender_origin: None,
                    counter: head(i).saturating_add(offset).max(1),
                    body: Bytes::from_static(body.as_bytes()),
                })
                .collect();
            let outsiders = outsiders.into_iter().map(|(i, u)| (stream(i), u)).collect();
            Scenario {
                streams,
                outsiders,
                batch,
                max_gap,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn plan_batch_follows_the_counter_rules(s in scenario(-10i64..=12, 1i64..=6)) {
        if let Err(why) = check(&s) {
            prop_assert!(false, "{why}");
        }
    }

    #[test]
    fn plan_batch_follows_the_counter_rules_at_any_magnitude(
        s in scenario(prop_oneof![-4i64..=4, any::<i64>()], prop_oneof![1i64..=4, 1..=i64::MAX])
    ) {
        if let Err(why) = check(&s) {
            prop_assert!(false, "{why}");
        }
    }

    /// Group commit answers as if the posts came one at a time: planning the batch
    /// gives every post what planning each alone gives it, applied in the order the
    /// batch is applied in.
    #[test]
    fn a_batch_answers_as_its_posts_one_at_a_time(s in scenario(-6i64..=8, 1i64..=4)) {
        let whole = outcomes(&s).map_err(TestCaseError::fail)?;
        let mut order: Vec<usize> = (0..s.batch.len()).collect();
        order.sort_by_key(|&i| (s.batch[i].stream_id, s.batch[i].counter));
        let mut streams = s.streams.clone();
        for i in order {
            let p = &s.batch[i];
            let single = Scenario { streams: streams.clone(), batch: vec![p.clone()], ..s.clone() };
            let one = outcomes(&single).map_err(TestCaseError::fail)?.remove(0);
            prop_assert_eq!(&one, &whole[i]);
            if let Expected::New(_) = one {
                let h = streams.iter_mut().find(|h| h.stream == p.stream_id).unwrap();
                h.events.push((p.counter, p.sender, p.body.to_vec()));
            }
        }
    }
}
