//! Links spoken by hand, byte by byte: a plain long link ([`RawLink`]), an encrypted one
//! that counts the client's writes ([`SecureRaw`]), and one HTTP/1.1 request on a fresh
//! connection ([`http_post`]) — for tests of what the server does with exactly these
//! bytes, which the SDK would never send.

use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::frame::encode_msg;
use ferry_proto::resume;
use ferry_proto::secure::{self, Channel};
use ferry_proto::{cmd, v1, Frame, ProtoMessage, MAX_BODY_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
            ..Default::default()
        };
        self.send(cmd::LOGIN, 1, &req).await;
        self.recv(5).await.expect("login answer")
    }
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
        self.login_speaking(key, token, 0).await
    }

    /// [`Self::login`] naming `protocol` in the LOGIN; when the answer names 2 or more,
    /// the records from then on are compact (docs/protocol.md §1.6), as the SDK does.
    pub async fn login_speaking(
        &mut self,
        key: &[u8; 32],
        token: &str,
        protocol: u32,
    ) -> Result<Frame, Frame> {
        let mut hello = BytesMut::new();
        let hs =
            secure::client_hello(key, &login_frame_speaking(token, protocol), &mut hello).unwrap();
        let answer = self.handshake(&hello).await?;
        let (channel, payload) = hs.finish(&answer).expect("the answer opens");
        let f = self.opened(channel, payload);
        if f.cmd == cmd::response(cmd::LOGIN)
            && v1::LoginResp::decode(f.body.clone()).is_ok_and(|r| r.protocol >= 2)
        {
            self.channel.as_mut().unwrap().set_compact();
        }
        Ok(f)
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
        if answer.cmd == cmd::ERROR {
            return Err(answer);
        }
        Ok(answer)
    }

    /// Keys agreed: the login answer that came inside the handshake.
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
    login_frame_speaking(token, 0)
}

/// A LOGIN frame with `token` naming `protocol` (0: none, which counts as 1).
pub fn login_frame_speaking(token: &str, protocol: u32) -> BytesMut {
    let mut b = BytesMut::new();
    let req = v1::LoginReq {
        token: token.into(),
        synckey: 0,
        client_version: "raw".into(),
        protocol,
        ..Default::default()
    };
    encode_msg(cmd::LOGIN, 1, &req, &mut b);
    b
}

/// An ERROR frame's body (asserting that it is one).
pub fn error_of(f: &Frame) -> v1::Error {
    assert_eq!(f.cmd, cmd::ERROR, "expected an ERROR, got {:#04x}", f.cmd);
    v1::Error::decode(f.body.clone()).unwrap()
}

/// An ERROR frame's code (asserting that it is one).
pub fn error_code(f: &Frame) -> v1::ErrorCode {
    v1::ErrorCode::try_from(error_of(f).code).unwrap()
}

/// The answer to one HTTP/1.1 request.
pub struct HttpAnswer {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    /// De-chunked when it came chunked.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// A header's value (`name` in any case, without the colon).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 POST on a fresh connection (`Connection: close`), by hand. `headers`
/// are more header lines, each ending in `\r\n`. Reads the whole answer — its
/// `content-length`, its chunks, or up to the close — waiting up to 40 s (longer than a
/// long-poll the server holds).
pub async fn http_post(addr: &str, path: &str, headers: &str, body: &[u8]) -> HttpAnswer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    tokio::time::timeout(Duration::from_secs(40), read_answer(&mut s))
        .await
        .unwrap_or_else(|_| panic!("no whole answer to POST {path} within 40 s"))
}

/// One HTTP/1.1 request written as it is (`raw`: request line, headers, blank line,
/// body) on a fresh connection; its answer, as [`http_post`] reads it.
pub async fn http_request(addr: &str, raw: &[u8]) -> HttpAnswer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    tokio::time::timeout(Duration::from_secs(40), read_answer(&mut s))
        .await
        .unwrap_or_else(|_| panic!("no whole answer within 40 s"))
}

async fn read_answer(s: &mut TcpStream) -> HttpAnswer {
    let mut got = Vec::new();
    let end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        assert!(
            more(s, &mut got).await,
            "the link closed before an HTTP answer"
        );
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let status = head[9..12].parse().unwrap();
    let mut answer = HttpAnswer {
        status,
        head,
        body: Vec::new(),
    };
    let mut rest = got.split_off(end + 4);
    if let Some(len) = answer.header("content-length") {
        let len: usize = len.parse().unwrap();
        while rest.len() < len && more(s, &mut rest).await {}
        rest.truncate(len);
        answer.body = rest;
    } else if answer
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        // Chunks: a hex size line, the bytes, CRLF; a zero size ends.
        let mut at = 0;
        loop {
            let line_end = loop {
                if let Some(p) = rest[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + p;
                }
                assert!(more(s, &mut rest).await, "the link closed inside a chunk");
            };
            let size = std::str::from_utf8(&rest[at..line_end]).unwrap();
            let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            while rest.len() < line_end + 2 + n + 2 {
                assert!(more(s, &mut rest).await, "the link closed inside a chunk");
            }
            answer
                .body
                .extend_from_slice(&rest[line_end + 2..line_end + 2 + n]);
            at = line_end + 2 + n + 2;
        }
    } else {
        while more(s, &mut rest).await {}
        answer.body = rest;
    }
    answer
}

/// Reads what is there into `got`; false at the close.
async fn more(s: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    match s.read(&mut buf).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            true
        }
    }
}
