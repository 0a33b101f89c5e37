//! The long link over HTTP long-poll, for networks where only HTTP passes.
//!
//! A long-poll session is a virtual link: the same frames, the same login, heartbeats,
//! forwarding and pushes (it runs `link::run` on an [`LpTransport`]), carried by plain
//! HTTP requests on any gateway port:
//!
//! - `POST /v1/lp/open` — body: the HELLO frame carrying the LOGIN (the encrypted link,
//!   docs/protocol.md 1.4), the RESUME frame carrying it (a resumed encrypted link,
//!   1.5), or a plain LOGIN frame (more frames may follow) where
//!   plaintext is allowed. Answers 200 with the session id in `Ferry-Session` and the
//!   handshake answer (or the plain login answer frames) as the body, or the login's
//!   `Error` with its status.
//! - `POST /v1/lp/send?sid=ID` — body: frames. 204.
//! - `POST /v1/lp/poll?sid=ID` — held until frames are queued or the hold (25 s) ends;
//!   200 with the frames (possibly none). 410 once the link has ended.
//! - `POST /v1/lp/close?sid=ID` — ends the session. 204.
//!
//! A session nobody polls or sends to for `lp_idle_ms` ends, as does one whose queued
//! output outgrows `lp_max_pending_bytes` (a poller too slow: it reconnects and syncs).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, Frame, ProtoMessage};
use http::{header, HeaderValue, StatusCode};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::http::{error, Peer, PROTOBUF};
use crate::link::{self, Transport};
use crate::Gateway;

/// The response header carrying the session id.
pub const SESSION_HEADER: &str = "ferry-session";
/// The response header telling how long a poll is held, in milliseconds.
pub const HOLD_HEADER: &str = "ferry-poll-hold-ms";
/// The media type of long-poll bodies: raw frames.
pub const FRAMES: &str = "application/x-ferry-frames";

/// The open sessions of one gateway.
#[derive(Default)]
pub(crate) struct LpSessions {
    map: DashMap<String, Arc<LpSession>>,
}

impl LpSessions {
    fn get(&self, sid: &str) -> Option<Arc<LpSession>> {
        self.map.get(sid).map(|s| s.clone())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// One long-poll session: the client's frames waiting for the link task, and the link's
/// output waiting for a poll.
pub(crate) struct LpSession {
    state: Mutex<LpState>,
    /// Wakes the link task: bytes came in, or the session ended.
    inbound: Notify,
    /// Wakes the poll: output is queued, the link ended, or a newer poll came.
    outbound: Notify,
    /// Milliseconds since `born` of the last poll or send: an idle session expires.
    touched_ms: AtomicU64,
    born: Instant,
    /// Each poll takes a number; a poll that is no longer the newest returns at once.
    poll_gen: AtomicU64,
    idle: Duration,
    max_pending: usize,
}

#[derive(Default)]
struct LpState {
    inbound: BytesMut,
    outbound: BytesMut,
    /// The client closed the session, or it expired: the link sees the end of stream.
    client_gone: bool,
    /// The link has ended: polls get what is left, then 410.
    link_ended: bool,
}

impl LpSession {
    fn new(first: Bytes, idle: Duration, max_pending: usize) -> Self {
        LpSession {
            state: Mutex::new(LpState {
                inbound: BytesMut::from(&first[..]),
                ..Default::default()
            }),
            inbound: Notify::new(),
            outbound: Notify::new(),
            touched_ms: AtomicU64::new(0),
            born: Instant::now(),
            poll_gen: AtomicU64::new(0),
            idle,
            max_pending,
        }
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.touched_ms.store(ms, Ordering::Relaxed);
    }

    fn expires_at(&self) -> Instant {
        self.born + Duration::from_millis(self.touched_ms.load(Ordering::Relaxed)) + self.idle
    }

    /// Queues client bytes for the link; false when too much is already waiting.
    fn push_inbound(&self, body: &[u8]) -> bool {
        let mut st = self.state.lock();
        if st.inbound.len() + body.len() > self.max_pending {
            return false;
        }
        st.inbound.extend_from_slice(body);
        drop(st);
        self.inbound.notify_one();
        true
    }

    fn end_by_client(&self) {
        self.state.lock().client_gone = true;
        self.inbound.notify_one();
    }

    fn end_link(&self) {
        self.state.lock().link_ended = true;
        self.outbound.notify_waiters();
    }

    /// Waits (until `deadline`) for output. `None`: the link has ended and everything it
    /// wrote was taken. `Some(bytes)`, possibly empty: what is queued.
    async fn take_output(&self, deadline: Instant, gen: u64, gw: &Gateway) -> Option<Bytes> {
        loop {
            let notified = self.outbound.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if !st.outbound.is_empty() {
                    let out = st.outbound.split().freeze();
                    if st.outbound.capacity() > 16 * 1024 {
                        st.outbound = BytesMut::new();
                    }
                    return Some(out);
                }
                if st.link_ended {
                    return None;
                }
            }
            if self.poll_gen.load(Ordering::Relaxed) != gen {
                return Some(Bytes::new());
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Some(Bytes::new()),
                _ = gw.shutdown.cancelled() => {
                    // The link writes its KICK on shutdown: give it a moment to land.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let out = self.state.lock().outbound.split().freeze();
                    return Some(out);
                }
            }
        }
    }
}

/// A wait for a session's input, boxed so the transport can keep it between polls.
type InputWait = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// The link side of a session.
pub(crate) struct LpTransport {
    session: Arc<LpSession>,
    /// The wait for input, kept between polls of the link's idle wait.
    waiting: Mutex<Option<InputWait>>,
}

impl LpTransport {
    pub(crate) fn new(session: Arc<LpSession>) -> Self {
        LpTransport {
            session,
            waiting: Mutex::new(None),
        }
    }
}

/// Resolves when the session has input for the link, or the client is gone (the session
/// idled past its expiry).
async fn input(s: Arc<LpSession>) -> io::Result<()> {
    loop {
        let notified = s.inbound.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = s.state.lock();
            if !st.inbound.is_empty() || st.client_gone {
                return Ok(());
            }
        }
        let expiry = s.expires_at();
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(expiry) => {
                if Instant::now() >= s.expires_at() {
                    tracing::debug!("long-poll session idle; ending it");
                    s.state.lock().client_gone = true;
                    return Ok(());
                }
            }
        }
    }
}

impl Transport for LpTransport {
    fn origin(&self) -> ferry_proto::bus::Origin {
        ferry_proto::bus::Origin::LongPoll
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut waiting = self.waiting.lock();
        let fut = waiting.get_or_insert_with(|| Box::pin(input(self.session.clone())));
        let r = fut.as_mut().poll(cx);
        if r.is_ready() {
            *waiting = None;
        }
        r
    }

    fn read_into(&self, partial: &mut BytesMut) -> io::Result<bool> {
        let mut st = self.session.state.lock();
        if st.inbound.is_empty() {
            return Ok(!st.client_gone);
        }
        if partial.is_empty() {
            std::mem::swap(partial, &mut st.inbound);
        } else {
            partial.extend_from_slice(&st.inbound);
            st.inbound.clear();
        }
        if st.inbound.capacity() > 16 * 1024 {
            st.inbound = BytesMut::new();
        }
        Ok(true)
    }

    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        let s = &self.session;
        let result = {
            let mut st = s.state.lock();
            if st.client_gone {
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "long-poll session closed",
                ))
            } else if st.outbound.len() + buf.len() > s.max_pending {
                Err(io::Error::other("long-poll output not collected; too slow"))
            } else {
                st.outbound.extend_from_slice(buf);
                Ok(())
            }
        };
        if result.is_ok() {
            s.outbound.notify_waiters();
        }
        std::future::ready(result)
    }
}

/// The `sid` parameter of a query string.
fn sid_of(uri: &http::Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("sid="))
        .filter(|s| !s.is_empty() && s.len() <= 64)
}

fn frames_response(sid: Option<&str>, hold_ms: u64, body: Bytes) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(FRAMES));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(sid) = sid.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(SESSION_HEADER, sid);
        h.insert(HOLD_HEADER, HeaderValue::from(hold_ms));
    }
    r
}

fn unknown_session() -> Response {
    error(ErrorCode::NotFound, "unknown or expired long-poll session")
}

fn gone() -> Response {
    let body = ferry_proto::error_body(ErrorCode::Unavailable, "the long-poll session has ended");
    let mut r = (StatusCode::GONE, Bytes::from(body.encode_to_vec())).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    r
}

async fn body_bytes(gw: &Gateway, body: Body) -> Result<Bytes, Response> {
    let limit = gw.cfg.max_http_body_bytes;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| error(ErrorCode::TooLarge, &format!("body over {limit} bytes")))
}

/// A fresh, unguessable session id.
fn new_sid() -> String {
    let raw: [u8; 16] = rand::random();
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn open(
    State(gw): State<Arc<Gateway>>,
    peer: Option<Extension<Peer>>,
    body: Body,
) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let body = match body_bytes(&gw, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // The body must start with a whole frame: the link code judges it as the first frame
    // of a TCP link (HELLO or RESUME, or LOGIN where plaintext is allowed), with the same
    // refusals.
    let whole = matches!(
        Frame::check(&body, gw.cfg.max_frame_bytes.max(65_535)),
        Ok(Some(_))
    );
    if !whole {
        gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
        return error(
            ErrorCode::BadRequest,
            "the body must start with a whole HELLO, RESUME or LOGIN frame",
        );
    }
    let Ok(permit) = gw.limit.clone().try_acquire_owned() else {
        return error(ErrorCode::Unavailable, "too many connections; try later");
    };
    let sid = new_sid();
    let session = Arc::new(LpSession::new(
        body,
        Duration::from_millis(gw.cfg.lp_idle_ms),
        gw.cfg.lp_max_pending_bytes,
    ));
    session.touch();
    gw.lp.map.insert(sid.clone(), session.clone());
    let peer = peer.map(|p| p.0 .0.to_string()).unwrap_or_default();
    {
        let (gw2, session, sid) = (gw.clone(), session.clone(), sid.clone());
        gw.tasks.spawn(async move {
            gw2.stats.connections.fetch_add(1, Ordering::Relaxed);
            link::run(gw2.clone(), LpTransport::new(session.clone()), peer).await;
            session.end_link();
            gw2.stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            // Leave the session for a last poll to collect what the link wrote (a KICK,
            // an error), then forget it.
            let grace = Duration::from_millis(gw2.cfg.lp_poll_hold_ms.min(5_000));
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = gw2.shutdown.cancelled() => {}
            }
            gw2.lp.map.remove(&sid);
        });
    }
    // The login answer.
    let deadline = Instant::now() + Duration::from_millis(gw.cfg.login_timeout_ms + 5_000);
    let gen = session.poll_gen.fetch_add(1, Ordering::Relaxed) + 1;
    let out = session.take_output(deadline, gen, &gw).await;
    let out = match out {
        Some(b) if !b.is_empty() => b,
        _ => {
            session.end_by_client();
            gw.lp.map.remove(&sid);
            return error(ErrorCode::Unavailable, "no login answer; try again");
        }
    };
    let mut parse = BytesMut::from(&out[..]);
    match Frame::parse(&mut parse, ferry_proto::MAX_BODY_LEN) {
        // The handshake answer carries the login answer sealed inside: a refused login
        // shows only to the client, and its link ends after the answer.
        Ok(Some(f))
            if f.cmd == cmd::response(cmd::LOGIN)
                || f.cmd == cmd::HELLO | 0x80
                || f.cmd == cmd::RESUME | 0x80 =>
        {
            frames_response(Some(&sid), gw.cfg.lp_poll_hold_ms, out)
        }
        Ok(Some(f)) if f.cmd == cmd::ERROR => {
            gw.lp.map.remove(&sid);
            let e = v1::Error::decode(f.body.clone()).unwrap_or_default();
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
            let mut r = (crate::http::status_for(code), f.body).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
            r
        }
        _ => {
            gw.lp.map.remove(&sid);
            error(ErrorCode::Internal, "unexpected login answer")
        }
    }
}

pub(crate) async fn send(State(gw): State<Arc<Gateway>>, uri: http::Uri, body: Body) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let Some(session) = sid_of(&uri).and_then(|sid| gw.lp.get(sid)) else {
        return unknown_session();
    };
    let body = match body_bytes(&gw, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    session.touch();
    if session.state.lock().link_ended {
        return gone();
    }
    if !session.push_inbound(&body) {
        return error(ErrorCode::RateLimited, "too many frames waiting; slow down");
    }
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn poll(State(gw): State<Arc<Gateway>>, uri: http::Uri) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let Some(sid) = sid_of(&uri) else {
        return unknown_session();
    };
    let Some(session) = gw.lp.get(sid) else {
        return unknown_session();
    };
    session.touch();
    let gen = session.poll_gen.fetch_add(1, Ordering::Relaxed) + 1;
    // A poll still held for this session (its client gave up on it) returns now.
    session.outbound.notify_waiters();
    let deadline = Instant::now() + Duration::from_millis(gw.cfg.lp_poll_hold_ms);
    let out = session.take_output(deadline, gen, &gw).await;
    session.touch();
    match out {
        Some(b) => frames_response(None, gw.cfg.lp_poll_hold_ms, b),
        None => {
            gw.lp.map.remove(sid);
            gone()
        }
    }
}

pub(crate) async fn close(State(gw): State<Arc<Gateway>>, uri: http::Uri) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let Some(session) = sid_of(&uri).and_then(|sid| gw.lp.get(sid)) else {
        return unknown_session();
    };
    session.end_by_client();
    StatusCode::NO_CONTENT.into_response()
}
