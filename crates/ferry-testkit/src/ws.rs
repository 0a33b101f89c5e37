//! The long link over WebSocket spoken by hand (docs/protocol.md §7.1a): a real
//! WebSocket client (tokio-tungstenite) carrying frames the test builds itself — the
//! encrypted link by default, and any message a test wants to try on the server. Every
//! binary message the server sends is checked to be exactly one frame.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_proto::frame::encode_msg;
use ferry_proto::resume;
use ferry_proto::secure::{self, Channel};
use ferry_proto::{v1, Frame, ProtoMessage, MAX_BODY_LEN};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::raw::login_frame;

/// What the server sent, one message at a time.
#[derive(Debug)]
pub enum WsEvent {
    /// A binary message: one frame (opened, on an encrypted link).
    Frame(Frame),
    /// The server's Close: its code (none when it sent no code).
    Close(Option<u16>),
    /// The connection ended without a Close (or `secs` passed).
    Gone,
}

/// A long link over WebSocket.
pub struct WsLink {
    pub ws: WebSocketStream<TcpStream>,
    /// The keys after the handshake (`None`: plaintext, or before it).
    pub channel: Option<Channel>,
    /// The resumption ticket the handshake answer handed out.
    pub ticket: Option<v1::Resumption>,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    /// Plain frames opened and not yet taken.
    plain: BytesMut,
}

impl WsLink {
    /// Connects to `addr` and upgrades `GET /v1/ws`.
    pub async fn connect(addr: &str) -> Self {
        Self::connect_with(addr, None).await
    }

    /// Connects, offering `subprotocol` when given.
    pub async fn connect_with(addr: &str, subprotocol: Option<&str>) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        if let Some(p) = subprotocol {
            req.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .expect("the WebSocket upgrade");
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        WsLink {
            ws,
            channel: None,
            ticket: None,
            protocol,
            plain: BytesMut::new(),
        }
    }

    /// Sends `bytes` as one binary message, as they are.
    pub async fn send_message(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .unwrap();
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends a ping; true when its pong came back within 5 s (other messages are
    /// dropped meanwhile).
    pub async fn ping(&mut self, data: &[u8]) -> bool {
        self.ws
            .send(Message::Ping(Bytes::copy_from_slice(data)))
            .await
            .unwrap();
        let wait = async {
            while let Some(Ok(m)) = self.ws.next().await {
                if let Message::Pong(p) = m {
                    return p[..] == *data;
                }
            }
            false
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or(false)
    }

    /// Sends a ping and does not wait (a failed send is ignored: the server may have
    /// closed).
    pub async fn send_ping(&mut self, data: &[u8]) {
        let _ = self
            .ws
            .send(Message::Ping(Bytes::copy_from_slice(data)))
            .await;
    }

    /// Sends a Close with `code`.
    pub async fn close(&mut self, code: u16) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
    }

    /// The next message (within `secs`), its frame opened on an encrypted link. Panics
    /// when a binary message is not exactly one frame.
    pub async fn next_event(&mut self, secs: u64) -> WsEvent {
        if let Some(f) = Frame::parse(&mut self.plain, MAX_BODY_LEN).unwrap() {
            return WsEvent::Frame(f);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let m = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                _ => return WsEvent::Gone,
            };
            match m {
                Message::Binary(b) => {
                    let mut wire = BytesMut::from(&b[..]);
                    let one = Frame::check(&wire, MAX_BODY_LEN).unwrap();
                    assert_eq!(one, Some(wire.len()), "a message must be one whole frame");
                    match self.channel.as_mut() {
                        Some(ch) => {
                            ch.open(&mut wire, &mut self.plain)
                                .expect("the server's record opens");
                            assert!(wire.is_empty(), "one record per message");
                        }
                        None => self.plain.extend_from_slice(&wire),
                    }
                    if let Some(f) = Frame::parse(&mut self.plain, MAX_BODY_LEN).unwrap() {
                        return WsEvent::Frame(f);
                    }
                }
                Message::Close(c) => return WsEvent::Close(c.map(|c| u16::from(c.code))),
                Message::Text(t) => panic!("the server sent a text message: {t}"),
                _ => {}
            }
        }
    }

    /// The next frame, or None when the link closed (or 5 s passed).
    pub async fn recv(&mut self) -> Option<Frame> {
        match self.next_event(5).await {
            WsEvent::Frame(f) => Some(f),
            _ => None,
        }
    }

    /// Frames until one with `cmd` arrives.
    pub async fn recv_cmd(&mut self, c: u8) -> Frame {
        loop {
            let f = self.recv().await.expect("link closed");
            if f.cmd == c {
                return f;
            }
        }
    }

    /// The frames the server sends before it closes, and its Close code (`None`: it
    /// sent no Close), within `secs`.
    pub async fn until_close(&mut self, secs: u64) -> (Vec<Frame>, Option<u16>) {
        let mut frames = Vec::new();
        loop {
            match self.next_event(secs).await {
                WsEvent::Frame(f) => frames.push(f),
                WsEvent::Close(c) => return (frames, c),
                WsEvent::Gone => return (frames, None),
            }
        }
    }

    /// HELLO carrying LOGIN with `token` as the first message. Ok: the login answer
    /// (opened). Err: the server's plain ERROR (no keys agreed).
    pub async fn login(&mut self, key: &[u8; 32], token: &str) -> Result<Frame, Frame> {
        let mut hello = BytesMut::new();
        let hs = secure::client_hello(key, &login_frame(token), &mut hello).unwrap();
        let answer = self.handshake(&hello).await?;
        let (channel, payload) = hs.finish(&answer).expect("the answer opens");
        Ok(self.opened(channel, payload))
    }

    /// Sends `hello` (a RESUME frame made by `hs`); the same answers as [`Self::login`].
    pub async fn resume(&mut self, hs: resume::ClientResume, hello: &[u8]) -> Result<Frame, Frame> {
        let answer = self.handshake(hello).await?;
        let (channel, payload) = hs.finish(&answer).expect("the resumption answer opens");
        Ok(self.opened(channel, payload))
    }

    async fn handshake(&mut self, hello: &[u8]) -> Result<Frame, Frame> {
        self.send_message(hello).await;
        match self.next_event(10).await {
            WsEvent::Frame(f) if f.cmd == ferry_proto::cmd::ERROR => Err(f),
            WsEvent::Frame(f) => Ok(f),
            other => panic!("no handshake answer: {other:?}"),
        }
    }

    fn opened(&mut self, channel: Channel, mut payload: Vec<u8>) -> Frame {
        self.ticket = resume::take_ticket(&mut payload).expect("the answer's ticket decodes");
        self.channel = Some(channel);
        self.plain.extend_from_slice(&payload);
        Frame::parse(&mut self.plain, MAX_BODY_LEN)
            .unwrap()
            .unwrap()
    }

    /// One frame, sealed on an encrypted link, as one message.
    pub async fn send<M: ProtoMessage>(&mut self, c: u8, req_id: u32, msg: &M) {
        let mut plain = BytesMut::new();
        encode_msg(c, req_id, msg, &mut plain);
        let bytes = self.seal(&plain);
        self.send_message(&bytes).await;
    }

    /// `plain` sealed as one record (or as it is, on a plaintext link).
    pub fn seal(&mut self, plain: &[u8]) -> BytesMut {
        match self.channel.as_mut() {
            Some(ch) => {
                let mut out = BytesMut::new();
                ch.seal(plain, &mut out).unwrap();
                out
            }
            None => BytesMut::from(plain),
        }
    }
}
