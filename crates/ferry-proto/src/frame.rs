//! The long-link frame: an 8-byte header and a protobuf body.
//!
//! ```text
//!  0               1               2               3
//!  +---------------+---------------+---------------+---------------+
//!  |          body length (24-bit big-endian)      |    command    |
//!  +---------------+---------------+---------------+---------------+
//!  |                 request id (32-bit big-endian)                |
//!  +---------------+---------------+---------------+---------------+
//!  |                 body (protobuf, `length` bytes) ...
//! ```
//!
//! The body length is capped at [`MAX_BODY_LEN`] (1 MiB), so the first byte of a frame is
//! always `0x00..=0x10`. No HTTP request line starts with such a byte, which is how one
//! port serves both protocols (see [`sniff`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// The hard maximum body length. Servers may configure a lower one.
pub const MAX_BODY_LEN: usize = 1 << 20;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub cmd: u8,
    pub req_id: u32,
    pub body: Bytes,
}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces a body over the limit; `req_id` is the header's request id
    /// (the refusal answers with it).
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize, req_id: u32 },
}

impl FrameError {
    /// The request id of the frame refused (read from its header).
    pub fn req_id(&self) -> u32 {
        match self {
            FrameError::TooLarge { req_id, .. } => *req_id,
        }
    }
}

impl Frame {
    pub fn new(cmd: u8, req_id: u32, body: impl Into<Bytes>) -> Self {
        Frame {
            cmd,
            req_id,
            body: body.into(),
        }
    }

    /// Looks at the start of `buf`: `Ok(Some(n))` when a whole frame of `n` bytes is
    /// there, `Ok(None)` when more bytes are needed, an error when the header announces
    /// a body larger than `max_body` (the caller should close the link: the stream can
    /// no longer be trusted). Nothing is judged before the whole header is there, so a
    /// refusal always knows the frame's request id.
    pub fn check(buf: &[u8], max_body: usize) -> Result<Option<usize>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = body_len(buf);
        let max = max_body.min(MAX_BODY_LEN);
        if len > max {
            let req_id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            return Err(FrameError::TooLarge { len, max, req_id });
        }
        let total = HEADER_LEN + len;
        Ok((buf.len() >= total).then_some(total))
    }

    /// Takes one whole frame off the front of `buf`, if there is one.
    pub fn parse(buf: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, FrameError> {
        let Some(total) = Self::check(buf, max_body)? else {
            return Ok(None);
        };
        let mut frame = buf.split_to(total);
        let cmd = frame[3];
        frame.advance(4);
        let req_id = frame.get_u32();
        Ok(Some(Frame {
            cmd,
            req_id,
            body: frame.freeze(),
        }))
    }

    /// Appends this frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        encode_raw(self.cmd, self.req_id, &self.body, dst);
    }

    /// Decodes the body as a protobuf message.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.body.clone())
    }
}

fn body_len(buf: &[u8]) -> usize {
    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2])
}

/// Appends a frame whose body is already encoded.
///
/// # Panics
/// If `body` is longer than [`MAX_BODY_LEN`]: callers build bodies themselves and must
/// keep them under the limit (the server checks sizes before it encodes).
pub fn encode_raw(cmd: u8, req_id: u32, body: &[u8], dst: &mut BytesMut) {
    assert!(body.len() <= MAX_BODY_LEN, "frame body over MAX_BODY_LEN");
    dst.reserve(HEADER_LEN + body.len());
    let len = body.len() as u32;
    dst.put_u8((len >> 16) as u8);
    dst.put_u8((len >> 8) as u8);
    dst.put_u8(len as u8);
    dst.put_u8(cmd);
    dst.put_u32(req_id);
    dst.put_slice(body);
}

/// Appends a frame, encoding `msg` as its body straight into `dst`.
pub fn encode_msg<M: prost::Message>(cmd: u8, req_id: u32, msg: &M, dst: &mut BytesMut) {
    let len = msg.encoded_len();
    assert!(len <= MAX_BODY_LEN, "frame body over MAX_BODY_LEN");
    dst.reserve(HEADER_LEN + len);
    dst.put_u8((len >> 16) as u8);
    dst.put_u8((len >> 8) as u8);
    dst.put_u8(len as u8);
    dst.put_u8(cmd);
    dst.put_u32(req_id);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(dst);
}

/// What a connection speaks, judged from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A long-link frame (first byte is the top of a 24-bit length ≤ 1 MiB).
    Frame,
    /// An HTTP/1.x request line (an upper-case method).
    Http,
    /// Anything else: close the connection.
    Unknown,
}

/// Tells the long link from HTTP by the first byte a client sends.
pub fn sniff(first: u8) -> Protocol {
    match first {
        0x00..=0x10 => Protocol::Frame,
        b'A'..=b'Z' => Protocol::Http,
        _ => Protocol::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn round_trip() {
        let mut buf = BytesMut::new();
        let msg = v1::SendMsg {
            client_msg_id: 7,
            to: "bob".into(),
            text: "hello".into(),
            r#type: 0,
            ..Default::default()
        };
        encode_msg(0x03, 42, &msg, &mut buf);
        encode_raw(0x02, 43, &[], &mut buf);
        let f = Frame::parse(&mut buf, MAX_BODY_LEN).unwrap().unwrap();
        assert_eq!((f.cmd, f.req_id), (0x03, 42));
        assert_eq!(f.decode::<v1::SendMsg>().unwrap(), msg);
        let f = Frame::parse(&mut buf, MAX_BODY_LEN).unwrap().unwrap();
        assert_eq!((f.cmd, f.req_id, f.body.len()), (0x02, 43, 0));
        assert!(buf.is_empty());
        assert_eq!(Frame::parse(&mut buf, MAX_BODY_LEN), Ok(None));
    }

    #[test]
    fn hello_is_small() {
        let mut buf = BytesMut::new();
        let msg = v1::SendMsg {
            client_msg_id: u64::from(u32::MAX),
            to: "bob".into(),
            text: "hello".into(),
            r#type: 0,
            ..Default::default()
        };
        encode_msg(0x03, 1, &msg, &mut buf);
        assert!(buf.len() <= 40, "hello frame is {} bytes", buf.len());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut whole = BytesMut::new();
        encode_raw(0x04, 9, b"abcdef", &mut whole);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(Frame::parse(&mut part, MAX_BODY_LEN), Ok(None), "cut {cut}");
            assert_eq!(part.len(), cut);
        }
    }

    #[test]
    fn oversized_is_an_error() {
        let mut buf = BytesMut::from(&[0x10u8, 0x00, 0x01, 0x03, 0, 0, 0, 1][..]);
        assert!(matches!(
            Frame::parse(&mut buf, MAX_BODY_LEN),
            Err(FrameError::TooLarge { .. })
        ));
        // Judged on the whole header only, whose request id the error carries.
        let mut buf = BytesMut::from(&[0x00u8, 0x01, 0x00, 0x03, 0, 0, 0][..]);
        assert_eq!(Frame::parse(&mut buf, 100), Ok(None));
        buf.extend_from_slice(&[9]);
        assert_eq!(
            Frame::parse(&mut buf, 100),
            Err(FrameError::TooLarge {
                len: 256,
                max: 100,
                req_id: 9
            })
        );
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(0), Protocol::Frame);
        assert_eq!(sniff(0x10), Protocol::Frame);
        for m in ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH"] {
            assert_eq!(sniff(m.as_bytes()[0]), Protocol::Http);
        }
        assert_eq!(sniff(0x16), Protocol::Unknown);
        assert_eq!(sniff(b'g'), Protocol::Unknown);
        assert_eq!(sniff(0xff), Protocol::Unknown);
    }
}
