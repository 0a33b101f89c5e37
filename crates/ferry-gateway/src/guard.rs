//! Abuse limits at the edge: connections per client IP, and the refusal a connection
//! over the limit gets (an `ERROR RATE_LIMITED` frame on the long link, `429` with
//! `Retry-After` on HTTP) before it is closed.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use dashmap::DashMap;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, frame::encode_msg, sniff, Protocol};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a refused client is asked to wait before it connects again.
pub const CONN_RETRY_AFTER_MS: u32 = 5_000;

/// Live connections per client IP.
#[derive(Default)]
pub struct IpConns {
    counts: DashMap<IpAddr, u32>,
}

/// Holds one connection's place; gives it back when dropped.
pub struct IpSlot {
    conns: Arc<IpConns>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.conns.counts.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl IpConns {
    /// A place for one more connection from `ip`, unless it already holds `max`
    /// (0: no limit).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let max = match max {
            0 => u32::MAX,
            m => u32::try_from(m).unwrap_or(u32::MAX),
        };
        self.take(ip, max)
    }

    fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<IpSlot> {
        let mut n = self.counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            conns: self.clone(),
            ip,
        })
    }

    /// Connections `ip` holds now.
    #[cfg(test)]
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.counts.get(&ip).map(|n| *n).unwrap_or(0)
    }
}

/// The bytes that tell a client, in the protocol its first byte chose, that it is over
/// a limit and when to come back.
pub fn refusal(first: u8, code: ErrorCode, message: &str, retry_after_ms: u32) -> Vec<u8> {
    match sniff(first) {
        Protocol::Frame => {
            let mut out = BytesMut::new();
            let e = v1::Error {
                code: code as i32,
                message: message.into(),
                retry_after_ms,
            };
            encode_msg(cmd::ERROR, 0, &e, &mut out);
            out.to_vec()
        }
        Protocol::Http => {
            let status = crate::http::status_for(code);
            let body = v1::Error {
                code: code as i32,
                message: message.into(),
                retry_after_ms,
            };
            let body = ferry_proto::ProtoMessage::encode_to_vec(&body);
            let mut out = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nRetry-After: {}\r\nConnection: close\r\n\r\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                crate::http::PROTOBUF,
                body.len(),
                retry_after_ms.div_ceil(1000),
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        }
        Protocol::Unknown => Vec::new(),
    }
}

/// Writes [`refusal`] (best effort, bounded) and drops the connection.
pub async fn refuse(mut stream: TcpStream, first: u8, message: &str) {
    let bytes = refusal(first, ErrorCode::RateLimited, message, CONN_RETRY_AFTER_MS);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots() {
        let c = Arc::new(IpConns::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = c.admit(a, 2).unwrap();
        let s2 = c.admit(a, 2).unwrap();
        assert!(c.admit(a, 2).is_none());
        assert!(c.admit(b, 2).is_some());
        drop(s1);
        assert_eq!(c.count(a), 1);
        let _s3 = c.admit(a, 2).unwrap();
        drop(s2);
        assert!(c.admit(a, 0).is_some(), "0 means no limit");
    }

    #[test]
    fn refusals_speak_the_clients_protocol() {
        let f = refusal(0x00, ErrorCode::RateLimited, "slow", 1500);
        let mut buf = BytesMut::from(&f[..]);
        let frame = ferry_proto::Frame::parse(&mut buf, ferry_proto::MAX_BODY_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(frame.cmd, cmd::ERROR);
        let e: v1::Error = frame.decode().unwrap();
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::RateLimited as i32, 1500)
        );
        let h = String::from_utf8_lossy(&refusal(b'P', ErrorCode::RateLimited, "slow", 1500))
            .to_string();
        assert!(h.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{h}");
        assert!(h.contains("Retry-After: 2\r\n"));
        assert!(refusal(0xff, ErrorCode::RateLimited, "x", 1).is_empty());
    }
}
