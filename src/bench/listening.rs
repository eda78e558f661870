//! Scenarios with subscribers: `fanout` and `idle`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use secretd::proto::stream_message_posting_response::Event;
use secretd::proto::{ManageStream, PostKeyRequest, SendInviteRequest};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::Args;
use crate::cpu::Cpu;
use crate::support::*;

/// Gives `count` new users a key and membership of `pair`, returning their ids.
async fn members(
    pool: &Arc<Pool>,
    owner: u64,
    pair: &str,
    count: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(count);
    let mut ids: Vec<u64> = (0..count).map(|_| pool.new_user()).collect();
    while !ids.is_empty() {
        let chunk: Vec<u64> = ids.drain(..ids.len().min(64)).collect();
        let mut tasks = Vec::new();
        for (i, user) in chunk.into_iter().enumerate() {
            let (pool, pair) = (pool.clone(), pair.to_string());
            tasks.push(tokio::spawn(async move {
                pool.client(user, i)
                    .post_key(PostKeyRequest {
                        key_data: PUBLIC_KEY.to_vec(),
                    })
                    .await?;
                pool.client(owner, i)
                    .send_invite(SendInviteRequest {
                        pair_id: pair,
                        user_id: user,
                        homeserver: String::new(),
                        invite: b"bench".to_vec(),
                        ..Default::default()
                    })
                    .await?;
                Ok::<_, tonic::Status>(user)
            }));
        }
        for t in tasks {
            out.push(t.await??);
        }
    }
    Ok(out)
}

/// Opens a StreamMessagePosting call with one ManageStream.
pub async fn open_call(
    c: &mut Client,
    manage: ManageStream,
) -> anyhow::Result<(
    mpsc::UnboundedSender<ManageStream>,
    tonic::Streaming<secretd::proto::StreamMessagePostingResponse>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(manage).ok();
    let stream = c
        .stream_message_posting(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, stream))
}

/// `fanout`: one stream, M live subscribers (each its own user and call), posts at
/// `--rate` per second (0 = one poster as fast as it can); subscribers measure
/// post→receive latency and check they saw every event in order.
pub async fn fanout(args: &Args) -> anyhow::Result<Report> {
    let m = args.subscribers.unwrap_or(1000).max(1);
    let mut conn_args = args.clone();
    conn_args.connections = args.connections.max(m.div_ceil(100));
    let pool = Pool::connect(&conn_args).await?;
    let owner = pool.new_user();
    let mut oc = pool.client(owner, 0);
    let pair = new_pair(&mut oc).await?;
    let users = members(&pool, owner, &pair.pair_id, m).await?;
    let epoch = Instant::now();
    let (last_tx, last_rx) = watch::channel(0u64);
    let ready = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for (i, user) in users.into_iter().enumerate() {
        let mut c = pool.client(user, i);
        let (stream, mut last_rx, ready, delivered) = (
            pair.message_id.clone(),
            last_rx.clone(),
            ready.clone(),
            delivered.clone(),
        );
        subs.push(tokio::spawn(async move {
            let manage = ManageStream {
                subscribe_to: vec![stream],
                ..Default::default()
            };
            let (_keep, mut rx) = open_call(&mut c, manage).await?;
            let mut lat = Latencies::default();
            let mut next = 1u64;
            let mut in_order = true;
            let mut last_at = 0u64;
            loop {
                let target = *last_rx.borrow();
                if target > 0 && next > target {
                    break;
                }
                let msg = tokio::select! {
                    m = rx.message() => m?,
                    _ = last_rx.changed() => continue,
                };
                match msg.and_then(|m| m.event) {
                    Some(Event::CaughtUp(_)) => {
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Event::Message(pm)) => {
                        let now = now_nanos(epoch);
                        let body = pm.message.map(|m| m.message).unwrap_or_default();
                        let sent = u64::from_be_bytes(
                            body.get(..8)
                                .and_then(|b| b.try_into().ok())
                                .unwrap_or([0; 8]),
                        );
                        lat.record(Duration::from_nanos(now.saturating_sub(sent)));
                        in_order &= pm.event_id == next;
                        next = pm.event_id + 1;
                        last_at = now;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(other) => bail!("unexpected {other:?}"),
                    None => bail!("the call ended"),
                }
            }
            Ok::<_, anyhow::Error>((lat, in_order, next - 1, last_at))
        }));
    }
    let wait_start = Instant::now();
    while (ready.load(Ordering::Relaxed) as usize) < m {
        if wait_start.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {} of {m} subscribers became live",
                ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Post.
    let duration = Duration::from_secs(args.duration);
    let progress = Progress::start("fanout", delivered.clone(), duration, false);
    let cpu = Cpu::new(args);
    let cpu0 = cpu.sample()?;
    let first_post = now_nanos(epoch);
    let mut counter = 0u64;
    let mut interval = (args.rate > 0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if let Some(i) = interval.as_mut() {
            i.tick().await;
        }
        counter += 1;
        let mut body = vec![0u8; args.payload.max(8)];
        body[..8].copy_from_slice(&now_nanos(epoch).to_be_bytes());
        post(&mut oc, &pair.message_id, counter, body).await?;
    }
    let _ = last_tx.send(counter);
    let mut lat = Latencies::default();
    let mut complete = true;
    let mut last_delivery = first_post;
    for s in subs {
        match tokio::time::timeout(Duration::from_secs(60), s).await {
            Ok(joined) => {
                let (l, in_order, got, last_at) = joined??;
                complete &= in_order && got == counter && l.0.len() as u64 == counter;
                last_delivery = last_delivery.max(last_at);
                lat.extend(l);
            }
            Err(_) => complete = false,
        }
    }
    drop(progress);
    let deliveries = lat.0.len() as u64;
    let secs = (last_delivery - first_post) as f64 / 1e9;
    let mut r = Report::new("fanout", args);
    r.set("subscribers", m);
    r.set("rate", args.rate);
    r.set("payload", args.payload.max(8));
    r.set("posts", counter);
    r.set("deliveries", deliveries);
    r.set(
        "deliveries_per_sec",
        round(deliveries as f64 / secs.max(1e-9)),
    );
    r.set("complete", complete);
    cpu.report_since(cpu0, &mut r, deliveries, "delivery")?;
    r.latencies(&mut lat);
    Ok(r)
}

/// `idle`: K idle subscriptions (10 per call, one user per call, each its own streams);
/// reports the server's RSS growth per subscription.
pub async fn idle(args: &Args) -> anyhow::Result<Report> {
    let pid = args
        .server_pid
        .context("idle needs --server-pid (the server's process id)")?;
    const PER_CALL: usize = 10;
    let k = args.subscribers.unwrap_or(10_000).max(PER_CALL);
    let calls = k.div_ceil(PER_CALL);
    let mut conn_args = args.clone();
    conn_args.connections = args.connections.max(calls.div_ceil(100));
    let pool = Pool::connect(&conn_args).await?;
    // Setup: each call's user owns PER_CALL pairs.
    let mut setups = Vec::new();
    let users: Vec<u64> = (0..calls).map(|_| pool.new_user()).collect();
    for chunk in users.chunks(calls.div_ceil(64)) {
        let (pool, chunk) = (pool.clone(), chunk.to_vec());
        setups.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for (i, u) in chunk.into_iter().enumerate() {
                let mut c = pool.client(u, i);
                let mut streams = Vec::new();
                for _ in 0..PER_CALL {
                    streams.push(new_pair(&mut c).await?.message_id);
                }
                out.push((u, streams));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut plan = Vec::new();
    for s in setups {
        plan.extend(s.await??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;
    let cpu = Cpu::new(args);
    let cpu0 = cpu.sample()?;
    let live = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let mut holders = Vec::new();
    for (i, (user, streams)) in plan.into_iter().enumerate() {
        let mut c = pool.client(user, i);
        let (live, mut done_rx) = (live.clone(), done_rx.clone());
        holders.push(tokio::spawn(async move {
            let manage = ManageStream {
                subscribe_to: streams,
                ..Default::default()
            };
            let (_keep, mut rx) = open_call(&mut c, manage).await?;
            let mut caught = 0;
            while caught < PER_CALL {
                match rx.message().await?.and_then(|m| m.event) {
                    Some(Event::CaughtUp(_)) => caught += 1,
                    other => bail!("unexpected {other:?}"),
                }
            }
            live.fetch_add(PER_CALL as u64, Ordering::Relaxed);
            let _ = done_rx.wait_for(|d| *d).await;
            Ok::<_, anyhow::Error>(())
        }));
    }
    let t0 = Instant::now();
    // 100,000 subscriptions take longer to open on two shared cores than 10,000.
    let open_limit = Duration::from_secs(120.max(k as u64 / 500));
    while (live.load(Ordering::Relaxed) as usize) < calls * PER_CALL {
        if t0.elapsed() > open_limit {
            bail!(
                "only {} subscriptions became live",
                live.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let subs = (calls * PER_CALL) as u64;
    let mut r = Report::new("idle", args);
    // The CPU of opening the calls and subscribing (the idle time after is not counted).
    cpu.report_since(cpu0, &mut r, subs, "subscription")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let _ = done_tx.send(true);
    for h in holders {
        h.await??;
    }
    r.set("subscriptions", subs);
    r.set("calls", calls);
    r.set("rss_before_kib", before);
    r.set("rss_after_kib", after);
    r.set(
        "rss_per_sub_kib",
        round(after.saturating_sub(before) as f64 / subs as f64),
    );
    r.set("open_secs", round(open_secs));
    Ok(r)
}
