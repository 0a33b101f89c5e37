//! Session resumption for the encrypted long link (like TLS 1.3's `psk_ke`): a client
//! that logged in once with the full Noise IK handshake comes back with a ticket and
//! skips every X25519 operation.
//!
//! ```text
//! after a full handshake, inside the handshake answer, in front of the login answer:
//!   TICKET frame (cmd 0x0C): Resumption {ticket, secret, expires_ms}
//!
//! client                                               server
//!   RESUME frame (cmd 0x0B): sent_ms, client nonce, ticket,
//!                            AEAD(k_login, LOGIN frame)           ──▶  opens the ticket
//!   ◀──  RESUME|0x80 frame: server nonce, AEAD(k_answer, login answer frame)
//!   SEALED frames (cmd 0x0A) both ways, as after a Noise handshake, under
//!   k_c2s / k_s2c
//! ```
//!
//! The **ticket** is opaque to the client: the server's own record of the session,
//! sealed (XChaCha20-Poly1305) under a **ticket key** that every gateway of a cluster
//! derives from the server's static private key and a key epoch (HKDF-SHA256), so no
//! new configuration and no shared store: any gateway opens any gateway's tickets, and
//! a new server key or a new epoch refuses every older ticket.
//!
//! The **key schedule** (HKDF-SHA256, RFC 5869) mixes the ticket's secret with a
//! fresh nonce from each side, so every resumed session has its own keys and a
//! replayed first message gives its replayer a session it cannot read or continue:
//!
//! ```text
//! early    = HKDF-Extract(salt = client_nonce, IKM = secret)
//! k_login  = HKDF-Expand(early, "ferry resume login", 32)
//! main     = HKDF-Extract(salt = client_nonce ‖ server_nonce, IKM = secret)
//! k_answer = HKDF-Expand(main, "ferry resume answer", 32)
//! k_c2s    = HKDF-Expand(main, "ferry resume c2s", 32)
//! k_s2c    = HKDF-Expand(main, "ferry resume s2c", 32)
//! ```
//!
//! No forward secrecy against the ticket key (= the server's static key): whoever holds
//! it opens a recorded ticket, learns its secret and reads the resumed session. The
//! full handshake keeps its forward secrecy; tickets are bounded in time.
//!
//! Pure: no I/O, no clock (the caller passes the time). Bad input is an error value,
//! never a panic.

use bytes::BytesMut;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, XChaCha20Poly1305};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::frame::{encode_raw, Frame, HEADER_LEN};
use crate::secure::{Channel, SecureError, TAG_LEN};

pub use crate::cmd::{RESUME, TICKET};
use crate::v1;

/// Bytes of a resumption secret.
pub const SECRET_LEN: usize = 32;
/// Bytes of a client or server nonce: 128 random bits, so a repeat is not expected within
/// 2^64 resumptions (and would repeat keys only with the same ticket and the same other
/// nonce). 32 before: 32 bytes of every resumed login for nothing.
pub const NONCE_LEN: usize = 16;
/// Largest RESUME frame body (the Noise message limit, as for the HELLO).
const BODY_MAX: usize = 65_535;
/// Ticket bytes at most (a real one is 65 + the device id; anything above is refused
/// unread).
pub const TICKET_MAX: usize = 1_024;
/// A device id longer than this gets no ticket (its length is one byte in the ticket).
pub const DEVICE_ID_MAX: usize = 255;
/// Ticket header: epoch (4) and the XChaCha20 nonce (24).
const TICKET_HEADER: usize = 4 + 24;
/// Fixed part of a ticket's sealed contents: expiry, user id, network tag, device id
/// length.
const TICKET_FIXED: usize = 8 + 8 + 4 + 1;
/// RESUME body before the ticket: sent_ms (8), client nonce (16), ticket length (2).
const HELLO_FIXED: usize = 8 + NONCE_LEN + 2;

/// Why a resumption failed. Each one means "do a full handshake instead".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResumeError {
    #[error("not a resumption hello (malformed or truncated)")]
    Malformed,
    #[error("the ticket is from key epoch {got}, this server is at {want}")]
    WrongEpoch { got: u32, want: u32 },
    #[error("the ticket does not open (another server key, or altered)")]
    BadTicket,
    #[error("the ticket has expired")]
    Expired,
    #[error("the sealed login does not open (altered)")]
    BadLogin,
    #[error(transparent)]
    Secure(#[from] SecureError),
}

/// What a ticket holds: the server's memory of a session, kept by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketBody {
    pub user_id: u64,
    pub device_id: String,
    /// The ticket's random nonce (in clear in the ticket).
    pub nonce: [u8; 24],
    /// The resumption secret, derived from the nonce under the ticket key (so the ticket
    /// need not carry it); also handed to the client, in the encrypted channel.
    pub secret: [u8; SECRET_LEN],
    /// Unix ms after which the ticket is refused.
    pub expires_ms: u64,
    /// [`network_tag`] of the address the ticket was issued to: a link resuming from
    /// another address gets a new ticket, so the ticket (sent in clear) does not link a
    /// device's links across networks.
    pub net: u32,
}

/// A 32-bit tag of a client's IP address (`peer` is `IP:PORT`, or anything else, taken
/// whole): the first four bytes of its SHA-256.
pub fn network_tag(peer: &str) -> u32 {
    use sha2::Digest;
    let ip = peer
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| peer.to_owned());
    let d = Sha256::digest(ip.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The key that seals and opens tickets, derived from the server's static private key:
/// the same on every gateway holding that key.
pub struct TicketKey {
    epoch: u32,
    aead: XChaCha20Poly1305,
    /// The same key as an HKDF pseudorandom key: each ticket's secret is expanded from it.
    secrets: Hkdf<Sha256>,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKey(epoch {})", self.epoch)
    }
}

impl TicketKey {
    /// `HKDF-SHA256(salt = "ferry ticket key v1", IKM = static private key, info =
    /// epoch as u32 big-endian)`, 32 bytes.
    pub fn derive(static_private: &[u8; 32], epoch: u32) -> TicketKey {
        let key = ticket_key(static_private, epoch);
        TicketKey {
            epoch,
            aead: XChaCha20Poly1305::new(&key.into()),
            secrets: Hkdf::<Sha256>::from_prk(&key)
                .unwrap_or_else(|_| unreachable!("32 bytes is a valid SHA-256 PRK")),
        }
    }

    /// A new ticket body: a random nonce and the secret derived from it.
    pub fn fresh(&self, user_id: u64, device_id: &str, expires_ms: u64, net: u32) -> TicketBody {
        let nonce: [u8; 24] = rand::random();
        TicketBody {
            user_id,
            device_id: device_id.to_owned(),
            nonce,
            secret: self.secret_for(&nonce),
            expires_ms,
            net,
        }
    }

    /// `HKDF-Expand(PRK = ticket key, info = "ferry ticket secret" ‖ nonce, 32)`.
    pub(crate) fn secret_for(&self, nonce: &[u8; 24]) -> [u8; SECRET_LEN] {
        let mut secret = [0u8; SECRET_LEN];
        self.secrets
            .expand_multi_info(&[b"ferry ticket secret", nonce], &mut secret)
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF length"));
        secret
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Seals `body` (made by [`TicketKey::fresh`]) into a ticket: `epoch (u32 BE) ‖
    /// nonce (24 B) ‖ XChaCha20-Poly1305(expires_ms u64 BE ‖ user_id u64 BE ‖ net u32 BE ‖
    /// device_id_len u8 ‖ device_id)`, the first 28 bytes as associated data. The secret
    /// is not in it: [`TicketKey::open`] derives it again from the nonce. `None` when the
    /// device id is too long to fit.
    pub fn seal(&self, body: &TicketBody) -> Option<Vec<u8>> {
        if body.device_id.len() > DEVICE_ID_MAX {
            return None;
        }
        let mut plain = Vec::with_capacity(TICKET_FIXED + body.device_id.len());
        plain.extend_from_slice(&body.expires_ms.to_be_bytes());
        plain.extend_from_slice(&body.user_id.to_be_bytes());
        plain.extend_from_slice(&body.net.to_be_bytes());
        plain.push(body.device_id.len() as u8);
        plain.extend_from_slice(body.device_id.as_bytes());
        let nonce = body.nonce;
        let mut ticket = Vec::with_capacity(TICKET_HEADER + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&self.epoch.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let sealed = self
            .aead
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &plain,
                    aad: &ticket,
                },
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// Opens a ticket sealed by [`TicketKey::seal`] under this key and epoch, and not
    /// expired at `now_ms`.
    pub fn open(&self, ticket: &[u8], now_ms: u64) -> Result<TicketBody, ResumeError> {
        if ticket.len() < TICKET_HEADER + TICKET_FIXED + TAG_LEN || ticket.len() > TICKET_MAX {
            return Err(ResumeError::Malformed);
        }
        let (header, sealed) = ticket.split_at(TICKET_HEADER);
        let epoch = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if epoch != self.epoch {
            return Err(ResumeError::WrongEpoch {
                got: epoch,
                want: self.epoch,
            });
        }
        let nonce: [u8; 24] = header[4..].try_into().map_err(|_| ResumeError::Malformed)?;
        let plain = self
            .aead
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: sealed,
                    aad: header,
                },
            )
            .map_err(|_| ResumeError::BadTicket)?;
        // Sealed by us, so well formed; checked all the same.
        let mut r = Reader(&plain);
        let expires_ms = r.u64()?;
        let user_id = r.u64()?;
        let net = u32::from_be_bytes(r.array()?);
        let n = usize::from(r.u8()?);
        let device_id = std::str::from_utf8(r.take(n)?)
            .map_err(|_| ResumeError::BadTicket)?
            .to_owned();
        if !r.0.is_empty() {
            return Err(ResumeError::BadTicket);
        }
        if now_ms >= expires_ms {
            return Err(ResumeError::Expired);
        }
        Ok(TicketBody {
            user_id,
            device_id,
            nonce,
            secret: self.secret_for(&nonce),
            expires_ms,
            net,
        })
    }
}

/// Reads fixed-size fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ResumeError> {
        if self.0.len() < n {
            return Err(ResumeError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ResumeError> {
        self.take(N)?.try_into().map_err(|_| ResumeError::Malformed)
    }
    fn u8(&mut self) -> Result<u8, ResumeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ResumeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ResumeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

fn expand(hk: &Hkdf<Sha256>, info: &[u8], out: &mut [u8; 32]) {
    // 32 bytes is far below HKDF-SHA256's limit of 255 × 32.
    hk.expand(info, out)
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF length"));
}

/// The ticket key's bytes: `HKDF-SHA256(salt = "ferry ticket key v1", IKM = static
/// private key, info = epoch as u32 big-endian)`, 32 bytes.
pub(crate) fn ticket_key(static_private: &[u8; 32], epoch: u32) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"ferry ticket key v1"), static_private);
    let mut key = [0u8; 32];
    expand(&hk, &epoch.to_be_bytes(), &mut key);
    key
}

/// `k_login`: seals the LOGIN in the client's first message.
pub(crate) fn login_key(secret: &[u8; SECRET_LEN], client_nonce: &[u8; NONCE_LEN]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(client_nonce), secret);
    let mut k = [0u8; 32];
    expand(&hk, b"ferry resume login", &mut k);
    k
}

/// The session's keys once both nonces are known.
pub(crate) struct SessionKeys {
    pub(crate) answer: [u8; 32],
    pub(crate) c2s: [u8; 32],
    pub(crate) s2c: [u8; 32],
}

pub(crate) fn session_keys(
    secret: &[u8; SECRET_LEN],
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> SessionKeys {
    let mut salt = [0u8; 2 * NONCE_LEN];
    salt[..NONCE_LEN].copy_from_slice(client_nonce);
    salt[NONCE_LEN..].copy_from_slice(server_nonce);
    let hk = Hkdf::<Sha256>::new(Some(&salt), secret);
    let mut keys = SessionKeys {
        answer: [0; 32],
        c2s: [0; 32],
        s2c: [0; 32],
    };
    expand(&hk, b"ferry resume answer", &mut keys.answer);
    expand(&hk, b"ferry resume c2s", &mut keys.c2s);
    expand(&hk, b"ferry resume s2c", &mut keys.s2c);
    keys
}

/// ChaCha20-Poly1305 under a key used for exactly one message: the nonce is zero.
fn seal_once(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SecureError> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(&[0u8; 12].into(), Payload { msg: plain, aad })
        .map_err(|_| SecureError::Noise("sealing failed".into()))
}

fn open_once(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(&[0u8; 12].into(), Payload { msg: sealed, aad })
        .ok()
}

/// The client's side of a resumption in flight.
pub struct ClientResume {
    secret: [u8; SECRET_LEN],
    client_nonce: [u8; NONCE_LEN],
}

/// Starts a resumed session: appends the RESUME frame carrying `ticket` and `payload`
/// (the encoded LOGIN frame, sealed under the ticket's `secret`) to `out`. `now_ms`:
/// the client's clock (unix ms), which the server checks for replays.
///
/// Body: `sent_ms (u64 BE) ‖ client_nonce (16 B) ‖ ticket_len (u16 BE) ‖ ticket ‖
/// ChaCha20-Poly1305(k_login, nonce 0, aad = every byte before it, payload)`.
pub fn client_resume(
    ticket: &[u8],
    secret: &[u8; SECRET_LEN],
    payload: &[u8],
    now_ms: u64,
    out: &mut BytesMut,
) -> Result<ClientResume, SecureError> {
    resume_with(ticket, secret, payload, now_ms, rand::random(), out)
}

/// [`client_resume`] with a given client nonce (the test vectors; a fresh random one
/// otherwise).
pub(crate) fn resume_with(
    ticket: &[u8],
    secret: &[u8; SECRET_LEN],
    payload: &[u8],
    now_ms: u64,
    client_nonce: [u8; NONCE_LEN],
    out: &mut BytesMut,
) -> Result<ClientResume, SecureError> {
    let len = HELLO_FIXED + ticket.len() + payload.len() + TAG_LEN;
    if ticket.len() > TICKET_MAX || len > BODY_MAX {
        return Err(SecureError::TooLarge(len));
    }
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&now_ms.to_be_bytes());
    body.extend_from_slice(&client_nonce);
    body.extend_from_slice(&(ticket.len() as u16).to_be_bytes());
    body.extend_from_slice(ticket);
    let sealed = seal_once(&login_key(secret, &client_nonce), &body, payload)?;
    body.extend_from_slice(&sealed);
    encode_raw(RESUME, 0, &body, out);
    Ok(ClientResume {
        secret: *secret,
        client_nonce,
    })
}

impl ClientResume {
    /// Reads the server's `RESUME|0x80` answer: the channel and the payload (the login
    /// answer frame).
    pub fn finish(self, answer: &Frame) -> Result<(Channel, Vec<u8>), SecureError> {
        if answer.cmd != RESUME | 0x80 {
            return Err(SecureError::UnexpectedFrame {
                expected: RESUME | 0x80,
                got: answer.cmd,
            });
        }
        if answer.body.len() < NONCE_LEN + TAG_LEN {
            return Err(SecureError::Handshake);
        }
        let (nonce, sealed) = answer.body.split_at(NONCE_LEN);
        let server_nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecureError::Handshake)?;
        let keys = session_keys(&self.secret, &self.client_nonce, &server_nonce);
        let payload =
            open_once(&keys.answer, &server_nonce, sealed).ok_or(SecureError::Handshake)?;
        Ok((Channel::from_keys(&keys.c2s, &keys.s2c), payload))
    }
}

/// A resumption hello the server has opened: what the ticket said, and what it takes
/// to answer. The caller checks `sent_ms` against its clock and `client_nonce` against
/// its replay cache before it answers.
pub struct ServerResume {
    pub ticket: TicketBody,
    /// The client's clock when it sent the hello (unix ms).
    pub sent_ms: u64,
    pub client_nonce: [u8; NONCE_LEN],
}

impl std::fmt::Debug for ServerResume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerResume(user {}, device {:?})",
            self.ticket.user_id, self.ticket.device_id
        )
    }
}

/// Reads a client's RESUME frame: opens its ticket with `key` (refused when expired at
/// `now_ms`) and its sealed LOGIN. Returns the session to answer and the payload.
pub fn server_resume(
    key: &TicketKey,
    hello: &Frame,
    now_ms: u64,
) -> Result<(ServerResume, Vec<u8>), ResumeError> {
    if hello.cmd != RESUME {
        return Err(SecureError::UnexpectedFrame {
            expected: RESUME,
            got: hello.cmd,
        }
        .into());
    }
    let mut r = Reader(&hello.body);
    let sent_ms = r.u64()?;
    let client_nonce = r.array::<NONCE_LEN>()?;
    let ticket_len = usize::from(r.u16()?);
    let ticket = r.take(ticket_len)?;
    let sealed = r.0;
    if sealed.len() < TAG_LEN {
        return Err(ResumeError::Malformed);
    }
    let ticket = key.open(ticket, now_ms)?;
    let aad = &hello.body[..HELLO_FIXED + ticket_len];
    let payload = open_once(&login_key(&ticket.secret, &client_nonce), aad, sealed)
        .ok_or(ResumeError::BadLogin)?;
    Ok((
        ServerResume {
            ticket,
            sent_ms,
            client_nonce,
        },
        payload,
    ))
}

impl ServerResume {
    /// Answers with `payload` (the encoded login answer): appends the `RESUME|0x80`
    /// frame (`server_nonce (16 B) ‖ ChaCha20-Poly1305(k_answer, nonce 0, aad =
    /// server_nonce, payload)`) to `out`; the channel for everything after.
    pub fn respond(self, payload: &[u8], out: &mut BytesMut) -> Result<Channel, SecureError> {
        self.respond_with(rand::random(), payload, out)
    }

    /// [`ServerResume::respond`] with a given server nonce (the test vectors).
    pub(crate) fn respond_with(
        self,
        server_nonce: [u8; NONCE_LEN],
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<Channel, SecureError> {
        let len = NONCE_LEN + payload.len() + TAG_LEN;
        if len > BODY_MAX {
            return Err(SecureError::TooLarge(payload.len()));
        }
        let keys = session_keys(&self.ticket.secret, &self.client_nonce, &server_nonce);
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(&server_nonce);
        body.extend_from_slice(&seal_once(&keys.answer, &server_nonce, payload)?);
        encode_raw(RESUME | 0x80, 0, &body, out);
        Ok(Channel::from_keys(&keys.s2c, &keys.c2s))
    }
}

/// The payload of a handshake answer (`HELLO|0x80` or `RESUME|0x80`) that hands out a
/// ticket: the `TICKET` frame carrying it, in front of the login answer frame(s)
/// (without a ticket the payload is the login answer alone). The ticket is the secure
/// layer's own: it travels beside logic's login answer, never inside it, and only in the
/// encrypted answer (its secret is worth a session key).
pub fn with_ticket(ticket: &v1::Resumption, login_answer: &[u8]) -> Vec<u8> {
    use prost::Message;
    let mut out = BytesMut::with_capacity(HEADER_LEN + ticket.encoded_len() + login_answer.len());
    crate::frame::encode_msg(TICKET, 0, ticket, &mut out);
    out.extend_from_slice(login_answer);
    out.to_vec()
}

/// The client's side of [`with_ticket`]: takes the `TICKET` frame, if there is one,
/// off the front of an opened handshake answer's payload, leaving the login answer
/// frame(s) in `payload`.
pub fn take_ticket(payload: &mut Vec<u8>) -> Result<Option<v1::Resumption>, SecureError> {
    use prost::Message;
    if payload.len() < HEADER_LEN || payload[3] != TICKET {
        return Ok(None);
    }
    let Some(len) = Frame::check(payload, BODY_MAX)? else {
        return Err(SecureError::Handshake);
    };
    let ticket =
        v1::Resumption::decode(&payload[HEADER_LEN..len]).map_err(|_| SecureError::Handshake)?;
    payload.drain(..len);
    Ok(Some(ticket))
}

/// Bytes a RESUME frame adds around its ticket and payload: frame header, sent_ms,
/// client nonce, ticket length, tag.
pub const RESUME_OVERHEAD: usize = HEADER_LEN + HELLO_FIXED + TAG_LEN;
/// Bytes the `RESUME|0x80` answer adds around its payload: header, server nonce, tag.
pub const ANSWER_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::parse_handshake;
    use crate::secure::tests::login_frame;

    const NOW: u64 = 1_800_000_000_000;

    fn ticket_for(key: &TicketKey) -> (Vec<u8>, TicketBody) {
        let body = key.fresh(42, "0123456789abcdef0123456789abcdef", NOW + 3_600_000, 7);
        (key.seal(&body).unwrap(), body)
    }

    fn hello(ticket: &[u8], secret: &[u8; 32]) -> (ClientResume, Frame, BytesMut) {
        let mut wire = BytesMut::new();
        let c = client_resume(ticket, secret, &login_frame(), NOW, &mut wire).unwrap();
        let raw = wire.clone();
        let f = parse_handshake(&mut wire).unwrap().unwrap();
        (c, f, raw)
    }

    #[test]
    fn round_trip_then_sealed_records_both_ways() {
        let key = TicketKey::derive(&[7u8; 32], 1);
        let (ticket, body) = ticket_for(&key);
        assert_eq!(ticket.len(), 65 + body.device_id.len());
        let (client, f, raw) = hello(&ticket, &body.secret);
        assert_eq!(
            raw.len(),
            RESUME_OVERHEAD + ticket.len() + login_frame().len()
        );
        assert_eq!(f.cmd, RESUME);
        let (server, login) = server_resume(&key, &f, NOW + 1).unwrap();
        assert_eq!(login, &login_frame()[..]);
        assert_eq!(server.ticket, body);
        assert_eq!(server.sent_ms, NOW);
        let mut out = BytesMut::new();
        let mut s = server.respond(b"welcome", &mut out).unwrap();
        assert_eq!(out.len(), ANSWER_OVERHEAD + 7);
        let answer = parse_handshake(&mut out).unwrap().unwrap();
        let (mut c, payload) = client.finish(&answer).unwrap();
        assert_eq!(payload, b"welcome");
        for round in 0..3u8 {
            let mut wire = BytesMut::new();
            c.seal(&[round; 70], &mut wire).unwrap();
            let mut plain = BytesMut::new();
            s.open(&mut wire, &mut plain).unwrap();
            assert_eq!(&plain[..], &[round; 70]);
            let mut wire = BytesMut::new();
            s.seal(&[round ^ 0xff; 30], &mut wire).unwrap();
            let mut plain = BytesMut::new();
            c.open(&mut wire, &mut plain).unwrap();
            assert_eq!(&plain[..], &[round ^ 0xff; 30]);
        }
    }

    #[test]
    fn a_ticket_rides_in_front_of_the_login_answer() {
        let t = v1::Resumption {
            ticket: vec![5u8; 97].into(),
            secret: vec![6u8; 32].into(),
            expires_ms: 1_800_000_000_000,
        };
        let mut answer = BytesMut::new();
        crate::frame::encode_raw(
            crate::cmd::response(crate::cmd::LOGIN),
            1,
            b"ok",
            &mut answer,
        );
        let mut payload = with_ticket(&t, &answer);
        // Frame header + the message: 5 bytes more than as a field of the login answer
        // was (an 8-byte header against a tag and two length bytes).
        use prost::Message;
        assert_eq!(payload.len(), answer.len() + HEADER_LEN + t.encoded_len());
        assert_eq!(take_ticket(&mut payload), Ok(Some(t)));
        assert_eq!(payload, &answer[..]);
        // No ticket: the payload is the login answer as it is.
        assert_eq!(take_ticket(&mut payload), Ok(None));
        assert_eq!(payload, &answer[..]);
        // A cut or undecodable ticket frame is a broken answer, never a panic.
        let mut cut = with_ticket(&v1::Resumption::default(), &answer)[..HEADER_LEN + 1].to_vec();
        cut[2] = 9;
        assert!(take_ticket(&mut cut).is_err());
        let mut bad = Vec::new();
        let mut f = BytesMut::new();
        crate::frame::encode_raw(TICKET, 0, &[0xff, 0xff], &mut f);
        bad.extend_from_slice(&f);
        assert!(take_ticket(&mut bad).is_err());
    }

    #[test]
    fn every_gateway_with_the_server_key_derives_the_same_ticket_key() {
        let a = TicketKey::derive(&[7u8; 32], 3);
        let b = TicketKey::derive(&[7u8; 32], 3);
        let (ticket, body) = ticket_for(&a);
        assert_eq!(b.open(&ticket, NOW).unwrap(), body);
        // Another server key: the ticket does not open.
        let other = TicketKey::derive(&[8u8; 32], 3);
        assert_eq!(other.open(&ticket, NOW), Err(ResumeError::BadTicket));
    }

    #[test]
    fn tampered_tickets_are_refused() {
        let key = TicketKey::derive(&[7u8; 32], 1);
        let (ticket, _) = ticket_for(&key);
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            let e = key.open(&bad, NOW).unwrap_err();
            if i < 4 {
                assert!(matches!(e, ResumeError::WrongEpoch { .. }), "byte {i}");
            } else {
                assert_eq!(e, ResumeError::BadTicket, "byte {i}");
            }
        }
        // Truncated or padded.
        assert_eq!(
            key.open(&ticket[..ticket.len() - 1], NOW),
            Err(ResumeError::BadTicket)
        );
        assert_eq!(key.open(&ticket[..20], NOW), Err(ResumeError::Malformed));
        // A tampered ticket inside an otherwise good hello.
        let body = key.open(&ticket, NOW).unwrap();
        let mut bad = ticket.clone();
        bad[40] ^= 0x80;
        let (_, f, _) = hello(&bad, &body.secret);
        assert_eq!(
            server_resume(&key, &f, NOW).err(),
            Some(ResumeError::BadTicket)
        );
    }

    #[test]
    fn expired_tickets_are_refused() {
        let key = TicketKey::derive(&[7u8; 32], 1);
        let (ticket, body) = ticket_for(&key);
        assert!(key.open(&ticket, body.expires_ms - 1).is_ok());
        assert_eq!(
            key.open(&ticket, body.expires_ms),
            Err(ResumeError::Expired)
        );
        let (_, f, _) = hello(&ticket, &body.secret);
        assert_eq!(
            server_resume(&key, &f, body.expires_ms + 1).err(),
            Some(ResumeError::Expired)
        );
    }

    #[test]
    fn another_epoch_refuses_the_ticket() {
        let old = TicketKey::derive(&[7u8; 32], 1);
        let new = TicketKey::derive(&[7u8; 32], 2);
        let (ticket, body) = ticket_for(&old);
        assert_eq!(
            new.open(&ticket, NOW),
            Err(ResumeError::WrongEpoch { got: 1, want: 2 })
        );
        // A ticket claiming the new epoch but sealed under the old key does not open.
        let mut relabelled = ticket.clone();
        relabelled[..4].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(new.open(&relabelled, NOW), Err(ResumeError::BadTicket));
        let (_, f, _) = hello(&ticket, &body.secret);
        assert!(matches!(
            server_resume(&new, &f, NOW),
            Err(ResumeError::WrongEpoch { .. })
        ));
    }

    #[test]
    fn a_wrong_secret_or_altered_hello_is_refused() {
        let key = TicketKey::derive(&[7u8; 32], 1);
        let (ticket, body) = ticket_for(&key);
        let (_, f, _) = hello(&ticket, &[1u8; 32]);
        assert_eq!(
            server_resume(&key, &f, NOW).err(),
            Some(ResumeError::BadLogin)
        );
        let (_, _, good) = hello(&ticket, &body.secret);
        for i in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let f = parse_handshake(&mut bad).unwrap().unwrap();
            assert!(server_resume(&key, &f, NOW).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_replayed_hello_gives_no_usable_session() {
        let key = TicketKey::derive(&[7u8; 32], 1);
        let (ticket, body) = ticket_for(&key);
        let (client, f, _) = hello(&ticket, &body.secret);
        // The real session.
        let (s1, _) = server_resume(&key, &f, NOW).unwrap();
        let mut out1 = BytesMut::new();
        let mut server1 = s1.respond(b"answer", &mut out1).unwrap();
        let a1 = parse_handshake(&mut out1).unwrap().unwrap();
        let (mut c, _) = client.finish(&a1).unwrap();
        // The attacker replays the same first message: the server (one without a replay
        // cache, or another gateway) answers, with a fresh server nonce.
        let (s2, login) = server_resume(&key, &f, NOW).unwrap();
        assert_eq!(login, &login_frame()[..]);
        let mut out2 = BytesMut::new();
        let mut server2 = s2.respond(b"answer", &mut out2).unwrap();
        let a2 = parse_handshake(&mut out2).unwrap().unwrap();
        assert_ne!(a1.body, a2.body);
        // The replayed session's keys are not the real one's: the attacker cannot feed
        // it the real client's records ...
        let mut rec = BytesMut::new();
        c.seal(b"send", &mut rec).unwrap();
        assert_eq!(
            server2.open(&mut rec.clone(), &mut BytesMut::new()),
            Err(SecureError::Decrypt)
        );
        server1.open(&mut rec, &mut BytesMut::new()).unwrap();
        // ... and records the replayed session sends do not open for the real client's
        // keys (nor for anyone without the secret).
        let mut push = BytesMut::new();
        server2.seal(b"push", &mut push).unwrap();
        assert_eq!(
            c.open(&mut push, &mut BytesMut::new()),
            Err(SecureError::Decrypt)
        );
        // A client that has the nonce but not the secret cannot read the answer.
        let thief = ClientResume {
            secret: [0u8; 32],
            client_nonce: c_nonce(&f),
        };
        assert_eq!(thief.finish(&a2).err(), Some(SecureError::Handshake));
    }

    fn c_nonce(f: &Frame) -> [u8; NONCE_LEN] {
        f.body[8..8 + NONCE_LEN].try_into().unwrap()
    }

    #[test]
    fn garbage_never_panics() {
        let key = TicketKey::derive(&[7u8; 32], 1);
        let (ticket, body) = ticket_for(&key);
        let (_, _, good) = hello(&ticket, &body.secret);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in 0..400usize {
            let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = key.open(&junk, NOW);
            // Garbage behind a real prefix, and cut anywhere.
            let keep = len.min(good.len());
            junk[..keep].copy_from_slice(&good[..keep]);
            let mut framed = BytesMut::new();
            encode_raw(RESUME, 0, &junk, &mut framed);
            let f = parse_handshake(&mut framed).unwrap().unwrap();
            assert!(server_resume(&key, &f, NOW).is_err());
            let mut cut = BytesMut::new();
            encode_raw(
                RESUME,
                0,
                &good[HEADER_LEN..HEADER_LEN + len.min(good.len() - HEADER_LEN)],
                &mut cut,
            );
            let f = parse_handshake(&mut cut).unwrap().unwrap();
            if len < good.len() - HEADER_LEN {
                assert!(server_resume(&key, &f, NOW).is_err());
            }
            // A client fed a garbage answer.
            let (c, _, _) = hello(&ticket, &body.secret);
            let mut ans = BytesMut::new();
            encode_raw(RESUME | 0x80, 0, &junk, &mut ans);
            let f = parse_handshake(&mut ans).unwrap().unwrap();
            assert!(c.finish(&f).is_err());
        }
        // A ticket length pointing past the end.
        let mut body_bytes = vec![0u8; HELLO_FIXED];
        body_bytes[HELLO_FIXED - 2..HELLO_FIXED].copy_from_slice(&u16::MAX.to_be_bytes());
        let mut framed = BytesMut::new();
        encode_raw(RESUME, 0, &body_bytes, &mut framed);
        let f = parse_handshake(&mut framed).unwrap().unwrap();
        assert_eq!(
            server_resume(&key, &f, NOW).err(),
            Some(ResumeError::Malformed)
        );
        // Too long a device id gets no ticket.
        assert!(key.seal(&key.fresh(1, &"d".repeat(256), NOW, 0)).is_none());
    }
}
