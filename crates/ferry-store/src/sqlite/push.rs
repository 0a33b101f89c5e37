//! sqlite: push targets, settings and the push queue ([`PushStore`]).
//!
//! SCAFFOLD (replaced by the store work of issue 20): every call fails until built.

use async_trait::async_trait;

use super::SqliteStore;
use crate::{
    PushDone, PushEnqueue, PushJob, PushPrefRow, PushStore, PushTargetRow, Result, StoreError,
};

fn unbuilt<T>() -> Result<T> {
    Err(StoreError::WriteFailed("push store not built yet".into()))
}

#[async_trait]
impl PushStore for SqliteStore {
    async fn put_push_target(&self, _t: PushTargetRow) -> Result<PushTargetRow> {
        unbuilt()
    }
    async fn delete_push_target(&self, _u: u64, _d: &str) -> Result<bool> {
        unbuilt()
    }
    async fn delete_push_targets(&self, _u: u64) -> Result<u64> {
        unbuilt()
    }
    async fn delete_push_target_if(&self, _u: u64, _d: &str, _r: i64) -> Result<bool> {
        unbuilt()
    }
    async fn push_targets(&self, _u: u64) -> Result<Vec<PushTargetRow>> {
        unbuilt()
    }
    async fn push_targets_since(
        &self,
        _s: i64,
        _a: Option<(i64, u64, String)>,
        _l: u32,
    ) -> Result<Vec<PushTargetRow>> {
        unbuilt()
    }
    async fn push_target_counts(&self) -> Result<Vec<(String, u64)>> {
        unbuilt()
    }
    async fn set_push_prefs(&self, _u: u64, _p: Vec<PushPrefRow>) -> Result<()> {
        unbuilt()
    }
    async fn push_prefs(&self, _u: u64, _n: i64) -> Result<Vec<PushPrefRow>> {
        unbuilt()
    }
    async fn enqueue_pushes(&self, _e: Vec<PushEnqueue>) -> Result<u64> {
        unbuilt()
    }
    async fn claim_pushes(&self, _o: &str, _n: i64, _l: i64, _c: u32) -> Result<Vec<PushJob>> {
        unbuilt()
    }
    async fn finish_pushes(&self, _o: &str, _n: i64, _d: Vec<PushDone>) -> Result<u64> {
        unbuilt()
    }
    async fn push_backlog(&self, _l: u32) -> Result<Vec<(PushTargetRow, u64, u64)>> {
        unbuilt()
    }
    async fn set_pushed_seq(&self, _u: u64, _d: &str, _s: u64) -> Result<()> {
        unbuilt()
    }
    async fn unread_messages(&self, _u: u64, _a: u64, _c: u32) -> Result<u32> {
        unbuilt()
    }
    async fn push_queue_stats(&self, _n: i64) -> Result<(u64, u64, u64)> {
        unbuilt()
    }
}
