//! `kt_evidence` on SQLite (the SQL in `store::kt_evidence`): written on the single
//! writer, read from the readers.

use async_trait::async_trait;

use super::SqliteStore;
use crate::error::Result;
use crate::store::kt_evidence::{self, Evidence, EvidenceRow, KtEvidenceStore, bind_evidence};

#[async_trait]
impl KtEvidenceStore for SqliteStore {
    async fn kt_add_evidence(&self, e: &Evidence) -> Result<bool> {
        let q = sqlx::query(kt_evidence::INSERT);
        let done = bind_evidence!(q, e).execute(&self.writer).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn kt_evidence(&self, limit: usize) -> Result<Vec<Evidence>> {
        let rows: Vec<EvidenceRow> = sqlx::query_as(kt_evidence::SELECT)
            .bind(kt_evidence::limit(limit))
            .fetch_all(&self.readers)
            .await?;
        rows.into_iter().map(Evidence::try_from).collect()
    }
}
