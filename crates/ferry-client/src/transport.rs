//! The client's side of a long link, whatever carries it: [`Conn::connect`] is the one
//! place the SDK gets a connected transport. Frames go out with [`Conn::send`] and come
//! in with [`Conn::frames`], over TCP or over HTTP long-poll alike.
//!
//! Encryption lives here too, so it covers TCP and long-poll alike: [`Conn::login`] sends
//! the LOGIN inside the Noise IK HELLO when a server key is known and reads the login
//! answer out of the handshake's second message; after that [`Conn::send`] seals and
//! [`Conn::frames`] opens (docs/protocol.md 1.4). Given a resumption ticket, the LOGIN
//! rides in a RESUME hello instead — no X25519 on either side (1.5).
//!
//! Long-poll: the first `send` (the LOGIN frame, or the HELLO carrying it) opens the session
//! (`POST /v1/lp/open`); later sends are `POST /v1/lp/send?sid=…`; a background task
//! holds `POST /v1/lp/poll?sid=…` and hands what it returns to `frames`. Dropping the
//! connection ends the session (`POST /v1/lp/close`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_proto::frame::encode_msg;
use ferry_proto::resume;
use ferry_proto::secure::{self, Channel};
use ferry_proto::{cmd, v1, Frame, ProtoMessage, MAX_BODY_LEN};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::smart::{Endpoint, Transport};
use crate::ClientError;

type Http = Client<HttpConnector, Full<Bytes>>;

/// A connected long link.
pub(crate) struct Conn {
    pub endpoint: Endpoint,
    inner: Inner,
    /// Plain bytes received that are not yet a whole frame.
    buf: BytesMut,
    /// Bytes as they came off the transport, not yet taken into `buf`.
    wire: BytesMut,
    /// The encrypted link's keys, once the handshake is done; `None`: plaintext (or the
    /// handshake still running).
    channel: Option<Channel>,
    /// The resumption ticket the handshake answer handed out (its `TICKET` frame, in
    /// front of the login answer), until the session takes it.
    ticket: Option<v1::Resumption>,
}

enum Inner {
    Tcp {
        read: OwnedReadHalf,
        write: OwnedWriteHalf,
    },
    /// Boxed: hyper's client (with the workspace's features) is hundreds of bytes, a TCP
    /// link two halves.
    LongPoll(Box<LongPoll>),
}

struct LongPoll {
    http: Http,
    base: String,
    sid: Option<String>,
    /// What the poller fetched.
    rx: Option<mpsc::Receiver<Result<Bytes, ClientError>>>,
    poller: Option<tokio::task::JoinHandle<()>>,
    request_timeout: Duration,
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.abort();
        }
        // End the session now rather than when the server's idle timer runs out.
        if let (Some(sid), Ok(rt)) = (self.sid.take(), tokio::runtime::Handle::try_current()) {
            let (http, url) = (
                self.http.clone(),
                format!("{}/v1/lp/close?sid={sid}", self.base),
            );
            rt.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), post(&http, &url, Bytes::new()))
                        .await;
            });
        }
    }
}

async fn post(
    http: &Http,
    url: &str,
    body: Bytes,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), ClientError> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/x-ferry-frames")
        .body(Full::new(body))
        .map_err(ClientError::http_source)?;
    let resp = http.request(req).await.map_err(ClientError::http_source)?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(ClientError::http_source)?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

impl Conn {
    /// Connects to `ep`: a TCP connection, or (long-poll) an HTTP client for it — the
    /// session itself opens with the first frame sent.
    pub async fn connect(
        ep: Endpoint,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Conn, ClientError> {
        let inner = match ep.transport {
            Transport::Tcp => {
                let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(ep.addr))
                    .await
                    .map_err(|_| ClientError::timeout())??;
                let _ = stream.set_nodelay(true);
                let (read, write) = stream.into_split();
                Inner::Tcp { read, write }
            }
            Transport::Http => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(connect_timeout));
                Inner::LongPoll(Box::new(LongPoll {
                    http: Client::builder(TokioExecutor::new()).build(connector),
                    base: format!("http://{}", ep.addr),
                    sid: None,
                    rx: None,
                    poller: None,
                    request_timeout,
                }))
            }
        };
        Ok(Conn {
            endpoint: ep,
            inner,
            buf: BytesMut::new(),
            wire: BytesMut::new(),
            channel: None,
            ticket: None,
        })
    }

    /// Sends encoded frames (sealed on an encrypted link).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.channel {
            Some(ch) => {
                let mut sealed = BytesMut::with_capacity(bytes.len() + secure::RECORD_OVERHEAD);
                ch.seal(bytes, &mut sealed)
                    .map_err(|e| ClientError::protocol_source("", e))?;
                self.send_raw(&sealed).await
            }
            None => self.send_raw(bytes).await,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Tcp { write, .. } => Ok(write.write_all(bytes).await?),
            Inner::LongPoll(lp) => {
                if let Some(first) = lp.send(bytes).await? {
                    self.wire.extend_from_slice(&first);
                }
                Ok(())
            }
        }
    }

    /// Sends the encoded LOGIN frame and returns the frames that answer it (the login
    /// answer or an ERROR first). With `server_key` the LOGIN rides in the Noise IK
    /// HELLO and the answer in the handshake's second message — still one round trip
    /// — and the link is encrypted from then on. A server that cannot open the HELLO
    /// (another key) answers with a plain ERROR frame, returned as it is.
    ///
    /// With a `ticket` as well, the LOGIN rides in a RESUME hello instead (no X25519).
    /// A server that refuses it answers with a plain `ERROR RESUME_REFUSED`, returned as
    /// it is: the caller forgets the ticket and logs in again on a new connection.
    pub async fn login(
        &mut self,
        login: &[u8],
        server_key: Option<[u8; 32]>,
        ticket: Option<&Ticket>,
    ) -> Result<Vec<Frame>, ClientError> {
        let Some(key) = server_key else {
            self.send(login).await?;
            return self.frames().await;
        };
        // The handshake in flight: which one decides how its answer opens.
        enum Pending {
            Full(Box<secure::ClientHandshake>),
            Resumed(resume::ClientResume),
        }
        let mut hello = BytesMut::new();
        let pending = match ticket {
            Some(t) => Pending::Resumed(
                resume::client_resume(&t.ticket, &t.secret, login, now_ms(), &mut hello)
                    .map_err(|e| ClientError::protocol_source("resumption", e))?,
            ),
            None => Pending::Full(Box::new(
                secure::client_hello(&key, login, &mut hello)
                    .map_err(|e| ClientError::protocol_source("handshake", e))?,
            )),
        };
        self.send_raw(&hello).await?;
        let answer = self.handshake_answer().await?;
        if answer.cmd == cmd::ERROR {
            return Ok(vec![answer]);
        }
        let (channel, payload) = match pending {
            Pending::Resumed(hs) => hs.finish(&answer).map_err(|e| {
                ClientError::protocol(format!(
                    "the server's resumption answer does not open ({e})"
                ))
            })?,
            Pending::Full(hs) => hs.finish(&answer).map_err(|e| {
                ClientError::protocol(format!(
                    "the server's handshake answer does not open ({e}): it does not hold \
                     the pinned server key"
                ))
            })?,
        };
        self.opened(channel, payload).await
    }

    /// The resumption ticket the login's handshake answer handed out, once.
    pub fn take_ticket(&mut self) -> Option<v1::Resumption> {
        self.ticket.take()
    }

    /// The one frame that answers a HELLO or RESUME.
    async fn handshake_answer(&mut self) -> Result<Frame, ClientError> {
        loop {
            match secure::parse_handshake(&mut self.wire)
                .map_err(|e| ClientError::protocol_source("handshake answer", e))?
            {
                Some(f) => return Ok(f),
                None => self.read_raw().await?,
            }
        }
    }

    /// The handshake is done: keeps the channel and the ticket the answer brought (if
    /// any), returns the login answer's frames.
    async fn opened(
        &mut self,
        channel: Channel,
        mut payload: Vec<u8>,
    ) -> Result<Vec<Frame>, ClientError> {
        self.ticket = resume::take_ticket(&mut payload)
            .map_err(|e| ClientError::protocol_source("the handshake answer's ticket", e))?;
        self.buf.extend_from_slice(&payload);
        self.channel = Some(channel);
        // Only the payload's frames: records behind the answer may already be compact
        // (protocol 2), which the caller decides from the answer (`set_compact`).
        let out = self.parsed()?;
        if out.is_empty() {
            return Err(ClientError::protocol(
                "a handshake answer without its frame",
            ));
        }
        Ok(out)
    }

    /// The login answer named protocol 2: on a TCP link the records from here on are
    /// compact (docs/protocol.md §1.6). Long-poll keeps the §1.4 records.
    pub fn set_compact(&mut self) {
        if let (Inner::Tcp { .. }, Some(ch)) = (&self.inner, self.channel.as_mut()) {
            ch.set_compact();
        }
    }

    /// The whole frames in the plain buffer.
    fn parsed(&mut self) -> Result<Vec<Frame>, ClientError> {
        let mut out = Vec::new();
        while let Some(f) = Frame::parse(&mut self.buf, MAX_BODY_LEN)
            .map_err(|e| ClientError::protocol_source("", e))?
        {
            out.push(f);
        }
        Ok(out)
    }

    /// Reads what the transport has into `wire`, waiting for at least one byte.
    async fn read_raw(&mut self) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Tcp { read, .. } => {
                self.wire.reserve(8192);
                if read.read_buf(&mut self.wire).await? == 0 {
                    return Err(ClientError::io("server closed the link"));
                }
            }
            Inner::LongPoll(lp) => {
                let Some(rx) = lp.rx.as_mut() else {
                    return Err(ClientError::protocol("long-poll session not open"));
                };
                match rx.recv().await {
                    Some(Ok(b)) => self.wire.extend_from_slice(&b),
                    Some(Err(e)) => return Err(e),
                    None => return Err(ClientError::io("long-poll ended")),
                }
            }
        }
        Ok(())
    }

    /// Moves what came off the transport into the plain buffer (opening it on an
    /// encrypted link). A record that does not open ends the link.
    fn absorb(&mut self) -> Result<(), ClientError> {
        if self.wire.is_empty() {
            return Ok(());
        }
        match &mut self.channel {
            Some(ch) => ch
                .open(&mut self.wire, &mut self.buf)
                .map_err(|e| ClientError::protocol_source("encrypted link", e)),
            None if self.buf.is_empty() => {
                std::mem::swap(&mut self.buf, &mut self.wire);
                Ok(())
            }
            None => {
                self.buf.extend_from_slice(&self.wire);
                self.wire.clear();
                Ok(())
            }
        }
    }

    /// Puts frames back in front of what is still unread.
    pub fn unread(&mut self, frames: &[Frame]) {
        if frames.is_empty() {
            return;
        }
        let mut rest = BytesMut::new();
        for f in frames {
            f.encode(&mut rest);
        }
        rest.extend_from_slice(&self.buf);
        self.buf = rest;
    }

    /// Waits until at least one frame is whole; returns every whole frame. Cancel-safe:
    /// bytes read before a cancel stay in the buffer.
    pub async fn frames(&mut self) -> Result<Vec<Frame>, ClientError> {
        loop {
            self.absorb()?;
            let out = self.parsed()?;
            if !out.is_empty() {
                return Ok(out);
            }
            self.read_raw().await?;
        }
    }
}

/// A session resumption ticket and its secret, as the server handed them out (the
/// handshake answer's `TICKET` frame).
#[derive(Clone)]
pub(crate) struct Ticket {
    pub ticket: Vec<u8>,
    pub secret: [u8; resume::SECRET_LEN],
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LongPoll {
    /// Opens the session with `bytes` (the LOGIN frame), or sends them on it. Returns
    /// the frames the open answered with.
    async fn send(&mut self, bytes: &[u8]) -> Result<Option<Bytes>, ClientError> {
        let body = Bytes::copy_from_slice(bytes);
        let timeout = self.request_timeout;
        let Some(sid) = &self.sid else {
            let url = format!("{}/v1/lp/open", self.base);
            let (status, headers, body) =
                tokio::time::timeout(timeout, post(&self.http, &url, body))
                    .await
                    .map_err(|_| ClientError::timeout())??;
            if !status.is_success() {
                // The login was refused (or the body was): hand the Error on as an
                // ERROR frame, as the TCP link would.
                let e = v1::Error::decode(body)
                    .map_err(|_| ClientError::http(format!("long-poll open: HTTP {status}")))?;
                let mut frame = BytesMut::new();
                encode_msg(cmd::ERROR, 1, &e, &mut frame);
                return Ok(Some(frame.freeze()));
            }
            let sid = headers
                .get("ferry-session")
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ClientError::protocol("long-poll open without a session"))?
                .to_owned();
            let hold = headers
                .get("ferry-poll-hold-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(25_000)
                .min(120_000);
            let (tx, rx) = mpsc::channel(8);
            let poll_url = format!("{}/v1/lp/poll?sid={sid}", self.base);
            let poll_timeout = Duration::from_millis(hold) + timeout;
            self.poller = Some(tokio::spawn(poll_loop(
                self.http.clone(),
                poll_url,
                poll_timeout,
                tx,
            )));
            self.rx = Some(rx);
            self.sid = Some(sid);
            return Ok(Some(body));
        };
        let url = format!("{}/v1/lp/send?sid={sid}", self.base);
        let (status, _, body) = tokio::time::timeout(timeout, post(&self.http, &url, body))
            .await
            .map_err(|_| ClientError::timeout())??;
        if status.is_success() {
            return Ok(None);
        }
        Err(match v1::Error::decode(body) {
            Ok(e) if status != http::StatusCode::NOT_FOUND && status != http::StatusCode::GONE => {
                ClientError::from_error(e)
            }
            _ => ClientError::io(format!("long-poll session gone (HTTP {status})")),
        })
    }
}

/// Holds a poll open at all times; ends (telling `frames`) when the session is gone.
async fn poll_loop(
    http: Http,
    url: String,
    timeout: Duration,
    tx: mpsc::Sender<Result<Bytes, ClientError>>,
) {
    loop {
        let r = tokio::time::timeout(timeout, post(&http, &url, Bytes::new())).await;
        let got = match r {
            Err(_) => Err(ClientError::timeout()),
            Ok(Err(e)) => Err(e),
            Ok(Ok((status, _, body))) if status.is_success() => Ok(body),
            Ok(Ok((status, _, _))) => Err(ClientError::io(format!(
                "long-poll session gone (HTTP {status})"
            ))),
        };
        match got {
            Ok(b) if b.is_empty() => continue,
            Ok(b) => {
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}
