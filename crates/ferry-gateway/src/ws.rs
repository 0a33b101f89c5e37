//! The long link over WebSocket (docs/protocol.md §7.1a), for browsers, which cannot
//! open a TCP long link.
//!
//! `GET /v1/ws` with the upgrade headers, on any gateway port, is answered `101` and the
//! connection becomes a long link: the same link code as TCP (`link::run`, wrapped in
//! the encryption layer as always), over a [`WsTransport`] that turns each binary
//! WebSocket message into exactly one long-link frame and each frame the link writes
//! into one message. Pings get pongs; a Close from the client ends the link as a closed
//! TCP connection does; the server's own closes carry the codes of §7.1a.
//!
//! Why tungstenite's frame codec and not a whole WebSocket stream: a WebSocket stream
//! (tungstenite's `WebSocket`, and so tokio-tungstenite and axum's `ws`) allocates its
//! read buffer when the connection opens (128 KiB by default) and keeps it for the
//! connection's life; fastwebsockets and tokio-websockets keep per-connection buffers
//! too. An idle long link must hold no buffer at all (docs/benchmarks.md, memory per
//! idle link), so this transport does what the TCP transport does — read into a stack
//! buffer, keep only a partial frame, write each batch at once — and uses tungstenite
//! for the WebSocket wire format itself: frame headers (parse and format), opcodes,
//! close codes and the handshake's accept key. The HTTP side of the upgrade is hyper's.
//!
//! It must not read or change what the long-link frames carry: it checks only that a
//! message is one whole frame, its length and its type.

use std::future::Future;
use std::io::{self, Cursor};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{BufMut, Bytes, BytesMut};
use ferry_proto::v1::ErrorCode;
use ferry_proto::HEADER_LEN;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::http::{error, Peer, SeatCell};
use crate::link::{self, End, Transport};
use crate::secure::refusal;
use crate::{Gateway, Seat};

/// The subprotocol a client may offer; the server then selects it.
pub const SUBPROTOCOL: &str = "ferry.v1";

/// Largest body of a frame on the encrypted link: one Noise message (`HELLO`, `RESUME`)
/// or one `SEALED` record.
const SEALED_MAX_BODY: usize = 65_535;

/// Bytes read from the socket at once (on the thread's stack, as for TCP).
const CHUNK: usize = 8192;

/// `GET /v1/ws`: checks the upgrade, answers `101` and runs a long link on the
/// connection; anything else on this path is a refused upgrade (`400` with an `Error`).
pub(crate) async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    peer: Option<Extension<Peer>>,
    seat: Option<Extension<SeatCell>>,
    mut req: axum::extract::Request,
) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let key = match check(req.method(), req.headers()) {
        Ok(key) => key,
        Err(why) => {
            gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
            let mut r = error(ErrorCode::BadRequest, &why);
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return r;
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return error(ErrorCode::BadRequest, "this connection cannot be upgraded");
    };
    // The connection's seat goes on to its link; an upgrade without one (a router
    // called without a socket) takes a new one.
    let seat = seat.and_then(|s| s.0 .0.lock().take());
    let seat = match seat {
        Some(s) => s,
        None => match gw.limit.clone().try_acquire_owned() {
            Ok(permit) => Seat {
                _permit: permit,
                _slot: None,
            },
            Err(_) => return error(ErrorCode::Unavailable, "too many connections; try later"),
        },
    };
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) =
        HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes()))
    {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if offers_subprotocol(req.headers()) {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    let peer = peer.map(|p| p.0 .0.to_string()).unwrap_or_default();
    let max_message = HEADER_LEN
        + if gw.cfg.allow_plaintext {
            gw.cfg.max_frame_bytes.max(SEALED_MAX_BODY)
        } else {
            SEALED_MAX_BODY
        };
    let gw2 = gw.clone();
    gw.tasks.spawn(async move {
        // Resolves once hyper has written the 101.
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!("upgraded connection is not a TCP stream");
                return;
            }
        };
        let ws = WsTransport::new(parts.io.into_inner(), parts.read_buf, max_message);
        gw2.stats.connections.fetch_add(1, Ordering::Relaxed);
        link::run(gw2.clone(), ws, peer).await;
        gw2.stats.connections.fetch_sub(1, Ordering::Relaxed);
        drop(seat);
    });
    r
}

/// The request's `Sec-WebSocket-Key`, or why it is not a WebSocket upgrade we take.
fn check(method: &Method, h: &HeaderMap) -> Result<String, String> {
    if method != Method::GET {
        return Err(format!("a WebSocket upgrade is a GET, not {method}"));
    }
    if !has_token(h, header::UPGRADE, "websocket") {
        return Err("GET /v1/ws needs `Upgrade: websocket` (docs/protocol.md 7.1a)".into());
    }
    if !has_token(h, header::CONNECTION, "upgrade") {
        return Err("GET /v1/ws needs `Connection: Upgrade` (docs/protocol.md 7.1a)".into());
    }
    let version = h
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if version != Some("13") {
        return Err("only WebSocket version 13 is spoken here (Sec-WebSocket-Version)".into());
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    // 16 random bytes in base64 (RFC 6455 4.1): 24 characters ending in "==".
    let well_formed = key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !well_formed {
        return Err("Sec-WebSocket-Key must be 16 bytes in base64".into());
    }
    Ok(key.to_owned())
}

/// Whether a comma-separated header holds `token` (any case).
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn offers_subprotocol(h: &HeaderMap) -> bool {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == SUBPROTOCOL)
}

/// A long link's transport over an upgraded connection: binary messages in, one frame
/// each; frames out, one message each.
pub(crate) struct WsTransport {
    tcp: TcpStream,
    st: Mutex<WsState>,
    /// Largest message a client may send: one frame, header included.
    max_message: usize,
}

#[derive(Default)]
struct WsState {
    /// Bytes read that are not a whole WebSocket frame yet (no allocation while idle).
    wire: BytesMut,
    /// `wire` holds bytes not looked at yet: the ones that came with the upgrade.
    unread: bool,
    /// A fragmented binary message, its parts so far.
    message: Option<BytesMut>,
    /// Bytes that go out before anything else: pongs the socket did not take at once.
    control: BytesMut,
    /// The close code a refusal here chose (1003 for text, 1002 for a broken frame,
    /// 1009 for a message over the limit).
    code: Option<CloseCode>,
    /// The client's Close came: its code, to answer with (RFC 6455 5.5.1).
    peer_close: Option<Option<u16>>,
}

impl WsTransport {
    pub(crate) fn new(tcp: TcpStream, early: Bytes, max_message: usize) -> Self {
        let _ = tcp.set_nodelay(true);
        let st = WsState {
            unread: !early.is_empty(),
            wire: BytesMut::from(&early[..]),
            ..Default::default()
        };
        WsTransport {
            tcp,
            st: Mutex::new(st),
            max_message,
        }
    }

    /// Writes what it can of the pending control frames now, without waiting.
    fn flush_control(&self, st: &mut WsState) -> io::Result<()> {
        while !st.control.is_empty() {
            match self.tcp.try_write(&st.control) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = st.control.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        st.control = BytesMut::new();
        Ok(())
    }
}

/// A WebSocket frame from the server (never masked) into `out`.
fn put_frame(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let head = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    out.reserve(head.len(payload.len() as u64) + payload.len());
    // Writing into a BytesMut cannot fail.
    let _ = head.format(payload.len() as u64, &mut (&mut *out).writer());
    out.extend_from_slice(payload);
}

/// A Close frame with `code` and a short reason.
fn close_frame(out: &mut BytesMut, code: CloseCode, reason: &str) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&u16::from(code).to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    put_frame(out, OpCode::Control(Control::Close), &payload);
}

fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A frame that breaks RFC 6455: `ERROR BAD_REQUEST` (no long-link header read: id 0)
/// and Close 1002.
fn broken(st: &mut WsState, why: &str) -> io::Error {
    st.code = Some(CloseCode::Protocol);
    refusal(
        ErrorCode::BadRequest,
        0,
        format!("not a WebSocket frame we take: {why}"),
    )
}

/// Checks that a whole binary message is exactly one long-link frame.
fn one_frame(msg: &[u8]) -> io::Result<()> {
    if msg.len() < HEADER_LEN {
        return Err(refusal(
            ErrorCode::BadRequest,
            0,
            format!(
                "a message of {} bytes is not a frame: each binary message must be one \
                 whole frame, its 8-byte header included (docs/protocol.md 7.1a)",
                msg.len()
            ),
        ));
    }
    let body = u32::from_be_bytes([0, msg[0], msg[1], msg[2]]) as usize;
    if body != msg.len() - HEADER_LEN {
        let req_id = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
        return Err(refusal(
            ErrorCode::BadRequest,
            req_id,
            format!(
                "the message holds {} bytes after the frame header but its frame announces \
                 {body}: each binary message must be exactly one frame (docs/protocol.md 7.1a)",
                msg.len() - HEADER_LEN
            ),
        ));
    }
    Ok(())
}

impl WsTransport {
    /// Cuts the whole WebSocket frames off `st.wire`: control frames are handled here,
    /// each whole binary message (one long-link frame) is appended to `partial`.
    fn frames(&self, st: &mut WsState, partial: &mut BytesMut) -> io::Result<()> {
        while st.peer_close.is_none() {
            let mut cur = Cursor::new(&st.wire[..]);
            let (head, len) = match FrameHeader::parse(&mut cur) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(broken(st, &e.to_string())),
            };
            let at = cur.position() as usize;
            if head.rsv1 || head.rsv2 || head.rsv3 {
                return Err(broken(st, "reserved bits set (no extension is negotiated)"));
            }
            let Some(mask) = head.mask else {
                return Err(broken(st, "a client's frames must be masked"));
            };
            let have = st.wire.len() - at;
            match head.opcode {
                OpCode::Control(c) => {
                    if len > 125 || !head.is_final {
                        return Err(broken(st, "a control frame of over 125 bytes or in parts"));
                    }
                    let len = len as usize;
                    if have < len {
                        return Ok(());
                    }
                    let mut payload = st.wire.split_to(at + len).split_off(at);
                    unmask(&mut payload, mask);
                    match c {
                        Control::Ping => {
                            put_frame(&mut st.control, OpCode::Control(Control::Pong), &payload)
                        }
                        Control::Close => {
                            let code = (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                            st.peer_close = Some(code);
                        }
                        // Pongs (unasked) are ignored; reserved opcodes fail the parse.
                        _ => {}
                    }
                }
                OpCode::Data(d) => {
                    match (d, st.message.is_some()) {
                        (Data::Text, _) => {
                            st.code = Some(CloseCode::Unsupported);
                            return Err(refusal(
                                ErrorCode::BadRequest,
                                0,
                                "a text message: the long link takes binary messages, one \
                                 frame each (docs/protocol.md 7.1a)",
                            ));
                        }
                        (Data::Binary, true) => {
                            return Err(broken(st, "a new message inside a fragmented one"))
                        }
                        (Data::Continue, false) => {
                            return Err(broken(st, "a continuation without a message"))
                        }
                        _ => {}
                    }
                    let so_far = st.message.as_ref().map_or(0, |m| m.len());
                    if (so_far as u64).saturating_add(len) > self.max_message as u64 {
                        // Judged on the frame's header, as on TCP: wait for its 8 bytes
                        // (the request id), never for the body.
                        let head_have = so_far + have.min(len as usize);
                        if head_have < HEADER_LEN {
                            return Ok(());
                        }
                        let mut first = [0u8; HEADER_LEN];
                        let from_msg = so_far.min(HEADER_LEN);
                        if let Some(m) = &st.message {
                            first[..from_msg].copy_from_slice(&m[..from_msg]);
                        }
                        let rest = HEADER_LEN - from_msg;
                        let mut tail = [0u8; HEADER_LEN];
                        tail[..rest].copy_from_slice(&st.wire[at..at + rest]);
                        // The frame's payload is masked from its own first byte.
                        unmask(&mut tail[..rest], mask);
                        first[from_msg..].copy_from_slice(&tail[..rest]);
                        let req_id = u32::from_be_bytes([first[4], first[5], first[6], first[7]]);
                        st.code = Some(CloseCode::Size);
                        return Err(refusal(
                            ErrorCode::TooLarge,
                            req_id,
                            format!(
                                "a message of over {} bytes: one frame each, at most {}",
                                self.max_message, self.max_message
                            ),
                        ));
                    }
                    let len = len as usize;
                    if have < len {
                        return Ok(());
                    }
                    let mut payload = st.wire.split_to(at + len).split_off(at);
                    unmask(&mut payload, mask);
                    let msg = match st.message.take() {
                        Some(mut m) => {
                            m.extend_from_slice(&payload);
                            m
                        }
                        None => payload,
                    };
                    if head.is_final {
                        one_frame(&msg)?;
                        partial.extend_from_slice(&msg);
                    } else {
                        st.message = Some(msg);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Transport for WsTransport {
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.local_addr().ok()
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let st = self.st.lock();
            if st.unread || st.peer_close.is_some() {
                return Poll::Ready(Ok(()));
            }
        }
        self.tcp.poll_read_ready(cx)
    }

    /// Kept out of the async code, like the TCP transport's: the read buffer lives on
    /// the thread's stack.
    fn read_into(&self, partial: &mut BytesMut) -> io::Result<bool> {
        let mut st = self.st.lock();
        if st.peer_close.is_some() {
            return Ok(false);
        }
        let mut more = true;
        if st.unread {
            st.unread = false;
        } else {
            let mut chunk = [0u8; CHUNK];
            match crate::link::read_some(&self.tcp, &mut chunk) {
                Ok(0) => more = false,
                Ok(n) => st.wire.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        let before = partial.len();
        let cut = self.frames(&mut st, partial);
        if st.wire.is_empty() {
            // Give the allocation back: idle links hold no buffer.
            st.wire = BytesMut::new();
        }
        // Pongs go out now when the socket takes them (nothing else is being written:
        // the link writes and reads in turn).
        self.flush_control(&mut st)?;
        cut?;
        // A Close ends the stream; frames that came before it are read first.
        if st.peer_close.is_some() && partial.len() == before {
            return Ok(false);
        }
        Ok(more)
    }

    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        let st = self.st.get_mut();
        let mut out = std::mem::take(&mut st.control);
        out.reserve(buf.len() + 4 * (1 + buf.len() / 64));
        let mut rest = buf;
        while !rest.is_empty() {
            // The link writes whole frames: one message each.
            let len = if rest.len() >= HEADER_LEN {
                HEADER_LEN + (u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize)
            } else {
                rest.len()
            };
            let (frame, tail) = rest.split_at(len.min(rest.len()));
            put_frame(&mut out, OpCode::Data(Data::Binary), frame);
            rest = tail;
        }
        async move { AsyncWriteExt::write_all(&mut self.tcp, &out).await }
    }

    fn close(&mut self, end: End) -> impl Future<Output = ()> + Send + '_ {
        let st = self.st.get_mut();
        let said = match (st.code, end) {
            (_, End::Broken) => None,
            (_, End::Peer) => st.peer_close.map(|c| {
                (
                    c.map(CloseCode::from).unwrap_or(CloseCode::Normal),
                    "closed by the client",
                )
            }),
            (Some(CloseCode::Unsupported), _) => {
                Some((CloseCode::Unsupported, "text messages are not taken"))
            }
            (Some(code), _) if code == CloseCode::Size => Some((code, "message too big")),
            (Some(code), _) => Some((code, "not a WebSocket frame we take")),
            (None, End::Refused { too_large: true }) => Some((CloseCode::Size, "too large")),
            (None, End::Refused { .. }) => Some((CloseCode::Policy, "refused")),
            (None, End::Kicked) => Some((CloseCode::Normal, "kicked")),
            (None, End::Shutdown) => Some((CloseCode::Away, "server shutting down")),
            (None, End::Silent) => Some((CloseCode::Normal, "silent for too long")),
        };
        let mut out = std::mem::take(&mut st.control);
        if let Some((code, reason)) = said {
            close_frame(&mut out, code, reason);
        }
        async move {
            if !out.is_empty() {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    AsyncWriteExt::write_all(&mut self.tcp, &out),
                )
                .await;
            }
            link::linger_close(&mut self.tcp).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const GOOD: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn an_upgrade_needs_every_header() {
        assert_eq!(
            check(&Method::GET, &headers(GOOD)).unwrap(),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert!(check(&Method::POST, &headers(GOOD)).is_err());
        for skip in 0..GOOD.len() {
            let some: Vec<_> = GOOD
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            assert!(check(&Method::GET, &headers(&some)).is_err(), "{skip}");
        }
        let mut old = GOOD.to_vec();
        old[2] = ("sec-websocket-version", "8");
        assert!(check(&Method::GET, &headers(&old)).is_err());
        let mut short = GOOD.to_vec();
        short[3] = ("sec-websocket-key", "abc");
        assert!(check(&Method::GET, &headers(&short)).is_err());
    }

    #[test]
    fn one_message_must_be_one_frame() {
        let mut f = BytesMut::new();
        ferry_proto::frame::encode_raw(0x02, 7, b"abc", &mut f);
        assert!(one_frame(&f).is_ok());
        let mut two = f.clone();
        two.extend_from_slice(&f);
        let e = one_frame(&two).unwrap_err();
        assert_eq!(
            crate::secure::refused(&e),
            (ErrorCode::BadRequest, 7),
            "refused with the frame's id"
        );
        assert!(one_frame(&f[..9]).is_err(), "half a frame");
        assert_eq!(
            crate::secure::refused(&one_frame(&f[..5]).unwrap_err()),
            (ErrorCode::BadRequest, 0)
        );
    }

    #[test]
    fn server_frames_are_unmasked_and_sized_by_tungstenite() {
        let mut out = BytesMut::new();
        put_frame(&mut out, OpCode::Data(Data::Binary), &[1, 2, 3]);
        assert_eq!(&out[..], &[0x82, 3, 1, 2, 3]);
        let mut big = BytesMut::new();
        put_frame(&mut big, OpCode::Data(Data::Binary), &[0u8; 300]);
        assert_eq!(&big[..4], &[0x82, 126, 1, 44]);
        let mut close = BytesMut::new();
        close_frame(&mut close, CloseCode::Policy, "x");
        assert_eq!(&close[..], &[0x88, 3, 0x03, 0xF0, b'x']);
    }

    /// A client's frame: masked, as RFC 6455 wants.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65_536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// A transport over a loopback connection, and the client's end.
    async fn pair(max_message: usize) -> (WsTransport, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (WsTransport::new(server, Bytes::new(), max_message), client)
    }

    /// Reads until `partial` grows or the transport fails or ends.
    async fn read(t: &WsTransport, partial: &mut BytesMut) -> io::Result<bool> {
        let before = partial.len();
        loop {
            std::future::poll_fn(|cx| t.poll_readable(cx)).await?;
            let more = t.read_into(partial)?;
            if !more || partial.len() > before {
                return Ok(more);
            }
        }
    }

    #[tokio::test]
    async fn fragments_make_one_frame_pings_get_pongs_and_the_limit_holds() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (t, mut c) = pair(8 + 100).await;
        let mut f = BytesMut::new();
        ferry_proto::frame::encode_raw(0x02, 9, b"hello", &mut f);
        // A message in two fragments with a ping between them.
        let mut bytes = client_frame(0x2, false, &f[..6]);
        bytes.extend(client_frame(0x9, true, b"hi"));
        bytes.extend(client_frame(0x0, true, &f[6..]));
        AsyncWriteExt::write_all(&mut c, &bytes).await.unwrap();
        let mut partial = BytesMut::new();
        assert!(read(&t, &mut partial).await.unwrap());
        assert_eq!(partial, f);
        let mut pong = [0u8; 4];
        c.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8A, 2, b'h', b'i']);

        // Over the limit: refused on the frame's header, with its id, before the body.
        let mut big = vec![0u8; 8 + 200];
        big[..3].copy_from_slice(&200u32.to_be_bytes()[1..]);
        big[4..8].copy_from_slice(&42u32.to_be_bytes());
        let whole = client_frame(0x2, true, &big);
        AsyncWriteExt::write_all(&mut c, &whole[..14 + 8])
            .await
            .unwrap();
        let e = read(&t, &mut partial).await.unwrap_err();
        assert_eq!(crate::secure::refused(&e), (ErrorCode::TooLarge, 42));
        assert_eq!(t.st.lock().code, Some(CloseCode::Size));
    }

    #[tokio::test]
    async fn unmasked_frames_and_stray_continuations_break_the_protocol() {
        use tokio::io::AsyncWriteExt;
        for bad in [
            vec![0x82, 0x01, 0x00],
            client_frame(0x0, true, b"x"),
            client_frame(0x9, false, b"x"),
        ] {
            let (t, mut c) = pair(1024).await;
            AsyncWriteExt::write_all(&mut c, &bad).await.unwrap();
            let mut partial = BytesMut::new();
            let e = read(&t, &mut partial).await.unwrap_err();
            assert_eq!(crate::secure::refused(&e), (ErrorCode::BadRequest, 0));
            assert_eq!(t.st.lock().code, Some(CloseCode::Protocol));
        }
        // A Close from the client ends the stream.
        let (t, mut c) = pair(1024).await;
        AsyncWriteExt::write_all(&mut c, &client_frame(0x8, true, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        let mut partial = BytesMut::new();
        assert!(!read(&t, &mut partial).await.unwrap());
        assert_eq!(t.st.lock().peer_close, Some(Some(1000)));
    }

    #[test]
    fn an_idle_websocket_transport_stays_small() {
        let size = std::mem::size_of::<WsTransport>() - std::mem::size_of::<TcpStream>();
        assert!(size <= 192, "{size} bytes");
    }
}
