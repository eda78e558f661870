//! The real `secretd` binary under a client load: graceful SIGTERM (open streams end with
//! UNAVAILABLE, acknowledged posts are durable, exit 0), bounded memory for a subscriber
//! that stops reading, and for a client that floods ManageStream and never reads.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use secretd::proto::secret_service_client::SecretServiceClient;
use tonic::Code;

both_backends!(
    sigterm_ends_streams_with_unavailable_and_keeps_acknowledged_posts,
    a_stalled_subscriber_costs_bounded_memory
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manage_stream_flood_costs_bounded_memory_and_others_are_served() {
    flood(Backend::Sqlite).await
}

struct Proc {
    p: ServerProcess,
    dir: tempfile::TempDir,
    url: String,
}

async fn start(b: &Backend, dir: Option<tempfile::TempDir>) -> Proc {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let url = b.url(dir.path());
    let p = spawn_binary(
        &["serve", "--listen", "127.0.0.1:0", "--database-url", &url],
        &[
            ("SECRETD_JWT_SECRET", SECRET),
            ("SECRETD_SHUTDOWN_GRACE_SECS", "10"),
        ],
        dir.path(),
    )
    .await;
    Proc { p, dir, url }
}

async fn client(p: &Proc, user: u64) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.p.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    SecretServiceClient::with_interceptor(channel, Bearer(Some(token(user, 3600))))
}

fn sigterm(p: &ServerProcess) {
    let pid = p.child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

async fn sigterm_ends_streams_with_unavailable_and_keeps_acknowledged_posts(b: Backend) {
    let mut proc_ = start(&b, None).await;
    let owner = random_user();
    let mut c = client(&proc_, owner).await;
    let pair = new_pair(&mut c).await;
    let mut sub = Subscription::open(&mut c).await.unwrap();
    sub.manage(&[&pair.message_id], &[], &[]);
    assert!(matches!(sub.next().await, Event::CaughtUp(_)));
    // Posters keep posting on their own streams until the server goes away.
    let mut posters = Vec::new();
    for _ in 0..6 {
        let mut pc = client(&proc_, owner).await;
        let p = new_pair(&mut pc).await;
        posters.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for counter in 1.. {
                match post(&mut pc, &p.message_id, counter, b"durable?").await {
                    Ok(id) => acked.push((counter, id)),
                    Err(_) => break,
                }
            }
            (p.message_id, acked)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    sigterm(&proc_.p);
    // The open stream ends with UNAVAILABLE, so the client knows to resume by cursor.
    let end = loop {
        match sub.next_within(10).await {
            Ok(Some(Event::Message(_))) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    let exit = tokio::time::timeout(Duration::from_secs(15), proc_.p.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let took = t0.elapsed();
    // Well within the 10 s grace period: nothing held the shutdown up.
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    let mut results = Vec::new();
    for p in posters {
        results.push(p.await.unwrap());
    }
    assert!(
        results.iter().map(|(_, a)| a.len()).sum::<usize>() > 0,
        "posts were acknowledged"
    );
    // Every acknowledged post is there after a restart on the same data.
    let restarted = start(&b, Some(proc_.dir)).await;
    assert_eq!(restarted.url, proc_.url);
    let mut c = client(&restarted, owner).await;
    for (stream, acked) in results {
        let stored = fetch_all(&mut c, &stream).await;
        assert!(stored.len() >= acked.len());
        for (counter, id) in acked {
            let m = &stored[id as usize - 1];
            assert_eq!((m.event_id, m.message.as_ref().unwrap().id), (id, counter));
        }
        for (i, m) in stored.iter().enumerate() {
            assert_eq!(m.event_id, i as u64 + 1, "dense after restart");
        }
    }
    let mut r = restarted;
    sigterm(&r.p);
    assert!(r.p.child.wait().await.unwrap().success());
}

async fn a_stalled_subscriber_costs_bounded_memory(b: Backend) {
    let mut proc_ = start(&b, None).await;
    let pid = proc_.p.child.id().unwrap();
    let owner = random_user();
    let mut c = client(&proc_, owner).await;
    const STREAMS: usize = 4;
    const EACH: u64 = 1500;
    let mut pairs = Vec::new();
    for _ in 0..STREAMS {
        pairs.push(new_pair(&mut c).await);
    }
    let streams: Vec<String> = pairs.iter().map(|p| p.message_id.clone()).collect();
    let refs: Vec<&str> = streams.iter().map(|s| s.as_str()).collect();
    // Warm up (connections, caches, allocator) with the same traffic shape, then measure.
    let body = vec![0xa5u8; 4096];
    let warm = pairs.iter().map(|p| p.state_id.clone()).collect::<Vec<_>>();
    let mut tasks = Vec::new();
    for st in warm {
        let mut pc = client(&proc_, owner).await;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            post_all(&mut pc, &st, (0..300).map(|_| body.clone())).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut stalled = Subscription::open(&mut c).await.unwrap();
    stalled.manage(&refs, &[], &[]);
    for _ in 0..STREAMS {
        assert!(matches!(stalled.next().await, Event::CaughtUp(_)));
    }
    let before = rss_kib(pid);
    // 4 x 1500 x 4 KiB = 24 MiB posted while the subscriber reads nothing.
    let mut tasks = Vec::new();
    for st in streams.clone() {
        let mut pc = client(&proc_, owner).await;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            post_all(
                &mut pc,
                &st,
                (0..EACH).map(|i| [i.to_be_bytes().to_vec(), body.clone()].concat()),
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().len() as u64, EACH);
    }
    let after = rss_kib(pid);
    let grew = after.saturating_sub(before);
    eprintln!(
        "server RSS {before} KiB -> {after} KiB (+{grew} KiB) while 24 MiB waited for a stalled subscriber"
    );
    assert!(
        grew < 12 * 1024,
        "server RSS grew by {grew} KiB: events are being buffered per subscriber"
    );
    // Then it reads everything, per stream in order, nothing lost.
    let mut next = [1u64; STREAMS];
    let mut total = 0;
    while total < STREAMS as u64 * EACH {
        match stalled.next_within(30).await.unwrap().unwrap() {
            Event::Message(m) => {
                let i = streams.iter().position(|s| *s == m.stream_id).unwrap();
                assert_eq!(m.event_id, next[i]);
                assert_eq!(m.message.unwrap().message[..8], (next[i] - 1).to_be_bytes());
                next[i] += 1;
                total += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    sigterm(&proc_.p);
    assert!(proc_.p.child.wait().await.unwrap().success());
}

/// Largest request message the server decodes (`MAX_DECODE` in `service/router.rs`).
const MAX_REQUEST_BYTES: u64 = 256 * 1024;

async fn flood(b: Backend) {
    let proc_ = start(&b, None).await;
    let pid = proc_.p.child.id().unwrap();
    let settings = secretd::config::defaults();
    // What one call that sends and never reads may hold, from the configuration:
    // - the control queue plus the message being forwarded and the one being handled,
    //   each decoded at most twice its wire size;
    // - HTTP/2 receive buffers: the connection window (1 MiB, hyper's default, which
    //   covers the stream window) plus tonic's decode buffer of one message;
    // - the ready queue (`connection_buffer` frames of at most 64 KiB + framing) and
    //   HTTP/2's send buffer (400 KiB);
    // and 16 MiB for the allocator, tokio and the other user's calls.
    let queued = (secretd::service::streaming::CONTROL_QUEUE as u64 + 2) * 2 * MAX_REQUEST_BYTES;
    let h2 = 1024 * 1024 + MAX_REQUEST_BYTES;
    let ready = settings.connection_buffer as u64 * 66 * 1024 + 400 * 1024;
    let bound_kib = (queued + h2 + ready) / 1024 + 16 * 1024;

    let other = random_user();
    let mut oc = client(&proc_, other).await;
    let pair = new_pair(&mut oc).await;
    // Warm up with the other user's traffic shape before measuring.
    let mut counter = 0u64;
    for _ in 0..20 {
        counter += 1;
        post(&mut oc, &pair.message_id, counter, b"warm")
            .await
            .unwrap();
    }
    let before = rss_kib(pid);

    // The flooder: ManageStream messages with as many ids as one message may hold (each
    // an error the server must answer), sent as fast as HTTP/2 lets it; it never reads.
    let flooder = random_user();
    let mut fc = client(&proc_, flooder).await;
    let ids: Vec<String> = (0..settings.max_stream_ids_per_message.min(1000))
        .map(|i| format!("not-a-stream-id-{i:0>100}"))
        .collect();
    let message = secretd::proto::ManageStream {
        subscribe_to: ids,
        ..Default::default()
    };
    let flood = tokio_stream::iter(std::iter::repeat_with(move || message.clone()));
    let _unread = fc
        .stream_message_posting(flood)
        .await
        .expect("the call is accepted")
        .into_inner();

    // Meanwhile the other user is answered (a generous liveness bound, not a speed test).
    let t0 = Instant::now();
    let mut peak = before;
    let mut rounds = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        let round = async {
            counter += 1;
            post(&mut oc, &pair.message_id, counter, b"still served")
                .await
                .unwrap();
            let all = fetch_all(&mut oc, &pair.message_id).await;
            assert_eq!(all.len() as u64, counter);
            let mut sub = Subscription::open(&mut oc).await.unwrap();
            sub.manage(&[&pair.state_id], &[], &[]);
            assert!(matches!(sub.next().await, Event::CaughtUp(_)));
        };
        tokio::time::timeout(Duration::from_secs(10), round)
            .await
            .expect("another user's calls are answered during the flood");
        rounds += 1;
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_kib(pid));
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "server RSS {before} KiB -> peak {peak} KiB (+{grew} KiB, bound {bound_kib} KiB) during a \
         10 s ManageStream flood; the other user was served {rounds} rounds"
    );
    assert!(
        grew < bound_kib,
        "server RSS grew by {grew} KiB during the flood; the bound from the configuration is \
         {bound_kib} KiB"
    );

    // The server is still up and consistent.
    counter += 1;
    post(&mut oc, &pair.message_id, counter, b"after")
        .await
        .unwrap();
    assert_eq!(
        fetch_all(&mut oc, &pair.message_id).await.len() as u64,
        counter
    );
    // The flooder's HTTP/2 stream stays open (its client never reads, so it never
    // takes the final status): stop the server without waiting out the grace period.
    let mut p = proc_;
    p.p.child.kill().await.unwrap();
}
