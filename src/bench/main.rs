//! `secretd-bench`: a load generator that drives a running secretd over real gRPC.
//!
//! ```text
//! secretd-bench SCENARIO --server URL [--posters N] [--streams N] [--payload BYTES]
//!   [--duration SECS] [--subscribers N] [--rate PER_SEC] [--backlog N] [--json]
//!   [--jwt-secret S] [--server-pid PID] [--postgres-pid PID] [--users N]
//!   [--first-user ID] [--consistency] [--epoch-ms MS] [--seed-from K]
//! ```
//! Scenarios: `post`, `hot`, `fanout`, `idle`, `catchup`, and the key transparency ones
//! `keys-seed`, `keys`, `keys-post` (see README.md, BENCHMARKS.md and `bench/kt`),
//! `cpu` (cumulative CPU of the processes below, for scripts), and the unary floor:
//! `health` (Health/Check calls) and `floor` (a bare tonic server for them; `bench/floor`).
//! With `--server-pid` (and `--postgres-pid`, the postmaster's pid: the first line of
//! `postmaster.pid` in the data directory) each scenario also reports the CPU the server
//! (and Postgres) spent over its measured window, in seconds and in µs per operation
//! (`server_cpu_us_per_post`, `postgres_cpu_us_per_post`, …; see `cpu.rs`).
//! Tokens are minted with `SECRETD_JWT_SECRET` (or `--jwt-secret`), the secret the server
//! was started with. With `--json` each scenario prints one JSON object
//! on stdout; otherwise a table, with a progress line on stderr for longer runs.

mod cpu;
mod floor;
mod keys;
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
    /// Pid of the server process: its CPU per operation (every scenario) and RSS (idle).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Pid of the Postgres postmaster (first line of `postmaster.pid`): the CPU of it and
    /// all its children per operation.
    #[arg(long)]
    pub postgres_pid: Option<u32>,
    /// HTTP/2 connections the load is spread over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// A label copied into the JSON output (e.g. "group commit off").
    #[arg(long, default_value = "")]
    pub label: String,
    /// Users with a key (keys-seed seeds them; keys fetches theirs).
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// The first seeded user's id (keys-seed and keys must agree).
    #[arg(long, default_value_t = 10_000_000_000_000)]
    pub first_user: u64,
    /// keys-seed: start at this user of the `--users` (the others were seeded before).
    #[arg(long, default_value_t = 0)]
    pub seed_from: u64,
    /// keys: send a random `known_tree_size` below the head, so every proof carries a
    /// consistency proof (else 0: none).
    #[arg(long)]
    pub consistency: bool,
    /// keys-post: the server's `kt_epoch_ms`, which PostKey's wait is compared with.
    #[arg(long, default_value_t = 500)]
    pub epoch_ms: u64,
    /// floor: the address the bare tonic server listens on.
    #[arg(long, default_value = "127.0.0.1:50799")]
    pub listen: String,
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
    /// PostKey for N users, then wait until the key transparency log holds them all.
    KeysSeed,
    /// FetchKey of random seeded users: proof bytes, server CPU per call, latency.
    Keys,
    /// PostKey of new users: time until the answer with its proof, against the epoch.
    KeysPost,
    /// The cumulative CPU ticks of --server-pid and --postgres-pid now (no server needed).
    Cpu,
    /// Health/Check calls (no token, no database), --posters at a time on one connection.
    Health,
    /// Serve a bare tonic server (health service only) on --listen: the unary floor.
    Floor,
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
        Scenario::KeysSeed => keys::seed(&args).await,
        Scenario::Keys => keys::fetch(&args).await,
        Scenario::KeysPost => keys::post(&args).await,
        Scenario::Cpu => cpu::now(&args),
        Scenario::Health => floor::health(&args).await,
        Scenario::Floor => floor::floor(&args).await,
    };
    match result {
        Ok(report) => report.print(args.json),
        Err(err) => {
            eprintln!("secretd-bench: {err:#}");
            std::process::exit(1);
        }
    }
}
