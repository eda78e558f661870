//! Members gossip key-log heads (DESIGN §12, docs/kt.md §10): every event a device sends
//! carries the newest head of its homeserver's log it verified, and a device that receives
//! one of its own homeserver checks it against its own view. A server that shows two
//! members two different logs (a split view) cannot prove a head of one log consistent
//! with the other: the receiving device keeps the evidence and alarms.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::proto::secret::TreeHead;
use crate::state::LogView;
use crate::transparency::verify::Head;

use super::Device;
use super::consistency::{Fork, Proved, one_log};
use super::keylog::{from_seen, head_of, seen};

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
    /// of one log (no conclusion before this device verified a head of its own).
    async fn prove_consistent(&mut self, theirs: &Head) -> Proved {
        let Some(mine) = self.state.home_log.as_ref().and_then(|v| v.head.as_ref()) else {
            return Ok(false);
        };
        let mine = from_seen(mine).map_err(|e| Fork(e.to_string()))?;
        one_log(&self.api, &self.pinned_log_key(), theirs, &mine).await
    }

    /// The pinned key of the homeserver's log (empty before first contact: nothing
    /// verifies under it).
    fn pinned_log_key(&self) -> Vec<u8> {
        self.state
            .home_log
            .as_ref()
            .map(LogView::key)
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
