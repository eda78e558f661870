//! Members gossip key-log heads (DESIGN §12, docs/kt.md §10): every event a device sends
//! carries the newest head of its homeserver's log it verified, and a device that receives
//! one of its own homeserver checks it against its own view. A server that shows two
//! members two different logs (a split view) cannot prove a head of one log consistent
//! with the other: the receiving device keeps the evidence and alarms.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::proto::secret::TreeHead;
use crate::transparency::verify::Head;

use super::Device;
use super::keylog::{from_seen, hashes, head_of, seen};

/// How many times the two reads that compare a gossiped head with this device's are
/// retried when a new epoch lands between them.
const ATTEMPTS: usize = 3;

/// The heads already found consistent (size, log root), so an event costs no round trip
/// once its sender's head was checked. Bounded: cleared when it grows past this.
pub(super) const CHECKED_CAP: usize = 1024;

/// The checked-heads cache of a device.
pub(super) type Checked = HashSet<(u64, [u8; 32])>;

impl Device {
    /// The heads this device gossips in the events it sends: the newest head of its
    /// homeserver's log it verified (none before the first).
    pub(super) fn heads_to_gossip(&self) -> Vec<TreeHead> {
        let Some(h) = self.state.home_log.as_ref().and_then(|v| v.head.as_ref()) else {
            return Vec::new();
        };
        let Ok(h) = from_seen(h) else {
            return Vec::new();
        };
        vec![TreeHead {
            server_name: h.server_name,
            tree_size: h.tree_size,
            log_root: h.log_root.to_vec(),
            map_root: h.map_root.to_vec(),
            timestamp_ms: h.timestamp_ms,
            signature: h.signature,
            ..Default::default()
        }]
    }

    /// Checks the heads `sender` gossiped in an authenticated event against this device's
    /// view of its homeserver's log. Heads of other servers, and heads that do not verify
    /// under the pinned key (a member cannot forge the server's signature, so such a head
    /// proves nothing about the server), are ignored. A validly signed head the server
    /// cannot prove consistent with its own newest head is a split view:
    /// [`Error::LogFork`], with the evidence kept in the device's state.
    pub(super) async fn check_gossip(&mut self, sender: &str, heads: &[TreeHead]) -> Result<()> {
        let Some(view) = self.state.home_log.clone() else {
            return Ok(());
        };
        let key = self.pinned_log_key();
        for gossiped in heads.iter().filter(|h| h.server_name == view.server_name) {
            let Ok(theirs) = head_of(gossiped) else {
                continue;
            };
            if theirs.verify_signature(&key).is_err()
                || self.checked.contains(&(theirs.tree_size, theirs.log_root))
            {
                continue;
            }
            match self.prove_consistent(&theirs).await {
                Ok(true) => {
                    if self.checked.len() >= CHECKED_CAP {
                        self.checked.clear();
                    }
                    self.checked.insert((theirs.tree_size, theirs.log_root));
                }
                // The log grew between the two reads each time: try with a later event.
                Ok(false) => {}
                Err(Fork(why)) => return Err(self.fork(sender, &theirs, why)),
            }
        }
        Ok(())
    }

    /// Whether the homeserver proves `theirs` and this device's newest head to be heads
    /// of one log: its newest head read twice in a row, once with the consistency proof
    /// from `theirs` and once from this device's head (keeping it, as every read does).
    /// `Ok(false)`: the log grew between the reads every time (no conclusion).
    async fn prove_consistent(&mut self, theirs: &Head) -> std::result::Result<bool, Fork> {
        let mine = self.known_tree_size();
        for _ in 0..ATTEMPTS {
            let from_theirs = match self.api.tree_head(theirs.tree_size).await {
                Ok(a) => a,
                Err(e) if e.code() == Some(tonic::Code::InvalidArgument) => {
                    return Err(Fork(format!(
                        "the homeserver signed a head of size {} for a member, but says its \
                         log never reached that size ({e})",
                        theirs.tree_size
                    )));
                }
                // Unreachable now: nothing learned, nothing alarmed.
                Err(_) => return Ok(false),
            };
            let Some(newest) = from_theirs.head.as_ref().and_then(|h| head_of(h).ok()) else {
                return Ok(false);
            };
            if newest.verify_signature(&self.pinned_log_key()).is_err() {
                return Ok(false);
            }
            let proof = hashes(&from_theirs.consistency, "a consistency hash")
                .map_err(|e| Fork(e.to_string()))?;
            if newest.tree_size == theirs.tree_size {
                if newest.log_root != theirs.log_root || newest.map_root != theirs.map_root {
                    return Err(Fork(format!(
                        "two heads of size {} with different roots, both signed by the \
                         homeserver",
                        theirs.tree_size
                    )));
                }
            } else if let Err(e) = newest.verify_extends(theirs, &proof) {
                return Err(Fork(format!(
                    "the homeserver's newest head (size {}) does not extend the member's \
                     (size {}): {e}",
                    newest.tree_size, theirs.tree_size
                )));
            }
            // The same newest head must extend this device's own.
            let from_mine = match self.api.tree_head(mine).await {
                Ok(b) => b,
                Err(_) => return Ok(false),
            };
            let Some(head) = from_mine.head.as_ref() else {
                return Ok(false);
            };
            let again = match self.accept_head(head, &from_mine.consistency).await {
                Ok(h) => h,
                Err(e @ Error::Untrusted(_)) => return Err(Fork(e.to_string())),
                Err(_) => return Ok(false),
            };
            if again.tree_size == newest.tree_size {
                if again.log_root != newest.log_root {
                    return Err(Fork(format!(
                        "two heads of size {} with different roots in two reads",
                        newest.tree_size
                    )));
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The pinned key of the homeserver's log (empty before first contact: nothing
    /// verifies under it).
    fn pinned_log_key(&self) -> Vec<u8> {
        self.state
            .home_log
            .as_ref()
            .and_then(|v| hex::decode(&v.public_key).ok())
            .unwrap_or_default()
    }

    /// Keeps the evidence of a split view and makes the alarm.
    fn fork(&mut self, sender: &str, theirs: &Head, why: String) -> Error {
        let mine = self.state.home_log.as_ref().and_then(|v| v.head.clone());
        let evidence = serde_json::json!({
            "kind": "split view",
            "gossiped_by": sender,
            "gossiped_head": seen(theirs),
            "this_device_head": mine,
            "server_public_key": self.state.home_log.as_ref().map(|v| v.public_key.clone()),
            "why": why,
        })
        .to_string();
        if let Some(v) = &mut self.state.home_log
            && !v.forks.contains(&evidence)
        {
            v.forks.push(evidence.clone());
        }
        Error::LogFork {
            what: format!(
                "member {sender} saw a head of size {} that the homeserver cannot prove \
                 consistent with this device's log: {why}",
                theirs.tree_size
            ),
            evidence,
        }
    }

    /// Acknowledges the split views found so far (after the user kept the evidence): this
    /// device goes on; a new one alarms again.
    pub fn acknowledge_log_fork(&mut self) -> usize {
        let Some(v) = &mut self.state.home_log else {
            return 0;
        };
        let n = v.forks.len();
        let acknowledged: Vec<String> = std::mem::take(&mut v.forks);
        v.forks_acknowledged.extend(acknowledged);
        n
    }
}

/// Why a gossiped head and this device's view cannot both be true.
struct Fork(String);
