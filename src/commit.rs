//! Group commit: concurrent PostMessage calls share database transactions.
//!
//! Posts are sharded over `commit_writers` writer tasks by stream id (one stream always
//! goes to the same writer, so its posts keep arrival order and no two writers of this
//! process contend for its row lock). A writer takes whatever has queued up while its
//! previous transaction ran (no added wait at low load, bigger batches under load, at most
//! `commit_max_batch`), appends them in one transaction via [`Store::append_batch`], then
//! publishes the new events to the hub and answers each caller with its own outcome. A
//! rejected post never fails the others; a failed transaction fails its batch only, and
//! nothing of it is written — unless it failed after its COMMIT took effect (the answer
//! was lost with the connection). So after a failed batch the writer re-reads the heads
//! of the batch's streams and publishes whatever is there, retrying with backoff while
//! the database is unreachable; a retry answered as a duplicate of an event this process
//! never published triggers the same re-read.
//!
//! Each writer's queue holds `commit_queue_depth` posts. When it is full, a post waits at
//! most `commit_queue_timeout_ms` for room and is then refused with RESOURCE_EXHAUSTED and
//! a retry delay: overload is an answer, not an unbounded wait. A refused post was never
//! queued, so it is certainly not written.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::replica::Replica;
use crate::shutdown::{Phase, Signal};
use crate::store::{AppendRequest, Appended, DynStore};
use uuid::Uuid;

/// The shortest retry delay an overloaded queue suggests, in milliseconds.
const MIN_RETRY_AFTER_MS: u64 = 100;

/// How the group commit is set up.
#[derive(Debug, Clone, Copy)]
pub struct CommitSettings {
    /// Writer tasks (streams are sharded over them).
    pub writers: usize,
    /// Most posts per transaction (`commit_max_batch`).
    pub max_batch: usize,
    /// `max_counter_gap`.
    pub max_gap: u64,
    /// Posts queued per writer (`commit_queue_depth`).
    pub queue_depth: usize,
    /// How long a post waits for room in a full queue (`commit_queue_timeout_ms`).
    pub queue_timeout: Duration,
}

impl CommitSettings {
    /// The configured group commit with `writers` writers.
    pub fn new(writers: usize, settings: &Settings) -> Self {
        CommitSettings {
            writers,
            max_batch: settings.commit_max_batch,
            max_gap: settings.max_counter_gap,
            queue_depth: settings.commit_queue_depth,
            queue_timeout: Duration::from_millis(settings.commit_queue_timeout_ms),
        }
    }
}
/// First and longest wait between attempts to re-read streams whose publishing is in
/// doubt.
const REPUBLISH_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

struct Job {
    request: AppendRequest,
    reply: oneshot::Sender<Result<Appended>>,
}

/// Handle for submitting posts (the group commit's front door).
///
/// The path of a post (ARCHITECTURE.md has every hop): `service/messages.rs` →
/// [`Committer::append`] → the queue of the writer owning the stream → one
/// `Store::append_batch` transaction (`store/{postgres,sqlite}/events.rs`: lock heads,
/// check membership, `plan_batch`, insert, move heads, NOTIFY) → COMMIT →
/// `Hub::publish_committed` (encode once, ring, wake watchers) → the caller's answer;
/// live response streams (`service/streaming/`) then pull the frame. Other replicas get
/// the NOTIFY: `replica/listener.rs` → `Replica::apply` reads the rows once → their hub.
///
/// Cloning is cheap; the writers stop when the shutdown reaches `Phase::Finishing`.
#[derive(Clone)]
pub struct Committer {
    shards: Arc<Vec<mpsc::Sender<Job>>>,
    queue_depth: usize,
    queue_timeout: Duration,
    /// Posts waiting in all queues (`secretd_commit_queued_posts`).
    queued: metrics::Gauge,
}

/// The writer tasks. They stop taking posts when the shutdown reaches
/// [`Phase::Finishing`], commit (or fail) every queued one, and end.
pub struct Writers {
    handles: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Waits for the writers to finish (after the shutdown reached [`Phase::Finishing`]).
    pub async fn join(self) {
        for h in self.handles {
            let _ = h.await;
        }
    }
}

impl Committer {
    /// Starts the writer tasks: they commit through `store`, publish to `hub`, re-read
    /// through `replica` what they could not tell was committed, and stop at `shutdown`'s
    /// [`Phase::Finishing`].
    pub fn start(
        store: DynStore,
        hub: Arc<Hub>,
        replica: Arc<Replica>,
        config: CommitSettings,
        shutdown: Signal,
    ) -> (Committer, Writers) {
        let CommitSettings {
            writers, max_batch, ..
        } = config;
        let max_gap = i64::try_from(config.max_gap).unwrap_or(i64::MAX);
        let mut shards = Vec::with_capacity(writers);
        let mut handles = Vec::with_capacity(writers);
        let queued = crate::telemetry::commit_queues(writers.max(1) * config.queue_depth.max(1));
        for _ in 0..writers.max(1) {
            let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
            shards.push(tx);
            handles.push(tokio::spawn(writer(
                (rx, queued.clone()),
                shutdown.clone(),
                store.clone(),
                hub.clone(),
                replica.clone(),
                max_batch.max(1),
                max_gap,
            )));
        }
        (
            Committer {
                shards: Arc::new(shards),
                queue_depth: config.queue_depth.max(1),
                queue_timeout: config.queue_timeout,
                queued,
            },
            Writers { handles },
        )
    }

    /// Appends one post and waits for its outcome.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended> {
        let shard = (request.stream_id.as_u128() % self.shards.len() as u128) as usize;
        let (reply, answer) = oneshot::channel();
        match self.shards[shard]
            .send_timeout(Job { request, reply }, self.queue_timeout)
            .await
        {
            Ok(()) => self.queued.increment(1.0),
            Err(SendTimeoutError::Timeout(_)) => {
                crate::telemetry::commit_queue_full();
                return Err(self.overloaded());
            }
            Err(SendTimeoutError::Closed(_)) => {
                return Err(Error::Unavailable(
                    "the server is shutting down; retry".into(),
                ));
            }
        }
        answer
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down; retry".into()))?
    }

    /// The refusal of a post that found its writer's queue full past the deadline.
    fn overloaded(&self) -> Error {
        let waited = self.queue_timeout.as_millis();
        let retry_after_ms = u64::try_from(waited)
            .unwrap_or(u64::MAX)
            .max(MIN_RETRY_AFTER_MS);
        Error::Throttled {
            message: format!(
                "the server is overloaded: {} posts are already waiting to be committed \
                 (config key commit_queue_depth) and none left the queue within {waited} ms \
                 (commit_queue_timeout_ms); the post was not stored, retry in \
                 {retry_after_ms} ms",
                self.queue_depth
            ),
            retry_after_ms,
        }
    }
}

async fn writer(
    // The writer's queue, and the gauge of posts waiting in all queues.
    (mut rx, queued): (mpsc::Receiver<Job>, metrics::Gauge),
    shutdown: Signal,
    store: DynStore,
    hub: Arc<Hub>,
    replica: Arc<Replica>,
    max_batch: usize,
    max_gap: i64,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    let mut stopping = false;
    // Streams that may hold committed events this process has not published: re-read
    // and published (at `next_try`, backing off while the database is unreachable).
    let mut in_doubt = InDoubt::default();
    loop {
        let got = tokio::select! {
            n = rx.recv_many(&mut jobs, max_batch) => n,
            _ = shutdown.reached(Phase::Finishing), if !stopping => {
                // Refuse new posts; what is already queued is still committed below.
                rx.close();
                stopping = true;
                continue;
            }
            _ = tokio::time::sleep_until(in_doubt.next_try), if !in_doubt.streams.is_empty() => {
                in_doubt.republish(&replica).await;
                continue;
            }
        };
        if got == 0 {
            return;
        }
        queued.decrement(got as f64);
        let (requests, replies): (Vec<AppendRequest>, Vec<_>) =
            jobs.drain(..).map(|j| (j.request, j.reply)).unzip();
        crate::telemetry::batch(requests.len());
        let now = crate::time::now_micros();
        match store.append_batch(&requests, max_gap, now).await {
            Ok(outcomes) => {
                hub.publish_committed(outcomes.iter().filter_map(|o| match o {
                    Ok(Appended::New {
                        event,
                        member_epoch,
                    }) => Some((event, *member_epoch)),
                    _ => None,
                }));
                // An exact retry of an event this process never published: the first
                // attempt's answer was lost after its COMMIT.
                for (request, outcome) in requests.iter().zip(&outcomes) {
                    if let Ok(Appended::Retry { event_id }) = outcome
                        && hub
                            .known_head(&request.stream_id)
                            .is_some_and(|h| h < *event_id)
                    {
                        in_doubt.add([request.stream_id]);
                    }
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
                // The COMMIT may have taken effect before the connection failed.
                in_doubt.add(requests.iter().map(|r| r.stream_id));
            }
        }
    }
}

/// Streams whose newest committed events may not have been published by this process.
struct InDoubt {
    streams: HashSet<Uuid>,
    /// When to re-read them next.
    next_try: tokio::time::Instant,
    /// The wait after the next failed attempt.
    backoff: Duration,
}

impl Default for InDoubt {
    fn default() -> Self {
        InDoubt {
            streams: HashSet::new(),
            next_try: tokio::time::Instant::now(),
            backoff: REPUBLISH_RETRY.0,
        }
    }
}

impl InDoubt {
    /// Adds streams; the first ones are re-read as soon as the writer is free.
    fn add(&mut self, streams: impl IntoIterator<Item = Uuid>) {
        if self.streams.is_empty() {
            self.next_try = tokio::time::Instant::now();
            self.backoff = REPUBLISH_RETRY.0;
        }
        self.streams.extend(streams);
    }

    /// Re-reads the streams' heads and publishes what is new; on failure tries again
    /// later, backing off.
    async fn republish(&mut self, replica: &Replica) {
        if replica.republish(&mut self.streams).await {
            self.backoff = REPUBLISH_RETRY.0;
        } else {
            self.next_try = tokio::time::Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(REPUBLISH_RETRY.1);
        }
    }
}
