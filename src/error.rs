//! The service's error type and its mapping onto gRPC statuses.
//!
//! Every variant carries a sentence a person can act on. Database failures are logged
//! with their detail and reach the client as UNAVAILABLE (the database cannot be reached:
//! retry) or INTERNAL (a server bug), never with SQL text.

use tonic::{Code, Status, metadata::MetadataValue};

/// Metadata key carrying the stream's head ratchet counter on a refused post.
pub const HEAD_COUNTER_KEY: &str = "secretd-head-counter";
/// Metadata key carrying the stream's head event id on a refused post.
pub const HEAD_EVENT_ID_KEY: &str = "secretd-head-event-id";
/// Trailing-metadata key carrying, on a RESOURCE_EXHAUSTED that clears with time (a rate
/// limit, an overloaded commit queue), the milliseconds to wait before retrying.
pub const RETRY_AFTER_KEY: &str = "retry-after-ms";

/// What a client reads for every INTERNAL error (the details are in the server log).
const INTERNAL_TEXT: &str = "internal error: the server logged the details";

/// `err` followed by each error of its `source()` chain, joined by `: ` (the `{:#}` of an
/// `anyhow::Error`).
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let more = e.to_string();
        // Some errors repeat their source's text in their own; say it once.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = e.source();
    }
    text
}

/// An error the service reports to a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed (bad id, size limits, bad key).
    #[error("{0}")]
    InvalidArgument(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this (not a member, not the owner).
    #[error("{0}")]
    PermissionDenied(String),
    /// The token does not allow this call (DeleteAccount with a token that is not fresh).
    #[error("{0}")]
    Unauthenticated(String),
    /// The system is not in a state that allows this (e.g. invitee without a key).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A post's ratchet counter is not acceptable at the stream's head.
    #[error(
        "ratchet counter {counter} is not acceptable: the stream's head counter is {head_counter} \
         (head event id {head_event_id}); post with a counter in {} ..= {} after fetching \
         the events you missed",
        head_counter + 1,
        head_counter.saturating_add(*max_gap)
    )]
    CounterRejected {
        /// The counter the client sent.
        counter: u64,
        /// The stream's last accepted counter.
        head_counter: u64,
        /// The stream's last event id.
        head_event_id: u64,
        /// The configured `max_counter_gap`.
        max_gap: u64,
    },
    /// The thing the client tried to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A compare-and-set lost.
    #[error("{0}")]
    Aborted(String),
    /// A documented limit was reached; waiting does not help, the message says what does.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A limit that clears with time was reached (a rate limit, a full commit queue):
    /// RESOURCE_EXHAUSTED with the delay in the message and in `retry-after-ms`.
    #[error("{message}")]
    Throttled {
        /// Names the limit (its config key) and says when to retry.
        message: String,
        /// Milliseconds to wait before retrying (at least 1).
        retry_after_ms: u64,
    },
    /// Not built (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// The server or its database is not available right now; retry.
    #[error("{0}")]
    Unavailable(String),
    /// A bug on the server side; details are in the server log (logged once, by
    /// [`Error::internal`], where the cause is known).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The gRPC status code of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::FailedPrecondition(_) | Error::CounterRejected { .. } => {
                Code::FailedPrecondition
            }
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Aborted(_) => Code::Aborted,
            Error::ResourceExhausted(_) | Error::Throttled { .. } => Code::ResourceExhausted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// An INTERNAL error: logs `what` and `cause` with its whole `source()` chain, once,
    /// here; the client only learns that the server logged the details.
    pub fn internal(what: &str, cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %cause_chain(cause), "internal error: {what}");
        Error::Internal(INTERNAL_TEXT.into())
    }

    /// Shorthand for an INVALID_ARGUMENT error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let mut status = Status::new(err.code(), client_text(err.to_string()));
        let md = status.metadata_mut();
        match err {
            Error::CounterRejected {
                head_counter,
                head_event_id,
                ..
            } => {
                md.insert(HEAD_COUNTER_KEY, MetadataValue::from(head_counter));
                md.insert(HEAD_EVENT_ID_KEY, MetadataValue::from(head_event_id));
            }
            Error::Throttled { retry_after_ms, .. } => {
                md.insert(RETRY_AFTER_KEY, MetadataValue::from(retry_after_ms));
            }
            _ => {}
        }
        status
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(error = %cause_chain(&err), "database unavailable");
                Error::Unavailable(
                    "the database is unavailable right now; retry in a few seconds".into(),
                )
            }
            // statement_timeout is set to db_timeout_ms: Postgres reached the server's own
            // deadline first, and says so as the deadline does (which of the two fires
            // first is a race).
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                tracing::warn!(error = %cause_chain(&err), "statement timeout");
                Error::Unavailable(
                    "the database did not answer within db_timeout_ms (it cancelled the \
                     statement); retry in a few seconds (a post retried with the same counter \
                     and bytes is stored once)"
                        .into(),
                )
            }
            sqlx::Error::Database(db) if is_transient(db.code().as_deref()) => {
                tracing::warn!(error = %cause_chain(&err), "transient database error");
                Error::Unavailable("the database is busy or shutting down; retry".into())
            }
            _ => Error::internal("database error", &err),
        }
    }
}

/// A status message as every client reads it: `#` and `%` (which a client may have sent
/// in an id the message quotes) become `\u{23}` and `\u{25}`, because @grpc/grpc-js
/// decodes `grpc-message` with `decodeURI`, which leaves `%23` and `%25` encoded.
fn client_text(message: String) -> String {
    if !message.contains(['#', '%']) {
        return message;
    }
    message.replace('#', "\\u{23}").replace('%', "\\u{25}")
}

/// SQLSTATE codes (Postgres) and result codes (SQLite) that mean "try again".
fn is_transient(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    // Postgres: connection exceptions (class 08), serialization failure, deadlock,
    // too many connections, admin/crash shutdown, cannot connect now, database not
    // accepting connections (55000 only arises at connect for our statements),
    // statement_timeout and idle_in_transaction_session_timeout (set to db_timeout_ms:
    // the database is too slow or the connection was stuck).
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03" | "55000" | "57014" | "25P03"
        )
        // SQLite: SQLITE_BUSY, SQLITE_LOCKED
        || matches!(code, "5" | "6")
}

/// Result alias for the service.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_carry_neither_hash_nor_percent() {
        let st = Status::from(Error::invalid(r#"stream_id "a#b 5%" is not a UUID"#));
        assert_eq!(
            st.message(),
            r#"stream_id "a\u{23}b 5\u{25}" is not a UUID"#
        );
    }
}
