//! Protocol 2's compact sealed stream (docs/protocol.md §1.6): once both sides of an
//! encrypted link agree on version 2 in the login, a record is `varint(n) ‖ n bytes of
//! ciphertext and tag` instead of an 8-byte `SEALED` frame header, and the frames inside
//! the records are `varint(body length) ‖ cmd ‖ varint(request id) ‖ body` instead of the
//! 8-byte header of §1.1. A "hello" SEND shrinks from 55 to 40 bytes on the wire.
//!
//! The rest of a program keeps speaking the §1.1 layout: the [`Channel`] translates at
//! its edge, streaming — a frame may span records and a record may hold several frames —
//! so a caller's frame parser, its limits and its refusals are the same on both
//! versions. The translation holds only a partial header per direction (a few bytes),
//! never a partial body.
//!
//! Must not: judge a frame's size against the server's limits (the §1.1 parser behind
//! it does, with the frame's request id), or allocate per record beyond the output.
//!
//! Varints are protobuf's (LEB128, little-endian groups of 7 bits, high bit = more).
//!
//! [`Channel`]: crate::secure::Channel

use bytes::{BufMut, BytesMut};
use prost::encoding::encode_varint;

use crate::frame::{FrameError, HEADER_LEN, MAX_BODY_LEN};
use crate::secure::SecureError;

/// The most bytes a compact record header may take: `n` ≤ 65 535 fits in 3.
pub const MAX_RECORD_HEAD: usize = 3;
/// The most bytes a compact frame header may take: a 4-byte length varint (the §1.1
/// header's u24 fits in 4), the command, a 5-byte request-id varint.
pub const MAX_FRAME_HEAD: usize = 4 + 1 + 5;

/// A varint at the start of `buf` of at most `max` bytes: `Ok(Some((value, bytes)))`,
/// `Ok(None)` when more bytes are needed, `Err` when it runs past `max` bytes.
fn get_varint(buf: &[u8], max: usize) -> Result<Option<(u64, usize)>, ()> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(max) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    if buf.len() >= max {
        Err(())
    } else {
        Ok(None)
    }
}

/// A compact record's header at the start of `wire`: `Ok(Some((header bytes, n)))`.
pub fn record_head(wire: &[u8]) -> Result<Option<(usize, usize)>, SecureError> {
    match get_varint(wire, MAX_RECORD_HEAD) {
        Ok(None) => Ok(None),
        Ok(Some((n, used))) if n <= 65_535 => Ok(Some((used, n as usize))),
        Ok(Some((n, _))) => Err(SecureError::Frame(FrameError::TooLarge {
            len: n as usize,
            max: 65_535,
            req_id: 0,
        })),
        Err(()) => Err(SecureError::Compact("a record length longer than 3 bytes")),
    }
}

/// A compact frame's header at the start of `buf`: `Ok(Some((header bytes, body length,
/// cmd, request id)))`.
fn frame_head(buf: &[u8]) -> Result<Option<(usize, u32, u8, u32)>, SecureError> {
    let (len, a) = match get_varint(buf, 4) {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(None),
        Err(()) => return Err(SecureError::Compact("a frame length longer than 4 bytes")),
    };
    let Some(&cmd) = buf.get(a) else {
        return Ok(None);
    };
    let (req_id, b) = match get_varint(&buf[a + 1..], 5) {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(None),
        Err(()) => return Err(SecureError::Compact("a request id longer than 5 bytes")),
    };
    let Ok(req_id) = u32::try_from(req_id) else {
        return Err(SecureError::Compact("a request id above 2^32 - 1"));
    };
    if len > 0xFF_FFFF {
        // Beyond what any frame may carry (and what the §1.1 header can say).
        return Err(SecureError::Frame(FrameError::TooLarge {
            len: len as usize,
            max: MAX_BODY_LEN,
            req_id,
        }));
    }
    Ok(Some((a + 1 + b, len as u32, cmd, req_id)))
}

/// One direction's translation state: the header bytes seen so far and how much of the
/// current frame's body is still to pass.
#[derive(Debug, Default)]
struct Stream {
    head: [u8; MAX_FRAME_HEAD],
    head_len: u8,
    body_left: u32,
}

impl Stream {
    /// Passes body bytes through; `true` when `input` is used up.
    fn pass_body(&mut self, input: &mut &[u8], out: &mut impl BufMut) -> bool {
        if self.body_left > 0 {
            let n = (self.body_left as usize).min(input.len());
            out.put_slice(&input[..n]);
            *input = &input[n..];
            self.body_left -= n as u32;
        }
        input.is_empty()
    }

    /// §1.1 frames (any split) → compact frames.
    fn compact(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !self.pass_body(&mut input, out) {
            let have = usize::from(self.head_len);
            let take = (HEADER_LEN - have).min(input.len());
            self.head[have..have + take].copy_from_slice(&input[..take]);
            input = &input[take..];
            self.head_len += take as u8;
            if usize::from(self.head_len) == HEADER_LEN {
                let h = &self.head;
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                let req_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                encode_varint(u64::from(len), out);
                out.push(h[3]);
                encode_varint(u64::from(req_id), out);
                self.body_left = len;
                self.head_len = 0;
            }
        }
    }

    /// Compact frames (any split) → §1.1 frames.
    fn expand(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), SecureError> {
        while !self.pass_body(&mut input, out) {
            // Header bytes one at a time: there are three or four of them a frame.
            self.head[usize::from(self.head_len)] = input[0];
            input = &input[1..];
            self.head_len += 1;
            if let Some((_, len, cmd, req_id)) =
                frame_head(&self.head[..usize::from(self.head_len)])?
            {
                out.reserve(HEADER_LEN + len as usize);
                out.put_slice(&len.to_be_bytes()[1..]);
                out.put_u8(cmd);
                out.put_u32(req_id);
                self.body_left = len;
                self.head_len = 0;
            }
        }
        Ok(())
    }
}

/// Both directions of one link's translation (boxed in a [`Channel`] of a version-2
/// link; a version-1 link carries none).
///
/// [`Channel`]: crate::secure::Channel
#[derive(Debug, Default)]
pub(crate) struct Compact {
    send: Stream,
    recv: Stream,
}

impl Compact {
    /// §1.1 frames about to be sealed → compact frames (appended to `out`).
    pub(crate) fn outgoing(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        self.send.compact(plain, out);
    }

    /// Compact frames just opened → §1.1 frames (appended to `out`).
    pub(crate) fn incoming(
        &mut self,
        opened: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SecureError> {
        self.recv.expand(opened, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_raw, Frame};

    fn v1_stream() -> BytesMut {
        let mut s = BytesMut::new();
        encode_raw(0x02, 1, &[], &mut s);
        encode_raw(0x03, 127, b"hello bob", &mut s);
        encode_raw(0x04, 128, &[7u8; 300], &mut s);
        encode_raw(0x41, 0, &[1u8; 70_000], &mut s);
        encode_raw(0x05, u32::MAX, b"x", &mut s);
        s
    }

    #[test]
    fn varints_are_protobufs_and_read_back() {
        for (v, bytes) in [
            (0u64, vec![0u8]),
            (1, vec![1]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xac, 0x02]),
            (65_535, vec![0xff, 0xff, 0x03]),
            (u64::from(u32::MAX), vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let mut out = Vec::new();
            encode_varint(v, &mut out);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(prost::encoding::encoded_len_varint(v), bytes.len());
            assert_eq!(get_varint(&out, 10), Ok(Some((v, bytes.len()))));
        }
    }

    #[test]
    fn round_trip_at_every_split() {
        let v1 = v1_stream();
        let mut whole = Vec::new();
        Stream::default().compact(&v1, &mut whole);
        // Headers: 1+1+1, 1+1+1, 2+1+2, 3+1+1, 1+1+5 instead of 5 × 8.
        assert_eq!(whole.len(), v1.len() - 40 + 3 + 3 + 5 + 5 + 7);
        for split in [1usize, 2, 3, 7, 8, 9, 64, 4096, 65_519] {
            let mut c = Vec::new();
            let mut tx = Stream::default();
            for chunk in v1.chunks(split) {
                tx.compact(chunk, &mut c);
            }
            assert_eq!(c, whole, "compact, split {split}");
            let mut back = BytesMut::new();
            let mut rx = Stream::default();
            for chunk in c.chunks(split) {
                rx.expand(chunk, &mut back).unwrap();
            }
            assert_eq!(back, v1, "expand, split {split}");
            assert_eq!((rx.head_len, rx.body_left), (0, 0));
        }
        let mut parsed = BytesMut::new();
        Stream::default().expand(&whole, &mut parsed).unwrap();
        let f = Frame::parse(&mut parsed, 64 * 1024).unwrap().unwrap();
        assert_eq!((f.cmd, f.req_id, f.body.len()), (0x02, 1, 0));
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        let mut out = BytesMut::new();
        // A length varint that does not end within 4 bytes.
        assert!(matches!(
            Stream::default().expand(&[0x80, 0x80, 0x80, 0x80, 0x01], &mut out),
            Err(SecureError::Compact(_))
        ));
        // A request id above u32.
        assert!(matches!(
            Stream::default().expand(&[0x00, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f], &mut out),
            Err(SecureError::Compact(_))
        ));
        // A request id varint of 6 bytes.
        assert!(matches!(
            Stream::default().expand(&[0x00, 0x02, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut out),
            Err(SecureError::Compact(_))
        ));
        // A length beyond the §1.1 header: TOO_LARGE with the frame's request id.
        assert_eq!(
            Stream::default().expand(&[0x80, 0x80, 0x80, 0x08, 0x03, 0x09], &mut out),
            Err(SecureError::Frame(FrameError::TooLarge {
                len: 1 << 24,
                max: MAX_BODY_LEN,
                req_id: 9
            }))
        );
        // Record headers.
        assert_eq!(record_head(&[0x10]), Ok(Some((1, 16))));
        assert_eq!(record_head(&[0xff]), Ok(None));
        assert!(record_head(&[0x80, 0x80, 0x04]).is_err(), "65 536");
        assert!(record_head(&[0x80, 0x80, 0x80, 0x00]).is_err());
        assert_eq!(out.len(), 0, "nothing came out of the bad headers");
    }

    #[test]
    fn a_huge_announced_length_is_refused_by_the_parser_behind() {
        // 2 MiB announced, a few bytes sent: the §1.1 header comes out at once, so the
        // frame parser refuses it (TOO_LARGE with request id 5) without waiting for
        // the body.
        let mut c = Vec::new();
        encode_varint(2 << 20, &mut c);
        c.push(0x03);
        encode_varint(5, &mut c);
        c.extend_from_slice(b"abc");
        let mut out = BytesMut::new();
        Stream::default().expand(&c, &mut out).unwrap();
        assert_eq!(
            Frame::parse(&mut out, 64 * 1024),
            Err(FrameError::TooLarge {
                len: 2 << 20,
                max: 64 * 1024,
                req_id: 5
            })
        );
    }
}
