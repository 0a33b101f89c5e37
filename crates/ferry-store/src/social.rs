//! The social contract: friendships, avatars, and moments with their likes and
//! comments.

use async_trait::async_trait;

use crate::{NewEvent, Result};

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

/// Friendships, avatars, moments, likes and comments.
#[async_trait]
pub trait SocialStore: Send + Sync + 'static {
    /// `user_id`'s relation to `peer_id`, if any.
    async fn friendship(&self, user_id: u64, peer_id: u64) -> Result<Option<FriendRow>>;
    /// Applies a conditional friendship change atomically
    /// ([`StoreError::Conflict`](crate::StoreError::Conflict) when an expectation fails;
    /// nothing is written then). Returns the events' seqs.
    async fn change_friends(&self, change: FriendChange) -> Result<Vec<u64>>;
    /// With `since_version` 0: every relation that is not `REMOVED`. Otherwise every row
    /// changed after that version, `REMOVED` ones included.
    async fn friends(&self, user_id: u64, since_version: u64) -> Result<FriendList>;

    async fn set_avatar(&self, user_id: u64, avatar: Avatar) -> Result<()>;
    async fn avatar(&self, user_id: u64) -> Result<Option<Avatar>>;

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
}
