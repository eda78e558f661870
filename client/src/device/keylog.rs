//! The device and its homeserver's key log (DESIGN §12, docs/kt.md §5): every key of a
//! local user it uses is checked against the signed, append-only log — the head signed by
//! the key pinned at first contact, fresh, extending the last head this device saw; the
//! user's entry chain; the map path of the newest entry; the served key being that entry's
//! — and the device watches its own user's entries: a key it never posted is an alarm.

use crate::api::UserKeys;
use crate::error::{Error, Result};
use crate::proto::secret::{KeyProof, TreeHead};
use crate::state::{LogView, SeenHead};
use crate::time::now_ms;
use crate::transparency::verify::{self, Entry, Hash, Head};
use crate::user::{self, UserRef};

use super::Device;

/// A head older than this (or this far in the future) is refused: the server re-signs
/// its newest head every minute when nothing changes.
pub const MAX_HEAD_AGE_MS: u64 = 10 * 60 * 1000;

/// Refuses a head dated more than [`MAX_HEAD_AGE_MS`] before or after `now_ms`.
pub(crate) fn check_fresh(head: &Head, now_ms: i64) -> Result<()> {
    let now = now_ms.max(0) as u64;
    if head.timestamp_ms.saturating_add(MAX_HEAD_AGE_MS) < now
        || head.timestamp_ms > now.saturating_add(MAX_HEAD_AGE_MS)
    {
        return Err(refused(format!(
            "the tree head of homeserver {} is dated {} ms from now: a stale head is being \
             replayed, or that log is not kept current",
            head.server_name,
            head.timestamp_ms as i128 - now as i128
        )));
    }
    Ok(())
}

pub(crate) fn refused(what: String) -> Error {
    Error::Untrusted(format!("key transparency: {what}"))
}

pub(crate) fn hash32(bytes: &[u8], what: &str) -> Result<Hash> {
    bytes
        .try_into()
        .map_err(|_| refused(format!("{what} is not 32 bytes")))
}

/// A proto head as the verifier's type.
pub(crate) fn head_of(h: &TreeHead) -> Result<Head> {
    Ok(Head {
        server_name: h.server_name.clone(),
        tree_size: h.tree_size,
        log_root: hash32(&h.log_root, "a log root")?,
        map_root: hash32(&h.map_root, "a map root")?,
        timestamp_ms: h.timestamp_ms,
        signature: h.signature.clone(),
    })
}

/// A head as the device keeps it.
pub(crate) fn seen(h: &Head) -> SeenHead {
    SeenHead {
        server_name: h.server_name.clone(),
        tree_size: h.tree_size,
        log_root: hex::encode(h.log_root),
        map_root: hex::encode(h.map_root),
        timestamp_ms: h.timestamp_ms,
        signature: hex::encode(&h.signature),
    }
}

/// A kept head as the verifier's type.
pub(crate) fn from_seen(h: &SeenHead) -> Result<Head> {
    let unhex = |s: &str, what: &str| -> Result<Vec<u8>> {
        hex::decode(s).map_err(|_| refused(format!("a kept {what} is not hex")))
    };
    Ok(Head {
        server_name: h.server_name.clone(),
        tree_size: h.tree_size,
        log_root: hash32(&unhex(&h.log_root, "root")?, "a kept root")?,
        map_root: hash32(&unhex(&h.map_root, "root")?, "a kept root")?,
        timestamp_ms: h.timestamp_ms,
        signature: unhex(&h.signature, "signature")?,
    })
}

/// A proof's entries, newest first, as the verifier's type.
fn entries_of(p: &KeyProof) -> Result<Vec<Entry>> {
    p.entries
        .iter()
        .map(|e| {
            Ok(Entry {
                seq: e.seq,
                fingerprint: hash32(&e.fingerprint, "a logged fingerprint")?,
                posted_at_ms: e.posted_at_ms,
                prev_entry_hash: hash32(&e.prev_entry_hash, "a previous-entry hash")?,
            })
        })
        .collect()
}

/// Checks a proof whose head was accepted: the entry chain of `who` (hashed with the
/// head's server name), the map path of the newest entry, and the served current key
/// being that entry's. The fingerprints the log holds for `who`, newest first.
pub(crate) fn check_proof(
    head: &Head,
    who: &UserRef,
    proof: &KeyProof,
    keys: &UserKeys,
) -> Result<Vec<Hash>> {
    let name = user::display(who);
    let entries = entries_of(proof)?;
    let newest = verify::verify_chain(&head.server_name, who.user_id, &entries)?;
    verify::verify_map_path(
        &verify::map_key(&head.server_name, who.user_id),
        &newest,
        &hashes(&proof.map_path, "a map path hash")?,
        &head.map_root,
    )?;
    verify::refuse_erased(&head.server_name, &name, &entries)?;
    let served = hash32(
        &crate::crypto::sha256(&keys.current.key_data),
        "a fingerprint",
    )?;
    if entries[0].fingerprint != served {
        return Err(refused(format!(
            "the homeserver serves key {} for user {name}, but the log of {} holds {} as \
             their current key: the served key is not in the log (a key posted a moment ago \
             is logged within a second; if this persists the server is serving an unlogged key)",
            hex::encode(served),
            head.server_name,
            hex::encode(entries[0].fingerprint)
        )));
    }
    Ok(entries.iter().map(|e| e.fingerprint).collect())
}

pub(crate) fn hashes(list: &[Vec<u8>], what: &str) -> Result<Vec<Hash>> {
    list.iter().map(|h| hash32(h, what)).collect()
}

impl Device {
    /// The device's view of its homeserver's log, pinning the key that signs its heads at
    /// first use.
    pub(crate) async fn home_log(&mut self) -> Result<LogView> {
        if let Some(view) = &self.state.home_log {
            return Ok(view.clone());
        }
        // Trust on first use: the key GetTreeHead names, checked against the head it comes
        // with; from now on every head must verify under this pinned key.
        let answer = self.api.tree_head(0).await.map_err(|e| {
            refused(format!(
                "cannot learn the key that signs this homeserver's log: {e}"
            ))
        })?;
        let head = answer
            .head
            .as_ref()
            .ok_or_else(|| refused("GetTreeHead answered without a head".into()))?;
        let key = answer.public_key;
        head_of(head)?.verify_signature(&key)?;
        let server_name = head.server_name.clone();
        let view = LogView {
            server_name,
            public_key: hex::encode(key),
            head: None,
            own_seq: 0,
            forks: Vec::new(),
            forks_acknowledged: Vec::new(),
        };
        self.state.home_log = Some(view.clone());
        Ok(view)
    }

    /// The tree size of the newest head this device verified (0: none).
    pub(crate) fn known_tree_size(&self) -> u64 {
        self.state
            .home_log
            .as_ref()
            .and_then(|v| v.head.as_ref())
            .map_or(0, |h| h.tree_size)
    }

    /// Checks a head the server sent (signature under the pinned key, freshness,
    /// extending the last head seen) and keeps it.
    pub(crate) async fn accept_head(
        &mut self,
        head: &TreeHead,
        consistency: &[Vec<u8>],
    ) -> Result<Head> {
        let view = self.home_log().await?;
        let head = head_of(head)?;
        if head.server_name != view.server_name {
            return Err(refused(format!(
                "a tree head of {:?} from homeserver {:?}",
                head.server_name, view.server_name
            )));
        }
        head.verify_signature(&view.key())?;
        check_fresh(&head, now_ms())?;
        if let Some(last) = &view.head {
            let last = from_seen(last)?;
            head.verify_extends(&last, &hashes(consistency, "a consistency hash")?)?;
        }
        let keep = view
            .head
            .as_ref()
            .is_none_or(|h| head.tree_size >= h.tree_size);
        if keep && let Some(v) = &mut self.state.home_log {
            v.head = Some(seen(&head));
        }
        Ok(head)
    }

    /// Checks the keys the homeserver served for local user `who` against its log;
    /// returns the fingerprints the log holds for them (newest first).
    pub(crate) async fn verify_served(
        &mut self,
        who: &UserRef,
        keys: &UserKeys,
    ) -> Result<Vec<Hash>> {
        let proof = keys.proof.as_ref().ok_or_else(|| {
            refused(format!(
                "the homeserver sent the key of user {} without its proof from the key log",
                user::display(who)
            ))
        })?;
        let head = proof
            .head
            .as_ref()
            .ok_or_else(|| refused("a proof without a tree head".into()))?;
        let head = self.accept_head(head, &proof.consistency).await?;
        check_proof(&head, who, proof, keys)
    }
    /// Watches this user's own entries in the homeserver's log: every entry since the last
    /// check must be this device's key. Returns how many new entries were checked; a key
    /// this device never posted is [`Error::KeyAlarm`] with the evidence, and stays one
    /// (every later check alarms again) until it is acknowledged.
    pub async fn monitor_own_key(&mut self) -> Result<usize> {
        let view = self.home_log().await?;
        if let Some(evidence) = view.forks.first() {
            return Err(Error::LogFork {
                what: "a member's gossiped tree head and this device's log of the homeserver \
                       cannot both be true (found earlier; not acknowledged yet)"
                    .into(),
                evidence: evidence.clone(),
            });
        }
        let after = view.own_seq;
        let Some((head, entries)) = self.own_entries(after).await? else {
            return Ok(0);
        };
        let mine = self.fingerprint();
        let fresh: Vec<&Entry> = entries.iter().filter(|e| e.seq > after).collect();
        if let Some(foreign) = fresh.iter().rev().find(|e| e.fingerprint != mine) {
            // This device never erases its account: an erased entry is the server's.
            let what = match foreign.is_erasure() {
                true => format!(
                    "entry {} (logged at {}) records that the homeserver erased this account \
                     (user {}): the server logged the account as erased, and this device did \
                     not ask for it; its key {} is no longer served",
                    foreign.seq,
                    crate::time::format_utc_ms(foreign.posted_at_ms as i64),
                    self.me.user_id,
                    hex::encode(mine)
                ),
                false => format!(
                    "entry {} (key {}, logged at {}) is not this device's key {}",
                    foreign.seq,
                    hex::encode(foreign.fingerprint),
                    crate::time::format_utc_ms(foreign.posted_at_ms as i64),
                    hex::encode(mine)
                ),
            };
            let evidence = serde_json::json!({
                "head": seen(&head),
                "server_public_key": view.public_key,
                "user": self.me.user_id,
                "this_device_key": hex::encode(mine),
                "entries": entries.iter().map(|e| serde_json::json!({
                    "seq": e.seq, "fingerprint": hex::encode(e.fingerprint),
                    "posted_at_ms": e.posted_at_ms, "prev_entry_hash": hex::encode(e.prev_entry_hash),
                })).collect::<Vec<_>>(),
            });
            return Err(Error::KeyAlarm {
                what,
                newest_seq: entries[0].seq,
                evidence: evidence.to_string(),
            });
        }
        let checked = fresh.len();
        self.advance_own_seq(entries[0].seq);
        Ok(checked)
    }

    /// Acknowledges a key alarm: the user's entries through `seq` (the alarm's
    /// `newest_seq`) are taken as seen, whatever key they hold, so this device goes on;
    /// entries after it are checked as before. The log itself still holds the foreign
    /// key (it is append-only): the user's contacts who pinned this device's key are
    /// warned when the server serves the other one, and new contacts are not — which is
    /// why the alarm tells the user to compare safety numbers and report it.
    pub async fn acknowledge_key_alarm(&mut self, seq: u64) -> Result<()> {
        let after = self.home_log().await?.own_seq;
        let newest = self
            .own_entries(after)
            .await?
            .map_or(after, |(_, e)| e[0].seq);
        if seq > newest {
            return Err(Error::State(format!(
                "the key log holds entries of user {} up to {newest}: there is no entry {seq} \
                 to acknowledge",
                self.me.user_id
            )));
        }
        self.advance_own_seq(seq);
        Ok(())
    }

    fn advance_own_seq(&mut self, seq: u64) {
        if let Some(v) = &mut self.state.home_log {
            v.own_seq = v.own_seq.max(seq);
        }
    }

    /// This user's entries after `after` (always at least the newest), verified against
    /// the newest head: head, chain and map path. `None` when the user has no entry yet.
    async fn own_entries(&mut self, after: u64) -> Result<Option<(Head, Vec<Entry>)>> {
        let proof = match self
            .api
            .monitor_key(self.me.user_id, after, self.known_tree_size())
            .await
        {
            Ok(proof) => proof,
            // Not logged yet (a key posted a moment ago, or a backlog being logged): nothing
            // to check. Once this device verified an entry, entries cannot disappear.
            Err(e) if e.code() == Some(tonic::Code::NotFound) && after == 0 => return Ok(None),
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                return Err(refused(format!(
                    "the homeserver says user {} has no entry in its key log, but this device \
                     verified entry {after} before: entries were removed from the log",
                    self.me.user_id
                )));
            }
            Err(e) => return Err(e),
        };
        let head = proof
            .head
            .as_ref()
            .ok_or_else(|| refused("a proof without a tree head".into()))?;
        let head = self.accept_head(head, &proof.consistency).await?;
        let entries = entries_of(&proof)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let newest = verify::verify_chain(&head.server_name, self.me.user_id, &entries)?;
        verify::verify_map_path(
            &verify::map_key(&head.server_name, self.me.user_id),
            &newest,
            &hashes(&proof.map_path, "a map path hash")?,
            &head.map_root,
        )?;
        if entries[0].seq < after {
            return Err(refused(format!(
                "the homeserver's newest key-log entry of user {} is {}, but this device \
                 verified entry {after} before: the log was rolled back",
                self.me.user_id, entries[0].seq
            )));
        }
        Ok(Some((head, entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_at(timestamp_ms: u64) -> Head {
        Head {
            server_name: "h".into(),
            tree_size: 1,
            log_root: [0; 32],
            map_root: [0; 32],
            timestamp_ms,
            signature: Vec::new(),
        }
    }

    #[test]
    fn a_head_older_or_newer_than_the_window_is_refused() {
        let now = 1_000_000_000_000i64;
        let at = |offset: i64| head_at((now + offset) as u64);
        let window = MAX_HEAD_AGE_MS as i64;
        for ok in [0, -window, window, -1, 1] {
            assert!(check_fresh(&at(ok), now).is_ok(), "{ok}");
        }
        for stale in [-window - 1, window + 1, -now] {
            let e = check_fresh(&at(stale), now).unwrap_err().to_string();
            assert!(e.contains("a stale head is being replayed"), "{e}");
        }
    }
}
