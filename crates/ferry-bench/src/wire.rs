//! What a bench long link runs over: TCP, or a WebSocket (`GET /v1/ws`,
//! docs/protocol.md §7.1a) — the same frames and encryption either way, one frame per
//! binary message on a WebSocket. The WebSocket client is tokio-tungstenite's, as a
//! browser's would be a real WebSocket stack: the bench measures the server's side.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::Transport;

pub type Ws = WebSocketStream<TcpStream>;

/// Upgrades a connection to `addr` to the long link over WebSocket.
pub async fn upgrade(tcp: TcpStream, addr: &str) -> anyhow::Result<Ws> {
    // Small buffers: the bench holds thousands of these in one process (tungstenite
    // reads into 128 KiB per connection by default).
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{addr}/v1/ws");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg)).await?;
    Ok(ws)
}

/// `bytes` (whole long-link frames) cut into frames: one WebSocket message each.
pub fn frames(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let len = if bytes.len() >= ferry_proto::HEADER_LEN {
            ferry_proto::HEADER_LEN + u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize
        } else {
            bytes.len()
        };
        let (frame, rest) = bytes.split_at(len.min(bytes.len()));
        bytes = rest;
        Some(frame)
    })
}

/// Sends whole frames, one binary message each, in one flush.
async fn send_frames<S>(sink: &mut S, bytes: &[u8]) -> io::Result<()>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    for f in frames(bytes) {
        sink.feed(Message::Binary(Bytes::copy_from_slice(f)))
            .await
            .map_err(io::Error::other)?;
    }
    sink.flush().await.map_err(io::Error::other)
}

/// The next binary message appended to `into`: its length, 0 at the close. Pings are
/// answered by tungstenite.
async fn next_message<S>(stream: &mut S, into: &mut BytesMut) -> io::Result<usize>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Binary(b))) => {
                into.extend_from_slice(&b);
                return Ok(b.len());
            }
            Some(Ok(Message::Close(_))) | None => return Ok(0),
            Some(Ok(Message::Text(_))) => {
                return Err(io::Error::other("a text message on the long link"))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(io::Error::other(e)),
        }
    }
}

/// One long link's connection.
pub enum Wire {
    Tcp(TcpStream),
    Ws(Box<Ws>),
}

impl Wire {
    /// Connects to `addr` over `transport`.
    pub async fn connect(addr: &str, transport: Transport) -> anyhow::Result<Wire> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(match transport {
            Transport::Tcp => Wire::Tcp(tcp),
            Transport::Ws => Wire::Ws(Box::new(upgrade(tcp, addr).await?)),
        })
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Tcp(s) => s,
            Wire::Ws(ws) => ws.get_ref(),
        }
    }

    /// Writes whole frames.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Wire::Tcp(s) => s.write_all(bytes).await,
            Wire::Ws(ws) => send_frames(ws.as_mut(), bytes).await,
        }
    }

    /// Appends what arrives to `into`: how much, 0 at the close. Cancel-safe.
    pub async fn read_buf(&mut self, into: &mut BytesMut) -> io::Result<usize> {
        match self {
            Wire::Tcp(s) => {
                into.reserve(8192);
                s.read_buf(into).await
            }
            Wire::Ws(ws) => next_message(ws.as_mut(), into).await,
        }
    }

    /// Waits until something arrives and throws it away; false at the close. Cancel-safe.
    pub async fn heard(&mut self) -> io::Result<bool> {
        match self {
            Wire::Tcp(s) => loop {
                s.readable().await?;
                let mut chunk = [0u8; 512];
                match s.try_read(&mut chunk) {
                    Ok(0) => return Ok(false),
                    Ok(_) => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            },
            Wire::Ws(ws) => {
                let mut scratch = BytesMut::new();
                Ok(next_message(ws.as_mut(), &mut scratch).await? > 0)
            }
        }
    }

    /// A reading and a writing half, for separate tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Wire::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Wire::Ws(ws) => {
                let (w, r) = (*ws).split();
                (ReadHalf::Ws(r), WriteHalf::Ws(w))
            }
        }
    }
}

pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Ws(SplitStream<Ws>),
}

impl ReadHalf {
    /// As [`Wire::read_buf`].
    pub async fn read_buf(&mut self, into: &mut BytesMut) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(r) => r.read_buf(into).await,
            ReadHalf::Ws(r) => next_message(r, into).await,
        }
    }
}

pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Ws(SplitSink<Ws, Message>),
}

impl WriteHalf {
    /// As [`Wire::write_all`].
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.write_all(bytes).await,
            WriteHalf::Ws(w) => send_frames(w, bytes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_are_cut_into_whole_frames() {
        let mut b = bytes::BytesMut::new();
        ferry_proto::frame::encode_raw(2, 1, b"", &mut b);
        ferry_proto::frame::encode_raw(3, 2, b"abc", &mut b);
        let got: Vec<usize> = super::frames(&b).map(<[u8]>::len).collect();
        assert_eq!(got, vec![8, 11]);
    }
}
