//! The counter rules, applied to a batch of posts inside the append transaction.
//!
//! Both backends lock the batch's stream rows, load what this needs, call
//! [`plan_batch`], then insert the planned rows and move the heads in the same
//! transaction. Keeping the rules in one pure function keeps the backends identical.

use std::collections::HashMap;

pub mod check;
#[cfg(test)]
mod props;

use uuid::Uuid;

use super::{AppendRequest, Appended, StoredEvent, stream_denied};
use crate::error::{Error, Result};

/// A stream's head row as read under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadRow {
    /// Newest event id.
    pub head_event_id: i64,
    /// Newest accepted ratchet counter.
    pub head_counter: i64,
    /// Membership epoch (bumped when someone leaves or is removed).
    pub member_epoch: i64,
}

/// An already stored event, for recognising exact retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingEvent {
    /// Its id.
    pub event_id: i64,
    /// Its sender.
    pub sender: i64,
    /// Its ciphertext.
    pub body: Vec<u8>,
}

/// What to write and what to answer.
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// One outcome per post, in batch order.
    pub outcomes: Vec<Result<Appended>>,
    /// Rows to insert, in event-id order per stream.
    pub inserts: Vec<StoredEvent>,
    /// New heads: (stream, head_event_id, head_counter) for every stream that moved.
    pub heads: Vec<(Uuid, i64, i64)>,
}

/// The (stream, counter) pairs of posts whose counter is at or below the committed head:
/// only these can be retries, so only these need a lookup of stored events.
pub fn lookups_needed(batch: &[AppendRequest], heads: &HashMap<Uuid, HeadRow>) -> Vec<(Uuid, i64)> {
    let mut out: Vec<(Uuid, i64)> = batch
        .iter()
        .filter(|p| {
            heads
                .get(&p.stream_id)
                .is_some_and(|h| p.counter <= h.head_counter)
        })
        .map(|p| (p.stream_id, p.counter))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Applies the counter rules to the posts of a batch.
///
/// Posts to one stream are applied in counter order, ties (retries) in arrival order.
/// Every post of a batch was in flight at the same time, so this is one of the arrival
/// orders that could have happened; it spares clients that race on a stream the refusals
/// an unlucky queue order would cause (a post overtaken by a larger counter must be
/// re-sent). Outcomes are returned in batch order.
///
/// `heads` holds the locked head rows (a missing stream is unknown), `is_member` answers
/// whether a sender may post to a stream, `existing` holds the stored events found by
/// [`lookups_needed`].
pub fn plan_batch(
    batch: &[AppendRequest],
    heads: &HashMap<Uuid, HeadRow>,
    is_member: impl Fn(Uuid, i64) -> bool,
    existing: &HashMap<(Uuid, i64), ExistingEvent>,
    max_gap: i64,
    now: i64,
) -> BatchPlan {
    let mut plan = BatchPlan::default();
    let mut moving: HashMap<Uuid, HeadRow> = HashMap::new();
    // (stream, counter) -> index into plan.inserts, for retries inside one batch.
    let mut fresh: HashMap<(Uuid, i64), usize> = HashMap::new();
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| (batch[i].stream_id, batch[i].counter)); // stable: ties keep arrival order
    let mut outcomes: Vec<Option<Result<Appended>>> = vec![None; batch.len()];
    for i in order {
        let post = &batch[i];
        let Some(committed) = heads.get(&post.stream_id) else {
            outcomes[i] = Some(Err(stream_denied()));
            continue;
        };
        if !is_member(post.stream_id, post.sender) {
            outcomes[i] = Some(Err(stream_denied()));
            continue;
        }
        let head = moving.entry(post.stream_id).or_insert(*committed);
        let outcome = if post.counter <= head.head_counter {
            let key = (post.stream_id, post.counter);
            let earlier = fresh
                .get(&key)
                .map(|&i| {
                    let e = &plan.inserts[i];
                    (e.event_id, e.sender, &e.body[..])
                })
                .or_else(|| {
                    existing
                        .get(&key)
                        .map(|e| (e.event_id, e.sender, &e.body[..]))
                });
            match earlier {
                Some((event_id, sender, body))
                    if sender == post.sender && body == &post.body[..] =>
                {
                    Ok(Appended::Retry { event_id })
                }
                // Taken by another post (other bytes or sender), or never used: the same
                // refusal and the same remedy (resync, advance, re-encrypt, retry). Never
                // ALREADY_EXISTS: client libraries often read that code as success, and
                // the message would be lost.
                _ => Err(rejected(post.counter, head, max_gap)),
            }
        } else if post.counter - head.head_counter > max_gap {
            Err(rejected(post.counter, head, max_gap))
        } else {
            head.head_event_id += 1;
            head.head_counter = post.counter;
            let event = StoredEvent {
                stream_id: post.stream_id,
                event_id: head.head_event_id,
                counter: post.counter,
                sender: post.sender,
                sender_origin: post.sender_origin.clone(),
                posted_at: now,
                body: post.body.clone(),
            };
            fresh.insert((post.stream_id, post.counter), plan.inserts.len());
            plan.inserts.push(event.clone());
            Ok(Appended::New {
                event,
                member_epoch: head.member_epoch,
            })
        };
        outcomes[i] = Some(outcome);
    }
    plan.outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every post has an outcome"))
        .collect();
    let mut heads_out: Vec<(Uuid, i64, i64)> = moving
        .into_iter()
        .filter(|(id, h)| {
            heads
                .get(id)
                .is_some_and(|c| c.head_event_id != h.head_event_id)
        })
        .map(|(id, h)| (id, h.head_event_id, h.head_counter))
        .collect();
    heads_out.sort_unstable();
    plan.heads = heads_out;
    plan
}

fn rejected(counter: i64, head: &HeadRow, max_gap: i64) -> Error {
    Error::CounterRejected {
        counter: counter as u64,
        head_counter: head.head_counter as u64,
        head_event_id: head.head_event_id as u64,
        max_gap: max_gap as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn post(stream: Uuid, sender: i64, counter: i64, body: &'static [u8]) -> AppendRequest {
        AppendRequest {
            stream_id: stream,
            sender,
            sender_origin: None,
            counter,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn counter_rules_within_a_batch() {
        let s = Uuid::new_v4();
        let heads = HashMap::from([(
            s,
            HeadRow {
                head_event_id: 4,
                head_counter: 10,
                member_epoch: 2,
            },
        )]);
        let existing = HashMap::from([(
            (s, 10),
            ExistingEvent {
                event_id: 4,
                sender: 1,
                body: b"ten".to_vec(),
            },
        )]);
        let batch = [
            post(s, 1, 11, b"a"),     // ok -> 5
            post(s, 1, 11, b"a"),     // retry within the batch -> 5
            post(s, 2, 11, b"a"),     // same counter, other sender: refused like any other
            post(s, 1, 10, b"ten"),   // retry of a committed event -> 4
            post(s, 1, 9, b"nine"),   // never used, below head
            post(s, 1, 11 + 4, b"b"), // ok -> 6 (gap 4)
            post(s, 1, 15 + 5, b"c"), // gap 5 > max 4
            post(s, 3, 16, b"d"),     // not a member
        ];
        let plan = plan_batch(&batch, &heads, |_, u| u != 3, &existing, 4, 77);
        let ids: Vec<_> = plan
            .outcomes
            .iter()
            .map(|o| o.as_ref().map(|a| a.event_id()).map_err(|e| e.code()))
            .collect();
        use tonic::Code;
        assert_eq!(
            ids,
            vec![
                Ok(5),
                Ok(5),
                Err(Code::FailedPrecondition),
                Ok(4),
                Err(Code::FailedPrecondition),
                Ok(6),
                Err(Code::FailedPrecondition),
                Err(Code::PermissionDenied)
            ]
        );
        // A counter taken inside the batch names the head as it stands after the posts
        // applied before it, like every other counter refusal.
        assert!(matches!(
            plan.outcomes[2],
            Err(Error::CounterRejected {
                counter: 11,
                head_counter: 11,
                head_event_id: 5,
                ..
            })
        ));
        assert_eq!(plan.inserts.len(), 2);
        assert_eq!(plan.heads, vec![(s, 6, 15)]);
        assert!(matches!(
            plan.outcomes[0],
            Ok(Appended::New {
                member_epoch: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_batch_applies_each_stream_in_counter_order() {
        let (s, t) = (Uuid::new_v4(), Uuid::new_v4());
        let row = HeadRow {
            head_event_id: 4,
            head_counter: 10,
            member_epoch: 0,
        };
        let heads = HashMap::from([(s, row), (t, row)]);
        // Arrival order 13, 12, 11 (and an interleaved stream): all accepted, ids by counter.
        let batch = [
            post(s, 1, 13, b"c"),
            post(t, 1, 11, b"x"),
            post(s, 1, 12, b"b"),
            post(s, 1, 11, b"a"),
            post(s, 1, 12, b"b"),
        ];
        let plan = plan_batch(&batch, &heads, |_, _| true, &HashMap::new(), 1024, 0);
        let ids: Vec<i64> = plan
            .outcomes
            .iter()
            .map(|o| o.as_ref().unwrap().event_id())
            .collect();
        assert_eq!(ids, vec![7, 5, 6, 5, 6]);
        assert!(matches!(
            plan.outcomes[4],
            Ok(Appended::Retry { event_id: 6 })
        ));
        let stored: Vec<(i64, &[u8])> = plan
            .inserts
            .iter()
            .filter(|e| e.stream_id == s)
            .map(|e| (e.event_id, &e.body[..]))
            .collect();
        assert_eq!(stored, vec![(5, &b"a"[..]), (6, b"b"), (7, b"c")]);
    }

    #[test]
    fn unknown_stream_is_denied_and_leaves_no_head() {
        let s = Uuid::new_v4();
        let plan = plan_batch(
            &[post(s, 1, 1, b"x")],
            &HashMap::new(),
            |_, _| true,
            &HashMap::new(),
            10,
            0,
        );
        assert!(plan.inserts.is_empty() && plan.heads.is_empty());
        assert_eq!(
            plan.outcomes[0].as_ref().unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
}
