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

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_bus::{BusRequest, LinkEvent};
use ferry_proto::bus::Origin;
use ferry_proto::frame::{encode_msg, encode_raw};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, error_body, Frame, FrameError, ProtoMessage};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::registry::{Link, SHUTDOWN, TIMED_OUT};
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
    /// Polls until [`Transport::read_into`] may have something (bytes or the end).
    /// Polled from the link's idle wait, which keeps no future of its own: a transport
    /// that needs one keeps it inside itself.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Appends what has arrived to `partial` without waiting. `Ok(false)` at the end of
    /// the stream; `Ok(true)` otherwise (also when nothing was there after all).
    fn read_into(&self, partial: &mut BytesMut) -> io::Result<bool>;
    /// Writes what can be written at once, without waiting; `WouldBlock` when nothing
    /// can. The default never writes directly: every write goes to `write_all`.
    fn try_write_now(&self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    /// Writes all of `buf`.
    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
    /// After logic accepted the LOGIN for this user and device, before the answer is
    /// written: a transport that hands out session resumption tickets (the encrypted
    /// link, see `secure::Secured`) puts one beside the answer, in its own handshake
    /// answer; the login answer itself goes out as logic wrote it. `Err`: refuse the
    /// login with this message.
    fn logged_in(&self, _user_id: u64, _device_id: &str, _peer: &str) -> Result<(), &'static str> {
        Ok(())
    }
    /// The protocol version the login agreed (`BusResponse.link_protocol`, the answer's
    /// `LoginResp.protocol`), told before the answer is written: from version 2 the encrypted link over TCP switches to
    /// compact records once the answer is out (docs/protocol.md §1.6).
    fn login_protocol(&self, _version: u32) {}
    /// Whether the transport carries a byte stream that protocol 2's compact records
    /// apply to (TCP); WebSocket messages and long-poll bodies keep the §1.4 records.
    fn compact_records(&self) -> bool {
        false
    }
    /// What logic is told the link's requests come from.
    fn origin(&self) -> Origin {
        Origin::LongLink
    }
    /// The gateway address the client reached, asked only for an `ENDPOINTS` request
    /// (logic builds the default endpoint list from it, docs/protocol.md §7.2); kept by
    /// no link. `None` where the transport has no socket of its own.
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
    /// Ends the connection after the link's last write; `end` says why (a WebSocket
    /// tells the client in its Close frame). The default does nothing (the transport
    /// ends when dropped).
    fn close(&mut self, _end: End) -> impl Future<Output = ()> + Send + '_ {
        std::future::ready(())
    }
}

/// Why a link ended, for a transport that tells the client (WebSocket's close codes,
/// docs/protocol.md §7.1a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client closed its side.
    Peer,
    /// A read or a write failed: nothing more can be said.
    Broken,
    /// Refused after an `ERROR` frame; `too_large` when it was `TOO_LARGE`.
    Refused { too_large: bool },
    /// After a `KICK`, or a push that closed the link (a slow consumer).
    Kicked,
    /// The gateway shuts down.
    Shutdown,
    /// Dropped for silence: no login in time, no heartbeat.
    Silent,
}

impl End {
    fn refused(code: ErrorCode) -> End {
        End::Refused {
            too_large: code == ErrorCode::TooLarge,
        }
    }
}

/// How long a closing connection's unread input is read and thrown away at most.
const LINGER: Duration = Duration::from_secs(1);
/// Bytes of a closing connection's input thrown away at most.
const LINGER_BYTES: usize = 64 * 1024;

/// Closes a TCP connection the way that lets its last words arrive: FIN after what was
/// written, then what the client still sends (or had sent, unread) is read and thrown
/// away until it closes too, for at most [`LINGER`] and [`LINGER_BYTES`]. Closing a
/// socket with unread input makes the kernel send a reset, which can destroy the
/// refusal (an ERROR, a KICK) the client has not read yet.
pub(crate) async fn linger_close(stream: &mut TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        if AsyncWriteExt::shutdown(stream).await.is_err() {
            return;
        }
        let mut left = LINGER_BYTES;
        while left > 0 {
            if stream.readable().await.is_err() {
                return;
            }
            let mut partial = BytesMut::new();
            match stream.read_into(&mut partial) {
                Ok(true) => left = left.saturating_sub(partial.len()),
                Ok(false) | Err(_) => return,
            }
        }
    })
    .await;
}

impl Transport for TcpStream {
    fn compact_records(&self) -> bool {
        true
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    /// Kept out of the async code so the 8 KiB read buffer lives on the thread's stack,
    /// not in every connection's task.
    fn read_into(&self, partial: &mut BytesMut) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        match read_some(self, &mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                partial.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn try_write_now(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }

    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        AsyncWriteExt::write_all(self, buf)
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        TcpStream::local_addr(self).ok()
    }

    fn close(&mut self, _end: End) -> impl Future<Output = ()> + Send + '_ {
        linger_close(self)
    }
}

/// `try_read`, but a read that did not fill `buf` also clears the socket's readiness:
/// the kernel had no more, so the next wait goes straight to the reactor instead of
/// first reading once more only to be told `WouldBlock` (one `recvfrom` per message in
/// an open-loop `ferry bench p2p`: half of the gateway's reads). Safe with epoll's edge
/// trigger, as tokio's own `poll_read` does the same: the readiness cleared is the one
/// seen before the read, so bytes that arrive after it raise it again.
pub(crate) fn read_some(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let len = buf.len();
    let mut got = 0;
    let r = tcp.try_io(tokio::io::Interest::READABLE, || {
        let n = rustix::io::read(tcp, &mut *buf).map_err(io::Error::from)?;
        got = n;
        if n > 0 && n < len {
            // Drained: report "would block" so tokio clears the readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// Waits until the transport may be read (for the login, which has no idle wait).
fn readable<T: Transport>(t: &T) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| t.poll_readable(cx))
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
    // Most writes fit the socket's buffer at once: done without an await. Only a full
    // socket waits, in a boxed future, so the link's task stays small.
    if !try_write_all(stream, out)? {
        Box::pin(stream.write_all(out)).await?;
    }
    out.clear();
    if out.capacity() > 16 * 1024 {
        *out = BytesMut::new();
    }
    Ok(())
}

/// Writes what the socket takes now; true when all of `out` went.
fn try_write_all<T: Transport>(stream: &T, out: &mut BytesMut) -> io::Result<bool> {
    while !out.is_empty() {
        match stream.try_write_now(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = out.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A link's connection, boxed once: the task's future then holds one pointer to it
/// instead of copies of each part in every state of the state machine.
struct Conn<T> {
    gw: Arc<Gateway>,
    stream: T,
    peer: String,
    /// A frame not yet whole (empty, and holding no allocation, while idle).
    partial: BytesMut,
    conn_id: u64,
}

/// Runs a long link from its first byte to its close.
pub(crate) fn run<T: Transport>(
    gw: Arc<Gateway>,
    stream: T,
    peer: String,
) -> impl Future<Output = ()> + Send {
    let conn_id = gw.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("link", conn_id, user_id = tracing::field::Empty);
    let stream = Secured::new(stream, gw.clone());
    let conn = Box::new(Conn {
        gw,
        stream,
        peer,
        partial: BytesMut::new(),
        conn_id,
    });
    drive(conn).instrument(span)
}

async fn drive<T: Transport>(mut conn: Box<Conn<T>>) {
    let end = live(&mut conn).await;
    Box::pin(conn.stream.close(end)).await;
}

/// A link from its first byte to the end of its last write; why it ended.
async fn live<T: Transport>(c: &mut Conn<T>) -> End {
    let (gw, conn_id) = (c.gw.clone(), c.conn_id);
    // The phases around the idle loop are boxed: a future is as large as its largest
    // state, and only the loop's state should live as long as the link.
    let (link, pending) =
        match Box::pin(login(&gw, &mut c.stream, &mut c.partial, conn_id, &c.peer)).await {
            Ok(l) => l,
            Err(end) => return end,
        };
    tracing::Span::current().record("user_id", link.user_id);
    gw.registry.add(link.clone());
    if gw.shutdown.is_cancelled() {
        // Registered after the sweeper told every link: tell this one too.
        link.signal(SHUTDOWN);
    }
    gw.stats.links.fetch_add(1, Ordering::Relaxed);
    let online = LinkEvent {
        gateway_id: gw.cfg.id.clone(),
        conn_id,
        user_id: link.user_id,
        device_id: link.device_id.to_string(),
        online: true,
        synckey: 0,
    };
    let _ = Box::pin(gw.bus.link_event(online)).await;

    let end = serve(c, &link, pending).await;
    tracing::debug!(?end, "link closed");

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
    let _ = Box::pin(gw.bus.link_event(offline)).await;
    end
}

/// Waits for the LOGIN frame (within the deadline) and has logic check it. Returns the
/// link and any frames that came in behind the login.
async fn login<T: Transport>(
    gw: &Gateway,
    stream: &mut T,
    partial: &mut BytesMut,
    conn_id: u64,
    peer: &str,
) -> Result<(Arc<Link>, Vec<Frame>), End> {
    let deadline = Instant::now() + Duration::from_millis(gw.cfg.login_timeout_ms);
    let mut out = BytesMut::new();
    let mut frames = loop {
        let ready = tokio::select! {
            _ = gw.shutdown.cancelled() => return Err(End::Shutdown),
            r = tokio::time::timeout_at(deadline, readable(&*stream)) => r,
        };
        if ready.is_err() {
            gw.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("no login before the deadline");
            return Err(End::Silent);
        }
        match read_frames(&*stream, partial, gw.cfg.max_frame_bytes) {
            Ok(Read::Frames(f)) if f.is_empty() => continue,
            Ok(Read::Frames(f)) => break f,
            Ok(Read::Eof) => return Err(End::Peer),
            Err(e) if e.kind() != io::ErrorKind::InvalidData => return Err(End::Broken),
            Err(e) => {
                let (code, req_id) = secure::refused(&e);
                let retry_after_ms = secure::retry_after_ms(&e);
                if retry_after_ms == 0 {
                    gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
                }
                let mut body = error_body(code, e.to_string());
                body.retry_after_ms = retry_after_ms;
                encode_msg(cmd::ERROR, req_id, &body, &mut out);
                let _ = write_out(stream, &mut out).await;
                return Err(End::refused(code));
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
        return Err(End::refused(ErrorCode::BadRequest));
    }
    if first.req_id == 0 {
        // Its answer would look like a push.
        gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
        error_frame(0, ErrorCode::BadRequest, ZERO_ID, &mut out);
        let _ = write_out(stream, &mut out).await;
        return Err(End::refused(ErrorCode::BadRequest));
    }
    let login_body = first.body.clone();
    let req = BusRequest {
        cmd: u32::from(cmd::LOGIN),
        body: first.body,
        gateway_id: gw.cfg.id.clone(),
        conn_id,
        peer: peer.to_owned(),
        idle_timeout_ms: gw.cfg.heartbeat_timeout_ms,
        origin: stream.origin() as i32,
        link_protocol: ferry_proto::PROTOCOL_VERSION,
        ..Default::default()
    };
    let resp = match gw.bus.request(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "login could not reach logic");
            // With when to come back, as logic's own shedding says it: the client waits
            // that long instead of racing back at once or growing its back-off.
            let mut body = error_body(ErrorCode::Unavailable, "service unavailable; try again");
            body.retry_after_ms = gw.logic_shed(e.retry_after_ms());
            encode_msg(cmd::ERROR, first.req_id, &body, &mut out);
            let _ = write_out(stream, &mut out).await;
            return Err(End::refused(ErrorCode::BadRequest));
        }
    };
    if resp.cmd == u32::from(cmd::response(cmd::LOGIN)) && resp.user_id != 0 {
        if let Err(why) = stream.logged_in(resp.user_id, &resp.device_id, peer) {
            gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
            error_frame(first.req_id, ErrorCode::Unauthorized, why, &mut out);
            let _ = write_out(stream, &mut out).await;
            return Err(End::refused(ErrorCode::BadRequest));
        }
        stream.login_protocol(resp.link_protocol);
    }
    encode_raw(resp.cmd as u8, first.req_id, &resp.body, &mut out);
    if resp.cmd == u32::from(cmd::ERROR) {
        // Logic sheds new sessions (overloaded): new handshakes are refused for a while
        // before their key work (secure.rs, admit_handshake).
        if let Ok(e) = v1::Error::decode(resp.body.clone()) {
            if e.code == ErrorCode::Unavailable as i32 {
                gw.logic_shed(e.retry_after_ms);
            }
        }
    }
    if resp.cmd == u32::from(cmd::ERROR) || resp.user_id == 0 {
        gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
        let _ = write_out(stream, &mut out).await;
        return Err(End::refused(ErrorCode::BadRequest));
    }
    if write_out(stream, &mut out).await.is_err() {
        return Err(End::Broken);
    }
    let mut link = Link::new(conn_id, resp.user_id, resp.device_id.into(), gw.now_ms());
    // The device's synckey at login is its first acknowledgement (registry.rs).
    let asked = v1::LoginReq::decode(login_body).unwrap_or_default();
    link.synckey.store(asked.synckey, Ordering::Relaxed);
    link.echo_in_ack = asked.echo_in_ack;
    Ok((Arc::new(link), frames))
}

/// Requests of one link handled at once. Beyond this the link is not read until one
/// finishes: back-pressure onto the client's socket, and a bound on the memory one link
/// can tie up.
const MAX_IN_FLIGHT: usize = 32;

/// SENDs of one link sent to logic in one batch at most (the send lane).
pub(crate) const SEND_BATCH: usize = 32;

/// A request on its way through logic: resolves to the encoded answer(s), whether the
/// link may stay open after it, and whether it was the send lane's batch.
type Forwarded<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Answered> + Send + 'a>>;

/// What a forwarded request (or the send lane's batch) resolved to.
struct Answered {
    out: BytesMut,
    keep: bool,
    lane: bool,
}

/// The send lane of a link: its SENDs go to logic one batch at a time (up to
/// [`SEND_BATCH`], the next only after the previous is answered), so they are stored in
/// the order the client sent them whichever logic node takes each batch. Other requests
/// run beside it, concurrently.
#[derive(Default)]
pub(crate) struct Lane {
    queued: VecDeque<Frame>,
    /// A batch is with logic.
    busy: bool,
}

impl Lane {
    /// Queues a SEND.
    pub(crate) fn push(&mut self, f: Frame) {
        self.queued.push_back(f);
    }

    /// The next batch to send, if the lane is free and has one; marks it busy.
    pub(crate) fn next_batch(&mut self) -> Option<Vec<Frame>> {
        if self.busy || self.queued.is_empty() {
            return None;
        }
        self.busy = true;
        let n = self.queued.len().min(SEND_BATCH);
        Some(self.queued.drain(..n).collect())
    }

    /// The batch with logic was answered.
    pub(crate) fn done(&mut self) {
        self.busy = false;
    }

    pub(crate) fn len(&self) -> usize {
        self.queued.len()
    }

    pub(crate) fn is_idle(&self) -> bool {
        !self.busy && self.queued.is_empty()
    }
}

/// What a link holds only while it has work: dropped when the link goes quiet, so an
/// idle link's task is a few pointers.
#[derive(Default)]
struct Busy<'a> {
    /// Bytes to write.
    out: BytesMut,
    /// Frames read but not started yet (only while MAX_IN_FLIGHT are running).
    waiting: VecDeque<Frame>,
    /// Requests on their way through logic.
    in_flight: Option<FuturesUnordered<Forwarded<'a>>>,
    /// SENDs, in order.
    lane: Lane,
}

impl Busy<'_> {
    fn running(&self) -> usize {
        self.in_flight.as_ref().map_or(0, |s| s.len())
    }

    fn quiet(&self) -> bool {
        self.out.is_empty() && self.waiting.is_empty() && self.running() == 0 && self.lane.is_idle()
    }

    /// Requests taken off the socket and not answered yet (a batch counts once).
    fn held(&self) -> usize {
        self.running() + self.lane.len()
    }
}

/// The logged-in loop. Returns why the link ended.
///
/// Requests are handled concurrently (up to [`MAX_IN_FLIGHT`] per link) and answered as
/// they finish, matched by request id — except SENDs, which go through the link's send
/// [`Lane`]: a window of pipelined sends reaches logic as one batch (one store call),
/// and is stored in the order it was sent, on every topology. Other requests in flight
/// at once may be applied in either order.
///
/// While idle the loop waits in one small `poll_fn` on the socket's readiness and the
/// link's waker (pushes, the sweeper's timeout and shutdown flags): no timer, no
/// channel and no buffer per idle link.
async fn serve<'c, T: Transport>(
    c: &'c mut Conn<T>,
    link: &'c Arc<Link>,
    frames: Vec<Frame>,
) -> End {
    let Conn {
        gw,
        stream,
        peer,
        partial,
        ..
    } = c;
    let gw: &Gateway = gw;
    let peer: &str = peer;
    let origin = stream.origin();
    gw.stats
        .frames_in
        .fetch_add(frames.len() as u64, Ordering::Relaxed);
    let mut busy: Option<Box<Busy<'_>>> = (!frames.is_empty()).then(|| {
        Box::new(Busy {
            waiting: frames.into(),
            ..Default::default()
        })
    });
    let mut bad = false;
    loop {
        if let Some(b) = busy.as_mut() {
            // Start what may start; heartbeats and refusals are answered on the spot.
            while !bad && b.held() < MAX_IN_FLIGHT {
                let Some(f) = b.waiting.pop_front() else {
                    break;
                };
                match local(link, f, &mut b.out) {
                    Local::Answered => {}
                    Local::Bad => bad = true,
                    Local::Forward(f) if f.cmd == cmd::SEND => b.lane.push(f),
                    Local::Forward(f) => {
                        let local = if f.cmd == cmd::ENDPOINTS {
                            stream.local_addr()
                        } else {
                            None
                        };
                        b.in_flight
                            .get_or_insert_with(FuturesUnordered::new)
                            .push(Box::pin(forward(gw, link, f, peer, origin, local)))
                    }
                }
            }
            if !bad {
                if let Some(batch) = b.lane.next_batch() {
                    b.in_flight
                        .get_or_insert_with(FuturesUnordered::new)
                        .push(Box::pin(forward_sends(gw, link, batch, peer, origin)));
                }
            }
            if b.running() == 0 {
                b.in_flight = None;
            }
        }
        let mut close_after_write: Option<End> = None;
        let must_write = bad || busy.as_ref().is_some_and(|b| !b.out.is_empty());
        if !must_write {
            let may_read = busy
                .as_ref()
                .is_none_or(|b| b.waiting.is_empty() && b.held() < MAX_IN_FLIGHT);
            let in_flight = busy.as_mut().and_then(|b| b.in_flight.as_mut());
            match next_event(stream, link, in_flight, may_read).await {
                Event::Answer(a) => {
                    let b = busy.get_or_insert_with(Default::default);
                    b.out.extend_from_slice(&a.out);
                    bad |= !a.keep;
                    if a.lane {
                        // The lane's next batch starts at the top of the loop.
                        b.lane.done();
                    }
                }
                Event::Attention => {
                    let flags = link.flags.load(Ordering::Acquire);
                    if flags & SHUTDOWN != 0 {
                        let kick = v1::Kick {
                            code: ErrorCode::Unavailable as i32,
                            reason: "server shutting down".into(),
                        };
                        let b = busy.get_or_insert_with(Default::default);
                        encode_msg(cmd::KICK, 0, &kick, &mut b.out);
                        close_after_write = Some(End::Shutdown);
                    } else if flags & TIMED_OUT != 0 {
                        gw.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        return End::Silent;
                    }
                }
                Event::Readable(Err(_)) => return End::Broken,
                Event::Readable(Ok(())) => {
                    match read_frames(&*stream, partial, gw.cfg.max_frame_bytes) {
                        Ok(Read::Frames(f)) => {
                            if !f.is_empty() {
                                link.last_rx_ms.store(gw.now_ms(), Ordering::Relaxed);
                                gw.stats
                                    .frames_in
                                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                                busy.get_or_insert_with(Default::default).waiting.extend(f);
                            }
                            continue;
                        }
                        Ok(Read::Eof) => return End::Peer,
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
                            let mut out = BytesMut::new();
                            let (code, req_id) = secure::refused(&e);
                            error_frame(req_id, code, &e.to_string(), &mut out);
                            let _ = Box::pin(write_out(stream, &mut out)).await;
                            return End::refused(code);
                        }
                        Err(_) => return End::Broken,
                    }
                }
            }
        }
        // Answers that are ready now, and pushes that queued, go out in one write.
        let b = busy.get_or_insert_with(Default::default);
        if let Some(set) = b.in_flight.as_mut() {
            while let Some(Some(a)) = set.next().now_or_never() {
                b.out.extend_from_slice(&a.out);
                bad |= !a.keep;
                if a.lane {
                    b.lane.done();
                }
            }
        }
        let push_close = link.drain_into(&mut b.out);
        if !b.out.is_empty() {
            gw.stats.frames_out.fetch_add(1, Ordering::Relaxed);
            if Box::pin(write_out(stream, &mut b.out)).await.is_err() {
                return End::Broken;
            }
        }
        if bad {
            gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
            return End::refused(ErrorCode::BadRequest);
        }
        if let Some(end) = close_after_write {
            return end;
        }
        if push_close {
            return End::Kicked;
        }
        if b.quiet() {
            busy = None;
        }
    }
}

/// What woke an idle link.
enum Event {
    /// A request finished.
    Answer(Answered),
    /// Pushes queued, or a flag (timeout, shutdown) was raised.
    Attention,
    /// The socket has bytes (or an error, or the end).
    Readable(io::Result<()>),
}

/// Waits for the next thing a link must act on. The future is a few pointers: the
/// waiting state of an idle link is this and the loop's own variables.
fn next_event<'a, 'b, T: Transport>(
    stream: &'a T,
    link: &'a Link,
    mut in_flight: Option<&'a mut FuturesUnordered<Forwarded<'b>>>,
    may_read: bool,
) -> impl Future<Output = Event> + use<'a, 'b, T> {
    std::future::poll_fn(move |cx| {
        if let Some(set) = in_flight.as_mut() {
            if let Poll::Ready(Some(a)) = set.poll_next_unpin(cx) {
                return Poll::Ready(Event::Answer(a));
            }
        }
        // Register before looking, so a push between the look and the wait still wakes.
        link.waker.register(cx.waker());
        if link.wants_attention() {
            return Poll::Ready(Event::Attention);
        }
        if may_read {
            if let Poll::Ready(r) = stream.poll_readable(cx) {
                return Poll::Ready(Event::Readable(r));
            }
        }
        Poll::Pending
    })
}

/// What a frame needs.
enum Local {
    /// Answered here (a heartbeat, a refusal); the answer is in `out`.
    Answered,
    /// Bad input: the refusal is in `out`, and the link must close.
    Bad,
    /// A request for logic.
    Forward(Frame),
}

/// The refusal of a request with id 0 (the id of pushes: its answer would look like one).
const ZERO_ID: &str = "a request must carry a non-zero request id (0 marks pushes)";

/// Handles what the gateway answers itself, appending the answer to `out`.
fn local(link: &Link, f: Frame, out: &mut BytesMut) -> Local {
    if f.req_id == 0 {
        error_frame(0, ErrorCode::BadRequest, ZERO_ID, out);
        return Local::Bad;
    }
    match f.cmd {
        cmd::HEARTBEAT => match v1::Heartbeat::decode(f.body) {
            Ok(hb) => {
                if hb.synckey > 0 {
                    link.synckey.store(hb.synckey, Ordering::Relaxed);
                }
                encode_raw(cmd::response(cmd::HEARTBEAT), f.req_id, &[], out);
                Local::Answered
            }
            Err(_) => {
                error_frame(
                    f.req_id,
                    ErrorCode::BadRequest,
                    "undecodable heartbeat",
                    out,
                );
                Local::Bad
            }
        },
        cmd::LOGIN => {
            error_frame(f.req_id, ErrorCode::BadRequest, "already logged in", out);
            Local::Answered
        }
        c if cmd::short_link_only(c) => {
            error_frame(
                f.req_id,
                ErrorCode::UnknownCommand,
                "only the short link serves this command",
                out,
            );
            Local::Answered
        }
        c if !cmd::from_client(c) => {
            error_frame(
                f.req_id,
                ErrorCode::BadRequest,
                "not a request command",
                out,
            );
            Local::Bad
        }
        _ => Local::Forward(f),
    }
}

/// Passes one request to logic; resolves to the encoded answer and whether the link may
/// stay open.
async fn forward(
    gw: &Gateway,
    link: &Link,
    f: Frame,
    peer: &str,
    origin: Origin,
    local: Option<std::net::SocketAddr>,
) -> Answered {
    let (out, keep) = forward_one(gw, link, f, peer, origin, local).await;
    Answered {
        out,
        keep,
        lane: false,
    }
}

/// Passes the send lane's batch to logic (one SEND alone goes as a plain request);
/// resolves to every SEND's answer, in order, each with its own request id.
async fn forward_sends(
    gw: &Gateway,
    link: &Link,
    mut frames: Vec<Frame>,
    peer: &str,
    origin: Origin,
) -> Answered {
    if frames.len() == 1 {
        let f = frames.pop().expect("one frame");
        let (out, keep) = forward_one(gw, link, f, peer, origin, None).await;
        return Answered {
            out,
            keep,
            lane: true,
        };
    }
    let mut out = BytesMut::new();
    let req = BusRequest {
        cmd: u32::from(cmd::SEND),
        user_id: link.user_id,
        device_id: link.device_id.to_string(),
        gateway_id: gw.cfg.id.clone(),
        conn_id: link.conn_id,
        peer: peer.to_owned(),
        origin: origin as i32,
        batch: frames.iter().map(|f| f.body.clone()).collect(),
        echo_in_ack: link.echo_in_ack,
        ..Default::default()
    };
    let mut keep = true;
    match gw.bus.request(req).await {
        Ok(resp) if resp.batch.is_empty() => {
            // Refused as a whole (overload): the same answer for each.
            for f in &frames {
                keep &= resp.cmd != u32::from(cmd::ERROR) || !closes_link(&resp.body);
                encode_raw(resp.cmd as u8, f.req_id, &resp.body, &mut out);
            }
        }
        Ok(resp) => {
            let mut answers = resp.batch.into_iter();
            for f in &frames {
                match answers.next() {
                    Some(a) => {
                        keep &= a.cmd != u32::from(cmd::ERROR) || !closes_link(&a.body);
                        encode_raw(a.cmd as u8, f.req_id, &a.body, &mut out);
                    }
                    None => error_frame(f.req_id, ErrorCode::Unavailable, UNAVAILABLE, &mut out),
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, sends = frames.len(), "sends could not reach logic");
            for f in &frames {
                unavailable(f.req_id, &e, &mut out);
            }
        }
    }
    Answered {
        out,
        keep,
        lane: true,
    }
}

/// The answer to a request logic did not answer: UNAVAILABLE, with the bus's retry_after.
/// It does not prove the request was not applied (a SEND is retried with the same
/// client_msg_id).
fn unavailable(req_id: u32, e: &ferry_bus::BusError, out: &mut BytesMut) {
    let mut body = error_body(ErrorCode::Unavailable, UNAVAILABLE);
    body.retry_after_ms = e.retry_after_ms();
    encode_msg(cmd::ERROR, req_id, &body, out);
}

const UNAVAILABLE: &str = "service unavailable; try again";

/// One request to logic: its encoded answer and whether the link may stay open.
async fn forward_one(
    gw: &Gateway,
    link: &Link,
    f: Frame,
    peer: &str,
    origin: Origin,
    local: Option<std::net::SocketAddr>,
) -> (BytesMut, bool) {
    let mut out = BytesMut::new();
    let mut req = BusRequest {
        cmd: u32::from(f.cmd),
        body: f.body,
        user_id: link.user_id,
        device_id: link.device_id.to_string(),
        gateway_id: gw.cfg.id.clone(),
        conn_id: link.conn_id,
        peer: peer.to_owned(),
        origin: origin as i32,
        echo_in_ack: link.echo_in_ack,
        ..Default::default()
    };
    if req.cmd == u32::from(cmd::ENDPOINTS) {
        // The same origin an HTTP request gives (http.rs), so the default endpoint list
        // is the same on both links.
        req.local_addr = local.map(|l| l.to_string()).unwrap_or_default();
        req.listen = gw.listen_addrs().iter().map(|a| a.to_string()).collect();
    }
    match gw.bus.request(req).await {
        Ok(resp) => {
            let keep = resp.cmd != u32::from(cmd::ERROR) || !closes_link(&resp.body);
            encode_raw(resp.cmd as u8, f.req_id, &resp.body, &mut out);
            (out, keep)
        }
        Err(e) => {
            tracing::warn!(error = %e, "request could not reach logic");
            unavailable(f.req_id, &e, &mut out);
            (out, true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn send(req_id: u32) -> Frame {
        Frame {
            cmd: cmd::SEND,
            req_id,
            body: Bytes::new(),
        }
    }

    #[test]
    fn the_lane_sends_one_batch_at_a_time_in_order() {
        let mut lane = Lane::default();
        assert!(lane.is_idle());
        assert!(lane.next_batch().is_none());
        for id in 1..=40 {
            lane.push(send(id));
        }
        let first: Vec<u32> = lane
            .next_batch()
            .unwrap()
            .iter()
            .map(|f| f.req_id)
            .collect();
        assert_eq!(first, (1..=32).collect::<Vec<_>>());
        // Nothing more while the batch is with logic, even as SENDs keep coming.
        lane.push(send(41));
        assert!(lane.next_batch().is_none());
        assert!(!lane.is_idle());
        assert_eq!(lane.len(), 9);
        lane.done();
        let second: Vec<u32> = lane
            .next_batch()
            .unwrap()
            .iter()
            .map(|f| f.req_id)
            .collect();
        assert_eq!(second, (33..=41).collect::<Vec<_>>());
        lane.done();
        assert!(lane.is_idle());
    }
}
