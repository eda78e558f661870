//! The client's error type: what went wrong, in words a user can act on.

use tonic::{Code, Status};

/// Everything the client library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered a call with an error status.
    #[error("{}", describe_refusal(call, status))]
    Rpc {
        /// The RPC that failed (for logs and programs; messages name the action instead).
        call: &'static str,
        /// The server's status.
        status: Box<Status>,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {url}: {reason}")]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The password does not open the private-key backup.
    #[error("wrong password: it does not open your private-key backup (or the backup was altered)")]
    WrongPassword,
    /// A private-key blob the client refuses (unknown version, weak parameters, damaged).
    #[error("unusable private-key backup: {0}")]
    Blob(String),
    /// Ciphertext that does not decrypt: changed in transit or storage, or not meant for us.
    #[error("ciphertext rejected: {0}")]
    Tampered(String),
    /// A signature that does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// An event or invite signed with a key the room does not trust.
    #[error("untrusted sender: {0}")]
    Untrusted(String),
    /// The server serves a different key for a user than the one this device pinned.
    #[error(
        "the server now serves a different key for user {user}: {served} (this device pinned \
         {pinned}). It may be their new device setup, or a server substituting its own key: \
         compare safety numbers with them (`secretd-chat safety {user}`), then accept it \
         (`secretd-chat trust {user}`, or `invite --accept-new-key`); until then it is not used"
    )]
    KeyChanged {
        /// The user (text form).
        user: String,
        /// The pinned fingerprint (hex).
        pinned: String,
        /// The fingerprint the server serves now (hex).
        served: String,
    },
    /// The homeserver's key log holds a key for this user that this device never
    /// posted: someone who controls the homeserver (or the account) may read what is
    /// encrypted to it.
    #[error(
        "ALARM: your homeserver's key log holds a key for you that this device never \
         posted: {what}"
    )]
    KeyAlarm {
        /// What was found.
        what: String,
        /// The seq of the newest entry the log holds for this user: acknowledging the
        /// alarm through it ([`crate::Device::acknowledge_key_alarm`]) lets this device
        /// go on; a later foreign entry alarms again.
        newest_seq: u64,
        /// The evidence (the signed head and the entries, JSON) to keep.
        evidence: String,
    },
    /// The homeserver showed this device and a member two different key logs (a split
    /// view, DESIGN §12): a head a member gossiped in the room cannot be proved consistent
    /// with this device's. The evidence is kept until the user acknowledges it.
    #[error(
        "ALARM: your homeserver shows you and other members different key logs (a split \
         view): {what}"
    )]
    LogFork {
        /// What was found.
        what: String,
        /// The evidence (both signed heads and the server's answer, JSON) to keep.
        evidence: String,
    },
    /// A stream's keys were rotated and this device does not hold the new ones: it does
    /// not post with the old keys.
    #[error(
        "the keys of room [{room}] were rotated and this device has not received the new ones \
         (their invite is late, or was withheld): it will not post with the retired keys. \
         Ask a member to re-invite you, then try again"
    )]
    RotationMissing {
        /// The room's name.
        room: String,
    },
    /// An event in an epoch this device holds no keys for.
    #[error("no keys for epoch {epoch} of stream {stream} (not invited to it, or rotated out)")]
    UnknownEpoch {
        /// The stream.
        stream: String,
        /// The epoch id, hex.
        epoch: String,
    },
    /// An event before the point from which this device may read (its invite's start).
    #[error(
        "event at counter {counter} is before the history this device may read (from counter {visible_from})"
    )]
    NotVisible {
        /// The event's counter.
        counter: u64,
        /// The first readable counter of that epoch.
        visible_from: u64,
    },
    /// A ratchet jump larger than the client's gap limit.
    #[error(
        "counter {counter} is {gap} steps past the ratchet (limit {limit}); refusing to derive that far"
    )]
    GapTooLarge {
        /// The event's counter.
        counter: u64,
        /// The jump.
        gap: u64,
        /// The limit.
        limit: u64,
    },
    /// Bytes that do not parse as the construction's structures, or break its rules.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A cryptographic operation failed (bad key material, random source failure).
    #[error("cryptography failed: {0}")]
    Crypto(String),
    /// Local state problems (missing room, unreadable state file).
    #[error("{0}")]
    State(String),
    /// A bearer token the device will not use (malformed, another user's, expired), or
    /// no way to get a fresh one.
    #[error("{0}")]
    Token(String),
    /// The user left the room or was removed from it: its streams are closed to them.
    #[error("you {what}: you can no longer read or post there")]
    RoomLost {
        /// The pair id.
        pair_id: String,
        /// What happened, e.g. `were removed from [general] by 1 at 2026-12-06 20:51:03 UTC`.
        what: String,
    },
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// An error status from `call`.
    pub fn rpc(call: &'static str, status: Status) -> Error {
        Error::Rpc {
            call,
            status: Box::new(status),
        }
    }

    /// The gRPC code when this is a refused call.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// True when trying again later may succeed: the server was unreachable, shutting
    /// down, overloaded or too slow, and nothing was refused for what the request said.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Rpc { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Cancelled
            ),
            _ => false,
        }
    }

    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the user was doing when `call` failed, in their words.
fn action(call: &str) -> &'static str {
    match call {
        "PostKey" => "publishing your public key",
        "FetchKey" => "fetching a user's public key",
        "PostPrivateKey" => "saving your key backup",
        "FetchPrivateKey" => "fetching your key backup",
        "GenerateChannelPair" => "creating the room",
        "SendInvite" => "sending the invite",
        "FetchInvites" => "fetching your invites",
        "ListChannelPairs" => "listing your rooms",
        "LeaveChannelPair" => "leaving the room",
        "RemoveMember" => "removing the member",
        "PostMessage" => "sending",
        "FetchMessages" => "reading the room",
        "StreamMessagePosting" => "following your rooms live",
        _ => "talking to the server",
    }
}

/// A refused call as a sentence: the action, what the refusal means, the server's words.
fn describe_refusal(call: &str, status: &Status) -> String {
    let action = action(call);
    let said = status.message();
    match status.code() {
        Code::Unauthenticated => format!(
            "{action} failed: the server refused your token ({said}); get a fresh token from \
             your homeserver"
        ),
        Code::PermissionDenied => format!("{action} failed: not allowed: {said}"),
        Code::Unavailable => {
            format!("{action} failed: the server is unavailable ({said}); try again in a moment")
        }
        Code::DeadlineExceeded => {
            format!("{action} failed: the server did not answer in time ({said}); try again")
        }
        Code::ResourceExhausted => {
            format!("{action} failed: the server is busy or a limit was reached: {said}")
        }
        Code::Internal | Code::Unknown => format!(
            "{action} failed: the server had an internal error ({said}); try again later, \
             or tell its operator"
        ),
        _ => format!("{action} failed: {said}"),
    }
}
