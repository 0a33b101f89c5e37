//! [`FerryError`]: what a Kotlin, Swift or Python caller catches. One exception class per
//! kind of failure; a refusal carries the server's [`ErrorCode`] (its protocol name too),
//! its message and its retry hint.

use ferry_client::{ClientError, ErrorKind};
use ferry_proto::v1;

/// The server's error codes (docs/protocol.md, "Errors"), one for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ErrorCode {
    Unspecified,
    BadRequest,
    Unauthorized,
    BadCredentials,
    UserExists,
    UnknownUser,
    TooLarge,
    UnknownCommand,
    NotLoggedIn,
    Unavailable,
    InvalidArgument,
    Internal,
    RateLimited,
    Kicked,
    PermissionDenied,
    NotFound,
    ChecksumMismatch,
    ResumeRefused,
}

impl From<v1::ErrorCode> for ErrorCode {
    /// Exhaustive on purpose: a code added to the protocol does not compile until it is
    /// added here.
    fn from(c: v1::ErrorCode) -> Self {
        use v1::ErrorCode as C;
        match c {
            C::Unspecified => ErrorCode::Unspecified,
            C::BadRequest => ErrorCode::BadRequest,
            C::Unauthorized => ErrorCode::Unauthorized,
            C::BadCredentials => ErrorCode::BadCredentials,
            C::UserExists => ErrorCode::UserExists,
            C::UnknownUser => ErrorCode::UnknownUser,
            C::TooLarge => ErrorCode::TooLarge,
            C::UnknownCommand => ErrorCode::UnknownCommand,
            C::NotLoggedIn => ErrorCode::NotLoggedIn,
            C::Unavailable => ErrorCode::Unavailable,
            C::InvalidArgument => ErrorCode::InvalidArgument,
            C::Internal => ErrorCode::Internal,
            C::RateLimited => ErrorCode::RateLimited,
            C::Kicked => ErrorCode::Kicked,
            C::PermissionDenied => ErrorCode::PermissionDenied,
            C::NotFound => ErrorCode::NotFound,
            C::ChecksumMismatch => ErrorCode::ChecksumMismatch,
            C::ResumeRefused => ErrorCode::ResumeRefused,
        }
    }
}

/// Why a call failed. Every variant is an exception in Kotlin (`FerryException.Server`
/// …), Swift (`FerryError.Server`) and Python (`FerryError.Server`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum FerryError {
    /// The server refused: `code` says why, `code_name` is its name in the protocol
    /// (`BAD_CREDENTIALS`, `PERMISSION_DENIED` …), `detail` the server's (sanitized)
    /// message, `retry_after_ms` how long it asks to wait (0: no hint).
    #[error("server refused: {detail} ({code_name})")]
    Server {
        code: ErrorCode,
        code_name: String,
        detail: String,
        retry_after_ms: u32,
    },
    /// An HTTP exchange (short link, long-poll, key fetch) failed below the answer.
    #[error("{detail}")]
    Http { detail: String },
    /// The socket failed or closed.
    #[error("{detail}")]
    Io { detail: String },
    /// An answer made no sense, or local data (a key, an image) was bad.
    #[error("{detail}")]
    Protocol { detail: String },
    /// No answer in time.
    #[error("{detail}")]
    Timeout { detail: String },
    /// The client was closed (or logged out, or stopped).
    #[error("{detail}")]
    Closed { detail: String },
    /// The caller passed something unusable (no server, a bad key, both a key and
    /// plaintext, events asked for after a listener took them).
    #[error("{detail}")]
    InvalidArgument { detail: String },
    /// The SDK failed inside (a task panicked): a bug, please report it.
    #[error("{detail}")]
    Internal { detail: String },
}

impl FerryError {
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        FerryError::InvalidArgument {
            detail: detail.into(),
        }
    }
}

impl From<ClientError> for FerryError {
    fn from(e: ClientError) -> Self {
        if let Some(r) = e.refusal() {
            return FerryError::Server {
                code: r.code.into(),
                code_name: r.code.as_str_name().to_owned(),
                detail: r.message.clone(),
                retry_after_ms: r.retry_after_ms,
            };
        }
        let detail = e.to_string();
        match e.kind() {
            ErrorKind::Http => FerryError::Http { detail },
            ErrorKind::Io => FerryError::Io { detail },
            ErrorKind::Timeout => FerryError::Timeout { detail },
            ErrorKind::Closed => FerryError::Closed { detail },
            // `Server` without a refusal does not happen; read it as a protocol error.
            _ => FerryError::Protocol { detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_the_code_and_its_protocol_name() {
        let e = FerryError::from(ClientError::server(
            v1::ErrorCode::BadCredentials,
            "wrong password",
            0,
        ));
        assert_eq!(
            e,
            FerryError::Server {
                code: ErrorCode::BadCredentials,
                code_name: "BAD_CREDENTIALS".into(),
                detail: "wrong password".into(),
                retry_after_ms: 0,
            }
        );
        assert_eq!(
            e.to_string(),
            "server refused: wrong password (BAD_CREDENTIALS)"
        );
        assert!(matches!(
            FerryError::from(ClientError::timeout()),
            FerryError::Timeout { .. }
        ));
        assert!(matches!(
            FerryError::from(ClientError::io("reset")),
            FerryError::Io { detail } if detail == "i/o: reset"
        ));
    }
}
