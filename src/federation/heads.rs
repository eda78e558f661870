//! The tree heads of other homeservers seen here, and evidence of their equivocation
//! (DESIGN §12, docs/kt.md §9).
//!
//! Every head of a peer that verified under the key pinned for it — the head of a proof a
//! peer served with FetchUserKey, a peer's own head in ExchangeHeads, and the heads of
//! third servers a peer relays there — is compared with the heads seen of that server
//! before ([`HeadBook`]: per server the [`KEPT`] largest tree sizes, in memory). Two
//! heads that cannot both be honest are **evidence**:
//!
//! - one tree size with different roots (a fork: two views of the log),
//! - a larger tree size signed earlier than a smaller one (a rollback: an honest server's
//!   head timestamps never go backwards and its log never shrinks), or
//! - (ExchangeHeads, `exchange.rs`) a newer head that the server's own consistency proof
//!   does not lead to from the newest head held of it.
//!
//! Evidence is stored (`kt_evidence`), counted (`secretd_kt_equivocations_total{server}`),
//! logged at error, and from then on FetchKey of that server's users is
//! FAILED_PRECONDITION naming it and the evidence ([`Federation::refuse_equivocator`]).
//! Each replica reads the stored evidence at start and at every exchange round, so one
//! replica's finding reaches the others within a round.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::Federation;
use crate::error::Error;
use crate::kt::check::{self, Pinned};
use crate::proto;
use crate::store::kt::TreeHead;
use crate::store::kt_evidence::{Evidence, EvidenceKind};
use crate::wire;

/// Heads kept per server: the largest tree sizes seen.
pub const KEPT: usize = 64;

/// Most `seen_heads` an ExchangeHeads request or answer may carry.
pub const MAX_SEEN_HEADS: usize = 1_000;

/// Rows of evidence read back at start and at each round.
const EVIDENCE_READ: usize = 10_000;

/// The heads seen of other servers and the servers caught equivocating.
#[derive(Default)]
pub struct HeadBook {
    seen: Mutex<HashMap<String, BTreeMap<u64, TreeHead>>>,
    caught: Mutex<HashMap<String, String>>,
}

/// Whether two heads of one size commit to different trees.
fn forked(a: &TreeHead, b: &TreeHead) -> bool {
    a.tree_size == b.tree_size && (a.log_root != b.log_root || a.map_root != b.map_root)
}

/// Whether the larger of two heads was signed before the smaller.
fn rolled_back(a: &TreeHead, b: &TreeHead) -> bool {
    (a.tree_size > b.tree_size && a.timestamp_ms < b.timestamp_ms)
        || (b.tree_size > a.tree_size && b.timestamp_ms < a.timestamp_ms)
}

impl HeadBook {
    /// Compares `head` (verified) with the heads seen of its server and keeps it; the
    /// evidence when it contradicts one of them.
    pub fn observe(&self, head: &TreeHead, reported_by: &str, now_ms: u64) -> Option<Evidence> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let book = seen.entry(head.server_name.clone()).or_default();
        let contradiction = book.values().find_map(|old| {
            if forked(old, head) {
                Some(EvidenceKind::Fork)
            } else if rolled_back(old, head) {
                Some(EvidenceKind::Rollback)
            } else {
                None
            }
            .map(|kind| (kind, old.clone()))
        });
        if let Some((kind, first)) = contradiction {
            return Some(Evidence {
                homeserver: head.server_name.clone(),
                kind,
                found_at_ms: now_ms,
                reported_by: reported_by.to_string(),
                first,
                second: head.clone(),
            });
        }
        // Same size, same roots: the newer signature is kept.
        let newer = book
            .get(&head.tree_size)
            .is_none_or(|old| old.timestamp_ms < head.timestamp_ms);
        if newer {
            book.insert(head.tree_size, head.clone());
        }
        while book.len() > KEPT {
            book.pop_first();
        }
        None
    }

    /// The newest head (largest tree size) seen of each server, in wire form.
    pub fn newest(&self) -> Vec<proto::TreeHead> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.values()
            .filter_map(|book| book.last_key_value())
            .map(|(_, h)| wire::tree_head(h))
            .take(MAX_SEEN_HEADS)
            .collect()
    }

    /// The newest head (largest tree size) seen of `server`.
    pub fn newest_of(&self, server: &str) -> Option<TreeHead> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(server)?.last_key_value().map(|(_, h)| h.clone())
    }

    /// What is held against `server`, if it was caught equivocating.
    pub fn caught(&self, server: &str) -> Option<String> {
        let caught = self.caught.lock().unwrap_or_else(|p| p.into_inner());
        caught.get(server).cloned()
    }

    /// Remembers that `e`'s server equivocated (the first evidence is the one quoted);
    /// true when it was not known here before.
    fn catch(&self, e: &Evidence) -> bool {
        let mut caught = self.caught.lock().unwrap_or_else(|p| p.into_inner());
        if caught.contains_key(&e.homeserver) {
            return false;
        }
        caught.insert(e.homeserver.clone(), e.to_string());
        crate::telemetry::kt_equivocating_servers(caught.len());
        true
    }
}

impl Federation {
    /// The refusal of FetchKey of a user of `server` when it was caught equivocating.
    pub fn refuse_equivocator(&self, server: &str) -> Result<(), Error> {
        match self.heads.caught(server) {
            None => Ok(()),
            Some(evidence) => Err(Error::FailedPrecondition(format!(
                "homeserver {server:?} equivocated: this server holds two tree heads it signed \
                 that cannot both be honest ({evidence}; stored in table kt_evidence), so keys \
                 of its users are not served; an operator must settle it with that server's \
                 operator (see docs/kt.md §9)"
            ))),
        }
    }

    /// Reads the stored evidence (at start and every exchange round), so that what
    /// another replica found is refused here too.
    pub async fn load_evidence(&self) -> Result<(), Error> {
        for e in self.store.kt_evidence(EVIDENCE_READ).await? {
            if self.heads.catch(&e) {
                self.cache.forget_peer(&e.homeserver);
            }
        }
        Ok(())
    }

    /// Verifies `head`, said to be `server`'s, against the key pinned for it; `None` for
    /// a server with no pinned key (ignored) or this server itself.
    pub fn pinned_head(
        &self,
        server: &str,
        head: &proto::TreeHead,
    ) -> Option<Result<TreeHead, String>> {
        if server == self.server_name {
            return None;
        }
        let peer = self.peers.get(server)?;
        let pinned = Pinned {
            server_name: &peer.name,
            public_key: &peer.public_key,
        };
        Some(check::check_head(head, pinned))
    }

    /// Takes a verified head of another server into the book; evidence it completes is
    /// stored, counted, logged and refuses that server's users from now on. The evidence,
    /// if any.
    pub async fn head_seen(&self, head: &TreeHead, reported_by: &str) -> Option<Evidence> {
        let now_ms = crate::time::now_micros().max(0) as u64 / 1000;
        let evidence = self.heads.observe(head, reported_by, now_ms)?;
        self.record_evidence(&evidence).await;
        Some(evidence)
    }

    /// Stores, counts and logs `evidence`, and refuses its server's users from now on.
    pub async fn record_evidence(&self, evidence: &Evidence) {
        if let Err(e) = self.store.kt_add_evidence(evidence).await {
            tracing::error!(
                server = evidence.homeserver,
                "could not store evidence of equivocation (it is held in memory): {e}"
            );
        }
        if self.heads.catch(evidence) {
            crate::telemetry::kt_equivocation(&evidence.homeserver);
            self.cache.forget_peer(&evidence.homeserver);
            tracing::error!(
                server = evidence.homeserver,
                kind = evidence.kind.as_str(),
                "key transparency: homeserver {:?} equivocated: {evidence}; its users' keys \
                 are refused from now on (FAILED_PRECONDITION)",
                evidence.homeserver
            );
        }
    }

    /// The heads `peer` sent in ExchangeHeads (its own, checked for freshness, and those it
    /// saw of others): each verified against the key pinned for its server and taken in;
    /// heads of servers without a pinned key are ignored, and a bad one among the relayed
    /// heads is logged and skipped. An error says why `peer`'s own head is refused.
    pub async fn take_heads(
        &self,
        peer: &str,
        own: Option<&proto::TreeHead>,
        seen: &[proto::TreeHead],
    ) -> Result<(), String> {
        if seen.len() > MAX_SEEN_HEADS {
            return Err(format!(
                "{} seen heads were sent; at most {MAX_SEEN_HEADS} are taken",
                seen.len()
            ));
        }
        let reported_by = format!("ExchangeHeads from {peer}");
        let own = own.ok_or("own_head is missing: send this server's newest signed head")?;
        let own = match self.pinned_head(peer, own) {
            Some(Ok(head)) => head,
            Some(Err(why)) => return Err(format!("own_head: {why}")),
            None => {
                return Err(format!(
                    "own_head names no peer: {peer:?} is not pinned here"
                ));
            }
        };
        let now_ms = crate::time::now_micros().max(0) as u64 / 1000;
        check::check_fresh(&own, now_ms).map_err(|why| format!("own_head: {why}"))?;
        self.head_seen(&own, &reported_by).await;
        for head in seen {
            match self.pinned_head(&head.server_name, head) {
                None => {}
                Some(Ok(head)) => {
                    self.head_seen(&head, &reported_by).await;
                }
                Some(Err(why)) => tracing::warn!(
                    peer,
                    server = head.server_name,
                    "ExchangeHeads: a relayed head does not verify and is ignored: {why}"
                ),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(size: u64, root: u8, ts: u64) -> TreeHead {
        TreeHead {
            server_name: "c.test".into(),
            tree_size: size,
            log_root: [root; 32],
            map_root: [root; 32],
            timestamp_ms: ts,
            signature: vec![root, ts as u8],
            key_id: "k".into(),
        }
    }

    /// Re-signed heads, growth and answers that cross on the way are honest; one size
    /// with two roots and a larger size signed before a smaller are evidence.
    #[test]
    fn what_is_evidence() {
        let book = HeadBook::default();
        for h in [
            head(3, 1, 100),
            head(3, 1, 160),
            head(5, 2, 200),
            head(4, 9, 170),
        ] {
            assert_eq!(book.observe(&h, "t", 0), None, "{h:?}");
        }
        let fork = book.observe(&head(5, 3, 210), "t", 0).expect("a fork");
        assert_eq!(fork.kind, EvidenceKind::Fork);
        assert_eq!((fork.first.log_root[0], fork.second.log_root[0]), (2, 3));
        let rollback = book.observe(&head(2, 7, 300), "t", 0).expect("a rollback");
        assert_eq!(rollback.kind, EvidenceKind::Rollback);
        // The newest of each server is relayed: size 5, first seen root.
        let newest = book.newest();
        assert_eq!(newest.len(), 1);
        assert_eq!((newest[0].tree_size, newest[0].log_root[0]), (5, 2));
    }
}
