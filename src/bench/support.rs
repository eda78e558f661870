//! Shared pieces of the benchmark: connections, tokens, latency statistics, progress and
//! the report.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use secretd::proto::secret_service_client::SecretServiceClient;
use secretd::proto::{self, ChannelPair, EncryptedMessage, PostMessageRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::Args;

/// An authenticated client.
pub type Client = SecretServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Connections to the server and the secret to mint tokens with.
pub struct Pool {
    channels: Vec<Channel>,
    secret: String,
    next_user: AtomicU64,
}

impl Pool {
    /// Opens `args.connections` HTTP/2 connections.
    pub async fn connect(args: &Args) -> anyhow::Result<Arc<Pool>> {
        let mut channels = Vec::new();
        for _ in 0..args.connections.max(1) {
            let ch = Endpoint::from_shared(args.server.clone())?
                .tcp_nodelay(true)
                .initial_connection_window_size(Some(4 << 20))
                .initial_stream_window_size(Some(1 << 20))
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", args.server))?;
            channels.push(ch);
        }
        // Users of one run never collide with earlier runs on the same database.
        let base = (secretd::time::now_micros() as u64 % 1_000_000_000) * 1000 + 1;
        Ok(Arc::new(Pool {
            channels,
            secret: args.jwt_secret.clone(),
            next_user: AtomicU64::new(base),
        }))
    }

    /// A fresh user id.
    pub fn new_user(&self) -> u64 {
        self.next_user.fetch_add(1, Ordering::Relaxed)
    }

    /// A client for `user` on connection `i % connections`.
    pub fn client(&self, user: u64, i: usize) -> Client {
        let token = secretd::auth::sign_hs256(self.secret.as_bytes(), user, 3600, "", "")
            .expect("signing cannot fail");
        let value = format!("Bearer {token}").parse().expect("ascii token");
        SecretServiceClient::with_interceptor(
            self.channels[i % self.channels.len()].clone(),
            Bearer(value),
        )
        .max_decoding_message_size(1 << 20)
    }
}

/// A valid 4096-bit RSA public key (invitees need one).
pub const PUBLIC_KEY: &[u8] = include_bytes!("../../tests/fixtures/rsa4096_1.pub.pem");

/// Creates a pair owned by the client's user.
pub async fn new_pair(c: &mut Client) -> anyhow::Result<ChannelPair> {
    Ok(
        c.generate_channel_pair(proto::GenerateChannelPairRequest {})
            .await?
            .into_inner(),
    )
}

/// Posts one event.
pub async fn post(
    c: &mut Client,
    stream: &str,
    counter: u64,
    body: Vec<u8>,
) -> Result<u64, Status> {
    c.post_message(PostMessageRequest {
        stream_id: stream.to_string(),
        message: Some(EncryptedMessage {
            message: body,
            id: counter,
        }),
    })
    .await
    .map(|r| r.into_inner().event_id)
}

/// Nanoseconds since the benchmark started (a clock shared by posters and subscribers).
pub fn now_nanos(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Latencies in microseconds.
#[derive(Default, Clone)]
pub struct Latencies(pub Vec<u32>);

impl Latencies {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    /// Merges another set.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// (p50, p99, p99.9) in milliseconds.
    pub fn percentiles(&mut self) -> (f64, f64, f64) {
        if self.0.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
            self.0[i] as f64 / 1000.0
        };
        (at(0.50), at(0.99), at(0.999))
    }
}

/// Waits for load tasks and merges the latencies they recorded (the first error ends it).
pub async fn join_latencies(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Latencies>>>,
) -> anyhow::Result<Latencies> {
    let mut lat = Latencies::default();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(lat)
}

/// Prints a progress line every second to stderr until dropped (runs over 3 s only).
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `counter` for a run of `total` seconds.
    pub fn start(
        name: &'static str,
        counter: Arc<AtomicU64>,
        total: Duration,
        quiet: bool,
    ) -> Progress {
        if quiet || total < Duration::from_secs(3) {
            return Progress { task: None };
        }
        let start = Instant::now();
        let task = tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = counter.load(Ordering::Relaxed);
                eprint!(
                    "\r[{name}] {:>3}/{}s  {n:>9} done  {:>8}/s   ",
                    start.elapsed().as_secs(),
                    total.as_secs(),
                    n - last
                );
                last = n;
            }
        });
        Progress { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            eprintln!();
        }
    }
}

/// The server's resident memory in KiB (from /proc).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is --server-pid right?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// One scenario's result: ordered (key, value) pairs printed as a table or as JSON.
pub struct Report {
    /// The pairs, `scenario` first.
    pub fields: Vec<(Cow<'static, str>, serde_json::Value)>,
}

impl Report {
    /// A report for `scenario`.
    pub fn new(scenario: &str, args: &Args) -> Report {
        let mut fields = vec![("scenario".into(), serde_json::json!(scenario))];
        if !args.label.is_empty() {
            fields.push(("label".into(), serde_json::json!(args.label)));
        }
        Report { fields }
    }

    /// Adds a field.
    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<serde_json::Value>) {
        self.fields.push((key.into(), value.into()));
    }

    /// Adds p50/p99/p99.9 fields.
    pub fn latencies(&mut self, lat: &mut Latencies) {
        let (p50, p99, p999) = lat.percentiles();
        self.set("p50_ms", round(p50));
        self.set("p99_ms", round(p99));
        self.set("p999_ms", round(p999));
    }

    /// Prints it.
    pub fn print(&self, json: bool) {
        if json {
            let map: serde_json::Map<String, serde_json::Value> = self
                .fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            println!("{}", serde_json::Value::Object(map));
        } else {
            for (k, v) in &self.fields {
                println!("{k:<20} {v}");
            }
            println!();
        }
    }
}

/// Rounds to 3 decimals for the report.
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
