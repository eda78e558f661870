//! Unit tests of catch-up ordering (deterministic: the interleavings are set up by hand).

use std::sync::Arc;

use prost::Message;
use uuid::Uuid;

use super::catchup::Next;
use super::{Call, CallInner, Sub};
use crate::hub::tests::event;
use crate::hub::{Frame, Hub};
use crate::proto::StreamMessagePostingResponse;
use crate::proto::stream_message_posting_response::Event;

/// What a call queued, decoded: event ids, and CaughtUp as `-head`.
fn drain(call: &Call) -> Vec<i64> {
    call.lock()
        .ready
        .drain(..)
        .map(|f| {
            match StreamMessagePostingResponse::decode(f.message())
                .unwrap()
                .event
            {
                Some(Event::Message(m)) => m.event_id as i64,
                Some(Event::CaughtUp(c)) => -(c.head_event_id as i64),
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect()
}

/// A hub with `stream` published up to `head` (contiguously from `from`), and a call
/// holding a subscription at `cursor` that catches up to `target`.
async fn setup(from: i64, head: i64, cursor: i64, target: i64) -> (Arc<Hub>, Call, Uuid) {
    let hub = Hub::new(256, 1 << 20, crate::shutdown::channel().1);
    let guard = hub.register(crate::domain::UserId::trusted(1), 10).unwrap();
    let stream = Uuid::new_v4();
    let slot = hub.watch(guard.connection(), stream);
    hub.publish(
        stream,
        (from..=head).map(|i| Frame::encode(&event(stream, i), 0)),
    );
    let call = Call {
        inner: std::sync::Mutex::new(CallInner::default()),
        room: tokio::sync::Notify::new(),
        cap: 64,
    };
    call.lock().subs.insert(
        stream,
        Sub {
            name: stream.to_string(),
            slot,
            cursor,
            db_head: target,
            verified_epoch: 0,
            catch_up_to: Some(target),
            history_starts_at: 0,
            live: false,
        },
    );
    (hub, call, stream)
}

fn run(call: &Call, stream: Uuid) {
    loop {
        match call.step(stream) {
            Next::Again => {}
            Next::Live => return,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_live_subscription_says_caught_up_before_events_committed_after_its_read() {
    // The subscriber read head 5; event 6 was committed and published before its first
    // catch-up step.
    let (_hub, call, stream) = setup(6, 6, 5, 5).await;
    run(&call, stream);
    assert_eq!(drain(&call), vec![-5, 6]);
}

#[tokio::test]
async fn a_resume_says_caught_up_at_the_head_it_was_handled_at() {
    // Resumed after 2 when the head was 5; events 6 and 7 came in before the catch-up.
    let (_hub, call, stream) = setup(1, 7, 2, 5).await;
    run(&call, stream);
    assert_eq!(drain(&call), vec![3, 4, 5, -5, 6, 7]);
}
