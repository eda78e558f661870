//! Evidence that another homeserver equivocated (DESIGN §12, docs/kt.md §9): two tree
//! heads it signed that cannot both be honest, kept in `kt_evidence` (migration 0007).
//! Federation finds them (`federation/heads.rs`); the store keeps them so that the
//! refusal of that server's users outlives a restart and reaches every replica. The SQL
//! here runs as is on both backends.

use async_trait::async_trait;

use super::kt::{HeadRow, TreeHead, signed};
use crate::error::{Error, Result};

/// What two heads of one server show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceKind {
    /// One tree size, two different roots: two views of the log.
    Fork,
    /// A larger tree size signed earlier than a smaller one: the log was rolled back
    /// (head timestamps never go backwards on an honest server).
    Rollback,
    /// A newer head that the server's own consistency proof does not lead to from the
    /// older one: the older log is not a prefix of the newer.
    Inconsistent,
}

impl EvidenceKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::Fork => "fork",
            EvidenceKind::Rollback => "rollback",
            EvidenceKind::Inconsistent => "inconsistent",
        }
    }
}

/// Two signed heads of `homeserver` that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The server that signed both (its `server_name`).
    pub homeserver: String,
    /// How they contradict each other.
    pub kind: EvidenceKind,
    /// When it was found, ms since the Unix epoch.
    pub found_at_ms: u64,
    /// Where the second head came from ("FetchUserKey", "ExchangeHeads from b.test").
    pub reported_by: String,
    /// The head seen first.
    pub first: TreeHead,
    /// The head that contradicts it.
    pub second: TreeHead,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = |h: &[u8]| -> String { h[..8].iter().map(|b| format!("{b:02x}")).collect() };
        let (a, b) = (&self.first, &self.second);
        match self.kind {
            EvidenceKind::Fork => write!(
                f,
                "two heads of tree size {} with different roots (log roots {}… and {}…, \
                 signed at {} ms and {} ms)",
                a.tree_size,
                hex(&a.log_root),
                hex(&b.log_root),
                a.timestamp_ms,
                b.timestamp_ms
            ),
            EvidenceKind::Rollback => write!(
                f,
                "a head of tree size {} signed at {} ms and a smaller one of tree size {} \
                 signed later, at {} ms (the log was rolled back)",
                a.tree_size.max(b.tree_size),
                a.timestamp_ms.min(b.timestamp_ms),
                a.tree_size.min(b.tree_size),
                a.timestamp_ms.max(b.timestamp_ms)
            ),
            EvidenceKind::Inconsistent => write!(
                f,
                "a head of tree size {} (log root {}…) that its consistency proof does not \
                 lead to from the head of tree size {} (log root {}…) it signed before",
                b.tree_size,
                hex(&b.log_root),
                a.tree_size,
                hex(&a.log_root)
            ),
        }?;
        write!(f, ", found via {}", self.reported_by)
    }
}

/// The store of evidence.
#[async_trait]
pub trait KtEvidenceStore: Send + Sync {
    /// Stores `e`; false when the same two heads were stored before.
    async fn kt_add_evidence(&self, e: &Evidence) -> Result<bool>;
    /// The evidence stored, oldest first, at most `limit` rows.
    async fn kt_evidence(&self, limit: usize) -> Result<Vec<Evidence>>;
}

/// Inserts a row of evidence: `$1` homeserver, `$2` kind, `$3` found at, `$4` reported
/// by, `$5..$10` the first head, `$11..$16` the second (size, log root, map root,
/// timestamp, signature, key id).
pub(crate) const INSERT: &str = "INSERT INTO kt_evidence (homeserver, kind, found_at_ms, \
     reported_by, a_tree_size, a_log_root, a_map_root, a_timestamp_ms, a_signature, a_key_id, \
     b_tree_size, b_log_root, b_map_root, b_timestamp_ms, b_signature, b_key_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
     ON CONFLICT DO NOTHING";

/// The rows, oldest first, at most `$1`.
pub(crate) const SELECT: &str = "SELECT homeserver, kind, found_at_ms, reported_by, \
     a_tree_size, a_log_root, a_map_root, a_timestamp_ms, a_signature, a_key_id, \
     b_tree_size, b_log_root, b_map_root, b_timestamp_ms, b_signature, b_key_id \
     FROM kt_evidence ORDER BY found_at_ms, homeserver LIMIT $1";

/// A `kt_evidence` row as [`SELECT`] reads it.
pub(crate) type EvidenceRow = (
    String,
    String,
    i64,
    String,
    i64,
    Vec<u8>,
    Vec<u8>,
    i64,
    Vec<u8>,
    String,
    i64,
    Vec<u8>,
    Vec<u8>,
    i64,
    Vec<u8>,
    String,
);

/// Binds `e` to [`INSERT`] (a macro: the query types of the backends differ).
macro_rules! bind_evidence {
    ($q:expr, $e:expr) => {{
        let e: &$crate::store::kt_evidence::Evidence = $e;
        let s = $crate::store::kt::signed;
        $q.bind(e.homeserver.as_str())
            .bind(e.kind.as_str())
            .bind(s(e.found_at_ms))
            .bind(e.reported_by.as_str())
            .bind(s(e.first.tree_size))
            .bind(e.first.log_root.to_vec())
            .bind(e.first.map_root.to_vec())
            .bind(s(e.first.timestamp_ms))
            .bind(e.first.signature.clone())
            .bind(e.first.key_id.as_str())
            .bind(s(e.second.tree_size))
            .bind(e.second.log_root.to_vec())
            .bind(e.second.map_root.to_vec())
            .bind(s(e.second.timestamp_ms))
            .bind(e.second.signature.clone())
            .bind(e.second.key_id.as_str())
    }};
}
pub(crate) use bind_evidence;

impl TryFrom<EvidenceRow> for Evidence {
    type Error = Error;
    fn try_from(r: EvidenceRow) -> Result<Self> {
        let kind = match r.1.as_str() {
            "fork" => EvidenceKind::Fork,
            "rollback" => EvidenceKind::Rollback,
            "inconsistent" => EvidenceKind::Inconsistent,
            other => {
                return Err(Error::Internal(format!(
                    "kt_evidence holds an unknown kind {other:?}"
                )));
            }
        };
        let head = |row: HeadRow| TreeHead::try_from(row);
        Ok(Evidence {
            kind,
            found_at_ms: u64::try_from(r.2).unwrap_or(0),
            reported_by: r.3,
            first: head((r.4, r.0.clone(), r.5, r.6, r.7, r.8, r.9))?,
            second: head((r.10, r.0.clone(), r.11, r.12, r.13, r.14, r.15))?,
            homeserver: r.0,
        })
    }
}

/// The limit as a bind value.
pub(crate) fn limit(n: usize) -> i64 {
    signed(n as u64)
}
