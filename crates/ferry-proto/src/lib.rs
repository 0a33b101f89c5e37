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
pub mod compact;
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

/// The highest protocol major version this build speaks (docs/protocol.md §8, *Versions
/// and compatibility*): `LoginReq.protocol` / `LoginResp.protocol` on the long link, the
/// `Ferry-Protocol` header on the short link.
pub const PROTOCOL_VERSION: u32 = 2;

/// The short link's version header, on requests (what the client speaks) and on every
/// answer (what the server speaks to it).
pub const PROTOCOL_HEADER: &str = "ferry-protocol";

/// The version to speak with a peer whose highest is `theirs`: the highest both speak.
/// 0 (a peer that named none: every client before 1.0) counts as 1, so the answer is
/// never above what the peer speaks and never 0.
pub fn protocol_for(theirs: u32) -> u32 {
    theirs.clamp(1, PROTOCOL_VERSION)
}

/// Builds an [`v1::Error`] body.
pub fn error_body(code: v1::ErrorCode, message: impl Into<String>) -> v1::Error {
    v1::Error {
        code: code as i32,
        message: message.into(),
        retry_after_ms: 0,
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn the_version_spoken_is_the_highest_both_sides_speak() {
        assert_eq!(protocol_for(0), 1, "absent counts as 1");
        assert_eq!(protocol_for(1), 1);
        assert_eq!(protocol_for(PROTOCOL_VERSION), PROTOCOL_VERSION);
        assert_eq!(protocol_for(PROTOCOL_VERSION + 1), PROTOCOL_VERSION);
        assert_eq!(protocol_for(u32::MAX), PROTOCOL_VERSION);
    }
}
