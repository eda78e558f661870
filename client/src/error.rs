//! The client's error type: what went wrong, in words a user can act on.

use tonic::{Code, Status};

/// Everything the client library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered a call with an error status.
    #[error("the server refused {call}: {} ({:?})", .status.message(), .status.code())]
    Rpc {
        /// The RPC that failed.
        call: &'static str,
        /// The server's status.
        status: Box<Status>,
    },
    /// The server could not be reached.
    #[error("cannot connect to {url}: {reason}")]
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
