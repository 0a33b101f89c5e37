//! Ferry's storage layer: the [`Store`] contract the logic layer writes through, and its
//! two implementations — [`SqliteStore`], one embedded SQLite file (what `ferry serve`
//! uses by default), and [`PgStore`], PostgreSQL shared by the logic nodes of a cluster.
//! Media bytes are kept apart, behind [`MediaStore`] ([`LocalMediaStore`] in a folder,
//! [`PgMediaStore`] with its metadata in PostgreSQL and its bytes in a shared folder,
//! [`S3MediaStore`] with its metadata in PostgreSQL and its bytes in S3-compatible
//! storage).
//!
//! The contract is cut along the logic layer's domains: [`AccountStore`], [`InboxStore`],
//! [`SocialStore`], [`ReportStore`], [`GroupStore`], [`MsgOpsStore`] (edits, reactions,
//! pins, delete-for-me), [`ConvStore`] (per-user conversation state, conversations'
//! retention) and [`OpsStore`] (the admin API's operations), each declared with its rows in a file of its own (`accounts.rs`, `inbox.rs` …) and implemented by each backend in the
//! file of the same name (`sqlite/inbox.rs`, `postgres/inbox.rs` …). [`Store`] is all of
//! them; the logic layer holds an `Arc<dyn Store>`. Both backends pass one conformance
//! suite (`conformance/`, built with the `conformance` feature for the tests).
//!
//! The store owns durability: when [`InboxStore::append_message`] returns, the message
//! is on disk (fsync'd, group-committed) in the sender's and the recipient's inboxes.
//! It must not know about connections, frames, pushes, caches or passwords in clear, nor
//! make the logic layer's decisions (who may message whom, who may read what): it keeps
//! what it is given, atomically, and answers queries.

mod accounts;
mod audit;
mod bots;
mod conv;
mod groups;
mod hooks;
mod inbox;
mod media;
mod msgops;
mod ops;
mod postgres;
mod push;
mod reports;
mod search;
mod social;
mod sqlite;
mod user_admin;

#[cfg(feature = "conformance")]
#[doc(hidden)]
pub mod conformance;

pub use accounts::{AccountStore, LoginView, Session, User};
pub use audit::{AuditEntry, AuditStore};
pub use bots::{BotRow, BotStore, BotToken};
pub use conv::{
    ConvChange, ConvDone, ConvKey, ConvRow, ConvStore, Pruned, RetentionChange, SharedConv,
};
pub use groups::{GroupChange, GroupRow, GroupStore, MemberRow};
pub use hooks::{HookDelivery, HookEndpoint, HookEvent, HookOutcome, HookStats, HookStore};
pub use inbox::{
    Appended, AppendedBatch, InboxPage, InboxStore, MessageInfo, NewEvent, NewMessage,
};
pub use media::{
    valid_media_id, LocalMediaStore, MediaMeta, MediaStore, PgMediaStore, S3Config, S3MediaStore,
    UploadKey, Verified,
};
pub use msgops::{
    Logged, MessageEdit, MsgOpsStore, PinChange, PinRow, Pinned, Reacted, ReactionChange,
    ReactionCount,
};
pub use ops::{Dissolved, GroupSummary, OpsStore, SystemMessage};
pub use postgres::{PgConfig, PgStore};
pub use push::{PushDone, PushEnqueue, PushJob, PushPrefRow, PushStore, PushTargetRow};
pub use reports::{ReportInfo, ReportStore};
pub use search::{FeedRow, IndexedMessage, SearchStore};
pub use social::{Avatar, FriendChange, FriendList, FriendRow, MomentRow, Reaction, SocialStore};
pub use sqlite::{Durability, SqliteStore};
pub use user_admin::{
    is_user_column, Deleted, DeviceInfo, Leftover, UserAdminStore, UserDeletion, UserInfo,
};

/// The store's traits, for code that calls them on a concrete store (`SqliteStore`,
/// `PgStore`) or a generic one, where a sub-trait's methods need the sub-trait in scope.
/// (On a `dyn Store` the compiler finds its supertraits' methods without.)
pub mod prelude {
    pub use crate::{
        AccountStore, AuditStore, BotStore, ConvStore, GroupStore, HookStore, InboxStore,
        MediaStore, MsgOpsStore, OpsStore, PushStore, ReportStore, SearchStore, SocialStore, Store,
        UserAdminStore,
    };
}

/// The whole storage contract: every domain's sub-trait. Implemented for any type that
/// implements them all; the logic layer holds an `Arc<dyn Store>`.
pub trait Store:
    AccountStore
    + InboxStore
    + SocialStore
    + ReportStore
    + GroupStore
    + PushStore
    + AuditStore
    + OpsStore
    + UserAdminStore
    + HookStore
    + BotStore
    + MsgOpsStore
    + SearchStore
    + ConvStore
{
}

impl<
        T: AccountStore
            + InboxStore
            + SocialStore
            + ReportStore
            + GroupStore
            + PushStore
            + AuditStore
            + OpsStore
            + UserAdminStore
            + HookStore
            + BotStore
            + MsgOpsStore
            + SearchStore
            + ConvStore,
    > Store for T
{
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL error other than the database being unreachable (those become
    /// [`StoreError::Unavailable`], see the `From` conversion).
    #[error("postgres: {0}")]
    Postgres(tokio_postgres::Error),
    /// The database cannot be reached (pool timeout, connection refused or lost, the
    /// server shutting down or restarting, too many connections): retry later.
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

impl From<tokio_postgres::Error> for StoreError {
    /// A connection that failed, was lost or refused, or a server shutting down, is the
    /// database being unavailable — retryable, not an internal error; any other error
    /// stays a PostgreSQL error.
    fn from(e: tokio_postgres::Error) -> Self {
        if postgres::is_unavailable(&e) {
            // "db error" alone says nothing: name the server's reason.
            StoreError::Unavailable(match e.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().code()),
                None => e.to_string(),
            })
        } else {
            StoreError::Postgres(e)
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
