//! The client's side of a long link, whatever carries it: [`Conn::connect`] is the one
//! place the SDK gets a connected transport. Frames go out with [`Conn::send`] and come
//! in with [`Conn::frames`], over TCP or over HTTP long-poll alike.
//!
//! Long-poll: the first `send` (the LOGIN frame) opens the session
//! (`POST /v1/lp/open`); later sends are `POST /v1/lp/send?sid=…`; a background task
//! holds `POST /v1/lp/poll?sid=…` and hands what it returns to `frames`. Dropping the
//! connection ends the session (`POST /v1/lp/close`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_proto::frame::encode_msg;
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
    /// Bytes received that are not yet a whole frame.
    buf: BytesMut,
}

enum Inner {
    Tcp {
        read: OwnedReadHalf,
        write: OwnedWriteHalf,
    },
    LongPoll(LongPoll),
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
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = http
        .request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
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
                    .map_err(|_| ClientError::Timeout)??;
                let _ = stream.set_nodelay(true);
                let (read, write) = stream.into_split();
                Inner::Tcp { read, write }
            }
            Transport::Http => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(connect_timeout));
                Inner::LongPoll(LongPoll {
                    http: Client::builder(TokioExecutor::new()).build(connector),
                    base: format!("http://{}", ep.addr),
                    sid: None,
                    rx: None,
                    poller: None,
                    request_timeout,
                })
            }
        };
        Ok(Conn {
            endpoint: ep,
            inner,
            buf: BytesMut::new(),
        })
    }

    /// Sends encoded frames.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Tcp { write, .. } => Ok(write.write_all(bytes).await?),
            Inner::LongPoll(lp) => {
                if let Some(first) = lp.send(bytes).await? {
                    self.buf.extend_from_slice(&first);
                }
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
            let mut out = Vec::new();
            while let Some(f) = Frame::parse(&mut self.buf, MAX_BODY_LEN)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                out.push(f);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            match &mut self.inner {
                Inner::Tcp { read, .. } => {
                    self.buf.reserve(8192);
                    if read.read_buf(&mut self.buf).await? == 0 {
                        return Err(ClientError::Io("server closed the link".into()));
                    }
                }
                Inner::LongPoll(lp) => {
                    let Some(rx) = lp.rx.as_mut() else {
                        return Err(ClientError::Protocol("long-poll session not open".into()));
                    };
                    match rx.recv().await {
                        Some(Ok(b)) => self.buf.extend_from_slice(&b),
                        Some(Err(e)) => return Err(e),
                        None => return Err(ClientError::Io("long-poll ended".into())),
                    }
                }
            }
        }
    }
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
                    .map_err(|_| ClientError::Timeout)??;
            if !status.is_success() {
                // The login was refused (or the body was): hand the Error on as an
                // ERROR frame, as the TCP link would.
                let e = v1::Error::decode(body)
                    .map_err(|_| ClientError::Http(format!("long-poll open: HTTP {status}")))?;
                let mut frame = BytesMut::new();
                encode_msg(cmd::ERROR, 1, &e, &mut frame);
                return Ok(Some(frame.freeze()));
            }
            let sid = headers
                .get("ferry-session")
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ClientError::Protocol("long-poll open without a session".into()))?
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
            .map_err(|_| ClientError::Timeout)??;
        if status.is_success() {
            return Ok(None);
        }
        Err(match v1::Error::decode(body) {
            Ok(e) if status != http::StatusCode::NOT_FOUND && status != http::StatusCode::GONE => {
                ClientError::from_error(e)
            }
            _ => ClientError::Io(format!("long-poll session gone (HTTP {status})")),
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
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok((status, _, body))) if status.is_success() => Ok(body),
            Ok(Ok((status, _, _))) => Err(ClientError::Io(format!(
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
