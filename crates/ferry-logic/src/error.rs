//! Logic errors and their mapping to the client's [`v1::ErrorCode`].

use ferry_proto::v1::{self, ErrorCode};
use ferry_store::StoreError;

/// What a client is told to wait when the store cannot write (disk full, database
/// unreachable).
pub const STORE_RETRY_AFTER_MS: u32 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum LogicError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not logged in, or the token is unknown or revoked")]
    Unauthorized,
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("user name already taken")]
    UserExists,
    #[error("no user named {0:?}")]
    UnknownUser(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("unknown command 0x{0:02x}")]
    UnknownCommand(u32),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ChecksumMismatch(String),
    #[error("{0}")]
    Unavailable(String),
    /// Not ready yet (media still uploading): the client should retry after the delay.
    #[error("{0}")]
    NotReady(String, u32),
    /// A rate limit: the client may try again after the delay (ms).
    #[error("{0}")]
    RateLimited(String, u32),
    /// Shed by admission control: the server is overloaded; retry after the delay (ms).
    #[error("server overloaded; retry later")]
    Overloaded(u32),
}

impl From<prost::DecodeError> for LogicError {
    fn from(e: prost::DecodeError) -> Self {
        LogicError::BadRequest(format!("undecodable body: {e}"))
    }
}

impl LogicError {
    pub fn code(&self) -> ErrorCode {
        match self {
            LogicError::BadRequest(_) => ErrorCode::BadRequest,
            LogicError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            LogicError::Unauthorized => ErrorCode::Unauthorized,
            LogicError::BadCredentials => ErrorCode::BadCredentials,
            LogicError::UserExists => ErrorCode::UserExists,
            LogicError::UnknownUser(_) => ErrorCode::UnknownUser,
            LogicError::TooLarge(_) => ErrorCode::TooLarge,
            LogicError::UnknownCommand(_) => ErrorCode::UnknownCommand,
            LogicError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            LogicError::NotFound(_) | LogicError::Store(StoreError::NotFound) => {
                ErrorCode::NotFound
            }
            LogicError::ChecksumMismatch(_) => ErrorCode::ChecksumMismatch,
            LogicError::Unavailable(_) | LogicError::NotReady(..) => ErrorCode::Unavailable,
            LogicError::RateLimited(..) => ErrorCode::RateLimited,
            LogicError::Overloaded(_) => ErrorCode::Unavailable,
            LogicError::Store(StoreError::UserExists) => ErrorCode::UserExists,
            LogicError::Store(StoreError::Closed | StoreError::Unavailable(_)) => {
                ErrorCode::Unavailable
            }
            LogicError::Store(_) | LogicError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// What the client is told: internals (SQL, paths) never leave the server.
    pub fn to_body(&self) -> v1::Error {
        let message = match (self, self.code()) {
            (LogicError::NotReady(m, _), _) => m.clone(),
            (_, ErrorCode::Internal) => "internal error; try again".to_owned(),
            (_, ErrorCode::Unavailable) => "service unavailable; try again".to_owned(),
            _ => self.to_string(),
        };
        let retry_after_ms = match self {
            LogicError::NotReady(_, ms)
            | LogicError::RateLimited(_, ms)
            | LogicError::Overloaded(ms) => *ms,
            // The store cannot write now (disk full, database unreachable): a client
            // that comes back at once would only add load.
            LogicError::Store(StoreError::Unavailable(_)) => STORE_RETRY_AFTER_MS,
            _ => 0,
        };
        v1::Error {
            code: self.code() as i32,
            message,
            retry_after_ms,
        }
    }
}
