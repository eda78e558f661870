//! The exchange of tree heads (DESIGN §12, docs/kt.md §9): every
//! `federation.exchange_heads_ms` (default a minute; 0 = off) this replica calls
//! ExchangeHeads on every configured peer with its own newest head and the newest heads
//! it has seen of others, and takes in what each peer answers
//! ([`Federation::take_heads`]). The request names the tree size of the newest head held
//! of the peer, and the peer's own head must extend it by the consistency proof it
//! answers with (evidence otherwise). A round first reads the evidence stored by other
//! replicas. A peer that is down or refuses is logged and asked again next round.

use std::sync::Arc;
use std::time::Duration;

use super::Federation;
use super::client::CallError;
use crate::merkle::log::{self, Hash};
use crate::proto::federation::ExchangeHeadsRequest;
use crate::shutdown::Signal;
use crate::store::kt::TreeHead;
use crate::store::kt_evidence::{Evidence, EvidenceKind};
use crate::wire;

impl Federation {
    /// Spawns the task that runs a round every `federation.exchange_heads_ms` until the
    /// server drains (none when that is 0).
    pub fn spawn_exchange(self: &Arc<Self>, signal: Signal) {
        let every = Duration::from_millis(self.settings.exchange_heads_ms);
        if every.is_zero() {
            tracing::info!("federation.exchange_heads_ms is 0: tree heads are not exchanged");
            return;
        }
        let federation = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = signal.draining() => return,
                }
                if signal.is_draining() {
                    return;
                }
                federation.exchange_round().await;
            }
        });
    }

    /// One round: the stored evidence, then every peer in turn.
    pub async fn exchange_round(&self) {
        if let Err(e) = self.load_evidence().await {
            tracing::warn!("ExchangeHeads: could not read the stored evidence: {e}");
        }
        let own = match self.store.kt_latest_head().await {
            Ok(Some(head)) => wire::tree_head(&head),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("ExchangeHeads: could not read this server's newest head: {e}");
                return;
            }
        };
        for peer in self.peers.names() {
            self.exchange_with(&peer, &own).await;
        }
    }

    /// ExchangeHeads with `peer`, sending `own`.
    async fn exchange_with(&self, peer: &str, own: &crate::proto::TreeHead) {
        let held = self.heads.newest_of(peer);
        let request = ExchangeHeadsRequest {
            own_head: Some(own.clone()),
            seen_heads: self.heads.newest(),
            known_tree_size: held.as_ref().map_or(0, |h| h.tree_size),
        };
        let answer = self
            .call(
                peer,
                super::EXCHANGE_HEADS_PATH,
                request,
                |mut client, request| async move { client.exchange_heads(request).await },
            )
            .await;
        match answer {
            Ok(answer) => {
                let taken = self
                    .take_heads(peer, answer.own_head.as_ref(), &answer.seen_heads)
                    .await;
                if taken.is_ok()
                    && let (Some(held), Some(Some(Ok(new)))) = (
                        held,
                        answer.own_head.as_ref().map(|h| self.pinned_head(peer, h)),
                    )
                {
                    self.check_extends(peer, held, new, &answer.consistency)
                        .await;
                }
                let outcome = match &taken {
                    Ok(()) => "ok",
                    Err(_) => "invalid_answer",
                };
                crate::telemetry::federation_call(peer, "out", outcome);
                if let Err(why) = taken {
                    tracing::warn!(peer, "ExchangeHeads: the peer's answer is refused: {why}");
                }
            }
            Err(CallError::Refused(status)) => {
                crate::telemetry::federation_call(peer, "out", "refused");
                tracing::warn!(
                    peer,
                    code = ?status.code(),
                    detail = status.message(),
                    "ExchangeHeads: the peer refused the call"
                );
            }
            Err(CallError::Failed(e)) => {
                tracing::debug!(peer, "ExchangeHeads: no answer: {e}");
            }
        }
    }

    /// Whether `new`, `peer`'s own head, extends `held`, the newest head held of it, by
    /// the consistency proof it sent; evidence when it does not. (Equal sizes and smaller
    /// ones are the fork and rollback rules' business.)
    async fn check_extends(
        &self,
        peer: &str,
        held: TreeHead,
        new: TreeHead,
        consistency: &[Vec<u8>],
    ) {
        if new.tree_size <= held.tree_size {
            return;
        }
        let proof: Option<Vec<Hash>> = consistency
            .iter()
            .map(|h| Hash::try_from(h.as_slice()).ok())
            .collect();
        let extends = proof.is_some_and(|proof| {
            log::verify_consistency(
                (held.tree_size, &held.log_root),
                (new.tree_size, &new.log_root),
                &proof,
            )
        });
        if !extends {
            let evidence = Evidence {
                homeserver: peer.to_string(),
                kind: EvidenceKind::Inconsistent,
                found_at_ms: crate::time::now_micros().max(0) as u64 / 1000,
                reported_by: format!("ExchangeHeads from {peer}"),
                first: held,
                second: new,
            };
            self.record_evidence(&evidence).await;
        }
    }
}
