//! The groups contract: groups, their members, their logs (numbered by gseq) and the
//! members' read marks.

use async_trait::async_trait;
use ferry_proto::v1;

use crate::{Appended, NewEvent, NewMessage, Result};

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupRow {
    pub id: u64,
    pub name: String,
    pub announcement: String,
    pub owner_id: u64,
    pub share_history: bool,
    /// The newest gseq of the group's log.
    pub latest_gseq: u64,
    pub created_ms: i64,
}

/// A member of a group (`role` is a `v1::GroupRole`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub group_id: u64,
    pub user_id: u64,
    pub role: i32,
    /// The first gseq the member may read.
    pub joined_gseq: u64,
    /// The newest gseq the member has read (read receipts).
    pub read_gseq: u64,
}

/// A change of a group, appended to its log as `event` (whose gseq the store assigns),
/// with inbox entries for the members it concerns.
#[derive(Debug, Clone, Default)]
pub struct GroupChange {
    pub group_id: u64,
    /// Members to add with their role; they may read from the event's gseq on (from 1
    /// when the group shares history).
    pub add: Vec<(u64, i32)>,
    pub remove: Vec<u64>,
    pub roles: Vec<(u64, i32)>,
    pub name: Option<String>,
    pub announcement: Option<String>,
    pub event: v1::GroupEntry,
    pub inbox: Vec<NewEvent>,
}

/// Groups, members, group logs and read marks.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Creates a group (id chosen by the caller) with its members, logs `event` as gseq 1
    /// and appends the inbox entries. Members may read from gseq 1.
    async fn create_group(
        &self,
        group: GroupRow,
        members: Vec<(u64, i32)>,
        event: v1::GroupEntry,
        inbox: Vec<NewEvent>,
    ) -> Result<()>;
    async fn group(&self, group_id: u64) -> Result<Option<GroupRow>>;
    async fn group_members(&self, group_id: u64) -> Result<Vec<MemberRow>>;
    async fn group_member(&self, group_id: u64, user_id: u64) -> Result<Option<MemberRow>>;
    /// The groups `user_id` belongs to, with the membership.
    async fn user_groups(&self, user_id: u64) -> Result<Vec<(GroupRow, MemberRow)>>;
    /// The spans of groups' logs `user_id` could read in memberships that have ended
    /// (left, removed, dissolved): `(group_id, from_gseq, to_gseq)`, by group and span.
    async fn past_group_spans(&self, user_id: u64) -> Result<Vec<(u64, u64, u64)>>;
    /// Applies a membership, role, name or announcement change and logs its event;
    /// returns the event's gseq.
    async fn change_group(&self, change: GroupChange) -> Result<u64>;
    /// Appends a message to a group's log (idempotent on the sender and client_msg_id,
    /// like [`InboxStore::append_message`](crate::InboxStore::append_message));
    /// `recipient_seq` of the answer is the gseq.
    async fn append_group_message(&self, group_id: u64, msg: NewMessage) -> Result<Appended>;
    /// Up to `limit` entries of a group's log with gseq > `after`; the group's latest gseq;
    /// whether more follow.
    async fn group_log(
        &self,
        group_id: u64,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<v1::GroupEntry>, u64, bool)>;
    /// Records that a member has read up to `gseq` (never moves back).
    async fn set_group_read(&self, group_id: u64, user_id: u64, gseq: u64) -> Result<()>;
}
