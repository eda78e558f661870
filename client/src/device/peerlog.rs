//! Keys of users of other homeservers and their key logs (DESIGN §12, docs/kt.md §5): this
//! device's homeserver passes the other homeserver's proof on unchanged (after checking it
//! against the key it pinned for that peer), and the device checks it again against the key
//! *it* pinned for that homeserver — learned from the homeserver itself at first contact,
//! so its own homeserver cannot substitute it — with the heads of each homeserver kept
//! apart. A proof only leads from tree size 0, so consistency with the head kept is read
//! from that homeserver: its newest head, proved to extend both.

use crate::api::{Api, UserKeys};
use crate::error::Result;
use crate::proto::secret::TreeHead;
use crate::state::LogView;
use crate::time::now_ms;
use crate::transparency::verify::{Hash, Head};
use crate::user::UserRef;

use super::Device;
use super::consistency::{Fork, one_log};
use super::keylog::{check_fresh, check_proof, from_seen, head_of, refused, seen};

impl Device {
    /// Checks the keys served for `who`, a user of another homeserver, against that
    /// homeserver's log: the fingerprints it holds for them (newest first), or `None` when
    /// the answer carries no proof (a homeserver older than key transparency, or a user
    /// not logged yet): such a key is checked by pins and safety numbers only.
    pub(crate) async fn verify_served_remote(
        &mut self,
        who: &UserRef,
        keys: &UserKeys,
    ) -> Result<Option<Vec<Hash>>> {
        let Some(proof) = keys.proof.as_ref() else {
            // Once a homeserver's keys came with proofs, a key without one is a downgrade.
            if self.state.peer_logs.contains_key(&who.homeserver) {
                return Err(refused(format!(
                    "the key of user {} came without the proof from the log of homeserver {}, \
                     whose keys came with proofs before",
                    crate::user::display(who),
                    who.homeserver
                )));
            }
            return Ok(None);
        };
        let head = proof
            .head
            .as_ref()
            .ok_or_else(|| refused("a proof without a tree head".into()))?;
        if !self.state.peer_logs.contains_key(&who.homeserver)
            && self.api_at(&who.homeserver, None).await.is_err()
        {
            // Not reachable from here (its client endpoint unknown): its key cannot be
            // pinned, so its proofs are this device's homeserver's word (it checked them).
            return Ok(None);
        }
        let head = self.accept_peer_head(&who.homeserver, head).await?;
        check_proof(&head, who, proof, keys).map(Some)
    }

    /// This device's view of homeserver `server`'s log and a connection to it, pinning
    /// the key that signs its heads at first use (GetTreeHead there).
    async fn peer_log(&mut self, server: &str) -> Result<(LogView, Api)> {
        let api = self.api_at(server, None).await?;
        if let Some(view) = self.state.peer_logs.get(server) {
            return Ok((view.clone(), api));
        }
        let answer = api.tree_head(0).await.map_err(|e| {
            refused(format!(
                "cannot learn the key that signs the log of homeserver {server}: {e}"
            ))
        })?;
        let head = answer
            .head
            .as_ref()
            .ok_or_else(|| refused(format!("GetTreeHead at {server} answered without a head")))?;
        let head = head_of(head)?;
        if head.server_name != server {
            return Err(refused(format!(
                "homeserver {server} signs its log as {:?}",
                head.server_name
            )));
        }
        head.verify_signature(&answer.public_key)?;
        let view = LogView {
            server_name: server.to_string(),
            public_key: hex::encode(&answer.public_key),
            head: Some(seen(&head)),
            own_seq: 0,
            forks: Vec::new(),
            forks_acknowledged: Vec::new(),
        };
        self.state
            .peer_logs
            .insert(server.to_string(), view.clone());
        Ok((view, api))
    }

    /// Checks a head of homeserver `server` (signature under the pinned key, freshness,
    /// one log with the head kept) and keeps the newer of the two.
    async fn accept_peer_head(&mut self, server: &str, head: &TreeHead) -> Result<Head> {
        let (view, api) = self.peer_log(server).await?;
        let head = head_of(head)?;
        if head.server_name != server {
            return Err(refused(format!(
                "a tree head of {:?} for a user of homeserver {server}",
                head.server_name
            )));
        }
        let key = view.key();
        head.verify_signature(&key)?;
        check_fresh(&head, now_ms())?;
        let Some(last) = view.head.as_ref().map(from_seen).transpose()? else {
            self.keep_peer_head(server, &head);
            return Ok(head);
        };
        // One log with the head kept (read from that homeserver when the sizes differ; a
        // log that grew between the reads leaves it for the next fetch).
        if let Err(Fork(why)) = one_log(&api, &key, &last, &head).await {
            return Err(refused(format!(
                "homeserver {server} shows two logs: {why}"
            )));
        }
        if head.tree_size >= last.tree_size {
            self.keep_peer_head(server, &head);
        }
        Ok(head)
    }

    fn keep_peer_head(&mut self, server: &str, head: &Head) {
        if let Some(v) = self.state.peer_logs.get_mut(server) {
            v.head = Some(seen(head));
        }
    }
}
