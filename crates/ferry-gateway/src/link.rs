//! One long link: login deadline, frame reading, heartbeats, forwarding and pushes.
//!
//! The link runs over a [`Transport`]: a TCP connection, or a long-poll session (the same
//! frames over HTTP, see `lp.rs`). Login, heartbeats, forwarding and pushes are this one
//! code for both; [`run`] is the one place a link starts on a transport, and there it is
//! wrapped in `secure::Secured`: the encrypted link (Noise IK handshake carrying the
//! LOGIN, then sealed records) or, when allowed, plaintext — the code below sees plain
//! frames either way.
//!
//! A link owns no read buffer while idle: bytes are read into a stack buffer and only a
//! partial frame is kept between reads. Everything one wake-up produces is written with
//! one write.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_bus::{BusRequest, LinkEvent};
use ferry_proto::frame::{encode_msg, encode_raw};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, error_body, Frame, FrameError, ProtoMessage};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::registry::Link;
use crate::secure::{self, Secured};
use crate::Gateway;

/// What a read produced.
enum Read {
    /// Frames (possibly none, when only part of one arrived).
    Frames(Vec<Frame>),
    /// The peer closed its side.
    Eof,
}

/// What a link runs over: something that delivers the client's bytes and takes the
/// server's. Implemented by `TcpStream` and by the long-poll session.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Waits until [`Transport::read_into`] may have something (bytes or the end).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Appends what has arrived to `partial` without waiting. `Ok(false)` at the end of
    /// the stream; `Ok(true)` otherwise (also when nothing was there after all).
    fn read_into(&self, partial: &mut BytesMut) -> io::Result<bool>;
    /// Writes all of `buf`.
    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
}

impl Transport for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    /// Kept out of the async code so the 8 KiB read buffer lives on the thread's stack,
    /// not in every connection's task.
    fn read_into(&self, partial: &mut BytesMut) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        match self.try_read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                partial.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        AsyncWriteExt::write_all(self, buf)
    }
}

/// Reads what the transport has without waiting, and cuts whole frames off it.
fn read_frames<T: Transport>(t: &T, partial: &mut BytesMut, max: usize) -> io::Result<Read> {
    if !t.read_into(partial)? {
        return Ok(Read::Eof);
    }
    let mut frames = Vec::new();
    loop {
        match Frame::parse(partial, max) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e @ FrameError::TooLarge { .. }) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }
    if partial.is_empty() {
        // Give the allocation back: idle links hold no buffer.
        *partial = BytesMut::new();
    }
    Ok(Read::Frames(frames))
}

fn error_frame(req_id: u32, code: ErrorCode, message: &str, out: &mut BytesMut) {
    encode_msg(cmd::ERROR, req_id, &error_body(code, message), out);
}

async fn write_out<T: Transport>(stream: &mut T, out: &mut BytesMut) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    if out.capacity() > 16 * 1024 {
        *out = BytesMut::new();
    }
    Ok(())
}

/// Runs a long link from its first byte to its close.
pub(crate) async fn run<T: Transport>(gw: Arc<Gateway>, stream: T, peer: String) {
    let mut stream = Secured::new(stream, gw.key.clone(), gw.cfg.allow_plaintext);
    let conn_id = gw.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("link", conn_id, user_id = tracing::field::Empty);
    async move {
        let mut partial = BytesMut::new();
        let Some((link, pending)) = login(&gw, &mut stream, &mut partial, conn_id, &peer).await
        else {
            return;
        };
        tracing::Span::current().record("user_id", link.user_id);
        gw.registry.add(link.clone());
        gw.stats.links.fetch_add(1, Ordering::Relaxed);
        let online = LinkEvent {
            gateway_id: gw.cfg.id.clone(),
            conn_id,
            user_id: link.user_id,
            device_id: link.device_id.to_string(),
            online: true,
            synckey: 0,
        };
        let _ = gw.bus.link_event(online).await;

        let reason = serve(&gw, &mut stream, &mut partial, &link, pending, &peer).await;
        tracing::debug!(reason, "link closed");

        gw.registry.remove(&link);
        gw.stats.links.fetch_sub(1, Ordering::Relaxed);
        let offline = LinkEvent {
            gateway_id: gw.cfg.id.clone(),
            conn_id,
            user_id: link.user_id,
            device_id: link.device_id.to_string(),
            online: false,
            synckey: link.synckey.load(Ordering::Relaxed),
        };
        let _ = gw.bus.link_event(offline).await;
    }
    .instrument(span)
    .await
}

/// Waits for the LOGIN frame (within the deadline) and has logic check it. Returns the
/// link and any frames that came in behind the login.
async fn login<T: Transport>(
    gw: &Gateway,
    stream: &mut T,
    partial: &mut BytesMut,
    conn_id: u64,
    peer: &str,
) -> Option<(Arc<Link>, Vec<Frame>)> {
    let deadline = Instant::now() + Duration::from_millis(gw.cfg.login_timeout_ms);
    let mut out = BytesMut::new();
    let mut frames = loop {
        let ready = tokio::select! {
            _ = gw.shutdown.cancelled() => return None,
            r = tokio::time::timeout_at(deadline, stream.readable()) => r,
        };
        if ready.is_err() {
            gw.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("no login before the deadline");
            return None;
        }
        match read_frames(&*stream, partial, gw.cfg.max_frame_bytes) {
            Ok(Read::Frames(f)) if f.is_empty() => continue,
            Ok(Read::Frames(f)) => break f,
            Ok(Read::Eof) => return None,
            Err(e) => {
                gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
                error_frame(0, secure::error_code(&e), &e.to_string(), &mut out);
                let _ = write_out(stream, &mut out).await;
                return None;
            }
        }
    };
    gw.stats
        .frames_in
        .fetch_add(frames.len() as u64, Ordering::Relaxed);
    let first = frames.remove(0);
    if first.cmd != cmd::LOGIN {
        gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
        error_frame(
            first.req_id,
            ErrorCode::NotLoggedIn,
            "the first frame must be LOGIN",
            &mut out,
        );
        let _ = write_out(stream, &mut out).await;
        return None;
    }
    let req = BusRequest {
        cmd: u32::from(cmd::LOGIN),
        body: first.body,
        gateway_id: gw.cfg.id.clone(),
        conn_id,
        peer: peer.to_owned(),
        idle_timeout_ms: gw.cfg.heartbeat_timeout_ms,
        ..Default::default()
    };
    let resp = match gw.bus.request(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "login could not reach logic");
            error_frame(
                first.req_id,
                ErrorCode::Unavailable,
                "service unavailable; try again",
                &mut out,
            );
            let _ = write_out(stream, &mut out).await;
            return None;
        }
    };
    encode_raw(resp.cmd as u8, first.req_id, &resp.body, &mut out);
    if resp.cmd == u32::from(cmd::ERROR) || resp.user_id == 0 {
        gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
        let _ = write_out(stream, &mut out).await;
        return None;
    }
    if write_out(stream, &mut out).await.is_err() {
        return None;
    }
    let link = Arc::new(Link::new(conn_id, resp.user_id, resp.device_id.into()));
    Some((link, frames))
}

/// The logged-in loop. Returns why the link ended.
async fn serve<T: Transport>(
    gw: &Gateway,
    stream: &mut T,
    partial: &mut BytesMut,
    link: &Arc<Link>,
    mut frames: Vec<Frame>,
    peer: &str,
) -> &'static str {
    let timeout = Duration::from_millis(gw.cfg.heartbeat_timeout_ms);
    let idle = tokio::time::sleep(timeout);
    tokio::pin!(idle);
    let mut out = BytesMut::new();
    loop {
        if !frames.is_empty() {
            gw.stats
                .frames_in
                .fetch_add(frames.len() as u64, Ordering::Relaxed);
            let mut close = false;
            for f in frames.drain(..) {
                if !handle(gw, link, f, &mut out, peer).await {
                    close = true;
                    break;
                }
            }
            // Pushes that queued while we were busy go out in the same write.
            let push_close = link.drain_into(&mut out);
            if write_out(stream, &mut out).await.is_err() {
                return "write failed";
            }
            if close {
                gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
                return "bad input";
            }
            if push_close {
                return "closed by server";
            }
        }
        tokio::select! {
            _ = gw.shutdown.cancelled() => {
                let kick = v1::Kick { code: ErrorCode::Unavailable as i32, reason: "server shutting down".into() };
                encode_msg(cmd::KICK, 0, &kick, &mut out);
                let _ = write_out(stream, &mut out).await;
                return "shutdown";
            }
            _ = &mut idle => {
                gw.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                return "heartbeat timeout";
            }
            r = stream.readable() => {
                if r.is_err() {
                    return "read failed";
                }
                match read_frames(&*stream, partial, gw.cfg.max_frame_bytes) {
                    Ok(Read::Frames(f)) => {
                        if !f.is_empty() {
                            idle.as_mut().reset(Instant::now() + timeout);
                        }
                        frames = f;
                    }
                    Ok(Read::Eof) => return "closed by peer",
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
                        error_frame(0, secure::error_code(&e), &e.to_string(), &mut out);
                        let _ = write_out(stream, &mut out).await;
                        return "bad bytes";
                    }
                    Err(_) => return "read failed",
                }
            }
            _ = link.wake.notified() => {
                let close = link.drain_into(&mut out);
                let n = out.len();
                if write_out(stream, &mut out).await.is_err() {
                    return "write failed";
                }
                if n > 0 {
                    gw.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                }
                if close {
                    return "closed by server";
                }
            }
        }
    }
}

/// Handles one frame of a logged-in link, appending the answer to `out`. False when the
/// link must close (bad input).
async fn handle(gw: &Gateway, link: &Link, f: Frame, out: &mut BytesMut, peer: &str) -> bool {
    match f.cmd {
        cmd::HEARTBEAT => match v1::Heartbeat::decode(f.body) {
            Ok(hb) => {
                if hb.synckey > 0 {
                    link.synckey.store(hb.synckey, Ordering::Relaxed);
                }
                encode_raw(cmd::response(cmd::HEARTBEAT), f.req_id, &[], out);
                true
            }
            Err(_) => {
                error_frame(
                    f.req_id,
                    ErrorCode::BadRequest,
                    "undecodable heartbeat",
                    out,
                );
                false
            }
        },
        cmd::LOGIN => {
            error_frame(f.req_id, ErrorCode::BadRequest, "already logged in", out);
            true
        }
        c if c & cmd::RESPONSE != 0
            || c == cmd::ERROR
            || (cmd::NOTIFY..cmd::ERROR).contains(&c) =>
        {
            error_frame(
                f.req_id,
                ErrorCode::BadRequest,
                "not a request command",
                out,
            );
            false
        }
        c => {
            let req = BusRequest {
                cmd: u32::from(c),
                body: f.body,
                user_id: link.user_id,
                device_id: link.device_id.to_string(),
                gateway_id: gw.cfg.id.clone(),
                conn_id: link.conn_id,
                peer: peer.to_owned(),
                ..Default::default()
            };
            match gw.bus.request(req).await {
                Ok(resp) => {
                    let keep = resp.cmd != u32::from(cmd::ERROR) || !closes_link(&resp.body);
                    encode_raw(resp.cmd as u8, f.req_id, &resp.body, out);
                    gw.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                    keep
                }
                Err(e) => {
                    tracing::warn!(error = %e, "request could not reach logic");
                    error_frame(
                        f.req_id,
                        ErrorCode::Unavailable,
                        "service unavailable; try again",
                        out,
                    );
                    true
                }
            }
        }
    }
}

/// Errors after which the stream cannot be trusted (bad bytes) or the session is gone.
fn closes_link(error: &Bytes) -> bool {
    match v1::Error::decode(error.clone()) {
        Ok(e) => matches!(
            ErrorCode::try_from(e.code),
            Ok(ErrorCode::BadRequest | ErrorCode::Unauthorized | ErrorCode::Kicked)
        ),
        Err(_) => true,
    }
}
