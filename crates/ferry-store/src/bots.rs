//! The bots contract (issue 23): bot accounts — users with the `bot` flag — and their
//! long-lived, scoped API tokens, kept as SHA-256 hashes like device sessions. Also the
//! lookup the before-send hook needs to tell a retried send from a new one.

use async_trait::async_trait;

use crate::Result;

/// A bot account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotRow {
    pub id: u64,
    pub name: String,
    pub created_ms: i64,
}

/// A bot's API token (the token itself is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotToken {
    pub id: u64,
    pub bot_id: u64,
    /// What it may do: `send`, `read`, `group_admin`.
    pub scopes: Vec<String>,
    pub created_ms: i64,
    /// When it was last used (0: never). Written at most about once a minute.
    pub last_used_ms: i64,
}

/// Bot accounts and their tokens.
#[async_trait]
pub trait BotStore: Send + Sync + 'static {
    /// Creates a user with the bot flag;
    /// [`StoreError::UserExists`](crate::StoreError::UserExists) when the name is taken.
    async fn create_bot(&self, name: &str, password_hash: &str) -> Result<u64>;
    /// Whether a user is a bot (false for an unknown user).
    async fn is_bot(&self, user_id: u64) -> Result<bool>;
    /// Every bot, by name.
    async fn bots(&self) -> Result<Vec<BotRow>>;
    /// Stores a token (its hash) for a bot; returns the token's id.
    async fn add_bot_token(
        &self,
        bot_id: u64,
        token_hash: [u8; 32],
        scopes: Vec<String>,
    ) -> Result<u64>;
    /// The token behind a hash, if not revoked.
    async fn bot_token(&self, token_hash: [u8; 32]) -> Result<Option<BotToken>>;
    /// A bot's tokens, oldest first.
    async fn bot_tokens(&self, bot_id: u64) -> Result<Vec<BotToken>>;
    /// Revokes (deletes) a bot's token; false when it had no such token.
    async fn revoke_bot_token(&self, bot_id: u64, token_id: u64) -> Result<bool>;
    /// Records that a token was used at `now_ms`.
    async fn touch_bot_token(&self, token_id: u64, now_ms: i64) -> Result<()>;
    /// The id of the message `sender_id` stored with `client_msg_id`, if any (1:1 and
    /// group messages alike).
    async fn sent_message_id(&self, sender_id: u64, client_msg_id: u64) -> Result<Option<u64>>;
}

/// Scopes as stored: comma separated.
pub(crate) fn join_scopes(scopes: &[String]) -> String {
    scopes.join(",")
}

pub(crate) fn split_scopes(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}
