//! The unary floor (issue 23): what the cheapest call costs in secretd against tonic
//! alone.
//!
//! - `health`: concurrent `grpc.health.v1.Health/Check` calls (no token, no database) on
//!   one HTTP/2 connection for `--duration` seconds; with `--server-pid`, the server's CPU
//!   per call. Run against secretd, it is what every call pays in the layers around the
//!   router; run against `floor`, what tonic and hyper alone cost on this machine.
//! - `floor`: serves a bare tonic server on `--listen` with only the health service (no
//!   layer, no limit, TCP_NODELAY as secretd sets it) until it is killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::Args;
use crate::cpu::Cpu;
use crate::support::{Latencies, Progress, Report, join_latencies, round};

/// `health`: Health/Check calls, `--posters` at a time (default 64), on one connection.
pub async fn health(args: &Args) -> anyhow::Result<Report> {
    let channel = Endpoint::from_shared(args.server.clone())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;
    let concurrency = args.posters.unwrap_or(64).max(1);
    let duration = Duration::from_secs(args.duration);
    let calls = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("health", calls.clone(), duration, false);
    let cpu = Cpu::new(args);
    let cpu0 = cpu.sample()?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (mut client, calls) = (HealthClient::new(channel.clone()), calls.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .context("Health/Check failed")?;
                lat.record(t.elapsed());
                calls.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = join_latencies(tasks).await?;
    let elapsed = start.elapsed().as_secs_f64();
    drop(progress);
    let n = calls.load(Ordering::Relaxed);
    let mut r = Report::new("health", args);
    r.set("concurrency", concurrency);
    r.set("calls", n);
    r.set("calls_per_sec", round(n as f64 / elapsed));
    cpu.report_since(cpu0, &mut r, n, "call")?;
    r.latencies(&mut lat);
    Ok(r)
}

/// `floor`: a bare tonic server with only the health service on `--listen`, serving
/// until the process is killed.
pub async fn floor(args: &Args) -> anyhow::Result<Report> {
    let addr: std::net::SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {} is not an address", args.listen))?;
    // The reporter marks the empty service name (the server as a whole) SERVING.
    let (_reporter, service) = tonic_health::server::health_reporter();
    eprintln!("floor listening on {addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve(addr)
        .await
        .context("the floor server failed")?;
    Ok(Report::new("floor", args))
}
