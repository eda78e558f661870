//! `kt_evidence` on Postgres (the SQL in `store::kt_evidence`).

use async_trait::async_trait;

use super::PgStore;
use crate::error::Result;
use crate::store::kt_evidence::{self, Evidence, EvidenceRow, KtEvidenceStore, bind_evidence};

#[async_trait]
impl KtEvidenceStore for PgStore {
    async fn kt_add_evidence(&self, e: &Evidence) -> Result<bool> {
        let mut conn = self.conn().await?;
        let q = sqlx::query(kt_evidence::INSERT);
        let done = bind_evidence!(q, e).execute(&mut *conn).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn kt_evidence(&self, limit: usize) -> Result<Vec<Evidence>> {
        let mut conn = self.conn().await?;
        let rows: Vec<EvidenceRow> = sqlx::query_as(kt_evidence::SELECT)
            .bind(kt_evidence::limit(limit))
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter().map(Evidence::try_from).collect()
    }
}
