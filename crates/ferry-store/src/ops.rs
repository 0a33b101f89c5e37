//! The operations contract (the admin API's operations): groups listed, searched and
//! dissolved, users paged by id, system messages (broadcasts) and per-user limit
//! overrides.

use async_trait::async_trait;
use ferry_proto::v1;

use crate::{GroupRow, Result};

/// A group as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group: GroupRow,
    /// Members now (0 once dissolved).
    pub members: u64,
    /// When the group was dissolved, unix ms (0: it was not).
    pub dissolved_ms: i64,
}

/// A system message for one user: stored with no sender (`sender_id` 0), in the
/// recipient's inbox only.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemMessage {
    pub user_id: u64,
    /// The message as it will be delivered; `msg_id` and `time_ms` are filled in by the
    /// store.
    pub message: v1::Message,
}

/// What dissolving a group did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dissolved {
    /// The gseq of the dissolution in the group's log.
    pub gseq: u64,
    /// Every member removed, with the seq of the entry appended to their inbox.
    pub members: Vec<(u64, u64)>,
}

/// Groups, users, system messages and limit overrides, as operators manage them.
#[async_trait]
pub trait OpsStore: Send + Sync + 'static {
    /// Up to `limit` groups with an id above `after`, in id order, whose name contains
    /// `q` (ignoring ASCII case; empty: every group), dissolved ones included.
    async fn list_groups(&self, q: &str, after: u64, limit: u32) -> Result<Vec<GroupSummary>>;
    /// One group, dissolved or not.
    async fn group_summary(&self, group_id: u64) -> Result<Option<GroupSummary>>;
    /// Dissolves a group in one transaction: logs `event` in its log, removes every
    /// member, marks the group dissolved, and appends `entry` to each removed member's
    /// inbox. [`StoreError::NotFound`](crate::StoreError::NotFound) when there is no
    /// such group or it was dissolved already.
    async fn dissolve_group(
        &self,
        group_id: u64,
        event: v1::GroupEntry,
        entry: v1::Entry,
    ) -> Result<Dissolved>;
    /// Up to `limit` users with an id above `after`, in id order: `(id, name)`.
    async fn users_after(&self, after: u64, limit: u32) -> Result<Vec<(u64, String)>>;
    /// Stores system messages, one row each, each in its recipient's inbox only, at
    /// `time_ms`. Answers, in order, `(msg_id, seq)` per message, or `None` for a user
    /// that does not exist (nothing is stored for them).
    async fn append_system_messages(
        &self,
        msgs: Vec<SystemMessage>,
        time_ms: i64,
    ) -> Result<Vec<Option<(u64, u64)>>>;
    /// A user's limit override (JSON text, the logic layer's format), if set.
    async fn limit_override(&self, user_id: u64) -> Result<Option<String>>;
    /// Every limit override: `(user id, JSON)`.
    async fn limit_overrides(&self) -> Result<Vec<(u64, String)>>;
    /// Sets (replaces) a user's limit override.
    async fn set_limit_override(&self, user_id: u64, limits: &str) -> Result<()>;
    /// Removes a user's limit override; true when there was one.
    async fn delete_limit_override(&self, user_id: u64) -> Result<bool>;
}
