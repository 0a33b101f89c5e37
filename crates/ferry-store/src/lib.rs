//! Ferry's storage layer: the [`Store`] trait the logic layer writes through, and
//! [`SqliteStore`], the embedded implementation `ferry serve` uses by default.
//!
//! The store owns durability: when [`Store::append_message`] returns, the message is on
//! disk (fsync'd, group-committed) in the sender's and the recipient's inboxes. It must
//! not know about connections, frames, pushes or passwords in clear: it keeps what it is
//! given and answers queries.

mod media;
mod media_pg;
mod postgres;
mod sqlite;

#[doc(hidden)]
pub mod conformance;

use async_trait::async_trait;
use ferry_proto::v1;

pub use media::{valid_media_id, LocalMediaStore, MediaMeta, MediaStore, UploadKey, Verified};
pub use media_pg::PgMediaStore;
pub use postgres::{PgConfig, PgStore};
pub use sqlite::{Durability, SqliteStore};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The database cannot be reached (pool timeout, connection refused): retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("user name already taken")]
    UserExists,
    #[error("unknown user {0}")]
    UnknownUser(u64),
    #[error("the store is closed")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("write failed: {0}")]
    WriteFailed(String),
    /// A precondition of a conditional write no longer holds (another request changed
    /// the same rows first): read again and retry.
    #[error("conflicting concurrent change")]
    Conflict,
    #[error("not found")]
    NotFound,
    /// A media chunk at an offset already acknowledged, with other bytes than the ones
    /// stored there: refused, the stored bytes stay.
    #[error("other bytes than the ones already acknowledged at this offset")]
    ChunkMismatch,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub name: String,
    /// PHC string (argon2id); the store never sees a clear password.
    pub password_hash: String,
}

/// A device's session, found by its token hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: u64,
    pub device_id: String,
    pub created_ms: i64,
}

/// A message to make durable.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender_id: u64,
    pub recipient_id: u64,
    /// Idempotency key: `(sender_id, client_msg_id)` is stored once.
    pub client_msg_id: u64,
    /// Store time, unix ms.
    pub time_ms: i64,
    /// The message as it will be delivered; `msg_id` is filled in by the store.
    pub message: v1::Message,
}

/// What [`Store::append_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub msg_id: u64,
    /// Seq of the entry in the sender's inbox.
    pub sender_seq: u64,
    /// Seq of the entry in the recipient's inbox (equal to `sender_seq` for a message
    /// to oneself, which is stored once).
    pub recipient_seq: u64,
    pub time_ms: i64,
    /// True when `(sender, client_msg_id)` was already stored: nothing new was written
    /// and the fields above describe the original.
    pub duplicate: bool,
}

/// A page of a user's inbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboxPage {
    /// Entries after the requested seq, in seq order.
    pub entries: Vec<v1::Entry>,
    /// The newest seq in the inbox (0 when it is empty).
    pub latest_seq: u64,
    /// More entries follow the last one returned.
    pub more: bool,
}

/// An inbox entry other than a message (a friend event, a moment event …), appended to
/// one user's inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub user_id: u64,
    /// The entry's `kind` and `time_ms`; the store assigns `seq`.
    pub entry: v1::Entry,
}

/// A relation from `user_id`'s side (`v1::FriendState` as i32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRow {
    pub user_id: u64,
    pub peer_id: u64,
    pub state: i32,
    pub greeting: String,
    /// The owner's friend-list version when this row last changed.
    pub version: u64,
    pub updated_ms: i64,
}

/// A conditional change of friendships: applied only when every `expect` holds (a
/// missing row counts as `FRIEND_STATE_NONE`), together with the inbox events it causes.
#[derive(Debug, Clone, Default)]
pub struct FriendChange {
    /// `(user, peer, state)` that must hold.
    pub expect: Vec<(u64, u64, i32)>,
    /// Rows to write (`version` and `updated_ms` are assigned by the store).
    pub rows: Vec<FriendRow>,
    pub events: Vec<NewEvent>,
    pub time_ms: i64,
}

/// One page of a friend list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FriendList {
    pub version: u64,
    pub rows: Vec<FriendRow>,
}

/// A stored avatar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Avatar {
    pub etag: String,
    pub content_type: String,
    pub image: Vec<u8>,
    pub thumb: Vec<u8>,
    pub updated_ms: i64,
}

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

/// A moment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MomentRow {
    pub id: u64,
    pub author_id: u64,
    pub text: String,
    pub media_ids: Vec<String>,
    pub time_ms: i64,
}

/// A like (`comment_id` 0) or a comment on a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub moment_id: u64,
    pub user_id: u64,
    pub comment_id: u64,
    pub text: String,
    pub time_ms: i64,
}

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

/// A stored message, for recall and receipts.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageInfo {
    pub msg_id: u64,
    pub sender_id: u64,
    pub time_ms: i64,
    /// `None` once recalled.
    pub body: Option<v1::Message>,
}

/// The storage contract. Implementations: [`SqliteStore`] (embedded), PostgreSQL (cluster).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user; [`StoreError::UserExists`] when the name is taken.
    async fn create_user(&self, name: &str, password_hash: &str) -> Result<u64>;
    async fn user_by_name(&self, name: &str) -> Result<Option<User>>;
    async fn user_by_id(&self, id: u64) -> Result<Option<User>>;

    /// Stores a session for `(user_id, device_id)`, replacing that device's earlier one.
    async fn put_session(&self, token_hash: [u8; 32], user_id: u64, device_id: &str) -> Result<()>;
    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<Session>>;
    /// Deletes one session; true when it existed.
    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<bool>;
    /// Replaces a user's password hash and ends every session of the user, in one
    /// transaction (a password change revokes every token). Returns the device ids that
    /// had a session.
    async fn set_password(&self, user_id: u64, password_hash: &str) -> Result<Vec<String>>;

    /// Makes a message durable in both inboxes (idempotent on the sender and
    /// `client_msg_id`). Returns once the write is on disk.
    async fn append_message(&self, msg: NewMessage) -> Result<Appended>;

    /// Up to `limit` entries of `user_id`'s inbox with seq > `after`.
    async fn inbox(&self, user_id: u64, after: u64, limit: u32) -> Result<InboxPage>;
    /// The newest seq of `user_id`'s inbox.
    async fn latest_seq(&self, user_id: u64) -> Result<u64>;

    /// Records the synckey a device reported (what it has received).
    async fn set_synckey(&self, user_id: u64, device_id: &str, synckey: u64) -> Result<()>;
    /// The last synckey a device reported.
    async fn synckey(&self, user_id: u64, device_id: &str) -> Result<Option<u64>>;

    /// Deletes inbox entries stored before `before_ms`; returns how many went.
    async fn prune(&self, before_ms: i64) -> Result<u64>;

    /// Ends every session of a user; returns the device ids that had one.
    async fn delete_user_sessions(&self, user_id: u64) -> Result<Vec<String>>;

    /// Appends non-message entries; returns their seqs, in order.
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<u64>>;

    /// `user_id`'s relation to `peer_id`, if any.
    async fn friendship(&self, user_id: u64, peer_id: u64) -> Result<Option<FriendRow>>;
    /// Applies a conditional friendship change atomically ([`StoreError::Conflict`] when
    /// an expectation fails; nothing is written then). Returns the events' seqs.
    async fn change_friends(&self, change: FriendChange) -> Result<Vec<u64>>;
    /// With `since_version` 0: every relation that is not `REMOVED`. Otherwise every row
    /// changed after that version, `REMOVED` ones included.
    async fn friends(&self, user_id: u64, since_version: u64) -> Result<FriendList>;

    async fn set_avatar(&self, user_id: u64, avatar: Avatar) -> Result<()>;
    async fn avatar(&self, user_id: u64) -> Result<Option<Avatar>>;

    async fn add_report(&self, info: ReportInfo, data: Vec<u8>) -> Result<u64>;
    /// Newest first, ids below `before_id` (0: from the newest).
    async fn reports(&self, before_id: u64, limit: u32) -> Result<Vec<ReportInfo>>;
    async fn report(&self, id: u64) -> Result<Option<(ReportInfo, Vec<u8>)>>;
    /// Deletes reports stored before `before_ms`.
    async fn prune_reports(&self, before_ms: i64) -> Result<u64>;

    /// Stores a moment (its id chosen by the caller) with its inbox events.
    async fn add_moment(&self, moment: MomentRow, events: Vec<NewEvent>) -> Result<Vec<u64>>;
    async fn moment(&self, id: u64) -> Result<Option<MomentRow>>;
    /// Deletes a moment with its likes and comments; true when it existed.
    async fn delete_moment(&self, id: u64) -> Result<bool>;
    /// Moments by any of `authors` with id < `before_id` (0: no bound), newest first.
    async fn timeline(&self, authors: &[u64], before_id: u64, limit: u32)
        -> Result<Vec<MomentRow>>;
    /// Adds or removes a like (with an optional event for the author); true when
    /// something changed.
    async fn set_like(
        &self,
        moment_id: u64,
        user_id: u64,
        on: bool,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<bool>;
    /// Adds a comment (with an optional event for the author); returns its id.
    async fn add_comment(
        &self,
        moment_id: u64,
        user_id: u64,
        text: &str,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<u64>;
    /// Likes and comments on the given moments, oldest first.
    async fn reactions(&self, moment_ids: &[u64]) -> Result<Vec<Reaction>>;

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
    /// Applies a membership, role, name or announcement change and logs its event;
    /// returns the event's gseq.
    async fn change_group(&self, change: GroupChange) -> Result<u64>;
    /// Appends a message to a group's log (idempotent on the sender and client_msg_id,
    /// like [`Store::append_message`]); `recipient_seq` of the answer is the gseq.
    async fn append_group_message(&self, group_id: u64, msg: NewMessage) -> Result<Appended>;
    /// Up to `limit` entries of a group's log with gseq > `after`; the group's latest gseq;
    /// whether more follow.
    async fn group_log(
        &self,
        group_id: u64,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<v1::GroupEntry>, u64, bool)>;
    async fn message_info(&self, msg_id: u64) -> Result<Option<MessageInfo>>;
    /// Deletes a message's content and logs the recall: in the group's log when
    /// `group` is given (returns its gseq), and in the inboxes of `inbox`.
    async fn recall_message(
        &self,
        msg_id: u64,
        group: Option<(u64, v1::GroupEntry)>,
        inbox: Vec<NewEvent>,
    ) -> Result<(Option<u64>, Vec<u64>)>;
    /// Records that a member has read up to `gseq` (never moves back).
    async fn set_group_read(&self, group_id: u64, user_id: u64, gseq: u64) -> Result<()>;
}
