//! Ferry's wire contract in Rust: the protobuf types generated from `proto/`, the
//! long-link frame codec, the command table (`cmd`: numbers, short-link paths, body
//! limits, authentication), the first-byte protocol sniffer, and the encryption layers
//! (`secure`, `resume`, `sealed`, `upload`).
//!
//! Shared by the gateway, the SDK and the benchmark tool so that all of them speak
//! exactly one codec. This crate must not do I/O, hold state or know about users:
//! it turns bytes into values and back, and reports bad input as an error value,
//! never a panic.

pub mod cmd;
pub mod frame;
pub mod resume;
pub mod sealed;
pub mod secure;
pub mod upload;
#[cfg(test)]
mod vectors;

pub use frame::{sniff, Frame, FrameError, Protocol, HEADER_LEN, MAX_BODY_LEN};

/// Client protocol types (`proto/ferry.proto`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ferry.v1.rs"));
}

/// Internal gateway ⇄ logic types (`proto/bus.proto`).
pub mod bus {
    include!(concat!(env!("OUT_DIR"), "/ferry.bus.v1.rs"));

    impl ByteRange {
        /// The bytes `[start, end)` this range asks of a resource of `size` bytes (cut
        /// at its end), or `None` when none of them exist (HTTP's 416). One rule for
        /// every server that answers ranges.
        pub fn resolve(&self, size: u64) -> Option<(u64, u64)> {
            match (self.suffix, self.last) {
                (Some(0), _) => None,
                (Some(n), _) => Some((size.saturating_sub(n), size)),
                _ if self.first >= size => None,
                (None, None) => Some((self.first, size)),
                (None, Some(last)) if last < self.first => None,
                (None, Some(last)) => Some((self.first, last.saturating_add(1).min(size))),
            }
        }
    }
}

pub use prost::Message as ProtoMessage;

/// Builds an [`v1::Error`] body.
pub fn error_body(code: v1::ErrorCode, message: impl Into<String>) -> v1::Error {
    v1::Error {
        code: code as i32,
        message: message.into(),
        retry_after_ms: 0,
    }
}
