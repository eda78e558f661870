//! The small records of a device's state: pins, token sources, lost rooms, missing
//! epochs.

use serde::{Deserialize, Serialize};

/// The identity key this device uses for one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The pinned key's fingerprint (hex).
    pub fingerprint: String,
    /// True once the user compared safety numbers and confirmed them (`verify`).
    pub verified: bool,
    /// A different key the server served for this user, not accepted (hex), if any.
    #[serde(default)]
    pub offered: Option<String>,
    /// Keys pinned before this one (hex), oldest first: what they signed earlier still
    /// verifies; they sign nothing new.
    #[serde(default)]
    pub previous: Vec<String>,
    /// When this pin last changed (ms since the Unix epoch): the later wins when two
    /// processes' copies merge.
    pub changed_ms: i64,
}

impl Pin {
    /// A new pin of `fingerprint` (hex).
    pub fn new(fingerprint: String) -> Pin {
        Pin {
            fingerprint,
            verified: false,
            offered: None,
            previous: Vec::new(),
            changed_ms: crate::time::now_ms(),
        }
    }

    /// Marks a change made now.
    pub fn touch(&mut self) {
        self.changed_ms = crate::time::now_ms().max(self.changed_ms + 1);
    }
}

/// A source of fresh bearer tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// A shell command that prints a token on stdout (run with `sh -c`).
    Command(String),
    /// A file holding the token, re-read when a fresh one is needed (another program
    /// keeps it current).
    File(std::path::PathBuf),
}

/// Why this device can no longer use a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Removed by someone (true), or left on the user's own (false).
    pub removed: bool,
    /// Who removed the user (text form, see [`crate::user::display`]), as the server
    /// recorded it; None when it gives no details.
    pub by: Option<String>,
    /// When, in ms since the Unix epoch: the server's record, or when this device noticed.
    pub at_ms: i64,
}

impl Lost {
    /// `removed by 1 at 2026-12-06 20:51:03 UTC`, or `left at …`.
    pub fn summary(&self) -> String {
        let at = crate::time::format_utc_ms(self.at_ms);
        match (self.removed, &self.by) {
            (false, _) => format!("left at {at}"),
            (true, Some(by)) => format!("removed by {by} at {at}"),
            (true, None) => format!("no longer a member (noticed at {at})"),
        }
    }

    /// `were removed from [general] by 1 at 2026-12-06 20:51:03 UTC`, or `left [general]
    /// at …`.
    pub fn describe(&self, room: &str) -> String {
        let at = crate::time::format_utc_ms(self.at_ms);
        match (self.removed, &self.by) {
            (false, _) => format!("left [{room}] at {at}"),
            (true, Some(by)) => format!("were removed from [{room}] by {by} at {at}"),
            (true, None) => format!(
                "are no longer a member of [{room}] (noticed at {at}; the server gives no details)"
            ),
        }
    }
}

/// An epoch a stream's events use that this device holds no keys for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingEpoch {
    /// Its id (hex).
    pub epoch: String,
    /// The counter of the event that used it. A trusted member's event in this device's
    /// newest epoch after it shows the room went on without it (a stale post, not a
    /// rotation), and clears it.
    pub counter: u64,
}

/// What this device knows of its homeserver's key log (DESIGN §12): the key that signs
/// its heads (pinned at first contact) and the newest head it verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogView {
    /// The homeserver's `server_name`, as its heads sign it.
    pub server_name: String,
    /// Its Ed25519 public key (hex), pinned at first contact.
    pub public_key: String,
    /// The newest head verified (None before the first).
    pub head: Option<SeenHead>,
    /// The highest entry number of this user's own key entries checked: entries above it
    /// are checked at the next login.
    pub own_seq: u64,
    /// Evidence (JSON) of a split view: a head a member gossiped that this device's
    /// homeserver cannot prove consistent with its own log. Kept until acknowledged.
    #[serde(default)]
    pub forks: Vec<String>,
    /// Evidence the user acknowledged (so a merge with an older save does not bring it
    /// back).
    #[serde(default)]
    pub forks_acknowledged: Vec<String>,
}

impl LogView {
    /// The pinned key's bytes (empty if the saved hex is damaged: nothing verifies).
    pub fn key(&self) -> Vec<u8> {
        hex::decode(&self.public_key).unwrap_or_default()
    }
}

/// A signed tree head, as kept and as gossiped (hex for the bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenHead {
    /// The homeserver's `server_name`.
    pub server_name: String,
    /// Entries in the log.
    pub tree_size: u64,
    /// The log's root (hex).
    pub log_root: String,
    /// The map's root (hex).
    pub map_root: String,
    /// When it was signed (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The signature (hex).
    pub signature: String,
}
