//! The encrypted long link: a Noise IK handshake that carries the LOGIN, then sealed
//! records over the ordinary frame codec.
//!
//! ```text
//! client                                            server
//!   HELLO frame (cmd 0x09): Noise IK message 1  ──▶  e, es, s, ss + encrypted LOGIN frame
//!   ◀──  HELLO|0x80 frame: Noise IK message 2        e, ee, se + encrypted login answer
//!   SEALED frames (cmd 0x0A) both ways: AEAD(ChaCha20-Poly1305) of the plain frame stream
//! ```
//!
//! One round trip after TCP connect both sets up the keys and logs in: the client knows
//! the server's static key (pinned), so its first message is already encrypted to it and
//! carries the LOGIN; the answer rides in the second message. Everything after the
//! handshake has forward secrecy (ephemeral-ephemeral DH). The server's answer to a
//! LOGIN is encrypted to the client's ephemeral key, so only the client that sent it can
//! read it; the LOGIN itself is protected from everyone but the server (and, as in every
//! 0-RTT design, may be replayed: a replayed LOGIN gets a link the replayer cannot read).
//!
//! Sealed records are ordinary frames (`cmd` [`SEALED`], request id 0) whose body is one
//! Noise transport message: a chunk of the plain frame stream, at most
//! [`MAX_RECORD_PLAIN`] bytes, plus a 16-byte tag. Nonces are implicit counters, so a
//! replayed, reordered, dropped or altered record fails to open and the link must close.
//! A [`Channel`] holds only the two cipher keys and counters; the caller keeps no buffer
//! while idle (the same rule as the plain link).
//!
//! Pure: no I/O. Bad input is an error value, never a panic.

use bytes::BytesMut;

use crate::compact::{self, Compact};
use crate::frame::{encode_raw, Frame, FrameError, HEADER_LEN};

pub use crate::cmd::{HELLO, SEALED};
/// The Noise protocol name.
pub const NOISE: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Bytes of a Noise message at most.
const NOISE_MAX: usize = 65_535;
/// AEAD tag bytes.
pub const TAG_LEN: usize = 16;
/// Plain bytes per sealed record at most.
pub const MAX_RECORD_PLAIN: usize = NOISE_MAX - TAG_LEN;
/// Static key length (X25519).
pub const KEY_LEN: usize = 32;

/// Why a handshake or a record failed. Every one of them closes the link.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecureError {
    #[error("handshake failed (wrong server key, or altered bytes)")]
    Handshake,
    #[error("a record failed to open (altered, replayed or out of order)")]
    Decrypt,
    #[error("expected a {expected:#04x} frame, got {got:#04x}")]
    UnexpectedFrame { expected: u8, got: u8 },
    #[error("payload of {0} bytes is too large for a handshake message")]
    TooLarge(usize),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("noise: {0}")]
    Noise(String),
    /// After the handshake only `SEALED` records may come; this frame is something else.
    #[error("a {got:#04x} frame where only SEALED records may come")]
    NotSealed { got: u8, req_id: u32 },
    /// The encryption layer's frames (HELLO, RESUME, SEALED, TICKET and their answers)
    /// carry request id 0.
    #[error("a {cmd:#04x} frame must carry request id 0, not {req_id}")]
    RequestId { cmd: u8, req_id: u32 },
    /// Protocol 2's compact layout broken (a varint too long, a request id over u32).
    #[error("compact stream: {0}")]
    Compact(&'static str),
}

impl SecureError {
    /// The request id of the frame refused, when its header was read (0 otherwise: a
    /// record that does not open has request id 0, the frames inside it were never
    /// read).
    pub fn req_id(&self) -> u32 {
        match self {
            SecureError::Frame(e) => e.req_id(),
            SecureError::NotSealed { req_id, .. } | SecureError::RequestId { req_id, .. } => {
                *req_id
            }
            _ => 0,
        }
    }
}

fn params() -> snow::params::NoiseParams {
    // A constant that parses; checked by the tests.
    NOISE
        .parse()
        .unwrap_or_else(|_| unreachable!("the Noise name is valid"))
}

/// A server's static key pair.
#[derive(Clone)]
pub struct StaticKey {
    pub private: [u8; KEY_LEN],
    pub public: [u8; KEY_LEN],
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticKey(public {})", hex::encode(self.public))
    }
}

impl StaticKey {
    /// A fresh random key pair.
    pub fn generate() -> Result<StaticKey, SecureError> {
        let kp = snow::Builder::new(params())
            .generate_keypair()
            .map_err(|e| SecureError::Noise(e.to_string()))?;
        Self::from_private(&kp.private)
    }

    /// The pair for a stored private key.
    pub fn from_private(private: &[u8]) -> Result<StaticKey, SecureError> {
        let private: [u8; KEY_LEN] = private
            .try_into()
            .map_err(|_| SecureError::Noise("a private key is 32 bytes".into()))?;
        let public = x25519_public(&private);
        Ok(StaticKey { private, public })
    }
}

/// X25519 public key of a private key, with the same implementation snow uses.
fn x25519_public(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    use snow::types::Dh;
    let mut dh: Box<dyn Dh> = DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .unwrap_or_else(|| unreachable!("the default resolver has X25519"));
    dh.set(private);
    let mut public = [0u8; KEY_LEN];
    public.copy_from_slice(dh.pubkey());
    public
}

/// An established channel: seals outgoing plain bytes, opens incoming records.
///
/// After the handshake only the split's two ChaCha20-Poly1305 keys and their counters
/// are kept (80 bytes, no allocation), not snow's transport state: every encrypted
/// link holds one for as long as it lives. The records are Noise transport messages
/// exactly as snow writes them: nonce = 4 zero bytes + the counter (little-endian),
/// no associated data.
///
/// The records are sealed and opened with ring's ChaCha20-Poly1305 (assembly), not the
/// `chacha20poly1305` crate snow's handshake uses: for the short records of a chat link
/// that crate's AVX2 Poly1305 sets up per record more than it saves — a seal and an open
/// of 60 bytes took 3.3 µs against ring's 0.4 µs (docs/benchmarks.md, *ring for the
/// records*). ring's key is 544 bytes, so the link keeps the bare 32-byte keys and builds
/// ring's on the stack for each record (a copy of the key; criterion's
/// `record/seal_open_hello_v1`, which includes it twice, 0.48 µs).
pub struct Channel {
    send: [u8; KEY_LEN],
    recv: [u8; KEY_LEN],
    send_n: u64,
    recv_n: u64,
    /// Protocol 2 (docs/protocol.md §1.6): compact records and frames, translated here;
    /// `None` on a version-1 link.
    compact: Option<Box<Compact>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel")
    }
}

/// The AEAD nonce of record `n`.
fn nonce(n: u64) -> ring::aead::Nonce {
    let mut bytes = [0u8; ring::aead::NONCE_LEN];
    bytes[4..].copy_from_slice(&n.to_le_bytes());
    ring::aead::Nonce::assume_unique_for_key(bytes)
}

/// ring's ChaCha20-Poly1305 key for a bare key.
fn aead_key(key: &[u8; KEY_LEN]) -> ring::aead::LessSafeKey {
    let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key)
        .unwrap_or_else(|_| unreachable!("a ChaCha20-Poly1305 key is 32 bytes"));
    ring::aead::LessSafeKey::new(key)
}

impl Channel {
    /// The channel of a finished handshake; `initiator`: this side sent the HELLO.
    fn split(mut state: snow::HandshakeState, initiator: bool) -> Result<Self, SecureError> {
        if !state.is_handshake_finished() {
            return Err(SecureError::Noise("handshake not finished".into()));
        }
        let (i_to_r, r_to_i) = state.dangerously_get_raw_split();
        let (send, recv) = if initiator {
            (i_to_r, r_to_i)
        } else {
            (r_to_i, i_to_r)
        };
        Ok(Channel::from_keys(&send, &recv))
    }

    /// A channel from two bare keys, counters at zero (a resumed session's keys come
    /// from its key schedule, not from a Noise split: see [`crate::resume`]).
    pub(crate) fn from_keys(send: &[u8; 32], recv: &[u8; 32]) -> Self {
        Channel {
            send: *send,
            recv: *recv,
            send_n: 0,
            recv_n: 0,
            compact: None,
        }
    }

    /// Switches to protocol 2's compact records and frames (docs/protocol.md §1.6): both
    /// sides call it once the login answer named version 2 — the server after writing
    /// that answer, the client after reading it — so every record after the handshake
    /// is compact. The frames given to [`Channel::seal`] and taken from
    /// [`Channel::open`] keep the §1.1 layout.
    pub fn set_compact(&mut self) {
        if self.compact.is_none() {
            self.compact = Some(Box::default());
        }
    }

    /// Whether [`Channel::set_compact`] was called.
    pub fn is_compact(&self) -> bool {
        self.compact.is_some()
    }

    /// Seals `buf` (at most [`MAX_RECORD_PLAIN`] bytes) in place: ciphertext and tag.
    fn seal_in_place(&mut self, buf: &mut Vec<u8>) -> Result<(), SecureError> {
        if self.send_n == u64::MAX {
            return Err(SecureError::Noise("nonces exhausted".into()));
        }
        aead_key(&self.send)
            .seal_in_place_append_tag(nonce(self.send_n), ring::aead::Aad::empty(), buf)
            .map_err(|_| SecureError::Noise("sealing failed".into()))?;
        self.send_n += 1;
        Ok(())
    }

    /// Opens one record's ciphertext and tag in place.
    fn open_record(&mut self, buf: &mut Vec<u8>) -> Result<(), SecureError> {
        if buf.len() < TAG_LEN || self.recv_n == u64::MAX {
            return Err(SecureError::Decrypt);
        }
        let plain = aead_key(&self.recv)
            .open_in_place(nonce(self.recv_n), ring::aead::Aad::empty(), buf)
            .map_err(|_| SecureError::Decrypt)?
            .len();
        buf.truncate(plain);
        self.recv_n += 1;
        Ok(())
    }

    /// Appends `plain` (encoded frames, §1.1 layout; a frame may be split across
    /// calls) to `out` as sealed records — compact ones on a protocol-2 link.
    pub fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> Result<(), SecureError> {
        let Some(c) = self.compact.as_mut() else {
            return self.seal_records(plain, out);
        };
        // Translated straight into the buffer the record is sealed in, so a write that
        // fits one record (nearly all) costs one allocation, as on a version-1 link.
        let mut frames = Vec::with_capacity(plain.len() + TAG_LEN);
        c.outgoing(plain, &mut frames);
        if frames.is_empty() {
            // Nothing whole to send yet (a frame header split across calls): no record,
            // as `plain.chunks` gives none on a version-1 link.
            return Ok(());
        }
        if frames.len() > MAX_RECORD_PLAIN {
            return self.seal_records(&frames, out);
        }
        self.seal_in_place(&mut frames)?;
        self.put_record(&frames, out);
        Ok(())
    }

    /// Seals `frames` in records of at most [`MAX_RECORD_PLAIN`] bytes.
    fn seal_records(&mut self, frames: &[u8], out: &mut BytesMut) -> Result<(), SecureError> {
        let mut buf = Vec::with_capacity(frames.len().min(MAX_RECORD_PLAIN) + TAG_LEN);
        for chunk in frames.chunks(MAX_RECORD_PLAIN) {
            buf.clear();
            buf.extend_from_slice(chunk);
            self.seal_in_place(&mut buf)?;
            self.put_record(&buf, out);
        }
        Ok(())
    }

    /// Appends one sealed record (ciphertext and tag) with this link's record header.
    fn put_record(&self, sealed: &[u8], out: &mut BytesMut) {
        if self.compact.is_some() {
            out.reserve(compact::MAX_RECORD_HEAD + sealed.len());
            prost::encoding::encode_varint(sealed.len() as u64, out);
            out.extend_from_slice(sealed);
        } else {
            encode_raw(SEALED, 0, sealed, out);
        }
    }

    /// Takes every whole sealed record off the front of `wire` and appends its plain
    /// bytes (§1.1 frames, whatever the link's version) to `plain`. A partial record
    /// stays in `wire`. Any failure is fatal for the link: the counters can no longer
    /// agree.
    pub fn open(&mut self, wire: &mut BytesMut, plain: &mut BytesMut) -> Result<(), SecureError> {
        let mut buf = Vec::new();
        if self.compact.is_some() {
            while let Some((head, n)) = compact::record_head(wire)? {
                if wire.len() < head + n {
                    break;
                }
                let record = wire.split_to(head + n);
                buf.clear();
                buf.extend_from_slice(&record[head..]);
                self.open_record(&mut buf)?;
                if let Some(c) = self.compact.as_mut() {
                    c.incoming(&buf, plain)?;
                }
            }
            return Ok(());
        }
        while let Some(f) = Frame::parse(wire, NOISE_MAX)? {
            if f.cmd != SEALED {
                return Err(SecureError::NotSealed {
                    got: f.cmd,
                    req_id: f.req_id,
                });
            }
            if f.req_id != 0 {
                return Err(SecureError::RequestId {
                    cmd: f.cmd,
                    req_id: f.req_id,
                });
            }
            buf.clear();
            buf.extend_from_slice(&f.body);
            self.open_record(&mut buf)?;
            plain.extend_from_slice(&buf);
        }
        Ok(())
    }
}

/// The client's side of a handshake in flight.
pub struct ClientHandshake {
    state: snow::HandshakeState,
}

/// Starts a handshake to a server whose static public key is `server_public`, carrying
/// `payload` (the encoded LOGIN frame) in the first message. Appends the HELLO frame to
/// `out`.
pub fn client_hello(
    server_public: &[u8; KEY_LEN],
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<ClientHandshake, SecureError> {
    // The client's static key is throw-away: a fresh one per handshake. The server
    // authenticates the client by the token in the LOGIN, not by this key; IK needs one,
    // and a fresh one links no two sessions.
    let kp = snow::Builder::new(params())
        .generate_keypair()
        .map_err(|e| SecureError::Noise(e.to_string()))?;
    hello_with(&kp.private, None, server_public, payload, out)
}

/// [`client_hello`] with a given static key and, for the test vectors only, a fixed
/// ephemeral key (`None`: a fresh one, as always outside the tests).
pub(crate) fn hello_with(
    client_static: &[u8],
    fixed_ephemeral: Option<&[u8; KEY_LEN]>,
    server_public: &[u8; KEY_LEN],
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<ClientHandshake, SecureError> {
    let mut builder = snow::Builder::new(params());
    if let Some(e) = fixed_ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut state = builder
        .local_private_key(client_static)
        .and_then(|b| b.remote_public_key(server_public))
        .and_then(|b| b.build_initiator())
        .map_err(|e| SecureError::Noise(e.to_string()))?;
    let mut msg = vec![0u8; NOISE_MAX];
    let n = state
        .write_message(payload, &mut msg)
        .map_err(|_| SecureError::TooLarge(payload.len()))?;
    encode_raw(HELLO, 0, &msg[..n], out);
    Ok(ClientHandshake { state })
}

impl ClientHandshake {
    /// Reads the server's HELLO answer: the channel and the payload (the login answer).
    pub fn finish(mut self, answer: &Frame) -> Result<(Channel, Vec<u8>), SecureError> {
        if answer.cmd != HELLO | 0x80 {
            return Err(SecureError::UnexpectedFrame {
                expected: HELLO | 0x80,
                got: answer.cmd,
            });
        }
        let mut payload = vec![0u8; answer.body.len()];
        let n = self
            .state
            .read_message(&answer.body, &mut payload)
            .map_err(|_| SecureError::Handshake)?;
        payload.truncate(n);
        Ok((Channel::split(self.state, true)?, payload))
    }
}

/// The server's side of a handshake: the client's HELLO has been read.
pub struct ServerHandshake {
    state: snow::HandshakeState,
}

/// Reads a client's HELLO frame with the server's static key: the handshake to answer
/// and the payload the client sent (its LOGIN frame).
pub fn server_accept(
    key: &StaticKey,
    hello: &Frame,
) -> Result<(ServerHandshake, Vec<u8>), SecureError> {
    accept_with(key, None, hello)
}

/// [`server_accept`] with, for the test vectors only, a fixed ephemeral key for the
/// answer (`None`: a fresh one, as always outside the tests).
pub(crate) fn accept_with(
    key: &StaticKey,
    fixed_ephemeral: Option<&[u8; KEY_LEN]>,
    hello: &Frame,
) -> Result<(ServerHandshake, Vec<u8>), SecureError> {
    if hello.cmd != HELLO {
        return Err(SecureError::UnexpectedFrame {
            expected: HELLO,
            got: hello.cmd,
        });
    }
    let mut builder = snow::Builder::new(params());
    if let Some(e) = fixed_ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut state = builder
        .local_private_key(&key.private)
        .and_then(|b| b.build_responder())
        .map_err(|e| SecureError::Noise(e.to_string()))?;
    let mut payload = vec![0u8; hello.body.len()];
    let n = state
        .read_message(&hello.body, &mut payload)
        .map_err(|_| SecureError::Handshake)?;
    payload.truncate(n);
    Ok((ServerHandshake { state }, payload))
}

impl ServerHandshake {
    /// Answers with `payload` (the encoded login answer) in the second message; appends
    /// the HELLO answer frame to `out`.
    pub fn respond(mut self, payload: &[u8], out: &mut BytesMut) -> Result<Channel, SecureError> {
        let mut msg = vec![0u8; NOISE_MAX];
        let n = self
            .state
            .write_message(payload, &mut msg)
            .map_err(|_| SecureError::TooLarge(payload.len()))?;
        encode_raw(HELLO | 0x80, 0, &msg[..n], out);
        Channel::split(self.state, false)
    }
}

/// Bytes a HELLO adds around its payload: frame header, ephemeral and encrypted static
/// keys, two tags.
pub const HELLO_OVERHEAD: usize = HEADER_LEN + 32 + (32 + TAG_LEN) + TAG_LEN;
/// Bytes a sealed record adds around its plain bytes.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Takes one whole frame off `buf` (for reading the HELLO and its answer), like
/// [`Frame::parse`] with the Noise message limit.
pub fn parse_handshake(buf: &mut BytesMut) -> Result<Option<Frame>, SecureError> {
    Ok(Frame::parse(buf, NOISE_MAX)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::frame::encode_msg;
    use crate::{cmd, v1, MAX_BODY_LEN};

    /// The records `Channel` writes and reads are snow's own transport messages, both
    /// ways: a client in another language using any Noise library interoperates.
    #[test]
    fn records_are_noise_transport_messages() {
        let server = snow::Builder::new(params()).generate_keypair().unwrap();
        let client = snow::Builder::new(params()).generate_keypair().unwrap();
        let mut i = snow::Builder::new(params())
            .local_private_key(&client.private)
            .unwrap()
            .remote_public_key(&server.public)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(params())
            .local_private_key(&server.private)
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut m1, mut m2, mut p) = ([0u8; 256], [0u8; 256], [0u8; 256]);
        let n = i.write_message(b"login", &mut m1).unwrap();
        r.read_message(&m1[..n], &mut p).unwrap();
        let n = r.write_message(b"answer", &mut m2).unwrap();
        i.read_message(&m2[..n], &mut p).unwrap();
        // The client keeps only keys; the server keeps snow's transport state.
        let mut ours = Channel::split(i, true).unwrap();
        let mut snows = r.into_transport_mode().unwrap();
        for round in 0..3u8 {
            let text = vec![round; 100 + usize::from(round)];
            let mut out = BytesMut::new();
            ours.seal(&text, &mut out).unwrap();
            let f = Frame::parse(&mut out, NOISE_MAX).unwrap().unwrap();
            assert_eq!(f.cmd, SEALED);
            let mut got = vec![0u8; f.body.len()];
            let n = snows.read_message(&f.body, &mut got).unwrap();
            assert_eq!(&got[..n], &text[..]);

            let reply = vec![round ^ 0xff; 50];
            let mut sealed = vec![0u8; reply.len() + TAG_LEN];
            let n = snows.write_message(&reply, &mut sealed).unwrap();
            let mut wire = BytesMut::new();
            encode_raw(SEALED, 0, &sealed[..n], &mut wire);
            let mut plain = BytesMut::new();
            ours.open(&mut wire, &mut plain).unwrap();
            assert_eq!(&plain[..], &reply[..]);
        }
    }

    /// A LOGIN frame with a 64-character token (also used by `resume`'s tests).
    pub(crate) fn login_frame() -> BytesMut {
        let mut b = BytesMut::new();
        let login = v1::LoginReq {
            token: "t".repeat(64),
            synckey: 7,
            client_version: "test".into(),
            ..Default::default()
        };
        encode_msg(cmd::LOGIN, 1, &login, &mut b);
        b
    }

    /// A full handshake; returns both channels.
    fn pair(key: &StaticKey) -> (Channel, Channel) {
        let mut wire = BytesMut::new();
        let login = login_frame();
        let hs = client_hello(&key.public, &login, &mut wire).unwrap();
        assert_eq!(wire.len(), login.len() + HELLO_OVERHEAD);
        let hello = parse_handshake(&mut wire).unwrap().unwrap();
        let (shs, got) = server_accept(key, &hello).unwrap();
        assert_eq!(got, &login[..]);
        let mut answer = BytesMut::new();
        encode_raw(cmd::response(cmd::LOGIN), 1, b"welcome", &mut answer);
        let mut wire = BytesMut::new();
        let server = shs.respond(&answer, &mut wire).unwrap();
        let f = parse_handshake(&mut wire).unwrap().unwrap();
        let (client, payload) = hs.finish(&f).unwrap();
        assert_eq!(payload, &answer[..]);
        (client, server)
    }

    #[test]
    fn compact_records_carry_the_same_frames_and_a_hello_is_40_bytes() {
        let key = StaticKey::generate().unwrap();
        let (mut client, mut server) = pair(&key);
        client.set_compact();
        server.set_compact();
        // The "hello" of docs/protocol.md §1.6: a 48-bit client_msg_id, request id 1.
        let hello = v1::SendMsg {
            client_msg_id: (1 << 48) - 1,
            to: "bob".into(),
            text: "hello".into(),
            ..Default::default()
        };
        let mut plain = BytesMut::new();
        encode_msg(cmd::SEND, 1, &hello, &mut plain);
        assert_eq!(plain.len(), 28);
        let mut wire = BytesMut::new();
        client.seal(&plain, &mut wire).unwrap();
        assert_eq!(
            wire.len(),
            40,
            "1 record length + 3 frame header + 20 body + 16 tag"
        );
        // Split anywhere, with a second record behind: the same frames come out.
        let mut big = BytesMut::new();
        encode_raw(cmd::SEND, 300, &vec![9u8; 70_000], &mut big);
        client.seal(&big, &mut wire).unwrap();
        let mut got = BytesMut::new();
        let bytes = wire.split().freeze();
        for chunk in bytes.chunks(7) {
            wire.extend_from_slice(chunk);
            server.open(&mut wire, &mut got).unwrap();
        }
        assert!(wire.is_empty());
        let mut want = plain.clone();
        want.extend_from_slice(&big);
        assert_eq!(got, want);
        // A version-1 channel cannot read them, and the other way round.
        let (mut v1c, mut v1s) = pair(&key);
        let mut w = BytesMut::new();
        v1c.seal(&plain, &mut w).unwrap();
        assert_eq!(w.len(), 28 + RECORD_OVERHEAD);
        v1s.set_compact();
        assert!(v1s.open(&mut w, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn one_round_trip_then_sealed_frames_both_ways() {
        let key = StaticKey::generate().unwrap();
        assert_eq!(
            StaticKey::from_private(&key.private).unwrap().public,
            key.public
        );
        let (mut c, mut s) = pair(&key);
        // A "hello" message, sealed.
        let mut plain = BytesMut::new();
        let msg = v1::SendMsg {
            client_msg_id: u64::from(u32::MAX),
            to: "bob".into(),
            text: "hello".into(),
            ..Default::default()
        };
        encode_msg(cmd::SEND, 2, &msg, &mut plain);
        let mut wire = BytesMut::new();
        c.seal(&plain, &mut wire).unwrap();
        assert_eq!(wire.len(), plain.len() + RECORD_OVERHEAD);
        let mut got = BytesMut::new();
        s.open(&mut wire, &mut got).unwrap();
        assert_eq!(got, plain);
        let f = Frame::parse(&mut got, MAX_BODY_LEN).unwrap().unwrap();
        assert_eq!(f.decode::<v1::SendMsg>().unwrap(), msg);
        // And back, a frame larger than one record, delivered byte by byte.
        let big = vec![0xabu8; 200_000];
        let mut plain = BytesMut::new();
        encode_raw(cmd::response(cmd::SYNC), 2, &big, &mut plain);
        let mut wire = BytesMut::new();
        s.seal(&plain, &mut wire).unwrap();
        let mut got = BytesMut::new();
        let mut partial = BytesMut::new();
        for b in wire.iter() {
            partial.extend_from_slice(&[*b]);
            c.open(&mut partial, &mut got).unwrap();
        }
        assert!(partial.is_empty());
        assert_eq!(got, plain);
    }

    #[test]
    fn a_wrong_server_key_fails_the_handshake() {
        let real = StaticKey::generate().unwrap();
        let other = StaticKey::generate().unwrap();
        let mut wire = BytesMut::new();
        client_hello(&other.public, &login_frame(), &mut wire).unwrap();
        let hello = parse_handshake(&mut wire).unwrap().unwrap();
        assert_eq!(
            server_accept(&real, &hello).err(),
            Some(SecureError::Handshake)
        );
    }

    #[test]
    fn altered_hello_and_answer_fail() {
        let key = StaticKey::generate().unwrap();
        let mut wire = BytesMut::new();
        let hs = client_hello(&key.public, &login_frame(), &mut wire).unwrap();
        let good = wire.clone();
        for i in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let hello = parse_handshake(&mut bad).unwrap().unwrap();
            assert!(server_accept(&key, &hello).is_err(), "byte {i}");
        }
        let hello = parse_handshake(&mut wire).unwrap().unwrap();
        let (shs, _) = server_accept(&key, &hello).unwrap();
        let mut wire = BytesMut::new();
        shs.respond(b"answer", &mut wire).unwrap();
        wire[HEADER_LEN + 40] ^= 0x80;
        let f = parse_handshake(&mut wire).unwrap().unwrap();
        assert_eq!(hs.finish(&f).err(), Some(SecureError::Handshake));
    }

    #[test]
    fn tampered_replayed_and_reordered_records_fail() {
        let key = StaticKey::generate().unwrap();
        let (mut c, mut s) = pair(&key);
        let mut r1 = BytesMut::new();
        c.seal(b"first", &mut r1).unwrap();
        let mut r2 = BytesMut::new();
        c.seal(b"second", &mut r2).unwrap();

        // Tampered.
        let (_, mut s2) = {
            let (c2, s2) = pair(&key);
            (c2, s2)
        };
        let mut bad = r1.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            s2.open(&mut bad, &mut BytesMut::new()),
            Err(SecureError::Decrypt)
        );

        // Reordered: the second record first.
        let (_, mut s3) = pair(&key);
        assert_eq!(
            s3.open(&mut r2.clone(), &mut BytesMut::new()),
            Err(SecureError::Decrypt)
        );

        // In order, then a replay of the first.
        let mut plain = BytesMut::new();
        s.open(&mut r1.clone(), &mut plain).unwrap();
        s.open(&mut r2, &mut plain).unwrap();
        assert_eq!(&plain[..], b"firstsecond");
        assert_eq!(
            s.open(&mut r1, &mut BytesMut::new()),
            Err(SecureError::Decrypt)
        );

        // A plain frame where a sealed one belongs.
        let mut plain_frame = BytesMut::new();
        encode_raw(cmd::SEND, 1, b"x", &mut plain_frame);
        let e = s.open(&mut plain_frame, &mut BytesMut::new()).unwrap_err();
        assert_eq!(
            e,
            SecureError::NotSealed {
                got: cmd::SEND,
                req_id: 1
            }
        );
        assert_eq!(e.req_id(), 1, "the refusal answers with the frame's id");
        // A record with a request id other than 0 is refused before it is opened.
        let mut r3 = BytesMut::new();
        c.seal(b"third", &mut r3).unwrap();
        r3[7] = 5;
        let e = s.open(&mut r3, &mut BytesMut::new()).unwrap_err();
        assert_eq!(e.req_id(), 5);
        assert_eq!(
            e,
            SecureError::RequestId {
                cmd: SEALED,
                req_id: 5
            }
        );
        // A record over the Noise limit: refused on its header, with its id.
        let mut huge = BytesMut::from(&[0x01u8, 0x00, 0x00, SEALED, 0, 0, 0, 3][..]);
        let e = s.open(&mut huge, &mut BytesMut::new()).unwrap_err();
        assert!(matches!(e, SecureError::Frame(_)), "{e:?}");
        assert_eq!(e.req_id(), 3);
        // A record that does not open: no frame inside was read, id 0.
        assert_eq!(SecureError::Decrypt.req_id(), 0);
        // Short garbage is an error, never a panic.
        let mut short = BytesMut::new();
        encode_raw(SEALED, 0, b"abc", &mut short);
        assert_eq!(
            s.open(&mut short, &mut BytesMut::new()),
            Err(SecureError::Decrypt)
        );
    }

    #[test]
    fn forward_secrecy_keys_differ_per_session() {
        // Two sessions with the same server key and the same LOGIN: the first session's
        // channel cannot open the second one's records (fresh ephemeral keys each time).
        let key = StaticKey::generate().unwrap();
        let (mut c1, _) = pair(&key);
        let (_, mut s2) = pair(&key);
        let mut r = BytesMut::new();
        c1.seal(b"secret", &mut r).unwrap();
        assert_eq!(
            s2.open(&mut r, &mut BytesMut::new()),
            Err(SecureError::Decrypt)
        );
    }
}
#[cfg(test)]
mod size_tests {
    /// Every idle encrypted link holds one: two keys, two counters and the pointer to
    /// protocol 2's translation (docs/benchmarks.md, idle memory per link).
    #[test]
    fn a_channel_is_88_bytes() {
        assert_eq!(std::mem::size_of::<super::Channel>(), 88);
    }
}
