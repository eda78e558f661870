//! The change listener's watchdog: a listener connection that goes half-open (never an
//! error, never a notification) is replaced within `listener_watchdog_ms`, and live
//! delivery from another replica resumes with the gap repaired.

use super::*;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_open_listener_is_replaced_and_live_delivery_resumes() {
    let Some(b) = Backend::postgres() else { return };
    let (proxy, a, other) = replicas_one_behind_proxy(&b).await;
    let user = random_user();
    let mut on_other = other.client(user).await;
    let pair = new_pair(&mut on_other).await;
    let st = pair.message_id.clone();
    // A live subscriber on A; posts on the other replica reach it through A's listener.
    let mut sub = Subscription::open(&mut a.client(user).await).await.unwrap();
    sub.manage(&[&st], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(c) if c.head_event_id == 0));
    assert_eq!(post(&mut on_other, &st, 1, b"one").await.unwrap(), 1);
    expect_message(&mut sub, 1).await;

    // Every connection A has to Postgres goes silent for good, the listener's included;
    // new connections work. Nothing reports an error to A.
    proxy.stall_existing();
    for k in 2..=4 {
        assert_eq!(post(&mut on_other, &st, k, b"while").await.unwrap(), k);
    }
    // The watchdog notices within listener_watchdog_ms, a new listener repairs the gap...
    for k in 2..=4 {
        expect_message(&mut sub, k).await;
    }
    // ...and live delivery goes on through it.
    assert_eq!(post(&mut on_other, &st, 5, b"after").await.unwrap(), 5);
    expect_message(&mut sub, 5).await;
    assert!(sub.quiet_for(300).await, "each event once");
    drop(proxy);
    a.stop().await;
    other.stop().await;
}
