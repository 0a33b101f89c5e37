//! SQLite: the admin audit log ([`AuditStore`]).

use async_trait::async_trait;
use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::{AuditEntry, AuditStore, Result};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: AuditEntry) -> Result<u64> {
        self.write(move |txn, _| {
            txn.prepare_cached(
                "INSERT INTO audit_log (at_ms, actor, peer, op, method, path, status, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                e.at_ms,
                e.actor,
                e.peer,
                e.op,
                e.method,
                e.path,
                i64::from(e.status),
                e.detail
            ])?;
            Ok(txn.last_insert_rowid() as u64)
        })
        .await
    }

    async fn audit_log(&self, before: u64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.read(move |c: &Connection| {
            let before = if before == 0 { i64::MAX } else { before as i64 };
            Ok(c.prepare_cached(
                "SELECT id, at_ms, actor, peer, op, method, path, status, detail
                 FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?
            .query_map(params![before, i64::from(limit)], |r| {
                Ok(AuditEntry {
                    id: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    peer: r.get(3)?,
                    op: r.get(4)?,
                    method: r.get(5)?,
                    path: r.get(6)?,
                    status: r.get::<_, i64>(7)? as u16,
                    detail: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
