//! [`ClientError`]: what went wrong, as a kind the app can match on, the error that caused
//! it (kept, not flattened into a string, so `source()` chains and `downcast_ref` work), and
//! for a refusal the server's code, message and retry hint. Shaped like async-nats'
//! `Error<Kind>`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v1::{self, ErrorCode};

/// What kind of failure a [`ClientError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server answered with an error ([`ClientError::refusal`] says which).
    Server,
    /// An HTTP exchange (short link, long-poll, key fetch) failed below the answer.
    Http,
    /// The socket failed or closed.
    Io,
    /// An answer did not decode or made no sense; or local data (a key, an image) was bad.
    Protocol,
    /// No answer in time.
    Timeout,
    /// The client was closed (or its link task is gone).
    Closed,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Server => "server refused",
            ErrorKind::Http => "http",
            ErrorKind::Io => "i/o",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Closed => "the client is closed",
        })
    }
}

/// The server's refusal: its code, its (sanitized) message, and how long it asks the
/// client to wait before trying again (0: no hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: u32,
}

/// An SDK failure: a kind, what was being done, the underlying error, and (for
/// [`ErrorKind::Server`]) the server's refusal.
///
/// `Display` prints the kind, the context and the source's text (as async-nats does), so
/// a log line is complete on its own; `source()` returns the underlying error for code
/// that wants to look at it. Cheap to clone (the source is shared).
#[derive(Clone)]
pub struct ClientError {
    kind: ErrorKind,
    /// What was being done or what was wrong, in words ("upload key", "server closed
    /// the link"); empty when the source says it all.
    context: String,
    source: Option<Arc<dyn StdError + Send + Sync>>,
    refusal: Option<Box<Refusal>>,
}

impl ClientError {
    /// An error of `kind` described by `context` alone.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        ClientError {
            kind,
            context: context.into(),
            source: None,
            refusal: None,
        }
    }

    /// An error of `kind` caused by `source`, while doing `context` (may be empty).
    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        ClientError {
            kind,
            context: context.into(),
            source: Some(Arc::from(source.into())),
            refusal: None,
        }
    }

    /// The server refused with `code`.
    pub fn server(code: ErrorCode, message: impl Into<String>, retry_after_ms: u32) -> Self {
        ClientError {
            kind: ErrorKind::Server,
            context: String::new(),
            source: None,
            refusal: Some(Box::new(Refusal {
                code,
                message: message.into(),
                retry_after_ms,
            })),
        }
    }

    /// The server's `Error` answer (an unknown code reads as `Internal`).
    pub fn from_error(e: v1::Error) -> Self {
        ClientError::server(
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            e.message,
            e.retry_after_ms,
        )
    }

    pub fn timeout() -> Self {
        ClientError::new(ErrorKind::Timeout, "")
    }

    pub fn closed() -> Self {
        ClientError::new(ErrorKind::Closed, "")
    }

    /// The socket side failed: `context` says how.
    pub fn io(context: impl Into<String>) -> Self {
        ClientError::new(ErrorKind::Io, context)
    }

    /// An HTTP exchange failed: `context` says how.
    pub fn http(context: impl Into<String>) -> Self {
        ClientError::new(ErrorKind::Http, context)
    }

    /// An HTTP exchange failed because of `source` (hyper's error, say).
    pub fn http_source(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        ClientError::with_source(ErrorKind::Http, "", source)
    }

    /// Something did not decode or make sense: `context` says what.
    pub fn protocol(context: impl Into<String>) -> Self {
        ClientError::new(ErrorKind::Protocol, context)
    }

    /// `context` did not decode or open because of `source`.
    pub fn protocol_source(
        context: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        ClientError::with_source(ErrorKind::Protocol, context, source)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's refusal, if the server refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_deref()
    }

    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        self.refusal().map(|r| r.code)
    }

    /// How long the server asked to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.refusal()
            .filter(|r| r.retry_after_ms > 0)
            .map(|r| Duration::from_millis(u64::from(r.retry_after_ms)))
    }

    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Server => matches!(
                self.code(),
                Some(ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::RateLimited)
            ),
            ErrorKind::Closed => false,
            _ => true,
        }
    }

    /// The first `std::io::Error` in the chain, if the failure came from a socket.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        let mut next: Option<&(dyn StdError + 'static)> = self.source();
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io);
            }
            next = e.source();
        }
        None
    }
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ClientError");
        d.field("kind", &self.kind);
        if !self.context.is_empty() {
            d.field("context", &self.context);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        if let Some(r) = &self.refusal {
            d.field("refusal", r);
        }
        d.finish()
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.refusal {
            return write!(f, "{}: {} ({:?})", self.kind, r.message, r.code);
        }
        write!(f, "{}", self.kind)?;
        match (&self.source, self.context.is_empty()) {
            (Some(s), true) => write!(f, ": {s}"),
            (Some(s), false) => write!(f, ": {}: {s}", self.context),
            (None, false) => write!(f, ": {}", self.context),
            (None, true) => Ok(()),
        }
    }
}

impl StdError for ClientError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// Two errors are equal when they say the same thing (the sources are compared by
/// their text: `dyn Error` has no equality).
impl PartialEq for ClientError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.refusal == other.refusal
            && self.to_string() == other.to_string()
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::with_source(ErrorKind::Io, "", e)
    }
}

#[cfg(test)]
mod tests {
    use ferry_proto::ProtoMessage;

    use super::*;

    #[test]
    fn display_keeps_the_old_texts() {
        let refused = ClientError::server(ErrorCode::RateLimited, "slow down", 300);
        assert_eq!(
            refused.to_string(),
            "server refused: slow down (RateLimited)"
        );
        assert_eq!(ClientError::timeout().to_string(), "timed out");
        assert_eq!(ClientError::closed().to_string(), "the client is closed");
        assert_eq!(
            ClientError::io("server closed the link").to_string(),
            "i/o: server closed the link"
        );
        let bad = v1::Error::decode(&[0xff][..]).unwrap_err();
        assert_eq!(
            ClientError::protocol_source("upload key", bad.clone()).to_string(),
            format!("protocol: upload key: {bad}")
        );
        assert_eq!(
            ClientError::http("HTTP 502 Bad Gateway").to_string(),
            "http: HTTP 502 Bad Gateway"
        );
    }

    #[test]
    fn the_source_is_kept_and_reachable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ClientError::from(io);
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(
            e.io_error().map(|io| io.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(e.source().is_some());
        // Wrapped once more (as a race error would be), the io error is still found.
        let outer = ClientError::with_source(ErrorKind::Http, "connect", e.clone());
        assert_eq!(
            outer.io_error().map(|io| io.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }

    #[test]
    fn codes_retry_hints_and_retryability() {
        let e = ClientError::from_error(v1::Error {
            code: ErrorCode::RateLimited as i32,
            message: "slow down".into(),
            retry_after_ms: 250,
        });
        assert_eq!(e.kind(), ErrorKind::Server);
        assert_eq!(e.code(), Some(ErrorCode::RateLimited));
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        assert!(e.is_retryable());
        let denied = ClientError::server(ErrorCode::Unauthorized, "no", 0);
        assert!(!denied.is_retryable());
        assert_eq!(denied.retry_after(), None);
        assert!(!ClientError::closed().is_retryable());
        assert!(ClientError::timeout().is_retryable());
        assert!(ClientError::io("reset").is_retryable());
        assert_eq!(ClientError::timeout().code(), None);
    }
}
