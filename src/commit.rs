//! Group commit: concurrent PostMessage calls share database transactions.
//!
//! Posts are sharded over `commit_writers` writer tasks by stream id (one stream always
//! goes to the same writer, so its posts keep arrival order and no two writers of this
//! process contend for its row lock). A writer takes whatever has queued up while its
//! previous transaction ran (no added wait at low load, bigger batches under load, at most
//! `commit_max_batch`), appends them in one transaction via [`Store::append_batch`], then
//! publishes the new events to the hub and answers each caller with its own outcome. A
//! rejected post never fails the others; a failed transaction fails its batch only, and
//! nothing of it is written.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::store::{AppendRequest, Appended, DynStore};

/// Queue depth per writer before callers wait (backpressure).
const QUEUE_PER_WRITER: usize = 8192;

struct Job {
    request: AppendRequest,
    reply: oneshot::Sender<Result<Appended>>,
}

/// Handle for submitting posts. Dropping every clone lets the writers drain and stop.
#[derive(Clone)]
pub struct Committer {
    shards: Arc<Vec<mpsc::Sender<Job>>>,
}

/// The writer tasks.
pub struct Writers {
    handles: Vec<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Writers {
    /// Stops taking new posts, commits (or fails) every queued one, and waits for the
    /// writers to finish.
    pub async fn drain(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

impl Committer {
    /// Starts `writers` writer tasks.
    pub fn start(
        store: DynStore,
        hub: Arc<Hub>,
        writers: usize,
        max_batch: usize,
        max_gap: u64,
    ) -> (Committer, Writers) {
        let max_gap = i64::try_from(max_gap).unwrap_or(i64::MAX);
        let mut shards = Vec::with_capacity(writers);
        let mut handles = Vec::with_capacity(writers);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        for _ in 0..writers.max(1) {
            let (tx, rx) = mpsc::channel(QUEUE_PER_WRITER);
            shards.push(tx);
            handles.push(tokio::spawn(writer(
                rx,
                stopped.clone(),
                store.clone(),
                hub.clone(),
                max_batch.max(1),
                max_gap,
            )));
        }
        (
            Committer {
                shards: Arc::new(shards),
            },
            Writers { handles, stop },
        )
    }

    /// Appends one post and waits for its outcome.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended> {
        let shard = (request.stream_id.as_u128() % self.shards.len() as u128) as usize;
        let (reply, answer) = oneshot::channel();
        self.shards[shard]
            .send(Job { request, reply })
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down; retry".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down; retry".into()))?
    }
}

async fn writer(
    mut rx: mpsc::Receiver<Job>,
    stop: tokio::sync::watch::Receiver<bool>,
    store: DynStore,
    hub: Arc<Hub>,
    max_batch: usize,
    max_gap: i64,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    let mut stopping = false;
    loop {
        let got = tokio::select! {
            n = rx.recv_many(&mut jobs, max_batch) => n,
            _ = crate::service::shutting_down(stop.clone()), if !stopping => {
                // Refuse new posts; what is already queued is still committed below.
                rx.close();
                stopping = true;
                continue;
            }
        };
        if got == 0 {
            return;
        }
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
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
