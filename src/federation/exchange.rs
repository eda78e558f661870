//! The exchange of tree heads (DESIGN §12, docs/kt.md §9): every
//! `federation.exchange_heads_ms` (default a minute; 0 = off) this replica calls
//! ExchangeHeads on every configured peer with its own newest head and the newest heads
//! it has seen of others, and takes in what each peer answers
//! ([`Federation::take_heads`]). A round first reads the evidence stored by other
//! replicas. A peer that is down or refuses is logged and asked again next round.

use std::sync::Arc;
use std::time::Duration;

use super::Federation;
use super::client::CallError;
use crate::proto::federation::ExchangeHeadsRequest;
use crate::shutdown::Signal;
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
        let request = ExchangeHeadsRequest {
            own_head: Some(own.clone()),
            seen_heads: self.heads.newest(),
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
}
