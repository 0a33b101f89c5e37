//! The accounts contract: users, their devices' sessions and their passwords.

use async_trait::async_trait;

use crate::Result;

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

/// What a LOGIN reads: the session of a token and its user's row, found in one look-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginView {
    pub session: Session,
    pub user_name: String,
    /// Why the user is disabled (`None`: not disabled; as `UserAdminStore::disabled`).
    pub disabled: Option<String>,
    /// The newest seq of the user's inbox (as `InboxStore::latest_seq`).
    pub latest_seq: u64,
}

/// Users, sessions and passwords.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates a user; [`StoreError::UserExists`](crate::StoreError::UserExists) when the
    /// name is taken.
    async fn create_user(&self, name: &str, password_hash: &str) -> Result<u64>;
    async fn user_by_name(&self, name: &str) -> Result<Option<User>>;
    async fn user_by_id(&self, id: u64) -> Result<Option<User>>;

    /// Stores a session for `(user_id, device_id)`, replacing that device's earlier one.
    async fn put_session(&self, token_hash: [u8; 32], user_id: u64, device_id: &str) -> Result<()>;
    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<Session>>;
    /// The session of `token_hash` with what a login needs of its user, in one look-up
    /// (after a restart every device logs in again at once; four reads one after another
    /// each cost a round trip). `None` when no session has that hash, or its user is gone.
    async fn login_view(&self, token_hash: [u8; 32]) -> Result<Option<LoginView>>;
    /// Deletes one session; true when it existed.
    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<bool>;
    /// Ends every session of a user; returns the device ids that had one.
    async fn delete_user_sessions(&self, user_id: u64) -> Result<Vec<String>>;
    /// Replaces a user's password hash and ends every session of the user, in one
    /// transaction (a password change revokes every token). Returns the device ids that
    /// had a session.
    async fn set_password(&self, user_id: u64, password_hash: &str) -> Result<Vec<String>>;
}
