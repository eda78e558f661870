//! Key transparency scenarios (DESIGN §12, BENCHMARKS.md "Key transparency"):
//! `keys-seed` posts one key for each of N users and waits until the publisher logged
//! them all; `keys` measures FetchKey of random seeded users (with the proof the server
//! attaches, or without it when the server runs with `kt_proofs_in_fetch_key = false`,
//! the baseline) and the server's CPU per call; `keys-post` measures how long PostKey
//! takes to answer with its proof, against the epoch.
//!
//! Seeding goes through PostKey, with one of three real 4096-bit keys per user (the server
//! stores one row per user, so users may share a key; generating 100,000 RSA keys would
//! take hours). Seeded users are `--first-user` .. `--first-user + --users`, so a later
//! run (another server process on the same database) finds them again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use prost::Message;
use secretd::proto::{FetchKeyRequest, GetTreeHeadRequest, PostKeyRequest};

use crate::Args;
use crate::cpu::Cpu;
use crate::support::*;

/// Three real 4096-bit public keys, handed out round-robin.
const KEYS: [&[u8]; 3] = [
    include_bytes!("../../tests/fixtures/rsa4096_1.pub.pem"),
    include_bytes!("../../tests/fixtures/rsa4096_2.pub.pem"),
    include_bytes!("../../tests/fixtures/rsa4096_3.pub.pem"),
];

/// The newest head's tree size.
async fn tree_size(c: &mut Client) -> anyhow::Result<u64> {
    let r = c
        .get_tree_head(GetTreeHeadRequest { known_tree_size: 0 })
        .await?
        .into_inner();
    Ok(r.head.map_or(0, |h| h.tree_size))
}

/// `keys-seed`: PostKey for `--users` users (`--posters` at once, 2,000 by default), then
/// waits until a head holds them all. `--seed-from K` posts only users K.. (again, when an
/// earlier seed stopped short); the log must then hold at least `--users` entries.
pub async fn seed(args: &Args) -> anyhow::Result<Report> {
    let pool = Pool::connect(args).await?;
    let n = args.users;
    let first = args.first_user;
    let mut probe = pool.client(first, 0);
    let size0 = tree_size(&mut probe).await?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let proved = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let from = args.seed_from.min(n);
    let posters = args.posters.unwrap_or(2000).max(1);
    let progress = Progress::start("seed", done.clone(), Duration::from_secs(60), false);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..posters {
        let (pool, next, done, proved, retried) = (
            pool.clone(),
            next.clone(),
            done.clone(),
            proved.clone(),
            retried.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            loop {
                let i = from + next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let mut c = pool.client(first + i, p);
                let key_data = KEYS[(i % 3) as usize].to_vec();
                let t = Instant::now();
                // A client retries UNAVAILABLE (a pool wait past db_timeout_ms under this
                // load); posting the same key again is harmless.
                let mut tries = 0;
                let r = loop {
                    match c
                        .post_key(PostKeyRequest {
                            key_data: key_data.clone(),
                        })
                        .await
                    {
                        Ok(r) => break r.into_inner(),
                        Err(st) if st.code() == tonic::Code::Unavailable && tries < 20 => {
                            tries += 1;
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(st) => return Err(st.into()),
                    }
                };
                lat.record(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
                if r.proof.is_some() {
                    proved.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut lat = join_latencies(tasks).await?;
    let posted_secs = start.elapsed().as_secs_f64();
    drop(progress);
    // Wait for the publisher to take the rest.
    let mut size = tree_size(&mut probe).await?;
    let target = if from == 0 { size0 + n } else { n };
    while size < target {
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("the log holds {size} entries after 30 minutes; {n} were posted");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        size = tree_size(&mut probe).await?;
    }
    let mut r = Report::new("keys-seed", args);
    r.set("users", n);
    r.set("posters", posters);
    r.set("posted_secs", round(posted_secs));
    r.set("posts_per_sec", round((n - from) as f64 / posted_secs));
    r.set("retried", retried.load(Ordering::Relaxed));
    r.set("answered_with_proof", proved.load(Ordering::Relaxed));
    r.set("logged_secs", round(start.elapsed().as_secs_f64()));
    r.set("tree_size", size);
    r.latencies(&mut lat);
    Ok(r)
}

/// What one FetchKey measured.
#[derive(Default)]
struct Fetched {
    lat: Latencies,
    calls: u64,
    with_proof: u64,
    proof_bytes: u64,
    proof_max: u64,
    response_bytes: u64,
    map_levels: u64,
}

/// `keys`: `--posters` (32) callers FetchKey random seeded users for `--duration`
/// seconds, after a warm-up of a second; `--consistency` sends a random
/// `known_tree_size` below the head (else 0: no consistency proof). Server CPU per call
/// with `--server-pid`.
pub async fn fetch(args: &Args) -> anyhow::Result<Report> {
    let pool = Pool::connect(args).await?;
    let size = tree_size(&mut pool.client(args.first_user, 0)).await?;
    if size < args.users {
        bail!(
            "the log holds {size} entries; run keys-seed with --users {} first",
            args.users
        );
    }
    let callers = args.posters.unwrap_or(32).max(1);
    let warmup = Duration::from_secs(1);
    let duration = Duration::from_secs(args.duration);
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (measure_from, deadline) = (start + warmup, start + warmup + duration);
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut c = pool.client(pool.new_user(), i);
        let (args, count) = (args.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut f = Fetched::default();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Ok::<_, anyhow::Error>(f);
                }
                let user = args.first_user + xorshift(&mut rng) % args.users;
                let known = match args.consistency {
                    true => 1 + xorshift(&mut rng) % (size - 1).max(1),
                    false => 0,
                };
                let t = Instant::now();
                let r = c
                    .fetch_key(FetchKeyRequest {
                        user_id: user,
                        homeserver: String::new(),
                        known_tree_size: known,
                    })
                    .await?
                    .into_inner();
                if now < measure_from {
                    continue;
                }
                f.lat.record(t.elapsed());
                count.fetch_add(1, Ordering::Relaxed);
                f.calls += 1;
                f.response_bytes += r.encoded_len() as u64;
                if let Some(p) = &r.proof {
                    // The bytes the proof adds to the response: field 4 with its tag and length.
                    let bytes = prost::encoding::message::encoded_len(4, p) as u64;
                    f.with_proof += 1;
                    f.proof_bytes += bytes;
                    f.proof_max = f.proof_max.max(bytes);
                    f.map_levels += p.map_path.len() as u64;
                }
            }
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu = Cpu::new(args);
    let cpu0 = cpu.sample()?;
    let progress = Progress::start("keys", count.clone(), duration, false);
    let mut all = Fetched::default();
    for t in tasks {
        let f = t.await??;
        all.lat.extend(f.lat);
        all.calls += f.calls;
        all.with_proof += f.with_proof;
        all.proof_bytes += f.proof_bytes;
        all.proof_max = all.proof_max.max(f.proof_max);
        all.response_bytes += f.response_bytes;
        all.map_levels += f.map_levels;
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    drop(progress);
    let per = |x: u64, n: u64| round(x as f64 / n.max(1) as f64);
    let mut r = Report::new("keys", args);
    r.set("users", args.users);
    r.set("tree_size", size);
    r.set("callers", callers);
    r.set("consistency", args.consistency);
    r.set("calls", all.calls);
    r.set("calls_per_sec", round(all.calls as f64 / elapsed));
    r.set("with_proof", all.with_proof);
    r.set("proof_bytes_avg", per(all.proof_bytes, all.with_proof));
    r.set("proof_bytes_max", all.proof_max);
    r.set("map_levels_avg", per(all.map_levels, all.with_proof));
    r.set("response_bytes_avg", per(all.response_bytes, all.calls));
    cpu.report_since(cpu0, &mut r, all.calls, "call")?;
    r.latencies(&mut all.lat);
    Ok(r)
}

/// `keys-post`: `--posters` (16) new users each post a key, one after another with a
/// random pause of up to an epoch between, for `--duration` seconds; the time until the
/// answer (with its proof) against `--epoch-ms`, the server's `kt_epoch_ms`.
pub async fn post(args: &Args) -> anyhow::Result<Report> {
    let pool = Pool::connect(args).await?;
    let posters = args.posters.unwrap_or(16).max(1);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let count = Arc::new(AtomicU64::new(0));
    let epoch_ms = args.epoch_ms.max(1);
    let progress = Progress::start(
        "keys-post",
        count.clone(),
        Duration::from_secs(args.duration),
        false,
    );
    let mut tasks = Vec::new();
    for p in 0..posters {
        let (pool, count) = (pool.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut proved, mut calls) = (Latencies::default(), 0u64, 0u64);
            let mut rng = 0x2545_f491_4f6c_dd1du64 ^ (p as u64 + 1);
            while Instant::now() < deadline {
                // At a random moment of the epoch: a poster answered at an epoch's end
                // would otherwise post again at once and always wait a whole epoch.
                let pause = xorshift(&mut rng) % (epoch_ms * 1000);
                tokio::time::sleep(Duration::from_micros(pause)).await;
                let mut c = pool.client(pool.new_user(), p);
                let key_data = KEYS[p % 3].to_vec();
                let t = Instant::now();
                let r = c.post_key(PostKeyRequest { key_data }).await?.into_inner();
                lat.record(t.elapsed());
                calls += 1;
                proved += u64::from(r.proof.is_some());
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>((lat, proved, calls))
        }));
    }
    let (mut lat, mut proved, mut calls) = (Latencies::default(), 0, 0);
    for t in tasks {
        let (l, p, c) = t.await??;
        lat.extend(l);
        proved += p;
        calls += c;
    }
    drop(progress);
    let max_ms = lat.0.iter().max().copied().unwrap_or(0) as f64 / 1000.0;
    let mut r = Report::new("keys-post", args);
    r.set("posters", posters);
    r.set("calls", calls);
    r.set("with_proof", proved);
    r.set("epoch_ms", args.epoch_ms);
    r.latencies(&mut lat);
    r.set("max_ms", round(max_ms));
    let (_, p99, _) = lat.percentiles();
    r.set("p99_over_epoch", round(p99 / args.epoch_ms as f64));
    Ok(r)
}

/// A small fast pseudo-random generator (uniform enough to pick users).
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}
