//! Key transparency at run time (DESIGN §12; every hashed byte in docs/kt.md): the epoch
//! publisher, one task per process ([`Kt::start`]), the proofs the key RPCs answer with
//! (`proof.rs`), the operator's audit, `secretd kt-verify` (`verify.rs`), and the checks
//! of another homeserver's heads and proofs against its pinned key (`check.rs`, used by
//! federation).
//!
//! **Publisher.** Every `kt_epoch_ms` the task asks the store to publish one epoch
//! (`store::kt`: one transaction; on Postgres one replica at a time under an advisory
//! lock, the others skip that epoch) and then tells this process's waiters the newest
//! tree size it knows — its own head, or the one another replica published (read
//! when the lock was taken), so a PostKey waiting on any replica learns within an epoch
//! that its key is in. It stops at [`Phase::Draining`](crate::shutdown::Phase): an epoch
//! in progress either commits or rolls back, and keys not yet logged are logged by the
//! next start (or another replica). The first epoch runs before the server announces
//! itself, so a fresh database has a head (of size 0) before the first call.
//!
//! **Signing key.** Heads are signed with the server's Ed25519 key (DESIGN §9, `secretd
//! federation-key`), which therefore exists with federation off as well: the data
//! directory's `federation-key`, created at the first start, or
//! `federation.signing_key_file`. Replicas must share it (the same file): heads signed
//! by two keys fail every client's check, and the publisher warns when it sees one.

mod cache;
pub mod check;
mod proof;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

pub use proof::ProofRequest;

use crate::config::Settings;
use crate::shutdown::Signal;
use crate::store::DynStore;
use crate::store::kt::{HeadSigner, PublishLimits, Published, TreeHead};

/// With nothing new to log, the newest head is re-signed with a new timestamp once it is
/// this old, so a served head is never much older than this (clients' freshness check).
pub const HEAD_REFRESH_MS: u64 = 60_000;

/// Test hook (`SECRETD_TESTHOOK_KT_PAUSE_MS`): every epoch that writes sleeps this long
/// inside its transaction before COMMIT, so a test can kill the process there.
const PAUSE_HOOK: &str = "SECRETD_TESTHOOK_KT_PAUSE_MS";

/// Key transparency of this process: the store, the signer and the newest tree size
/// known to be published.
pub struct Kt {
    store: DynStore,
    signer: HeadSigner,
    limits: PublishLimits,
    epoch: Duration,
    server_name: String,
    published: watch::Sender<u64>,
    /// The newest head this process's publisher saw (None until the first epoch, and
    /// after an epoch failed): proofs are read against it, one statement fewer (`proof.rs`).
    newest: Mutex<Option<TreeHead>>,
    /// The map's upper levels of the newest head proofs were verified against.
    map_cache: cache::MapCache,
    /// Log subtrees read before (they never change).
    log_cache: cache::LogCache,
    warned_foreign_head: AtomicBool,
    signal: Signal,
}

impl Kt {
    /// Key transparency over `store`, signing with `signer` (whose server name is this
    /// server's), with the epoch settings of `settings`; it stops publishing, and
    /// waiting for publications, when `signal` says the server drains.
    pub fn new(
        store: DynStore,
        signer: HeadSigner,
        settings: &Settings,
        signal: Signal,
    ) -> Arc<Kt> {
        let pause = std::env::var(PAUSE_HOOK)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        Arc::new(Kt {
            store,
            server_name: signer.server_name.clone(),
            signer,
            limits: PublishLimits {
                max_entries: settings.kt_max_entries_per_epoch,
                refresh_after_ms: HEAD_REFRESH_MS,
                pause_before_commit: pause,
            },
            epoch: Duration::from_millis(settings.kt_epoch_ms),
            published: watch::channel(0).0,
            newest: Mutex::new(None),
            map_cache: cache::MapCache::default(),
            log_cache: cache::LogCache::default(),
            warned_foreign_head: AtomicBool::new(false),
            signal,
        })
    }

    /// This server's `server_name` (in every entry, map key and head).
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The epoch length.
    pub fn epoch(&self) -> Duration {
        self.epoch
    }

    /// How long PostKey (and a FetchKey of a key posted just now) waits for the key's
    /// entry to be published: the epoch it was posted in, the next one in case another
    /// replica held the lock, and time for the transaction.
    pub fn publish_wait(&self) -> Duration {
        self.epoch * 3 + Duration::from_secs(1)
    }

    /// Runs the first epoch now (errors are logged: the task retries), then spawns the
    /// task that runs one every epoch until the server drains; it ends after the epoch
    /// in progress then.
    pub async fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.epoch_once().await;
        let kt = self.clone();
        let signal = self.signal.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(kt.epoch) => {}
                    _ = signal.draining() => return,
                }
                if signal.is_draining() {
                    return;
                }
                kt.epoch_once().await;
            }
        })
    }

    /// One epoch: publish (or learn the head another replica published) and wake the
    /// waiters when the log grew.
    pub async fn epoch_once(&self) {
        let now_ms = crate::time::now_micros().max(0) as u64 / 1000;
        let newest = match self
            .store
            .kt_publish(&self.signer, &self.limits, now_ms)
            .await
        {
            Ok(Published::Appended { head, entries }) => {
                crate::telemetry::kt_epoch("appended", entries, head.tree_size);
                if entries > 0 {
                    tracing::debug!(
                        tree_size = head.tree_size,
                        entries,
                        "key transparency: published a head"
                    );
                }
                Some(head)
            }
            Ok(Published::Resigned(head)) => {
                crate::telemetry::kt_epoch("resigned", 0, head.tree_size);
                Some(head)
            }
            Ok(Published::Unchanged(head)) => {
                self.check_signer(&head);
                Some(head)
            }
            Ok(Published::Busy) => {
                crate::telemetry::kt_epoch("busy", 0, 0);
                self.store.kt_latest_head().await.ok().flatten()
            }
            Err(e) => {
                crate::telemetry::kt_epoch("failed", 0, 0);
                // Proofs read the newest head from the database until an epoch works.
                *self.newest.lock().expect("not poisoned") = None;
                tracing::warn!("key transparency: the epoch failed and is retried: {e}");
                None
            }
        };
        if let Some(head) = newest {
            // Before the waiters are woken, so that they read against it.
            self.remember(&head);
            self.published.send_if_modified(|known| {
                let grew = head.tree_size > *known;
                *known = (*known).max(head.tree_size);
                grew
            });
        }
    }

    /// Warns once when the newest head was signed by another key or for another name
    /// than this process's: replicas that do not share the server key (or a renamed
    /// server) make heads that clients reject.
    fn check_signer(&self, head: &TreeHead) {
        if (head.key_id != self.signer.key_id || head.server_name != self.server_name)
            && !self.warned_foreign_head.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                head_key_id = head.key_id,
                head_server_name = head.server_name,
                key_id = self.signer.key_id,
                server_name = self.server_name,
                "key transparency: the newest head was signed by another key or for another \
                 server_name than this replica's; every replica of a homeserver must share \
                 its server key (federation.signing_key_file) and server_name, or clients \
                 reject the heads"
            );
        }
    }

    /// Keeps `head` as the newest known unless a newer one is kept already (a larger
    /// tree, or the same one signed later).
    fn remember(&self, head: &TreeHead) {
        let mut newest = self.newest.lock().expect("not poisoned");
        let newer = newest
            .as_ref()
            .is_none_or(|n| (head.tree_size, head.timestamp_ms) > (n.tree_size, n.timestamp_ms));
        if newer {
            *newest = Some(head.clone());
        }
    }

    /// The newest head this process's publisher saw, if its last epoch worked.
    pub fn newest_head(&self) -> Option<TreeHead> {
        self.newest.lock().expect("not poisoned").clone()
    }

    /// A receiver of the newest published tree size known here.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }
}
