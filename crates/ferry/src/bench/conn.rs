//! A bare Ferry long link for the bench, on the real codec (`ferry_proto`), counting
//! every byte that crosses the socket; the short-link helpers that get tokens; and the
//! wire probe that measures a login and a "hello" byte by byte.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use ferry_client::ShortLink;
use ferry_proto::frame::encode_msg;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, Frame, ProtoMessage, MAX_BODY_LEN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Anything a bench connection waits for longer than this has failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One long link.
pub struct FerryConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl FerryConn {
    pub async fn connect(addr: &str) -> anyhow::Result<FerryConn> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(FerryConn {
            stream,
            buf: BytesMut::new(),
            bytes_in: 0,
            bytes_out: 0,
        })
    }

    pub async fn send<M: ProtoMessage>(
        &mut self,
        c: u8,
        req_id: u32,
        msg: &M,
    ) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        encode_msg(c, req_id, msg, &mut out);
        self.stream.write_all(&out).await?;
        self.bytes_out += out.len() as u64;
        Ok(())
    }

    /// The next frame.
    pub async fn read_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = Frame::parse(&mut self.buf, MAX_BODY_LEN)? {
                return Ok(f);
            }
            self.buf.reserve(4096);
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                bail!("the server closed the link");
            }
            self.bytes_in += n as u64;
        }
    }

    /// LOGIN with a stored token; the answer or the server's refusal.
    pub async fn login(&mut self, token: &str, synckey: u64) -> anyhow::Result<v1::LoginResp> {
        let req = v1::LoginReq {
            token: token.to_owned(),
            synckey,
            client_version: String::new(),
        };
        self.send(cmd::LOGIN, 1, &req).await?;
        let f = tokio::time::timeout(IO_TIMEOUT, self.read_frame())
            .await
            .context("login timed out")??;
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
        Ok(v1::LoginResp::decode(f.body)?)
    }
}

/// Registers `user` (an existing one is fine) and gets a device token.
pub async fn register_and_auth(
    short: &ShortLink,
    user: &str,
    password: &str,
) -> anyhow::Result<v1::AuthResp> {
    let mut pause = Duration::from_millis(50);
    for attempt in 0..8 {
        let r = match short.register(user, password).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::UserExists) => Ok(()),
            Err(e) => Err(e),
        };
        let r = match r {
            Ok(()) => short.auth(user, password, "bench").await,
            Err(e) => Err(e),
        };
        match r {
            Ok(a) => return Ok(a),
            Err(e) if e.is_retryable() && attempt < 7 => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e).with_context(|| format!("registering {user}")),
        }
    }
    bail!("registering {user}: out of attempts")
}

/// Makes `a` and `b` friends (messaging needs it): each asks the other, and asking
/// back accepts. Already being friends is fine.
pub async fn befriend(
    short: &ShortLink,
    (a, token_a): (&str, &str),
    (b, token_b): (&str, &str),
) -> anyhow::Result<()> {
    for (token, peer) in [(token_a, b), (token_b, a)] {
        let req = v1::FriendRequestReq {
            username: peer.to_owned(),
            greeting: String::new(),
        };
        let mut pause = Duration::from_millis(50);
        for attempt in 0..8 {
            match short
                .call::<_, v1::FriendActionResp>("friends/request", Some(token), &req)
                .await
            {
                Ok(_) => break,
                Err(e) if e.is_retryable() && attempt < 7 => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(e).with_context(|| format!("befriending {a} and {b}")),
            }
        }
    }
    Ok(())
}

/// `POST /v1/{method}` by hand on a fresh connection, to count the bytes an HTTP client
/// like the SDK's puts on the wire. Returns (answer body, bytes sent, bytes received).
pub async fn raw_post(
    server: &str,
    method: &str,
    body: &[u8],
) -> anyhow::Result<(Vec<u8>, u64, u64)> {
    let mut s = TcpStream::connect(server).await?;
    s.set_nodelay(true)?;
    let mut req = format!(
        "POST /v1/{method} HTTP/1.1\r\nhost: {server}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
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
                return Ok((body, req.len() as u64, got.len() as u64));
            }
        }
    }
}

/// Measures, byte by byte on the client sockets: a device's HTTP auth, a long-link
/// login with the stored token, and one "hello" from `a` to `b`.
pub async fn wire_probe(server: &str, prefix: &str, password: &str) -> anyhow::Result<Value> {
    let short = ShortLink::new(server);
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
        let (body, sent, recv) = raw_post(server, "auth", &req.encode_to_vec()).await?;
        auth_bytes = (sent, recv);
        tokens.push(v1::AuthResp::decode(&body[..])?.token);
    }
    befriend(&short, (&a, &tokens[0]), (&b, &tokens[1])).await?;
    let mut ca = FerryConn::connect(server).await?;
    ca.login(&tokens[0], 0).await?;
    let login = (ca.bytes_out, ca.bytes_in);
    let mut cb = FerryConn::connect(server).await?;
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
    // The sender gets its ack and its own copy (other devices of the sender need it).
    let mut ack_seen = false;
    let mut echo_seen = false;
    tokio::time::timeout(IO_TIMEOUT, async {
        while !(ack_seen && echo_seen) {
            let f = ca.read_frame().await?;
            match f.cmd {
                c if c == cmd::response(cmd::SEND) => ack_seen = true,
                cmd::NOTIFY => echo_seen = true,
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
    Ok(json!({
        "login_round_trips": 1,
        "login_sent_bytes": login.0,
        "login_received_bytes": login.1,
        "login_bytes": login.0 + login.1,
        "auth_http_sent_bytes": auth_bytes.0,
        "auth_http_received_bytes": auth_bytes.1,
        "hello_sent_bytes": sent,
        "hello_sender_received_bytes": ca.bytes_in - in0,
        "hello_delivered_bytes": cb.bytes_in - bin0,
    }))
}
