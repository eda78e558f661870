//! Scenarios that post: `post`, `hot`, and `catchup` (which posts its backlog first).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use secretd::proto::stream_message_posting_response::Event;
use secretd::proto::{ManageStream, StreamCursor};
use tonic::Code;

use crate::Args;
use crate::cpu::Cpu;
use crate::listening::open_call;
use crate::support::*;

/// `post` (P posters over S streams, each stream owned by one poster, so counters never
/// conflict) and `hot` (P posters on one stream sharing a counter, refused counters
/// retried with a fresh one, as clients would).
pub async fn posting(args: &Args, hot: bool) -> anyhow::Result<Report> {
    let pool = Pool::connect(args).await?;
    let posters = args.posters.unwrap_or(64).max(1);
    let streams = if hot { 1 } else { args.streams.max(posters) };
    let body = vec![0xa5u8; args.payload];
    // Setup: each poster is a user owning its share of the streams (hot: one shared
    // owner and stream).
    let hot_owner = pool.new_user();
    let hot_stream = if hot {
        Some(new_pair(&mut pool.client(hot_owner, 0)).await?.message_id)
    } else {
        None
    };
    let mut setups = Vec::new();
    for p in 0..posters {
        let pool = pool.clone();
        let hot_stream = hot_stream.clone();
        let mine = streams / posters + usize::from(p < streams % posters);
        setups.push(tokio::spawn(async move {
            let user = if hot { hot_owner } else { pool.new_user() };
            let mut c = pool.client(user, p);
            let mut list = Vec::new();
            match hot_stream {
                Some(s) => list.push(s),
                None => {
                    for _ in 0..mine {
                        list.push(new_pair(&mut c).await?.message_id);
                    }
                }
            }
            Ok::<_, anyhow::Error>((c, list))
        }));
    }
    let mut setup = Vec::new();
    for s in setups {
        setup.push(s.await??);
    }
    let acked = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let shared_counter = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(args.duration);
    let progress = Progress::start(
        if hot { "hot" } else { "post" },
        acked.clone(),
        duration,
        false,
    );
    let cpu = Cpu::new(args);
    let cpu0 = cpu.sample()?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (mut c, list) in setup {
        let (acked, rejected, shared, body) = (
            acked.clone(),
            rejected.clone(),
            shared_counter.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut counters = vec![0u64; list.len()];
            let mut i = 0;
            while Instant::now() < deadline {
                let k = i % list.len();
                i += 1;
                let counter = if hot {
                    shared.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    counters[k] + 1
                };
                let t = Instant::now();
                match post(&mut c, &list[k], counter, body.clone()).await {
                    Ok(_) => {
                        lat.record(t.elapsed());
                        counters[k] = counter;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(st) if hot && st.code() == Code::FailedPrecondition => {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(st) => return Err(anyhow::anyhow!("post failed: {st}")),
                }
            }
            Ok(lat)
        }));
    }
    let mut lat = join_latencies(tasks).await?;
    let elapsed = start.elapsed().as_secs_f64();
    drop(progress);
    let n = acked.load(Ordering::Relaxed);
    let mut r = Report::new(if hot { "hot" } else { "post" }, args);
    r.set("posters", posters);
    r.set("streams", streams);
    r.set("payload", args.payload);
    r.set("acked", n);
    r.set("posts_per_sec", round(n as f64 / elapsed));
    if hot {
        r.set("rejected", rejected.load(Ordering::Relaxed));
    }
    // Per acknowledged post: in `hot` the refused posts' cost is part of it.
    cpu.report_since(cpu0, &mut r, n, "post")?;
    r.latencies(&mut lat);
    Ok(r)
}

/// `catchup`: writes a backlog of B events on one stream, then resumes it from 0 on a new
/// call and measures events/s until CaughtUp.
pub async fn catchup(args: &Args) -> anyhow::Result<Report> {
    let pool = Pool::connect(args).await?;
    let owner = pool.new_user();
    let pair = new_pair(&mut pool.client(owner, 0)).await?;
    let stream = pair.message_id.clone();
    let b = args.backlog.max(1);
    let writers = args.posters.unwrap_or(32).max(1);
    let shared = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("backlog", acked.clone(), Duration::from_secs(10), false);
    let mut tasks = Vec::new();
    for i in 0..writers {
        let (mut c, stream, shared, acked) = (
            pool.client(owner, i),
            stream.clone(),
            shared.clone(),
            acked.clone(),
        );
        let body = vec![0x3cu8; args.payload];
        tasks.push(tokio::spawn(async move {
            while acked.load(Ordering::Relaxed) < b {
                let counter = shared.fetch_add(1, Ordering::Relaxed) + 1;
                match post(&mut c, &stream, counter, body.clone()).await {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(st) if st.code() == Code::FailedPrecondition => {}
                    Err(st) => return Err(anyhow::anyhow!("backlog post failed: {st}")),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    drop(progress);
    let total = acked.load(Ordering::Relaxed);
    // Resume from 0 on a fresh connection.
    let mut fresh = args.clone();
    fresh.connections = 1;
    let reader = Pool::connect(&fresh).await?;
    let mut c = reader.client(owner, 0);
    let cpu = Cpu::new(args);
    let cpu0 = cpu.sample()?;
    let t0 = Instant::now();
    let manage = ManageStream {
        resume_from: vec![StreamCursor {
            stream_id: stream.clone(),
            after_event_id: 0,
        }],
        ..Default::default()
    };
    let (_keep, mut rx) = open_call(&mut c, manage).await?;
    let mut next = 1u64;
    let mut in_order = true;
    let head = loop {
        match rx.message().await?.and_then(|m| m.event) {
            Some(Event::Message(m)) => {
                in_order &= m.event_id == next;
                next = m.event_id + 1;
            }
            Some(Event::CaughtUp(c)) => break c.head_event_id,
            other => bail!("unexpected {other:?}"),
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let mut r = Report::new("catchup", args);
    r.set("backlog", total);
    r.set("payload", args.payload);
    r.set("events", next - 1);
    r.set("complete", in_order && head == next - 1 && next > total);
    r.set("seconds", round(secs));
    r.set("events_per_sec", round((next - 1) as f64 / secs));
    cpu.report_since(cpu0, &mut r, next - 1, "event")?;
    Ok(r)
}
