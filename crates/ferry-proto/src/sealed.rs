//! Sealed short-link messages: one HTTP request and its answer, each encrypted on its
//! own, with no handshake round trip and no state shared between gateways beyond the
//! server's static key.
//!
//! ```text
//! request body  = HELLO frame:    Noise N message to the server's static key
//!                                 (e, es) + AEAD(reply_key ‖ sent_ms ‖ body_len
//!                                 ‖ token_len ‖ token)
//!                 SEALED frames:  the plain request body, ≤ 65 519 bytes each
//! answer body   = HELLO|0x80:     Noise N message to reply_key (e, es) + AEAD(body_len)
//!                 SEALED frames:  the plain answer body
//! ```
//!
//! The device token rides inside (never in a plain `Authorization` header).
//! The client makes a fresh X25519 key pair per request (`reply_key`) and sends its
//! public half inside the encrypted request; the server answers with a one-way Noise
//! message to it. So the answer has forward secrecy (both sides' keys are ephemeral),
//! and the request is protected by the server's static key, like any 0-RTT data. The
//! declared body length stops truncation. Replay is the server's to refuse: it checks
//! `sent_ms` against its clock and remembers the request's ephemeral key (the first 32
//! bytes of the HELLO body, [`OpenedRequest::id`]) for as long as `sent_ms` is accepted.
//!
//! Pure: no I/O, no clock. Bad input is an error value, never a panic.

use bytes::BytesMut;

use crate::frame::{encode_raw, Frame, HEADER_LEN};
use crate::secure::{SecureError, StaticKey, KEY_LEN, MAX_RECORD_PLAIN, SEALED, TAG_LEN};

pub use crate::cmd::HELLO;

/// The Noise pattern of each direction: one-way, to a known static key.
pub const NOISE_N: &str = "Noise_N_25519_ChaChaPoly_BLAKE2s";
/// The media type of a sealed request or answer body.
pub const CONTENT_TYPE: &str = "application/x-ferry-sealed";
/// Bytes of a Noise message at most.
const NOISE_MAX: usize = 65_535;
/// Request header payload before the token: reply key, send time (ms since the Unix
/// epoch), body length, token length.
const REQUEST_META: usize = KEY_LEN + 8 + 4 + 1;

fn params() -> snow::params::NoiseParams {
    NOISE_N
        .parse()
        .unwrap_or_else(|_| unreachable!("the Noise name is valid"))
}

fn noise(e: snow::Error) -> SecureError {
    SecureError::Noise(e.to_string())
}

/// Writes a one-way Noise N message to `to` with `meta` as its payload, then `body` as
/// SEALED records: ⌈body / 65 519⌉ of them, every one full but the last, none for an
/// empty body. `fixed_ephemeral` only for the test vectors (`None`: a fresh key).
fn seal_to(
    to: &[u8; KEY_LEN],
    fixed_ephemeral: Option<&[u8; KEY_LEN]>,
    cmd: u8,
    meta: &[u8],
    body: &[u8],
) -> Result<Vec<u8>, SecureError> {
    let mut builder = snow::Builder::new(params());
    if let Some(e) = fixed_ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = builder
        .remote_public_key(to)
        .and_then(|b| b.build_initiator())
        .map_err(noise)?;
    let mut msg = vec![0u8; NOISE_MAX];
    let n = hs.write_message(meta, &mut msg).map_err(noise)?;
    let mut out = BytesMut::with_capacity(
        n + body.len() + (body.len() / MAX_RECORD_PLAIN + 2) * (TAG_LEN + 8) + 8,
    );
    encode_raw(cmd, 0, &msg[..n], &mut out);
    let mut t = hs.into_transport_mode().map_err(noise)?;
    for chunk in body.chunks(MAX_RECORD_PLAIN) {
        let n = t.write_message(chunk, &mut msg).map_err(noise)?;
        encode_raw(SEALED, 0, &msg[..n], &mut out);
    }
    Ok(out.to_vec())
}

/// What [`open_with`] opened: the handshake payload, the body and the sender's
/// ephemeral public key.
type Opened = (Vec<u8>, Vec<u8>, [u8; KEY_LEN]);

/// Opens what [`seal_to`] wrote with the private key it was sent to. The records may
/// split the body anywhere (an empty record included, each ≤ 65 519 bytes), as long as
/// they are in order and add up to the declared length: what [`seal_to`] writes, and one
/// empty record for an empty body, both open.
fn open_with(
    private: &[u8; KEY_LEN],
    cmd: u8,
    wire: &[u8],
    body_len: impl FnOnce(&[u8]) -> Result<usize, SecureError>,
) -> Result<Opened, SecureError> {
    let mut buf = BytesMut::from(wire);
    let first = Frame::parse(&mut buf, NOISE_MAX)?.ok_or(SecureError::Handshake)?;
    if first.cmd != cmd {
        return Err(SecureError::UnexpectedFrame {
            expected: cmd,
            got: first.cmd,
        });
    }
    if first.req_id != 0 {
        return Err(SecureError::RequestId {
            cmd: first.cmd,
            req_id: first.req_id,
        });
    }
    let eph: [u8; KEY_LEN] = first
        .body
        .get(..KEY_LEN)
        .and_then(|k| k.try_into().ok())
        .ok_or(SecureError::Handshake)?;
    let mut hs = snow::Builder::new(params())
        .local_private_key(private)
        .and_then(|b| b.build_responder())
        .map_err(noise)?;
    let mut meta = vec![0u8; first.body.len()];
    let n = hs
        .read_message(&first.body, &mut meta)
        .map_err(|_| SecureError::Handshake)?;
    meta.truncate(n);
    let want = body_len(&meta)?;
    let mut t = hs.into_transport_mode().map_err(noise)?;
    let mut body = Vec::with_capacity(want.min(4 * 1024 * 1024));
    let mut scratch = vec![0u8; NOISE_MAX];
    while let Some(f) = Frame::parse(&mut buf, NOISE_MAX)? {
        if f.cmd != SEALED {
            return Err(SecureError::UnexpectedFrame {
                expected: SEALED,
                got: f.cmd,
            });
        }
        if f.req_id != 0 {
            return Err(SecureError::RequestId {
                cmd: f.cmd,
                req_id: f.req_id,
            });
        }
        if f.body.len() < TAG_LEN {
            return Err(SecureError::Decrypt);
        }
        let n = t
            .read_message(&f.body, &mut scratch)
            .map_err(|_| SecureError::Decrypt)?;
        body.extend_from_slice(&scratch[..n]);
        if body.len() > want {
            return Err(SecureError::Decrypt);
        }
    }
    // Trailing bytes that are not a whole frame, or a body cut short: refused.
    if !buf.is_empty() || body.len() != want {
        return Err(SecureError::Decrypt);
    }
    Ok((meta, body, eph))
}

/// The client's half of a sealed request in flight: what opens the answer.
pub struct ReplyKey {
    private: [u8; KEY_LEN],
}

impl std::fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyKey")
    }
}

/// Seals a request body for a server whose static public key is `server_public`.
/// `now_ms` is the client's clock (ms since the Unix epoch).
/// `token` is the device token (empty: none), at most 255 bytes.
pub fn seal_request(
    server_public: &[u8; KEY_LEN],
    token: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<(Vec<u8>, ReplyKey), SecureError> {
    request_with(
        server_public,
        None,
        &StaticKey::generate()?,
        token,
        body,
        now_ms,
    )
}

/// [`seal_request`] with a given reply key pair and, for the test vectors only, a fixed
/// ephemeral key (`None`: a fresh one).
pub(crate) fn request_with(
    server_public: &[u8; KEY_LEN],
    fixed_ephemeral: Option<&[u8; KEY_LEN]>,
    reply: &StaticKey,
    token: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<(Vec<u8>, ReplyKey), SecureError> {
    let len = u32::try_from(body.len()).map_err(|_| SecureError::TooLarge(body.len()))?;
    let token_len = u8::try_from(token.len()).map_err(|_| SecureError::TooLarge(token.len()))?;
    let mut meta = Vec::with_capacity(REQUEST_META + token.len());
    meta.extend_from_slice(&reply.public);
    meta.extend_from_slice(&now_ms.to_be_bytes());
    meta.extend_from_slice(&len.to_be_bytes());
    meta.push(token_len);
    meta.extend_from_slice(token.as_bytes());
    let wire = seal_to(server_public, fixed_ephemeral, HELLO, &meta, body)?;
    Ok((
        wire,
        ReplyKey {
            private: reply.private,
        },
    ))
}

/// A request the server opened.
#[derive(Debug)]
pub struct OpenedRequest {
    /// The plain request body.
    pub body: Vec<u8>,
    /// When the client says it sent the request (ms since the Unix epoch).
    pub sent_ms: u64,
    /// The request's ephemeral public key: unique per request, the replay-cache key.
    pub id: [u8; KEY_LEN],
    /// Where the answer is sealed to.
    pub reply_to: [u8; KEY_LEN],
    /// The device token (empty: none).
    pub token: String,
}

/// Opens a sealed request with the server's static key.
pub fn open_request(key: &StaticKey, wire: &[u8]) -> Result<OpenedRequest, SecureError> {
    let (meta, body, id) = open_with(&key.private, HELLO, wire, |meta| {
        if meta.len() < REQUEST_META
            || meta.len() != REQUEST_META + usize::from(meta[REQUEST_META - 1])
        {
            return Err(SecureError::Handshake);
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&meta[KEY_LEN + 8..KEY_LEN + 12]);
        Ok(u32::from_be_bytes(len) as usize)
    })?;
    let token =
        String::from_utf8(meta[REQUEST_META..].to_vec()).map_err(|_| SecureError::Handshake)?;
    let mut reply_to = [0u8; KEY_LEN];
    reply_to.copy_from_slice(&meta[..KEY_LEN]);
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&meta[KEY_LEN..KEY_LEN + 8]);
    Ok(OpenedRequest {
        body,
        sent_ms: u64::from_be_bytes(sent),
        id,
        reply_to,
        token,
    })
}

/// Seals an answer body to the request's reply key.
pub fn seal_response(reply_to: &[u8; KEY_LEN], body: &[u8]) -> Result<Vec<u8>, SecureError> {
    response_with(reply_to, None, body)
}

/// [`seal_response`] with, for the test vectors only, a fixed ephemeral key.
pub(crate) fn response_with(
    reply_to: &[u8; KEY_LEN],
    fixed_ephemeral: Option<&[u8; KEY_LEN]>,
    body: &[u8],
) -> Result<Vec<u8>, SecureError> {
    let len = u32::try_from(body.len()).map_err(|_| SecureError::TooLarge(body.len()))?;
    seal_to(
        reply_to,
        fixed_ephemeral,
        HELLO | 0x80,
        &len.to_be_bytes(),
        body,
    )
}

/// Opens the answer to a request sealed with [`seal_request`].
pub fn open_response(reply: &ReplyKey, wire: &[u8]) -> Result<Vec<u8>, SecureError> {
    let (_, body, _) = open_with(&reply.private, HELLO | 0x80, wire, |meta| {
        let len: [u8; 4] = meta.try_into().map_err(|_| SecureError::Handshake)?;
        Ok(u32::from_be_bytes(len) as usize)
    })?;
    Ok(body)
}

/// The SEALED records a body of `n` bytes goes in: ⌈n / 65 519⌉ (none when empty).
pub fn records(n: usize) -> usize {
    n.div_ceil(MAX_RECORD_PLAIN)
}

/// Bytes a sealed request adds to a body of `n` bytes (without its token): the HELLO
/// frame's header, `e`, the fixed part of its payload and its tag (101 B), and 24 B per
/// record.
pub fn request_overhead(n: usize) -> usize {
    HEADER_LEN + KEY_LEN + REQUEST_META + TAG_LEN + records(n) * (HEADER_LEN + TAG_LEN)
}

/// Bytes a sealed answer adds to a body of `n` bytes: the `HELLO|0x80` frame's header,
/// `e`, the 4-byte length and its tag (60 B), and 24 B per record.
pub fn response_overhead(n: usize) -> usize {
    HEADER_LEN + KEY_LEN + 4 + TAG_LEN + records(n) * (HEADER_LEN + TAG_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_answer_round_trip() {
        let key = StaticKey::generate().unwrap();
        for size in [
            0usize,
            1,
            31,
            MAX_RECORD_PLAIN,
            MAX_RECORD_PLAIN + 1,
            200_000,
        ] {
            let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let (wire, reply) = seal_request(&key.public, "tok", &body, 1_000).unwrap();
            assert_eq!(
                wire.len(),
                body.len() + 3 + request_overhead(size),
                "{size}"
            );
            let got = open_request(&key, &wire).unwrap();
            assert_eq!(got.body, body);
            assert_eq!(got.token, "tok");
            assert_eq!(got.sent_ms, 1_000);
            assert_eq!(&got.id[..], &wire[8..8 + KEY_LEN]);
            let answer = seal_response(&got.reply_to, &body).unwrap();
            assert_eq!(answer.len(), body.len() + response_overhead(size), "{size}");
            assert_eq!(open_response(&reply, &answer).unwrap(), body);
        }
    }

    /// An empty body is sent as the first frame alone (no record); one empty record
    /// opens too, both ways, and gives the same empty body. Records that split a body
    /// anywhere else (an empty one among them) open as long as they add up to its length.
    #[test]
    fn an_empty_body_is_no_record_and_one_empty_record_opens_too() {
        let key = StaticKey::generate().unwrap();
        let (wire, reply) = seal_request(&key.public, "tok", b"", 1).unwrap();
        assert_eq!(wire.len(), 3 + 101);
        let mut b = BytesMut::from(&wire[..]);
        assert_eq!(Frame::parse(&mut b, NOISE_MAX).unwrap().unwrap().cmd, HELLO);
        assert!(b.is_empty(), "no SEALED record after the HELLO");
        let got = open_request(&key, &wire).unwrap();
        assert!(got.body.is_empty());
        let answer = seal_response(&got.reply_to, b"").unwrap();
        assert_eq!(answer.len(), 60);
        assert_eq!(open_response(&reply, &answer).unwrap(), b"");

        // The same, written with one empty record (and a body in two uneven records with
        // an empty one between them) by hand, with snow.
        let by_hand = |to: &[u8; KEY_LEN], cmd: u8, meta: &[u8], records: &[&[u8]]| {
            let mut hs = snow::Builder::new(params())
                .remote_public_key(to)
                .unwrap()
                .build_initiator()
                .unwrap();
            let mut msg = vec![0u8; NOISE_MAX];
            let mut out = BytesMut::new();
            let n = hs.write_message(meta, &mut msg).unwrap();
            encode_raw(cmd, 0, &msg[..n], &mut out);
            let mut t = hs.into_transport_mode().unwrap();
            for r in records {
                let n = t.write_message(r, &mut msg).unwrap();
                encode_raw(SEALED, 0, &msg[..n], &mut out);
            }
            out.to_vec()
        };
        let reply = StaticKey::generate().unwrap();
        let meta = |len: u32| {
            let mut m = reply.public.to_vec();
            m.extend_from_slice(&7u64.to_be_bytes());
            m.extend_from_slice(&len.to_be_bytes());
            m.push(0);
            m
        };
        let one_empty = by_hand(&key.public, HELLO, &meta(0), &[b""]);
        assert_eq!(one_empty.len(), 101 + 24);
        assert_eq!(open_request(&key, &one_empty).unwrap().body, b"");
        let split = by_hand(&key.public, HELLO, &meta(5), &[b"ab", b"", b"cde"]);
        assert_eq!(open_request(&key, &split).unwrap().body, b"abcde");
        // Records that add up to more or less than the declared length: refused.
        let long = by_hand(&key.public, HELLO, &meta(1), &[b"ab"]);
        assert_eq!(open_request(&key, &long).err(), Some(SecureError::Decrypt));
        let short = by_hand(&key.public, HELLO, &meta(3), &[b"ab"]);
        assert_eq!(open_request(&key, &short).err(), Some(SecureError::Decrypt));
        let answer = by_hand(&reply.public, HELLO | 0x80, &0u32.to_be_bytes(), &[b""]);
        let opener = ReplyKey {
            private: reply.private,
        };
        assert_eq!(open_response(&opener, &answer).unwrap(), b"");
    }

    #[test]
    fn wrong_key_tampering_truncation_and_garbage_fail() {
        let key = StaticKey::generate().unwrap();
        let other = StaticKey::generate().unwrap();
        let body = vec![7u8; 100_000];
        let (wire, reply) = seal_request(&key.public, "", &body, 5).unwrap();
        assert_eq!(
            open_request(&other, &wire).err(),
            Some(SecureError::Handshake)
        );
        for i in [0usize, 3, 8, 40, 100, wire.len() / 2, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[i] ^= 0x04;
            assert!(open_request(&key, &bad).is_err(), "byte {i}");
        }
        // The last record dropped: the declared length does not match.
        let first_record_end = {
            let mut b = BytesMut::from(&wire[..]);
            let h = Frame::parse(&mut b, NOISE_MAX).unwrap().unwrap();
            let r = Frame::parse(&mut b, NOISE_MAX).unwrap().unwrap();
            16 + h.body.len() + r.body.len()
        };
        assert_eq!(
            open_request(&key, &wire[..first_record_end]).err(),
            Some(SecureError::Decrypt)
        );
        // The HELLO and the SEALED records carry request id 0; another id is refused.
        let hello_len = 8 + (usize::from(wire[1]) << 8 | usize::from(wire[2]));
        for at in [7, hello_len + 7] {
            let mut bad = wire.clone();
            bad[at] = 1;
            assert!(
                matches!(
                    open_request(&key, &bad),
                    Err(SecureError::RequestId { req_id: 1, .. })
                ),
                "id byte at {at}"
            );
        }
        assert!(open_request(&key, b"").is_err());
        assert!(open_request(&key, b"GET / HTTP/1.1\r\n").is_err());
        assert!(open_request(&key, &[0, 0, 1, HELLO, 0, 0, 0, 0, 9]).is_err());
        // An answer opens only with its own reply key.
        let got = open_request(&key, &wire).unwrap();
        let answer = seal_response(&got.reply_to, b"ok").unwrap();
        let (_, other_reply) = seal_request(&key.public, "", b"", 5).unwrap();
        assert!(open_response(&other_reply, &answer).is_err());
        assert_eq!(open_response(&reply, &answer).unwrap(), b"ok");
    }

    #[test]
    fn every_request_has_its_own_id() {
        let key = StaticKey::generate().unwrap();
        let (a, _) = seal_request(&key.public, "t", b"same", 1).unwrap();
        let (b, _) = seal_request(&key.public, "t", b"same", 1).unwrap();
        assert!(seal_request(&key.public, &"t".repeat(256), b"", 1).is_err());
        assert_ne!(
            open_request(&key, &a).unwrap().id,
            open_request(&key, &b).unwrap().id
        );
    }
}
