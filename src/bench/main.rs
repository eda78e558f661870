//! `secretd-bench`: a load generator that drives a running secretd over real gRPC.
//!
//! ```text
//! secretd-bench SCENARIO --server URL [--posters N] [--streams N] [--payload BYTES]
//!   [--duration SECS] [--subscribers N] [--rate PER_SEC] [--backlog N] [--json]
//!   [--jwt-secret S] [--server-pid PID]
//! ```
//! Scenarios: `post`, `hot`, `fanout`, `idle`, `catchup` (see README.md and
//! BENCHMARKS.md). Tokens are minted with `SECRETD_JWT_SECRET` (or `--jwt-secret`), the
//! secret the server was started with. With `--json` each scenario prints one JSON object
//! on stdout; otherwise a table, with a progress line on stderr for longer runs.

mod listening;
mod posting;
mod support;

use clap::{Parser, ValueEnum};

/// Command-line arguments.
#[derive(Debug, Parser, Clone)]
#[command(name = "secretd-bench", about = "Load generator for secretd")]
pub struct Args {
    /// What to measure.
    pub scenario: Scenario,
    /// The server, e.g. http://127.0.0.1:50051.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Concurrent posters (post: 64, hot: 64, catchup backlog writers: 32).
    #[arg(long)]
    pub posters: Option<usize>,
    /// Streams (post: 1000).
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Ciphertext size in bytes.
    #[arg(long, default_value_t = 512)]
    pub payload: usize,
    /// Measurement time in seconds.
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// Subscribers (fanout: 1000) or idle subscriptions (idle: 10000).
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Posts per second for fanout (0 = as fast as one poster can go).
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Events to resume for catchup.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: u64,
    /// Print one JSON object per scenario instead of a table.
    #[arg(long)]
    pub json: bool,
    /// HS256 secret of the server (default: $SECRETD_JWT_SECRET).
    #[arg(long, env = "SECRETD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Pid of the server process, for RSS figures (idle).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// HTTP/2 connections the load is spread over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// A label copied into the JSON output (e.g. "group commit off").
    #[arg(long, default_value = "")]
    pub label: String,
}

/// The scenarios.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Scenario {
    /// P posters over S streams, one owner per stream (no counter conflicts).
    Post,
    /// P posters on one stream (the ordering worst case).
    Hot,
    /// One stream, M live subscribers, posts at a fixed rate.
    Fanout,
    /// K idle subscriptions; server RSS per subscription.
    Idle,
    /// Resume a backlog of B events from 0.
    Catchup,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let result = match args.scenario {
        Scenario::Post => posting::posting(&args, false).await,
        Scenario::Hot => posting::posting(&args, true).await,
        Scenario::Fanout => listening::fanout(&args).await,
        Scenario::Idle => listening::idle(&args).await,
        Scenario::Catchup => posting::catchup(&args).await,
    };
    match result {
        Ok(report) => report.print(args.json),
        Err(err) => {
            eprintln!("secretd-bench: {err:#}");
            std::process::exit(1);
        }
    }
}
