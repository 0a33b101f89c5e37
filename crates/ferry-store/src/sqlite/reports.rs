//! SQLite: client log reports ([`ReportStore`]).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::{ReportInfo, ReportStore, Result};

const REPORT_COLS: &str =
    "id, user_id, device_id, client_version, kind, file_name, length, md5, created_ms";

fn row_report(r: &rusqlite::Row) -> rusqlite::Result<ReportInfo> {
    Ok(ReportInfo {
        id: r.get::<_, i64>(0)? as u64,
        user_id: r.get::<_, i64>(1)? as u64,
        device_id: r.get(2)?,
        client_version: r.get(3)?,
        kind: r.get(4)?,
        file_name: r.get(5)?,
        length: r.get::<_, i64>(6)? as u64,
        md5: r.get(7)?,
        created_ms: r.get(8)?,
    })
}

#[async_trait]
impl ReportStore for SqliteStore {
    async fn add_report(&self, r: ReportInfo, data: Vec<u8>) -> Result<u64> {
        self.write(move |txn, _| {
            txn.prepare_cached(
                "INSERT INTO reports (user_id, device_id, client_version, kind, file_name, length, md5, created_ms, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                r.user_id as i64,
                r.device_id,
                r.client_version,
                r.kind,
                r.file_name,
                r.length as i64,
                r.md5,
                r.created_ms,
                data
            ])?;
            Ok(txn.last_insert_rowid() as u64)
        })
        .await
    }

    async fn reports(&self, before: u64, limit: u32) -> Result<Vec<ReportInfo>> {
        self.read(move |c: &Connection| {
            let before = if before == 0 { i64::MAX } else { before as i64 };
            Ok(c.prepare_cached(&format!(
                "SELECT {REPORT_COLS} FROM reports WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
            ))?
            .query_map(params![before, i64::from(limit)], row_report)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn report(&self, id: u64) -> Result<Option<(ReportInfo, Vec<u8>)>> {
        self.read(move |c: &Connection| {
            Ok(c.prepare_cached(&format!(
                "SELECT {REPORT_COLS}, data FROM reports WHERE id = ?1"
            ))?
            .query_row([id as i64], |r| {
                Ok((row_report(r)?, r.get::<_, Vec<u8>>(9)?))
            })
            .optional()?)
        })
        .await
    }

    async fn prune_reports(&self, before_ms: i64) -> Result<u64> {
        self.write(move |txn, _| {
            Ok(txn
                .prepare_cached("DELETE FROM reports WHERE created_ms < ?1")?
                .execute([before_ms])? as u64)
        })
        .await
    }
}
