//! The search contract: the change feed a full-text index follows (issue 24).
//!
//! Every change (a recall empties the body, an edit replaces it) and deletion of a row of
//! `messages` appends the message's id to the feed, by database triggers — so no write
//! path can forget it, and the index sees every change in commit order. An index reads
//! the feed after its cursor and re-reads each named message as it is now: applying a
//! change twice, or late, converges on the same state.
//!
//! New messages are in the feed only where [`SearchStore::feed_names_inserts`] says so
//! (PostgreSQL, whose message ids come from a sequence and may commit out of order). The
//! embedded store's single writer hands out message ids in commit order, so an index
//! follows its new messages by id ([`SearchStore::messages_after`]) and the send path
//! writes no feed row (one B-tree page fewer per commit).

use async_trait::async_trait;
use ferry_proto::v1;

use crate::Result;

/// One row of the change feed: message `msg_id` changed (was stored, recalled, edited or
/// deleted) at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRow {
    pub id: u64,
    pub msg_id: u64,
    pub at_ms: i64,
}

/// A message as an index reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedMessage {
    pub msg_id: u64,
    pub sender_id: u64,
    pub time_ms: i64,
    /// For a group message its gseq; for a 1:1 message its seq in the recipient's inbox.
    pub recipient_seq: u64,
    /// `None` once recalled.
    pub body: Option<v1::Message>,
}

/// The change feed and the message reads an index is built from.
#[async_trait]
pub trait SearchStore: Send + Sync + 'static {
    /// Up to `limit` rows of the feed with id > `after`, in id order.
    async fn search_feed(&self, after: u64, limit: u32) -> Result<Vec<FeedRow>>;
    /// The feed's oldest kept id and its newest (0, 0 when it is empty).
    async fn search_feed_bounds(&self) -> Result<(u64, u64)>;
    /// Whether storing a message adds a feed row. When not, every message id is handed
    /// out in commit order (a message with a lower id is never committed after one with
    /// a higher id), so an index follows new messages with [`messages_after`] and its
    /// own cursor, and the feed for their later changes.
    ///
    /// [`messages_after`]: SearchStore::messages_after
    fn feed_names_inserts(&self) -> bool {
        true
    }
    /// The highest message id stored (0: none).
    async fn newest_message_id(&self) -> Result<u64>;
    /// The messages with these ids as stored now, in id order; an id with no row (deleted,
    /// pruned, never stored) is left out.
    async fn messages_by_id(&self, ids: &[u64]) -> Result<Vec<IndexedMessage>>;
    /// Up to `limit` messages with id > `after`, in id order (a rebuild reads them all).
    async fn messages_after(&self, after: u64, limit: u32) -> Result<Vec<IndexedMessage>>;
    /// Drops the feed's rows older than `before_ms` — but never the newest row, which
    /// holds the feed's position — and answers how many went. (SQLite drops the rows up
    /// to the first one at or after `before_ms` in id order: the feed is in time order
    /// but for milliseconds.)
    async fn prune_search_feed(&self, before_ms: i64) -> Result<u64>;
}
