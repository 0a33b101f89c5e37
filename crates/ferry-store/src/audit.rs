//! The audit contract: every change made through the admin API, kept for the operators
//! (who, what, when, from where, and how it ended).

use async_trait::async_trait;

use crate::Result;

/// One admin action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEntry {
    /// Given by the store (0 when appending).
    pub id: u64,
    pub at_ms: i64,
    /// Who: the caller's `X-Ferry-Actor` name, or "admin".
    pub actor: String,
    /// The caller's address.
    pub peer: String,
    /// The API operation (`users.delete`).
    pub op: String,
    /// The HTTP method and path (`DELETE admin/users/alice`).
    pub method: String,
    pub path: String,
    /// The answer's HTTP status.
    pub status: u16,
    /// What was done, as JSON (a short summary; never a password or a token).
    pub detail: String,
}

/// The admin audit log: append-only for the API; pruned only by retention.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends an entry, answering its id.
    async fn append_audit(&self, entry: AuditEntry) -> Result<u64>;
    /// Newest first, ids below `before_id` (0: from the newest).
    async fn audit_log(&self, before_id: u64, limit: u32) -> Result<Vec<AuditEntry>>;
}
