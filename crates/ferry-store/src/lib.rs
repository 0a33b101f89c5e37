//! Ferry's storage layer: the [`Store`] trait the logic layer writes through, and
//! [`SqliteStore`], the embedded implementation `ferry serve` uses by default.
//!
//! The store owns durability: when [`Store::append_message`] returns, the message is on
//! disk (fsync'd, group-committed) in the sender's and the recipient's inboxes. It must
//! not know about connections, frames, pushes or passwords in clear: it keeps what it is
//! given and answers queries.

mod sqlite;

#[doc(hidden)]
pub mod conformance;

use async_trait::async_trait;
use ferry_proto::v1;

pub use sqlite::{Durability, SqliteStore};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
}
