//! A bare Ferry long link for the bench, on the real codec (`ferry_proto`), counting
//! every byte that crosses the socket; the short-link helpers that get tokens; and the
//! wire probe that measures a login and a "hello" byte by byte.
//!
//! Encrypted by default, like the SDK: the LOGIN rides in the Noise IK HELLO and every
//! frame after it is sealed (docs/protocol.md 1.4). The server key is learned once per
//! process from the first server (`GET /v1/server-key`, trust on first use), or pinned
//! with `FERRY_BENCH_SERVER_KEY`; `FERRY_BENCH_PLAINTEXT=1` speaks plaintext (the server
//! must allow it). Given a resumption ticket from an earlier login, a link resumes
//! (the LOGIN in a RESUME hello, no X25519: docs/protocol.md 1.5).

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use ferry_client::ShortLink;
use ferry_proto::frame::encode_msg;
use ferry_proto::resume;
use ferry_proto::secure::{self, Channel};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, Frame, ProtoMessage, MAX_BODY_LEN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::users::{befriend, register_and_auth};
use crate::wire::Wire;
use crate::Transport;

/// Anything a bench connection waits for longer than this has failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The server key this process encrypts to (`None`: plaintext), resolved once.
static SERVER_KEY: tokio::sync::OnceCell<Option<[u8; 32]>> = tokio::sync::OnceCell::const_new();

/// The server key for `server`'s cluster: `FERRY_BENCH_PLAINTEXT=1` → none;
/// `FERRY_BENCH_SERVER_KEY` (hex) → pinned; else learned from `server` on first use.
pub async fn server_key(server: &str) -> anyhow::Result<Option<[u8; 32]>> {
    SERVER_KEY
        .get_or_try_init(|| async {
            if std::env::var("FERRY_BENCH_PLAINTEXT").is_ok_and(|v| v == "1") {
                return Ok(None);
            }
            let cfg = match std::env::var("FERRY_BENCH_SERVER_KEY") {
                Ok(k) => ferry_client::Security::pinned_hex(&k)?.key(),
                Err(_) => ferry_client::fetch_server_key(server)
                    .await
                    .map(Some)
                    .with_context(|| format!("asking {server} for its key"))?,
            };
            Ok(cfg)
        })
        .await
        .copied()
}

/// A short link to `server`, sealed like the SDK's unless the bench runs plaintext.
pub async fn short(server: &str) -> anyhow::Result<ShortLink> {
    Ok(ShortLink::sealed(server, server_key(server).await?))
}

/// An encrypted link's keys, shared by the reading and the writing half.
pub type SharedChannel = std::sync::Arc<std::sync::Mutex<Channel>>;

/// One long link.
pub struct FerryConn {
    /// TCP, or a WebSocket (`--transport ws`).
    pub stream: Wire,
    /// Plain bytes not yet a whole frame.
    pub buf: BytesMut,
    /// Sealed bytes not yet a whole record.
    wire: BytesMut,
    /// The encrypted link's keys after the handshake; `None`: plaintext. Boxed: the
    /// cipher state is a few hundred bytes and a plaintext bench need not carry it.
    channel: Option<Box<Channel>>,
    key: Option<[u8; 32]>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Writes to the socket: during a login, the round trips it took.
    pub writes: u64,
    /// Bytes of the login's answer alone (a push that came in the same read excluded).
    pub login_in: u64,
    /// The login resumed from a ticket (no Noise handshake).
    pub resumed: bool,
    /// The ticket the login's handshake answer handed out (its `TICKET` frame), if any.
    pub ticket: Option<Ticket>,
    /// Bytes that `TICKET` frame took in the answer.
    pub ticket_bytes: u64,
    /// The protocol version the LOGIN names (`LoginReq.protocol`): 0 (= 1, what the
    /// throughput benches have always sent) unless set; with 2, an encrypted TCP link
    /// switches to compact records after the answer (docs/protocol.md §1.6).
    pub protocol: u32,
    /// The LOGIN asks for the link's own messages' entries in their SendAck
    /// (`LoginReq.echo_in_ack`, as the SDK does) instead of in a NOTIFY.
    pub echo_in_ack: bool,
}

/// A session resumption ticket and its secret (the handshake answer's `TICKET` frame).
#[derive(Clone)]
pub struct Ticket {
    pub ticket: Vec<u8>,
    pub secret: [u8; resume::SECRET_LEN],
}

impl Ticket {
    /// The ticket a handshake answer handed out, if usable.
    pub fn from_answer(r: &v1::Resumption) -> Option<Ticket> {
        Some(Ticket {
            ticket: r.ticket.to_vec(),
            secret: r.secret[..].try_into().ok()?,
        })
    }
}

/// Whether bench logins resume from tickets (`FERRY_BENCH_RESUME=0`: every login does
/// the full Noise handshake).
pub fn resumption_enabled() -> bool {
    !std::env::var("FERRY_BENCH_RESUME").is_ok_and(|v| v == "0")
}

/// The plain `ERROR` a server refuses a RESUME hello with.
fn resume_refused(f: &Frame) -> bool {
    f.cmd == cmd::ERROR
        && v1::Error::decode(f.body.clone())
            .is_ok_and(|e| e.code == ErrorCode::ResumeRefused as i32)
}

impl FerryConn {
    pub async fn connect(addr: &str) -> anyhow::Result<FerryConn> {
        Self::connect_over(addr, Transport::Tcp).await
    }

    /// Connects over TCP or WebSocket.
    pub async fn connect_over(addr: &str, transport: Transport) -> anyhow::Result<FerryConn> {
        let key = server_key(addr).await?;
        let stream = tokio::time::timeout(IO_TIMEOUT, Wire::connect(addr, transport))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(FerryConn {
            stream,
            buf: BytesMut::new(),
            wire: BytesMut::new(),
            channel: None,
            key,
            bytes_in: 0,
            bytes_out: 0,
            writes: 0,
            login_in: 0,
            resumed: false,
            ticket: None,
            ticket_bytes: 0,
            protocol: 0,
            echo_in_ack: false,
        })
    }

    /// For a caller that splits the socket into a reader and a writer task: the socket,
    /// plain bytes already read, sealed bytes not yet opened, and the sealing state
    /// both tasks share.
    pub fn into_split_parts(self) -> (Wire, BytesMut, BytesMut, Option<SharedChannel>) {
        let channel = self
            .channel
            .map(|c| std::sync::Arc::new(std::sync::Mutex::new(*c)));
        (self.stream, self.buf, self.wire, channel)
    }

    /// The socket and the sealing state, for a caller that writes frames itself.
    pub fn into_parts(self) -> (Wire, Option<Channel>) {
        (self.stream, self.channel.map(|c| *c))
    }

    /// Writes encoded frames (sealed on an encrypted link).
    pub async fn send_raw(&mut self, plain: &[u8]) -> anyhow::Result<()> {
        match &mut self.channel {
            Some(ch) => {
                let mut out = BytesMut::with_capacity(plain.len() + secure::RECORD_OVERHEAD);
                ch.seal(plain, &mut out)?;
                self.stream.write_all(&out).await?;
                self.bytes_out += out.len() as u64;
            }
            None => {
                self.stream.write_all(plain).await?;
                self.bytes_out += plain.len() as u64;
            }
        }
        self.writes += 1;
        Ok(())
    }

    pub async fn send<M: ProtoMessage>(
        &mut self,
        c: u8,
        req_id: u32,
        msg: &M,
    ) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        encode_msg(c, req_id, msg, &mut out);
        self.send_raw(&out).await
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        self.wire.reserve(4096);
        let n = self.stream.read_buf(&mut self.wire).await?;
        if n == 0 {
            bail!("the server closed the link");
        }
        self.bytes_in += n as u64;
        Ok(())
    }

    /// The next frame.
    pub async fn read_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            match &mut self.channel {
                Some(ch) => ch.open(&mut self.wire, &mut self.buf)?,
                None => {
                    self.buf.extend_from_slice(&self.wire);
                    self.wire.clear();
                }
            }
            if let Some(f) = Frame::parse(&mut self.buf, MAX_BODY_LEN)? {
                return Ok(f);
            }
            self.read_more().await?;
        }
    }

    /// Sends the LOGIN (inside the HELLO when encrypted, inside a RESUME hello given a
    /// ticket); the first answer frame.
    pub async fn login_exchange(
        &mut self,
        login: &[u8],
        ticket: Option<&Ticket>,
    ) -> anyhow::Result<Frame> {
        let Some(key) = self.key else {
            self.send_raw(login).await?;
            let f = self.read_frame().await?;
            self.login_in = self.bytes_in - self.buf.len() as u64;
            return Ok(f);
        };
        let mut hello = BytesMut::new();
        if let Some(t) = ticket {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            let hs = resume::client_resume(&t.ticket, &t.secret, login, now, &mut hello)?;
            let answer = self.handshake(&hello).await?;
            if answer.cmd == cmd::ERROR {
                return Ok(answer);
            }
            let (channel, payload) = hs
                .finish(&answer)
                .context("the resumption answer does not open")?;
            self.resumed = true;
            return self.opened(channel, payload).await;
        }
        let hs = secure::client_hello(&key, login, &mut hello)?;
        let answer = self.handshake(&hello).await?;
        if answer.cmd == cmd::ERROR {
            return Ok(answer);
        }
        let (channel, payload) = hs
            .finish(&answer)
            .context("the handshake answer does not open: another server key?")?;
        self.opened(channel, payload).await
    }

    /// Writes a HELLO or RESUME; the one frame that answers it.
    async fn handshake(&mut self, hello: &[u8]) -> anyhow::Result<Frame> {
        self.stream.write_all(hello).await?;
        self.bytes_out += hello.len() as u64;
        self.writes += 1;
        let answer = loop {
            if let Some(f) = secure::parse_handshake(&mut self.wire)? {
                break f;
            }
            self.read_more().await?;
        };
        self.login_in = self.bytes_in - self.wire.len() as u64;
        Ok(answer)
    }

    async fn opened(&mut self, channel: Channel, mut payload: Vec<u8>) -> anyhow::Result<Frame> {
        let len = payload.len();
        let ticket = resume::take_ticket(&mut payload).context("the answer's ticket")?;
        self.ticket_bytes = (len - payload.len()) as u64;
        self.ticket = ticket.as_ref().and_then(Ticket::from_answer);
        self.channel = Some(Box::new(channel));
        self.buf.extend_from_slice(&payload);
        // From the payload only: the records behind it may be compact (protocol 2),
        // which the login answer decides.
        Frame::parse(&mut self.buf, MAX_BODY_LEN)?.context("a handshake answer without its frame")
    }

    /// LOGIN with a stored token; the answer or the server's refusal.
    pub async fn login(&mut self, token: &str, synckey: u64) -> anyhow::Result<v1::LoginResp> {
        self.login_with(token, synckey, None).await
    }

    /// LOGIN with a stored token, resuming from `ticket` when given; the answer or the
    /// server's refusal. A refused ticket is an error (`is_resume_refused`): the caller
    /// forgets it and logs in again on a new connection.
    pub async fn login_with(
        &mut self,
        token: &str,
        synckey: u64,
        ticket: Option<&Ticket>,
    ) -> anyhow::Result<v1::LoginResp> {
        let req = v1::LoginReq {
            token: token.to_owned(),
            synckey,
            client_version: String::new(),
            protocol: self.protocol,
            echo_in_ack: self.echo_in_ack,
        };
        let mut login = BytesMut::new();
        encode_msg(cmd::LOGIN, 1, &req, &mut login);
        let f = tokio::time::timeout(IO_TIMEOUT, self.login_exchange(&login, ticket))
            .await
            .context("login timed out")??;
        if resume_refused(&f) {
            return Err(ResumeRefused.into());
        }
        if f.cmd == cmd::ERROR {
            let e = v1::Error::decode(f.body).unwrap_or_default();
            bail!(
                "login refused: {} ({:?})",
                e.message,
                ErrorCode::try_from(e.code)
            );
        }
        if f.cmd != cmd::response(cmd::LOGIN) {
            bail!("unexpected answer 0x{:02x} to LOGIN", f.cmd);
        }
        let resp = v1::LoginResp::decode(f.body)?;
        if resp.protocol >= 2 && matches!(self.stream, Wire::Tcp(_)) {
            if let Some(ch) = self.channel.as_mut() {
                ch.set_compact();
            }
        }
        Ok(resp)
    }
}

/// A RESUME hello was refused: log in again with the full handshake.
#[derive(Debug)]
pub struct ResumeRefused;

impl std::fmt::Display for ResumeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("resumption refused")
    }
}

impl std::error::Error for ResumeRefused {}

/// Whether `e` is a refused resumption.
pub fn is_resume_refused(e: &anyhow::Error) -> bool {
    e.is::<ResumeRefused>()
}

/// `POST /v1/{method}` by hand on a fresh connection, to count the bytes an HTTP client
/// like the SDK's puts on the wire; sealed to `key` when given, as the SDK does.
/// Returns (answer body, bytes sent, bytes received).
pub async fn raw_post(
    server: &str,
    method: &str,
    body: &[u8],
    key: Option<[u8; 32]>,
) -> anyhow::Result<(Vec<u8>, u64, u64)> {
    let mut s = TcpStream::connect(server).await?;
    s.set_nodelay(true)?;
    let (body, reply, content_type) = match key {
        Some(k) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            let (wire, reply) = ferry_proto::sealed::seal_request(&k, "", body, now)?;
            (wire, Some(reply), ferry_proto::sealed::CONTENT_TYPE)
        }
        None => (body.to_vec(), None, "application/x-protobuf"),
    };
    let mut req = format!(
        "POST /v1/{method} HTTP/1.1\r\nhost: {server}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    s.write_all(&req).await?;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .context("HTTP answer timed out")??;
        if n == 0 {
            bail!("server closed the HTTP connection");
        }
        got.extend_from_slice(&chunk[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("HTTP answer: {}", head.lines().next().unwrap_or_default());
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no content-length")?;
            if got.len() >= end + 4 + len {
                let body = got[end + 4..end + 4 + len].to_vec();
                let body = match &reply {
                    Some(r) => ferry_proto::sealed::open_response(r, &body)?,
                    None => body,
                };
                return Ok((body, req.len() as u64, got.len() as u64));
            }
        }
    }
}

/// Measures, byte by byte on the client sockets: a device's HTTP auth, a long-link
/// login with the stored token, and one "hello" from `a` to `b`.
pub async fn wire_probe(server: &str, prefix: &str, password: &str) -> anyhow::Result<Value> {
    let short = short(server).await?;
    let key = short.key();
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    register_and_auth(&short, &a, password).await?;
    register_and_auth(&short, &b, password).await?;
    let mut tokens = Vec::new();
    let mut auth_bytes = (0, 0);
    for user in [&a, &b] {
        let req = v1::AuthReq {
            username: user.clone(),
            password: password.to_owned(),
            device_id: "probe".into(),
        };
        let (body, sent, recv) = raw_post(server, "auth", &req.encode_to_vec(), key).await?;
        auth_bytes = (sent, recv);
        tokens.push(v1::AuthResp::decode(&body[..])?.token);
    }
    befriend(&short, (&a, &tokens[0]), (&b, &tokens[1])).await?;
    // As the SDK does: protocol 2, compact records, its own entries in its acks.
    let mut ca = FerryConn::connect(server).await?;
    ca.protocol = ferry_proto::PROTOCOL_VERSION;
    ca.echo_in_ack = true;
    ca.login(&tokens[0], 0).await?;
    let ticket = ca.ticket.clone();
    // What the resumption ticket adds to the login answer (its TICKET frame).
    let ticket_bytes = ca.ticket_bytes;
    let login = (ca.bytes_out, ca.login_in);
    let login_round_trips = ca.writes;
    let mut cb = FerryConn::connect(server).await?;
    cb.protocol = ferry_proto::PROTOCOL_VERSION;
    cb.login(&tokens[1], 0).await?;
    // Let the server's presence catch up with the links before the hello, and take in
    // what the login brought (notifies of the friend entries), so the byte counts below
    // are the hello's alone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for conn in [&mut ca, &mut cb] {
        while let Ok(f) = tokio::time::timeout(Duration::from_millis(100), conn.read_frame()).await
        {
            f?;
        }
    }
    let (out0, in0, bin0) = (ca.bytes_out, ca.bytes_in, cb.bytes_in);
    let hello = v1::SendMsg {
        client_msg_id: ferry_client::new_client_msg_id(),
        to: b.clone(),
        text: "hello".into(),
        r#type: v1::MsgType::Text as i32,
        ..Default::default()
    };
    ca.send(cmd::SEND, 2, &hello).await?;
    let sent = ca.bytes_out - out0;
    // The sender gets its ack with its own copy inside (other devices of the sender get
    // it in a notify).
    let mut ack_seen = false;
    let mut echo_seen = false;
    tokio::time::timeout(IO_TIMEOUT, async {
        while !(ack_seen && echo_seen) {
            let f = ca.read_frame().await?;
            match f.cmd {
                c if c == cmd::response(cmd::SEND) => {
                    ack_seen = true;
                    echo_seen = v1::SendAck::decode(f.body)?.entry.is_some();
                    if !echo_seen {
                        bail!("the hello's ack came without its entry");
                    }
                }
                cmd::NOTIFY => bail!("the sending link was notified of its own hello"),
                cmd::ERROR => {
                    let e = v1::Error::decode(f.body).unwrap_or_default();
                    bail!("hello refused: {}", e.message)
                }
                _ => {}
            }
        }
        Ok(())
    })
    .await
    .context("hello ack timed out")??;
    let f = tokio::time::timeout(IO_TIMEOUT, cb.read_frame())
        .await
        .context("hello delivery timed out")??;
    if f.cmd != cmd::NOTIFY {
        bail!("expected NOTIFY, got 0x{:02x}", f.cmd);
    }
    let n = v1::Notify::decode(f.body)?;
    if n.entries.is_empty() {
        bail!("the hello was not inline in the notify");
    }
    // Last (the same device's new link replaces `ca`): a login resumed from the ticket.
    let mut resumed = json!(null);
    if let Some(t) = ticket {
        let mut cr = FerryConn::connect(server).await?;
        cr.protocol = ferry_proto::PROTOCOL_VERSION;
        cr.echo_in_ack = true;
        cr.login_with(&tokens[0], 0, Some(&t)).await?;
        resumed = json!({
            "round_trips": cr.writes,
            "sent_bytes": cr.bytes_out,
            "received_bytes": cr.login_in,
            "resumed": cr.resumed,
        });
    }
    Ok(json!({
        "encrypted": key.is_some(),
        "protocol": ferry_proto::PROTOCOL_VERSION,
        "login_round_trips": login_round_trips,
        "login_sent_bytes": login.0,
        "login_received_bytes": login.1,
        "login_bytes": login.0 + login.1,
        "login_ticket_bytes": ticket_bytes,
        "login_resumed": resumed,
        "auth_http_sent_bytes": auth_bytes.0,
        "auth_http_received_bytes": auth_bytes.1,
        "hello_sent_bytes": sent,
        // The recipient's name is in the SEND: docs/protocol.md's "hello" goes to "bob".
        "hello_to_bytes": b.len(),
        "hello_sender_received_bytes": ca.bytes_in - in0,
        "hello_delivered_bytes": cb.bytes_in - bin0,
    }))
}
