//! PostgreSQL: client log reports ([`ReportStore`]).

use async_trait::async_trait;

use super::PgStore;
use crate::{ReportInfo, ReportStore, Result};

const REPORT_COLS: &str =
    "id, user_id, device_id, client_version, kind, file_name, length, md5, created_ms";

fn row_report(r: &tokio_postgres::Row) -> ReportInfo {
    ReportInfo {
        id: r.get::<_, i64>(0) as u64,
        user_id: r.get::<_, i64>(1) as u64,
        device_id: r.get(2),
        client_version: r.get(3),
        kind: r.get(4),
        file_name: r.get(5),
        length: r.get::<_, i64>(6) as u64,
        md5: r.get(7),
        created_ms: r.get(8),
    }
}

#[async_trait]
impl ReportStore for PgStore {
    async fn add_report(&self, r: ReportInfo, data: Vec<u8>) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO reports (user_id, device_id, client_version, kind, file_name, length, md5, created_ms, data)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .await?;
        Ok(client
            .query_one(
                &stmt,
                &[
                    &(r.user_id as i64),
                    &r.device_id,
                    &r.client_version,
                    &r.kind,
                    &r.file_name,
                    &(r.length as i64),
                    &r.md5,
                    &r.created_ms,
                    &data,
                ],
            )
            .await?
            .get::<_, i64>(0) as u64)
    }

    async fn reports(&self, before: u64, limit: u32) -> Result<Vec<ReportInfo>> {
        let before = if before == 0 { i64::MAX } else { before as i64 };
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {REPORT_COLS} FROM reports WHERE id < $1 ORDER BY id DESC LIMIT $2"
            ))
            .await?;
        Ok(client
            .query(&stmt, &[&before, &i64::from(limit)])
            .await?
            .iter()
            .map(row_report)
            .collect())
    }

    async fn report(&self, id: u64) -> Result<Option<(ReportInfo, Vec<u8>)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {REPORT_COLS}, data FROM reports WHERE id = $1"
            ))
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(id as i64)])
            .await?
            .map(|r| (row_report(&r), r.get(9))))
    }

    async fn prune_reports(&self, before_ms: i64) -> Result<u64> {
        let client = self.client().await?;
        Ok(client
            .execute("DELETE FROM reports WHERE created_ms < $1", &[&before_ms])
            .await?)
    }
}
