//! The reports contract: client log and crash reports, kept for the operators.

use async_trait::async_trait;

use crate::Result;

/// A client log or crash report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportInfo {
    pub id: u64,
    pub user_id: u64,
    pub device_id: String,
    pub client_version: String,
    pub kind: String,
    pub file_name: String,
    pub length: u64,
    pub md5: String,
    pub created_ms: i64,
}

/// Client log reports.
#[async_trait]
pub trait ReportStore: Send + Sync + 'static {
    async fn add_report(&self, info: ReportInfo, data: Vec<u8>) -> Result<u64>;
    /// Newest first, ids below `before_id` (0: from the newest).
    async fn reports(&self, before_id: u64, limit: u32) -> Result<Vec<ReportInfo>>;
    async fn report(&self, id: u64) -> Result<Option<(ReportInfo, Vec<u8>)>>;
    /// Deletes reports stored before `before_ms`.
    async fn prune_reports(&self, before_ms: i64) -> Result<u64>;
}
