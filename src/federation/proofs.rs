//! The key transparency proof of a key fetched from a peer (DESIGN §12, docs/kt.md §9):
//! verified against the key pinned for the peer before the keys are served or cached, and
//! then passed on unchanged, so that clients can verify the peer's signature themselves.
//!
//! - A proof that does not verify (head signature, freshness, map path, entry chain, the
//!   keys served not the logged ones): UNAVAILABLE, "homeserver X served a key for user N
//!   whose transparency proof does not verify: …", counted as outcome `invalid_proof`;
//!   nothing is cached.
//! - A proof whose head contradicts a head seen of the peer before (`heads.rs`):
//!   FAILED_PRECONDITION, and the peer's users are refused from then on.
//! - No proof (a peer older than key transparency, or a user not logged yet): the keys
//!   are served without one, and a warning is logged.

use super::Federation;
use super::client::unavailable;
use crate::domain::UserId;
use crate::error::Error;
use crate::kt::check::{self, Pinned};
use crate::proto;

impl Federation {
    /// Checks `proof`, which peer `peer` sent with `keys` of its user `user`; the proof to
    /// serve (unchanged) or the refusal.
    pub(super) async fn check_fetched_proof(
        &self,
        peer: &str,
        user: UserId,
        keys: &proto::FetchKeyResponse,
        proof: Option<proto::KeyProof>,
    ) -> Result<Option<proto::KeyProof>, Error> {
        let Some(proof) = proof else {
            tracing::warn!(
                peer,
                user = user.get(),
                "FetchUserKey: the peer sent no key transparency proof (a version without \
                 key transparency, or the user is not logged yet); the key is served without one"
            );
            return Ok(None);
        };
        let Some(target) = self.peers.get(peer) else {
            return Err(Error::FailedPrecondition(format!(
                "homeserver {peer:?} is not a federation peer of this server"
            )));
        };
        let pinned = Pinned {
            server_name: &target.name,
            public_key: &target.public_key,
        };
        let current = keys
            .current_key
            .as_ref()
            .ok_or_else(|| unavailable(peer, format!("answered without a key for user {user}")))?;
        let now_ms = crate::time::now_micros().max(0) as u64 / 1000;
        let user_id = user.get().max(0) as u64;
        // A head that verifies is the peer's word even when the rest does not: it is
        // compared with the heads seen of the peer first.
        if let Some(Ok(head)) = proof.head.as_ref().map(|h| check::check_head(h, pinned))
            && let Some(evidence) = self.head_seen(&head, "FetchUserKey").await
        {
            return Err(Error::FailedPrecondition(format!(
                "homeserver {peer:?} served a key for user {user} under a tree head that \
                 contradicts one it signed before: {evidence}; keys of its users are not \
                 served (see docs/kt.md §9)"
            )));
        }
        match check::check_key_proof(&proof, user_id, current, &keys.past_keys, pinned, now_ms) {
            Ok(_) => Ok(Some(proof)),
            Err(why) => {
                crate::telemetry::federation_call(peer, "out", "invalid_proof");
                tracing::warn!(
                    peer,
                    user = user.get(),
                    "FetchUserKey: the proof does not verify: {why}"
                );
                Err(Error::Unavailable(format!(
                    "homeserver {peer:?} served a key for user {user} whose transparency proof \
                     does not verify: {why}; the key is not used (try again later; if it \
                     persists, the path to that server or the server itself is serving keys \
                     it did not log)"
                )))
            }
        }
    }
}
