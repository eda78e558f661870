//! Retention seen from the reference client: when the room's retention removed events a
//! device never read, it says "history before … was removed by the room's retention"
//! (a `HistoryRemoved` notice) and decrypts what follows, its ratchet advancing past the
//! deleted counters — further than its usual gap limit allows.

use std::time::{Duration, Instant};

use secretd_client::device::{Content, Incoming, StreamKind};
use secretd_client::proto::secret as pb;

use crate::chat::texts;
use crate::common::{Backend, Server, shared_room};

crate::on_both_stores!(retention_notice_and_decrypting_past_the_horizon);

async fn retention_notice_and_decrypting_past_the_horizon(backend: Backend) {
    let server = Server::start_with(backend, |s| s.retention_sweep_ms = 10).await;
    let (alice_id, mut alice) = server.new_user("alice pw").await;
    let (bob_id, mut bob) = server.new_user("bob pw").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    alice.send_text(&room, "before").await.expect("send");
    bob.sync_room(&room).await.expect("sync");
    // A gap limit far below the counters retention will remove: only the horizon lets
    // the ratchet jump.
    bob.max_gap = 4;

    let api = server.api(alice_id).await;
    let r = &alice.state().rooms[&room];
    let (pair_id, stream) = (r.pair_id.clone(), r.message.stream_id.clone());
    api.stub()
        .set_retention(pb::SetRetentionRequest {
            pair_id,
            max_age_secs: 0,
            max_events: 3,
        })
        .await
        .expect("the owner sets retention");
    for i in 0..20 {
        alice
            .send_text(&room, &format!("m{i}"))
            .await
            .expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let head = loop {
        let page = api
            .fetch_messages_page(&stream, 0, 100)
            .await
            .expect("fetch");
        if page.history_starts_at > 0 && page.messages.len() == 3 {
            break page.head_event_id;
        }
        assert!(
            Instant::now() < deadline,
            "the sweeper did not run: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let got = bob.sync_room(&room).await.expect("sync past the horizon");
    let messages: Vec<Incoming> = got
        .into_iter()
        .filter(|e| e.stream == StreamKind::Message)
        .collect();
    assert!(
        matches!(messages[0].content, Ok(Content::HistoryRemoved)),
        "the notice comes first: {messages:?}"
    );
    assert_eq!(
        messages[0].event_id,
        head - 2,
        "history starts at the first kept event"
    );
    assert_eq!(texts(&messages[1..]), ["m17", "m18", "m19"]);
    // And it goes on decrypting, with its usual gap limit again.
    alice.send_text(&room, "after").await.expect("send");
    let got = bob.sync_room(&room).await.expect("sync");
    assert_eq!(texts(&got), ["after"]);
    server.stop().await;
}
