//! Encryption at the gateway: the long link's Noise IK handshake and sealed records
//! ([`Secured`], a [`Transport`] around any other), and the short link's sealed
//! requests ([`open_short`], [`seal_short`], with the replay cache).
//!
//! A link starts undecided. Its first frame's command tells (docs/protocol.md §1.4):
//! `HELLO` starts the encrypted link — the LOGIN comes out of the handshake, the first
//! thing the link writes (the login answer) goes back as the handshake's second
//! message, and every byte after is a sealed record both ways; anything else is a
//! plaintext link, refused unless `gateway.allow_plaintext`. The link code above sees
//! plain frames either way. Idle, a secured link holds its two cipher states and no
//! buffer.
//!
//! `RESUME` starts an encrypted link from a resumption ticket instead (§1.5): no
//! X25519, the LOGIN comes out of the ticket's sealed hello and the answer goes back in
//! `RESUME|0x80`. A ticket that does not open, has expired, or a hello replayed or too
//! far off our clock is refused with a plain `ERROR RESUME_REFUSED` and a close: the
//! client forgets the ticket and does the full handshake on a new connection. After
//! logic accepted the LOGIN, [`Secured::logged_in`] makes the link a new ticket, which
//! goes out as a `TICKET` frame in front of the login answer inside the handshake
//! answer: logic's answer is never decoded or changed.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use ferry_proto::resume::{self, ServerResume, RESUME};
use ferry_proto::sealed::{self, OpenedRequest};
use ferry_proto::secure::{self, Channel, SecureError, ServerHandshake, StaticKey, HELLO};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{FrameError, HEADER_LEN};
use parking_lot::Mutex;
use std::sync::atomic::Ordering;

use crate::link::{End, Transport};
use crate::Gateway;

/// Why a link was refused or broke at the encryption layer; carried inside the
/// `io::Error` the link code sees, so it answers with the right code and request id.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    /// The request id of the frame refused, from its header (0 when no header was read).
    pub req_id: u32,
    pub message: String,
    /// What the client is told to wait before it tries again (0: nothing said).
    pub retry_after_ms: u32,
}

pub(crate) fn refusal(code: ErrorCode, req_id: u32, message: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Refusal {
            code,
            req_id,
            message: message.into(),
            retry_after_ms: 0,
        },
    )
}

/// The error code and request id to answer a failed read with: the refusal's own, or
/// `TOO_LARGE` with the frame's id for a frame over the limit (the frame codec's only
/// error).
pub(crate) fn refused(e: &io::Error) -> (ErrorCode, u32) {
    let inner = e.get_ref();
    if let Some(r) = inner.and_then(|r| r.downcast_ref::<Refusal>()) {
        return (r.code, r.req_id);
    }
    if let Some(f) = inner.and_then(|r| r.downcast_ref::<FrameError>()) {
        return (ErrorCode::TooLarge, f.req_id());
    }
    (ErrorCode::BadRequest, 0)
}

/// The retry-after a refusal carries (0: none).
pub(crate) fn retry_after_ms(e: &io::Error) -> u32 {
    e.get_ref()
        .and_then(|r| r.downcast_ref::<Refusal>())
        .map_or(0, |r| r.retry_after_ms)
}

/// A handshake in progress, counted against `gateway.max_handshakes` until it is
/// answered (the link opens) or given up (refused, or the connection ends first).
pub(crate) struct HandshakeSlot {
    count: Arc<std::sync::atomic::AtomicUsize>,
    /// Its place under `max_handshakes` (none without a limit).
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl HandshakeSlot {
    fn new(gw: &Gateway, permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        gw.handshakes.fetch_add(1, Ordering::Relaxed);
        HandshakeSlot {
            count: gw.handshakes.clone(),
            _permit: permit,
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A handshake's wait in the gateway's waiting room: its slot once it has one, or the
/// refusal when its time there ran out.
type Hold = std::pin::Pin<Box<dyn Future<Output = io::Result<HandshakeSlot>> + Send>>;

/// A full handshake's reading of its HELLO (its key work).
type Accepted = Result<(ServerHandshake, Vec<u8>), SecureError>;

/// A handshake that may go on: its slot, and the HELLO's key work when that was done off
/// the forwarding threads ([`crate::keywork`]) while it waited.
struct Ready {
    slot: HandshakeSlot,
    /// Boxed: a link's state is as large as its largest kind, and idle links keep it.
    accepted: Option<Box<Accepted>>,
}

/// What a held handshake waits for: its turn, then its key work.
type Wait = std::pin::Pin<Box<dyn Future<Output = io::Result<Ready>> + Send>>;

/// What admission makes of a new handshake.
enum Admission {
    /// Go on now.
    Now(HandshakeSlot),
    /// Wait (the connection stays open, nothing is read or answered meanwhile).
    Hold(Hold),
}

fn unavailable(message: &str, retry_after_ms: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Refusal {
            code: ErrorCode::Unavailable,
            req_id: 0,
            message: message.into(),
            retry_after_ms,
        },
    )
}

const SHED: &str = "the server is overloaded and takes no new sessions now; try again later";
const BUSY: &str = "too many logins in progress here; try again later";

/// Admission of a new handshake, before any key work. It goes on at once while logic
/// takes new sessions and fewer than `max_handshakes` are in progress. Otherwise it
/// waits, its connection open, in a bounded waiting room (`handshake_queue`) for up to
/// `handshake_hold_ms`: until logic's shedding is over and a place is free, first come
/// first served. A reconnecting device then connects once instead of coming back again
/// and again to be refused, which costs both sides more than the login itself. With
/// the room full, or the hold over, it is refused: a plain `ERROR UNAVAILABLE` (request
/// id 0) with a retry-after, and the gateway has spent no X25519 on it.
fn admit_handshake(gw: &Arc<Gateway>) -> io::Result<Admission> {
    let retry = gw.cfg.handshake_retry_after_ms;
    let shed = gw.shed_remaining_ms();
    if shed == 0 {
        match gw.handshake_permits.clone().try_acquire_owned() {
            Ok(p) => return Ok(Admission::Now(HandshakeSlot::new(gw, Some(p)))),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
            // Closed: no limit.
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Ok(Admission::Now(HandshakeSlot::new(gw, None)))
            }
        }
    }
    let hold_ms = gw.cfg.handshake_hold_ms;
    // Its place in the waiting room, given back when the hold ends either way, or the
    // connection does.
    let place = (hold_ms > 0)
        .then(|| gw.room.clone().try_acquire_owned().ok())
        .flatten();
    if let Some(place) = place {
        gw.stats.handshakes_held.fetch_add(1, Ordering::Relaxed);
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(hold_ms);
        return Ok(Admission::Hold(Box::pin(hold(gw.clone(), place, until))));
    }
    Err(refuse_now(gw, shed, retry))
}

/// The refusal of a handshake that could not go on, counted by why.
fn refuse_now(gw: &Gateway, shed: u64, retry: u32) -> io::Error {
    if shed > 0 {
        gw.stats
            .handshakes_refused_shed
            .fetch_add(1, Ordering::Relaxed);
        // Until logic's own wait is over, at least.
        let wait = u32::try_from(shed).unwrap_or(u32::MAX).max(retry);
        return unavailable(SHED, wait);
    }
    gw.stats
        .handshakes_refused_busy
        .fetch_add(1, Ordering::Relaxed);
    unavailable(BUSY, retry)
}

/// A held handshake's wait: for logic's shedding to end, then for a place under
/// `max_handshakes` (the semaphore serves waiters in order), until `until`.
async fn hold(
    gw: Arc<Gateway>,
    place: tokio::sync::OwnedSemaphorePermit,
    until: tokio::time::Instant,
) -> io::Result<HandshakeSlot> {
    let got = tokio::time::timeout_at(until, async {
        loop {
            let shed = gw.shed_remaining_ms();
            if shed > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(shed)).await;
                continue;
            }
            // Closed: no limit.
            let permit = gw.handshake_permits.clone().acquire_owned().await.ok();
            if gw.shed_remaining_ms() > 0 {
                // Logic began shedding while this one waited for its place.
                continue;
            }
            return HandshakeSlot::new(&gw, permit);
        }
    })
    .await;
    drop(place);
    got.map_err(|_| refuse_now(&gw, gw.shed_remaining_ms(), gw.cfg.handshake_retry_after_ms))
}

fn bad_bytes(e: SecureError) -> io::Error {
    let code = match e {
        SecureError::Frame(_) | SecureError::TooLarge(_) => ErrorCode::TooLarge,
        _ => ErrorCode::BadRequest,
    };
    refusal(code, e.req_id(), e.to_string())
}

enum State {
    /// No whole first frame yet: the bytes so far.
    Sniff(BytesMut),
    /// A HELLO or RESUME read and held by admission (see [`admit_handshake`]), or a
    /// HELLO whose key work is on the key-work threads: the hello, and the wait for its
    /// slot (or its refusal) and its key work, then what the wait came to.
    Held {
        hello: ferry_proto::Frame,
        wait: Wait,
        outcome: Option<io::Result<Ready>>,
    },
    /// The HELLO (or RESUME) was read and its LOGIN handed on; the first write answers
    /// it, with the ticket in front of the login answer when the login earned one.
    Answer {
        pending: Option<Pending>,
        ticket: Option<Box<v1::Resumption>>,
        /// The login answer names protocol 2 and the transport is TCP: the records
        /// after the answer are compact (docs/protocol.md §1.6).
        compact: bool,
        /// Its place under `gateway.max_handshakes`, given back with this state.
        _slot: HandshakeSlot,
    },
    /// Handshake done. `wire` holds a partial record only while one is partial.
    Open { channel: Channel, wire: BytesMut },
    /// A plaintext link (allowed by configuration).
    Plain,
    /// Refused before any key was agreed: the link's last words go out in plain.
    Refused,
}

impl State {
    fn answer(pending: Pending, slot: HandshakeSlot) -> State {
        State::Answer {
            pending: Some(pending),
            ticket: None,
            compact: false,
            _slot: slot,
        }
    }
}

/// A handshake waiting for its answer. Boxed: the states are large and live only for
/// one round trip.
enum Pending {
    /// A full Noise IK handshake.
    Noise(Box<ServerHandshake>),
    /// A session resumed from a ticket.
    Resume(Box<ServerResume>),
}

/// A link transport that speaks the encrypted link (or, when allowed, plaintext).
pub(crate) struct Secured<T> {
    inner: T,
    /// The server key, the ticket key and the resumption replay cache, the
    /// configuration and the counters.
    gw: Arc<Gateway>,
    state: Mutex<State>,
}

impl<T: Transport> Secured<T> {
    pub fn new(inner: T, gw: Arc<Gateway>) -> Self {
        Secured {
            inner,
            gw,
            state: Mutex::new(State::Sniff(BytesMut::new())),
        }
    }

    /// Opens a RESUME hello: the session to answer and its LOGIN, or why it is refused.
    fn resume(&self, hello: &ferry_proto::Frame) -> Result<(ServerResume, Vec<u8>), String> {
        let gw = &self.gw;
        if gw.cfg.ticket_lifetime_secs == 0 {
            return Err("session resumption is off here".into());
        }
        let now = now_ms();
        let (r, login) =
            resume::server_resume(&gw.tickets, hello, now).map_err(|e| e.to_string())?;
        if r.sent_ms.abs_diff(now) > RESUME_SKEW_MS {
            return Err(format!(
                "the hello's clock is {} s off ours (at most {} s)",
                r.sent_ms.abs_diff(now) / 1000,
                RESUME_SKEW_MS / 1000
            ));
        }
        if !gw.resume_seen.admit(&r.client_nonce, now) {
            return Err("hello replayed (or too many resumptions at once)".into());
        }
        Ok((r, login))
    }

    /// Decides on the first frame. `more`: the transport has not ended.
    fn sniff(
        &self,
        st: &mut State,
        buf: &mut BytesMut,
        more: bool,
        partial: &mut BytesMut,
    ) -> io::Result<bool> {
        if buf.len() < HEADER_LEN {
            return Ok(more);
        }
        let req_id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if buf[3] != HELLO && buf[3] != RESUME {
            if !self.gw.cfg.allow_plaintext {
                *st = State::Refused;
                return Err(refusal(
                    ErrorCode::PermissionDenied,
                    req_id,
                    "plaintext links are refused here: start with the encrypted HELLO \
                     (docs/protocol.md 1.4)",
                ));
            }
            partial.extend_from_slice(buf);
            *st = State::Plain;
            return Ok(more);
        }
        if req_id != 0 {
            *st = State::Refused;
            let name = if buf[3] == HELLO { "HELLO" } else { "RESUME" };
            return Err(refusal(
                ErrorCode::BadRequest,
                req_id,
                format!("a {name} frame must carry request id 0, not {req_id}"),
            ));
        }
        let hello = match secure::parse_handshake(buf) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(more),
            Err(e) => {
                *st = State::Refused;
                return Err(bad_bytes(e));
            }
        };
        if !buf.is_empty() {
            // Nothing can be sealed before the answer: these bytes are not a client's.
            // Refused on their first byte: no header of theirs is read (id 0).
            *st = State::Refused;
            return Err(refusal(
                ErrorCode::BadRequest,
                0,
                "bytes after the HELLO before its answer",
            ));
        }
        // A HELLO's key work goes to the key-work threads; a RESUME's is symmetric and
        // cheap, done here.
        let key_work = hello.cmd == HELLO && self.gw.key_work.threaded();
        match admit_handshake(&self.gw) {
            Ok(Admission::Now(slot)) if !key_work => {
                let ready = Ready {
                    slot,
                    accepted: None,
                };
                self.handshake(st, hello, ready, partial)
            }
            Ok(admission) => {
                let wait = self.wait(admission, &hello, key_work);
                *st = State::Held {
                    hello,
                    wait,
                    outcome: None,
                };
                Ok(true)
            }
            Err(e) => {
                *st = State::Refused;
                Err(e)
            }
        }
    }

    /// The wait of a handshake that cannot go on at once: its turn (when admission held
    /// it), then its HELLO's key work on the key-work threads (`key_work`).
    fn wait(&self, admission: Admission, hello: &ferry_proto::Frame, key_work: bool) -> Wait {
        let gw = self.gw.clone();
        let hello = key_work.then(|| hello.clone());
        Box::pin(async move {
            let slot = match admission {
                Admission::Now(slot) => slot,
                Admission::Hold(hold) => hold.await?,
            };
            let accepted = match hello {
                Some(hello) => {
                    let key = gw.key.clone();
                    Some(Box::new(
                        gw.key_work
                            .run(move || secure::server_accept(&key, &hello))
                            .await?,
                    ))
                }
                None => None,
            };
            Ok(Ready { slot, accepted })
        })
    }

    /// Works on an admitted hello: opens its ticket or does the Noise work (unless done
    /// already), and hands its LOGIN on.
    fn handshake(
        &self,
        st: &mut State,
        hello: ferry_proto::Frame,
        ready: Ready,
        partial: &mut BytesMut,
    ) -> io::Result<bool> {
        let Ready { slot, accepted } = ready;
        if hello.cmd == RESUME {
            let stats = &self.gw.stats;
            return match self.resume(&hello) {
                Ok((r, login)) => {
                    stats.resumed_handshakes.fetch_add(1, Ordering::Relaxed);
                    partial.extend_from_slice(&login);
                    *st = State::answer(Pending::Resume(Box::new(r)), slot);
                    Ok(true)
                }
                Err(why) => {
                    stats.resumes_refused.fetch_add(1, Ordering::Relaxed);
                    *st = State::Refused;
                    Err(refusal(
                        ErrorCode::ResumeRefused,
                        hello.req_id,
                        format!("resume refused: {why}; log in with the full handshake"),
                    ))
                }
            };
        }
        self.gw
            .stats
            .full_handshakes
            .fetch_add(1, Ordering::Relaxed);
        match accepted.map_or_else(|| secure::server_accept(&self.gw.key, &hello), |a| *a) {
            Ok((hs, login)) => {
                partial.extend_from_slice(&login);
                *st = State::answer(Pending::Noise(Box::new(hs)), slot);
                Ok(true)
            }
            Err(e) => {
                *st = State::Refused;
                Err(refusal(
                    ErrorCode::BadRequest,
                    hello.req_id,
                    format!("{e}: is the client's pinned server key this server's?"),
                ))
            }
        }
    }
}

impl<T: Transport> Transport for Secured<T> {
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    /// After logic accepted the LOGIN of an encrypted link that has not answered yet:
    /// a new ticket to go in front of the login answer after a full handshake, living
    /// `ticket_lifetime_secs` (none on a plaintext link, or with tickets off). A link
    /// resumed from the address its ticket was issued to gets none: the device resumes
    /// again with the ticket it has until that expires (a new one would keep its expiry
    /// anyway, and cost ~116 bytes, its TICKET frame, of every resumed login with a
    /// 5-character device id). From another address it gets a new one with the same
    /// expiry, so the ticket, sent in clear, never links one device's links across
    /// networks. `Err`: the link resumed with a ticket issued to another user or device
    /// than the token's — refuse the login.
    fn logged_in(&self, user_id: u64, device_id: &str, peer: &str) -> Result<(), &'static str> {
        let lifetime_ms = self.gw.cfg.ticket_lifetime_secs.saturating_mul(1000);
        let mut st = self.state.lock();
        let State::Answer {
            pending: Some(pending),
            ticket,
            ..
        } = &mut *st
        else {
            return Ok(());
        };
        let now = now_ms();
        let net = resume::network_tag(peer);
        let expires_ms = match pending {
            Pending::Noise(_) => now.saturating_add(lifetime_ms),
            Pending::Resume(r) => {
                if r.ticket.user_id != user_id || r.ticket.device_id != device_id {
                    return Err("the resumption ticket is not this device's");
                }
                if r.ticket.net == net {
                    return Ok(());
                }
                r.ticket.expires_ms.min(now.saturating_add(lifetime_ms))
            }
        };
        if lifetime_ms == 0 || expires_ms <= now {
            return Ok(());
        }
        let body = self.gw.tickets.fresh(user_id, device_id, expires_ms, net);
        *ticket = self.gw.tickets.seal(&body).map(|sealed| {
            Box::new(v1::Resumption {
                ticket: sealed.into(),
                secret: bytes::Bytes::copy_from_slice(&body.secret),
                expires_ms: i64::try_from(expires_ms).unwrap_or(i64::MAX),
            })
        });
        Ok(())
    }

    fn login_protocol(&self, version: u32) {
        if version >= 2 && self.inner.compact_records() {
            if let State::Answer { compact, .. } = &mut *self.state.lock() {
                *compact = true;
            }
        }
    }

    fn origin(&self) -> ferry_proto::bus::Origin {
        self.inner.origin()
    }

    fn close(&mut self, end: End) -> impl Future<Output = ()> + Send + '_ {
        self.inner.close(end)
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.state.lock();
        if let State::Held {
            wait,
            outcome: outcome @ None,
            ..
        } = &mut *st
        {
            if let Poll::Ready(r) = wait.as_mut().poll(cx) {
                *outcome = Some(r);
                return Poll::Ready(Ok(()));
            }
            // Held: the client's own bytes (it gave up, or sent what it must not) still
            // end the wait.
        }
        drop(st);
        self.inner.poll_readable(cx)
    }

    fn read_into(&self, partial: &mut BytesMut) -> io::Result<bool> {
        let mut st = self.state.lock();
        match &mut *st {
            State::Plain => self.inner.read_into(partial),
            State::Refused => Ok(false),
            State::Sniff(buf) => {
                let mut buf = std::mem::take(buf);
                let more = self.inner.read_into(&mut buf)?;
                let r = self.sniff(&mut st, &mut buf, more, partial);
                if let State::Sniff(keep) = &mut *st {
                    *keep = buf;
                }
                r
            }
            State::Held { outcome, .. } if outcome.is_some() => {
                // Admitted (a slot) or held out (the refusal).
                match std::mem::replace(&mut *st, State::Refused) {
                    State::Held {
                        hello,
                        outcome: Some(Ok(ready)),
                        ..
                    } => self.handshake(&mut st, hello, ready, partial),
                    State::Held {
                        outcome: Some(Err(e)),
                        ..
                    } => Err(e),
                    _ => Ok(false),
                }
            }
            State::Held { .. } | State::Answer { .. } => {
                let mut early = BytesMut::new();
                let more = self.inner.read_into(&mut early)?;
                if early.is_empty() {
                    return Ok(more);
                }
                *st = State::Refused;
                Err(refusal(
                    ErrorCode::BadRequest,
                    0,
                    "bytes after the HELLO before its answer",
                ))
            }
            State::Open { channel, wire } => {
                let more = self.inner.read_into(wire)?;
                let opened = channel.open(wire, partial);
                if wire.is_empty() {
                    // Give the allocation back: idle links hold no buffer.
                    *wire = BytesMut::new();
                }
                opened.map_err(bad_bytes)?;
                Ok(more)
            }
        }
    }

    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        let key_work = self.gw.key_work.threaded();
        let sealed: io::Result<Sealed> = (|| {
            let st = self.state.get_mut();
            match st {
                State::Answer {
                    pending,
                    ticket,
                    compact,
                    ..
                } => {
                    let Some(hs) = pending.take() else {
                        return Err(io::Error::other("handshake answered twice"));
                    };
                    let with_ticket = ticket.take().map(|t| resume::with_ticket(&t, buf));
                    let payload = with_ticket.as_deref().unwrap_or(buf);
                    let mut out = BytesMut::new();
                    let mut channel = match hs {
                        // The answer's key work (a key pair, two agreements) on the
                        // key-work threads, as the HELLO's was.
                        Pending::Noise(hs) if key_work => {
                            return Ok(Sealed::Respond(hs, payload.to_vec(), *compact))
                        }
                        Pending::Noise(hs) => hs.respond(payload, &mut out),
                        Pending::Resume(r) => r.respond(payload, &mut out),
                    }
                    .map_err(bad_bytes)?;
                    if *compact {
                        channel.set_compact();
                    }
                    *st = State::Open {
                        channel,
                        wire: BytesMut::new(),
                    };
                    Ok(Sealed::Out(out))
                }
                State::Open { channel, .. } => {
                    let mut out = BytesMut::with_capacity(buf.len() + secure::RECORD_OVERHEAD);
                    channel.seal(buf, &mut out).map_err(bad_bytes)?;
                    Ok(Sealed::Out(out))
                }
                State::Sniff(_) | State::Held { .. } | State::Plain | State::Refused => {
                    Ok(Sealed::Plain)
                }
            }
        })();
        async move {
            let out = match sealed? {
                Sealed::Out(out) => out,
                Sealed::Plain => return self.inner.write_all(buf).await,
                Sealed::Respond(hs, payload, compact) => {
                    let (mut channel, out) = self
                        .gw
                        .key_work
                        .run(move || {
                            let mut out = BytesMut::new();
                            hs.respond(&payload, &mut out).map(|c| (c, out))
                        })
                        .await?
                        .map_err(bad_bytes)?;
                    if compact {
                        channel.set_compact();
                    }
                    // Its slot (in the answering state until now) is given back here.
                    *self.state.get_mut() = State::Open {
                        channel,
                        wire: BytesMut::new(),
                    };
                    out
                }
            };
            self.inner.write_all(&out).await
        }
    }
}

/// What a write becomes on an encrypted link.
enum Sealed {
    /// These bytes go out instead.
    Out(BytesMut),
    /// The bytes go out as they are (plaintext, or a refusal before any key).
    Plain,
    /// The full handshake's answer, its key work still to do: the handshake, the
    /// answer's payload, and whether the records after it are compact.
    Respond(Box<ServerHandshake>, Vec<u8>, bool),
}

/// How far a sealed short-link request's clock may be from ours.
pub const SKEW_MS: u64 = 120_000;
/// How far a RESUME hello's clock may be from ours (further: a full handshake).
pub const RESUME_SKEW_MS: u64 = 60_000;
/// Client nonces one generation of the resumption replay cache holds at most (8 bytes
/// each): beyond it resumptions are refused and clients do full handshakes. Just under
/// 7/8 of 2^22, so a full generation's table is 2^22 slots of 9 bytes (~38 MB); it
/// takes ~29 000 resumptions/s sustained for two minutes to fill one.
const NONCES_PER_GENERATION: usize = 3_600_000;
/// Request ids remembered at most (a flood beyond it is refused, not remembered).
const REPLAY_MAX: usize = 1_000_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The ids of the sealed short-link requests seen within the accepted clock window:
/// a request seen before is a replay.
#[derive(Default)]
pub(crate) struct ReplayCache {
    inner: Mutex<ReplayInner>,
}

#[derive(Default)]
struct ReplayInner {
    /// Request id (its ephemeral key, first 16 bytes) → when it may be forgotten.
    seen: std::collections::HashMap<[u8; 16], u64>,
    pruned_ms: u64,
}

impl ReplayCache {
    /// Remembers `id`; false when it was seen before (or the cache is full).
    fn admit(&self, id: &[u8; 32], sent_ms: u64, now: u64) -> bool {
        let mut key = [0u8; 16];
        key.copy_from_slice(&id[..16]);
        let mut c = self.inner.lock();
        if now >= c.pruned_ms + 1_000 {
            c.seen.retain(|_, until| *until > now);
            c.pruned_ms = now;
        }
        if c.seen.len() >= REPLAY_MAX || c.seen.contains_key(&key) {
            return false;
        }
        c.seen.insert(key, sent_ms + SKEW_MS + 1_000);
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().seen.len()
    }
}

/// The client nonces of the RESUME hellos seen lately: a nonce seen before is a replay.
///
/// Two generations of 64-bit nonce prefixes: new nonces go into the current one, which
/// becomes the previous one every `2 × RESUME_SKEW_MS`, when the old previous one is
/// dropped whole (no per-entry pruning). So a nonce is remembered at least as long as
/// its hello passes the clock check. A false "replay" (two random nonces sharing 64
/// bits) costs that client a full handshake, nothing more.
#[derive(Default)]
pub(crate) struct NonceCache {
    inner: Mutex<NonceGens>,
}

#[derive(Default)]
struct NonceGens {
    current: std::collections::HashSet<u64>,
    previous: std::collections::HashSet<u64>,
    /// When `current` started (unix ms).
    since_ms: u64,
}

impl NonceCache {
    /// Remembers `nonce`; false when it was seen before (or the cache is full).
    pub(crate) fn admit(&self, nonce: &[u8; ferry_proto::resume::NONCE_LEN], now: u64) -> bool {
        let mut id = [0u8; 8];
        id.copy_from_slice(&nonce[..8]);
        let id = u64::from_le_bytes(id);
        let mut g = self.inner.lock();
        let generation = 2 * RESUME_SKEW_MS;
        if now >= g.since_ms.saturating_add(generation) {
            g.previous = if now >= g.since_ms.saturating_add(2 * generation) {
                Default::default()
            } else {
                std::mem::take(&mut g.current)
            };
            g.current.clear();
            g.since_ms = now;
        }
        if g.current.len() >= NONCES_PER_GENERATION || g.previous.contains(&id) {
            return false;
        }
        g.current.insert(id)
    }
}

/// Opens a sealed short-link request: the plain request, or the code and message to
/// refuse it with.
pub(crate) fn open_short(
    key: &StaticKey,
    replay: &ReplayCache,
    body: &[u8],
) -> Result<OpenedRequest, (ErrorCode, String)> {
    let req = sealed::open_request(key, body).map_err(|e| {
        (
            ErrorCode::BadRequest,
            format!("sealed request does not open ({e}); is the client's server key ours?"),
        )
    })?;
    let now = now_ms();
    if req.sent_ms.abs_diff(now) > SKEW_MS {
        return Err((
            ErrorCode::BadRequest,
            format!(
                "sealed request's clock is {} s off ours (at most {} s)",
                req.sent_ms.abs_diff(now) / 1000,
                SKEW_MS / 1000
            ),
        ));
    }
    if !replay.admit(&req.id, req.sent_ms, now) {
        return Err((
            ErrorCode::BadRequest,
            "sealed request replayed (or too many in flight); seal a fresh one".into(),
        ));
    }
    Ok(req)
}

/// Seals an answer body to the request's reply key.
pub(crate) fn seal_short(reply_to: &[u8; 32], body: &[u8]) -> Result<Vec<u8>, SecureError> {
    sealed::seal_response(reply_to, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_admitted_once_and_forgotten_after_the_window() {
        let c = ReplayCache::default();
        let id = [9u8; 32];
        assert!(c.admit(&id, 1_000_000, 1_000_000));
        assert!(!c.admit(&id, 1_000_000, 1_000_500));
        assert!(c.admit(&[8u8; 32], 1_000_000, 1_000_600));
        assert_eq!(c.len(), 2);
        // Past the window both are pruned (a replay that late fails the clock check).
        assert!(c.admit(&id, 1_000_000 + 2 * SKEW_MS, 1_000_000 + 2 * SKEW_MS));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_resume_nonce_is_admitted_once_and_forgotten_after_two_generations() {
        let c = NonceCache::default();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let t0 = 1_000_000_000;
        assert!(c.admit(&a, t0));
        assert!(!c.admit(&a, t0 + 1));
        // Into the previous generation: still refused.
        let g = 2 * RESUME_SKEW_MS;
        assert!(c.admit(&b, t0 + g));
        assert!(!c.admit(&a, t0 + g + 1));
        assert!(!c.admit(&b, t0 + g + 2));
        // Two generations on, `a` is forgotten (its hello fails the clock check by then).
        assert!(c.admit(&a, t0 + 2 * g));
        assert!(!c.admit(&b, t0 + 2 * g + 1));
        // A long pause forgets everything.
        assert!(c.admit(&b, t0 + 10 * g));
    }

    #[test]
    fn an_idle_secured_link_stays_small() {
        // What an encrypted link adds to a plain one while idle: the cipher states.
        let size = std::mem::size_of::<Secured<tokio::net::TcpStream>>()
            - std::mem::size_of::<tokio::net::TcpStream>();
        assert!(size <= 256, "{size} bytes");
    }

    #[test]
    fn refusals_carry_their_code_and_request_id() {
        let e = refusal(ErrorCode::PermissionDenied, 7, "no");
        assert_eq!(refused(&e), (ErrorCode::PermissionDenied, 7));
        let big = FrameError::TooLarge {
            len: 1 << 20,
            max: 65_536,
            req_id: 9,
        };
        let e = io::Error::new(io::ErrorKind::InvalidData, big);
        assert_eq!(refused(&e), (ErrorCode::TooLarge, 9));
        let e = bad_bytes(SecureError::NotSealed {
            got: 0x03,
            req_id: 4,
        });
        assert_eq!(refused(&e), (ErrorCode::BadRequest, 4));
        assert_eq!(
            refused(&bad_bytes(SecureError::Decrypt)),
            (ErrorCode::BadRequest, 0)
        );
    }

    fn gateway(max_handshakes: usize, handshake_hold_ms: u64) -> Arc<Gateway> {
        let cfg = crate::GatewayConfig {
            max_handshakes,
            handshake_hold_ms,
            handshake_queue: 2,
            handshake_retry_after_ms: 250,
            ..Default::default()
        };
        Gateway::new(
            cfg,
            StaticKey::generate().unwrap(),
            ferry_bus::InProcBus::new(),
            tokio_util::sync::CancellationToken::new(),
        )
    }

    fn refusal_of(e: &io::Error) -> (ErrorCode, u32, u32) {
        let (code, id) = refused(e);
        (code, id, retry_after_ms(e))
    }

    fn now(a: io::Result<Admission>) -> HandshakeSlot {
        match a {
            Ok(Admission::Now(slot)) => slot,
            Ok(Admission::Hold(_)) => panic!("held"),
            Err(e) => panic!("refused: {e}"),
        }
    }

    fn held(a: io::Result<Admission>) -> Hold {
        match a {
            Ok(Admission::Hold(h)) => h,
            Ok(Admission::Now(_)) => panic!("admitted at once"),
            Err(e) => panic!("refused: {e}"),
        }
    }

    #[tokio::test]
    async fn without_a_waiting_room_handshakes_beyond_the_limit_are_refused_until_one_ends() {
        let gw = gateway(2, 0);
        let a = now(admit_handshake(&gw));
        let _b = now(admit_handshake(&gw));
        let e = admit_handshake(&gw).map(|_| ()).unwrap_err();
        assert_eq!(refusal_of(&e), (ErrorCode::Unavailable, 0, 250));
        assert_eq!(gw.stats.handshakes_refused_busy.load(Ordering::Relaxed), 1);
        // A refused one holds no place: the count is back at two.
        assert_eq!(gw.handshakes.load(Ordering::Relaxed), 2);
        drop(a);
        let _c = now(admit_handshake(&gw));
        assert_eq!(gw.handshakes.load(Ordering::Relaxed), 2);
        // 0: no limit.
        let free = gateway(0, 0);
        let all: Vec<_> = (0..1000).map(|_| now(admit_handshake(&free))).collect();
        assert_eq!(free.handshakes.load(Ordering::Relaxed), 1000);
        drop(all);
        assert_eq!(free.handshakes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn beyond_the_limit_handshakes_wait_their_turn_in_order_and_a_full_room_refuses() {
        let gw = gateway(1, 5_000);
        let a = now(admit_handshake(&gw));
        let first = held(admit_handshake(&gw));
        let second = held(admit_handshake(&gw));
        // The room (2) is full: the next one is refused at once, no key work.
        let e = admit_handshake(&gw).map(|_| ()).unwrap_err();
        assert_eq!(refusal_of(&e), (ErrorCode::Unavailable, 0, 250));
        assert_eq!(gw.stats.handshakes_held.load(Ordering::Relaxed), 2);
        let first = tokio::spawn(first);
        let second = tokio::spawn(second);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!first.is_finished() && !second.is_finished());
        // One place given back: the first in line has it, the second still waits.
        drop(a);
        let slot = first.await.unwrap().expect("its turn");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        assert_eq!(gw.held(), 1);
        drop(slot);
        let _slot = second.await.unwrap().expect("its turn");
        assert_eq!(gw.held(), 0);
        assert_eq!(gw.handshakes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_is_refused_with_a_retry_after() {
        let gw = gateway(1, 200);
        let _a = now(admit_handshake(&gw));
        let started = std::time::Instant::now();
        let e = held(admit_handshake(&gw)).await.map(|_| ()).unwrap_err();
        assert!(started.elapsed() >= std::time::Duration::from_millis(190));
        assert_eq!(refusal_of(&e), (ErrorCode::Unavailable, 0, 250));
        assert_eq!(gw.stats.handshakes_refused_busy.load(Ordering::Relaxed), 1);
        assert_eq!(gw.held(), 0);
        // A hold given up (its connection closed) gives its place back too.
        drop(held(admit_handshake(&gw)));
        assert_eq!(gw.held(), 0);
    }

    #[tokio::test]
    async fn while_logic_sheds_new_handshakes_wait_for_it_to_end() {
        // No waiting room: refused before key work, told to wait until logic's wait is
        // over.
        let gw = gateway(0, 0);
        gw.logic_shed(1_000);
        let e = admit_handshake(&gw).map(|_| ()).unwrap_err();
        let (code, id, retry) = refusal_of(&e);
        assert_eq!((code, id), (ErrorCode::Unavailable, 0));
        assert!(
            (250..=1_000).contains(&retry),
            "until logic's wait is over: {retry}"
        );
        assert_eq!(gw.stats.handshakes_refused_shed.load(Ordering::Relaxed), 1);
        assert_eq!(gw.handshakes.load(Ordering::Relaxed), 0);
        // With one: held until logic's wait (its own 250 ms when logic named none) is
        // over, then it goes on.
        let gw = gateway(0, 5_000);
        gw.logic_shed(0);
        let started = std::time::Instant::now();
        let _slot = held(admit_handshake(&gw)).await.expect("after the shed");
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(240)
                && waited < std::time::Duration::from_secs(2),
            "{waited:?}"
        );
        assert!(matches!(admit_handshake(&gw), Ok(Admission::Now(_))));
    }
}
