//! Shared test helpers: an in-process server on port 0, users, raw-frame links and a
//! TCP proxy that can cut or black-hole the links through it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry::{Config, Server};
use ferry_client::{Account, Client, ClientConfig, ClientError, Event, ShortLink};
use ferry_proto::frame::encode_msg;
use ferry_proto::resume;
use ferry_proto::secure::{self, Channel};
use ferry_proto::{v1, Frame, ProtoMessage, MAX_BODY_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

pub const PASSWORD: &str = "password-1";

/// A config for tests: a temp data dir, cheap password hashing, short timeouts.
pub fn test_config(data: &std::path::Path) -> Config {
    let mut cfg = Config {
        data_dir: data.to_path_buf(),
        listen: vec!["127.0.0.1:0".into()],
        ..Default::default()
    };
    cfg.logic.password.memory_kib = 64;
    cfg.logic.password.iterations = 1;
    // Most tests message between strangers; the friends-only default has its own tests.
    cfg.logic.open_messaging = true;
    cfg.gateway.login_timeout_ms = 2_000;
    cfg.gateway.heartbeat_timeout_ms = 5_000;
    cfg.gateway.shutdown_grace_ms = 1_000;
    // Every test client comes from 127.0.0.1: the per-user and per-IP limits have their
    // own tests (tests/limits.rs) and stay out of the others' way.
    cfg.logic.limits = ferry_logic::LimitsConfig::unlimited();
    cfg.gateway.max_connections_per_ip = 0;
    // Raw-frame and plain short-link helpers stay plaintext (explicitly allowed here);
    // SDK clients still encrypt (they trust the test server's key on first use), and
    // tests/secure.rs runs servers that refuse plaintext.
    cfg.gateway.allow_plaintext = true;
    cfg
}

pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let server = Server::bind(cfg).await.unwrap();
        TestServer { server, dir }
    }

    pub fn addr(&self) -> String {
        self.server.addr().to_string()
    }

    pub async fn register(&self, users: &[&str]) {
        let short = ShortLink::new(&self.addr());
        for u in users {
            short.register(u, PASSWORD).await.unwrap();
        }
    }
}

pub fn client_config(server: &str, user: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(server, user, PASSWORD);
    cfg.heartbeat = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    // A fixed heartbeat (the smart heartbeat has its own tests in smart.rs), a dead link
    // noticed within 1.5 s, and a quick way back to TCP after a fallback.
    cfg.smart.heartbeat_max = cfg.heartbeat;
    cfg.smart.answer_timeout = Duration::from_millis(1_500);
    cfg.smart.tcp_retry = Duration::from_secs(1);
    cfg
}

pub async fn connect(server: &str, user: &str) -> (Client, mpsc::UnboundedReceiver<Event>) {
    Client::connect(client_config(server, user)).await.unwrap()
}

/// Waits for `n` message entries not sent by `me`, failing after `secs`.
pub async fn recv_messages(
    events: &mut mpsc::UnboundedReceiver<Event>,
    me: &str,
    n: usize,
    secs: u64,
) -> Vec<(u64, v1::Message)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while got.len() < n {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} of {n} messages", got.len()))
            .expect("event stream ended");
        if let Event::Entry(e) = ev {
            if let Some(v1::entry::Kind::Message(m)) = e.kind {
                if m.from != me {
                    got.push((e.seq, m));
                }
            }
        }
    }
    got
}

/// Asserts nothing more arrives for a while.
pub async fn assert_quiet(events: &mut mpsc::UnboundedReceiver<Event>, me: &str, ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let Event::Entry(e) = &ev {
            if let Some(v1::entry::Kind::Message(m)) = &e.kind {
                assert_eq!(m.from, me, "unexpected extra message {m:?}");
            }
        }
    }
}

/// A long link spoken by hand, frame by frame.
pub struct RawLink {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawLink {
    pub async fn connect(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        RawLink {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send<M: ProtoMessage>(&mut self, cmd: u8, req_id: u32, msg: &M) {
        let mut out = BytesMut::new();
        encode_msg(cmd, req_id, msg, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or None when the server closed the link (or `secs` passed).
    pub async fn recv(&mut self, secs: u64) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(f) = Frame::parse(&mut self.buf, MAX_BODY_LEN).unwrap() {
                return Some(f);
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// True when the server closes the link within `secs` (frames before the close are
    /// skipped).
    pub async fn closed_within(&mut self, secs: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Logs in with a token; returns the login answer.
    pub async fn login(&mut self, token: &str) -> Frame {
        let req = v1::LoginReq {
            token: token.into(),
            synckey: 0,
            client_version: "raw".into(),
        };
        self.send(ferry_proto::cmd::LOGIN, 1, &req).await;
        self.recv(5).await.expect("login answer")
    }
}

/// A token for `user` on a fresh device.
pub async fn token(addr: &str, user: &str, device: &str) -> String {
    ShortLink::new(addr)
        .auth(user, PASSWORD, device)
        .await
        .unwrap()
        .token
}

/// A TCP proxy in front of a server. `cut()` closes every link through it;
/// `blackhole(true)` keeps links open but stops forwarding (a half-open network).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<Notify>,
    blackhole: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(Notify::new());
        let blackhole = Arc::new(AtomicBool::new(false));
        let (c, b) = (cut.clone(), blackhole.clone());
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let (c, b) = (c.clone(), b.clone());
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let b2 = b.clone();
                    let a = async move { pump(&mut dr, &mut uw, &b).await };
                    let z = async move { pump(&mut ur, &mut dw, &b2).await };
                    tokio::select! {
                        _ = a => {}
                        _ = z => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            blackhole,
        }
    }

    /// Closes every link open through the proxy now.
    pub fn cut(&self) {
        self.cut.notify_waiters();
    }

    pub fn blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    blackhole: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits (up to `secs`) for the first event `pick` accepts, skipping the others.
pub async fn event_where<T>(
    events: &mut mpsc::UnboundedReceiver<Event>,
    secs: u64,
    pick: impl Fn(Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                if let Some(t) = pick(ev) {
                    return t;
                }
            }
            Ok(None) => panic!("the event stream ended"),
            Err(_) => panic!("no matching event within {secs} s"),
        }
    }
}

/// The short-link services of `user` (signs in with the test password). A sign-in
/// answered UNAVAILABLE ("try again": in a cluster, a logic node just started or just
/// killed) is tried again for up to 5 s, as a client would.
pub async fn account(addr: &str, user: &str) -> Account {
    let mut tries = 0;
    loop {
        match Account::open(client_config(addr, user)).await {
            Err(e) if e.code() == Some(v1::ErrorCode::Unavailable) && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r.unwrap(),
        }
    }
}

/// The server's refusal code of a failed call.
pub fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> v1::ErrorCode {
    r.unwrap_err().code().expect("a server error")
}

/// Deterministic noise (xorshift), which no codec compresses.
pub fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A PNG of `w`×`h` noise pixels.
pub fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_raw(w, h, noise((w * h * 3) as usize, 0x9e37_79b9)).unwrap();
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Uploads `data` until at least `percent` of it is acknowledged, then drops the upload
/// (as a cut connection or a killed app would) and lets requests already on the wire land.
pub async fn upload_part(
    acc: &Account,
    upload: &v1::MediaCreateResp,
    data: bytes::Bytes,
    percent: u64,
) {
    let size = data.len() as u64;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = {
        let (acc, upload) = (acc.clone(), upload.clone());
        tokio::spawn(async move {
            acc.upload_media(&upload, data, &move |done, _| {
                let _ = tx.send(done);
            })
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no progress")
            .expect("the upload ended early");
        if done * 100 >= size * percent {
            break;
        }
    }
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// A server that refuses plaintext (the production default).
pub async fn strict_server() -> TestServer {
    TestServer::with(|c| {
        c.gateway.allow_plaintext = false;
        c.gateway.lp_poll_hold_ms = 2_000;
    })
    .await
}

/// The server's public key.
pub fn key_of(ts: &TestServer) -> [u8; 32] {
    ferry::server_key::parse_public(&ts.server.gateway.public_key_hex()).unwrap()
}

/// A client that pins the server's key.
pub fn pinned(ts: &TestServer, user: &str) -> ClientConfig {
    let mut cfg = client_config(&ts.addr(), user);
    cfg.security = ferry_client::Security::Pinned(key_of(ts));
    cfg
}

/// Registers `users` over sealed short-link requests.
pub async fn register_sealed(ts: &TestServer, users: &[&str]) {
    let short = ShortLink::sealed(&ts.addr(), Some(key_of(ts)));
    for u in users {
        short.register(u, PASSWORD).await.unwrap();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An encrypted long link spoken by hand, counting the client's writes.
pub struct SecureRaw {
    pub stream: TcpStream,
    pub wire: BytesMut,
    pub plain: BytesMut,
    pub channel: Option<Channel>,
    /// The resumption ticket the handshake answer handed out (its `TICKET` frame).
    pub ticket: Option<v1::Resumption>,
    pub writes: usize,
    pub reads: usize,
    pub bytes_out: usize,
    pub bytes_in: usize,
}

impl SecureRaw {
    pub async fn connect(addr: &str) -> Self {
        Self::connect_from(addr, "127.0.0.1").await
    }

    /// Connects from the local address `ip` (any of 127.0.0.0/8 on loopback): another
    /// network, as the server sees it.
    pub async fn connect_from(addr: &str, ip: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::new(ip.parse().unwrap(), 0))
            .unwrap();
        let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        SecureRaw {
            stream,
            wire: BytesMut::new(),
            plain: BytesMut::new(),
            channel: None,
            ticket: None,
            writes: 0,
            reads: 0,
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.writes += 1;
        self.bytes_out += bytes.len();
    }

    /// Reads more; false when the server closed the link (or 5 s passed).
    pub async fn read_more(&mut self) -> bool {
        self.wire.reserve(4096);
        match tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.wire))
            .await
        {
            Ok(Ok(n)) if n > 0 => {
                self.reads += 1;
                self.bytes_in += n;
                true
            }
            _ => false,
        }
    }

    /// HELLO carrying LOGIN with `token`, encrypted to `key`. Ok: the login answer
    /// (LOGIN|0x80 or an ERROR, opened). Err: the server's plain ERROR (no keys agreed).
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

    /// Writes a hello; the handshake answer, or Err with the server's plain ERROR.
    async fn handshake(&mut self, hello: &[u8]) -> Result<Frame, Frame> {
        self.write(hello).await;
        let answer = loop {
            if let Some(f) = secure::parse_handshake(&mut self.wire).unwrap() {
                break f;
            }
            assert!(self.read_more().await, "no handshake answer");
        };
        if answer.cmd == ferry_proto::cmd::ERROR {
            return Err(answer);
        }
        Ok(answer)
    }

    /// Keys agreed: the login answer that came inside the handshake (the ticket in
    /// front of it, if any, kept in `ticket`).
    fn opened(&mut self, channel: Channel, mut payload: Vec<u8>) -> Frame {
        self.ticket = resume::take_ticket(&mut payload).expect("the answer's ticket decodes");
        self.channel = Some(channel);
        self.plain.extend_from_slice(&payload);
        Frame::parse(&mut self.plain, MAX_BODY_LEN)
            .unwrap()
            .unwrap()
    }

    pub async fn send<M: ProtoMessage>(&mut self, c: u8, req_id: u32, msg: &M) {
        let mut plain = BytesMut::new();
        encode_msg(c, req_id, msg, &mut plain);
        let mut sealed = BytesMut::new();
        self.channel
            .as_mut()
            .unwrap()
            .seal(&plain, &mut sealed)
            .unwrap();
        self.write(&sealed).await;
    }

    /// The next frame, or None when the link closed.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(ch) = self.channel.as_mut() {
                ch.open(&mut self.wire, &mut self.plain)
                    .expect("server records open");
            }
            if let Some(f) = Frame::parse(&mut self.plain, MAX_BODY_LEN).unwrap() {
                return Some(f);
            }
            if !self.read_more().await {
                return None;
            }
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
}

/// A LOGIN frame with `token`, as a raw client sends it.
pub fn login_frame(token: &str) -> BytesMut {
    let mut b = BytesMut::new();
    let req = v1::LoginReq {
        token: token.into(),
        synckey: 0,
        client_version: "raw".into(),
    };
    encode_msg(ferry_proto::cmd::LOGIN, 1, &req, &mut b);
    b
}
