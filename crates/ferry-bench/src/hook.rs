//! The before-send hook of `ferry bench p2p --before-hook-ms N`: a local HTTP/1.1 server
//! (keep-alive, as the logic node's pooled client uses it) that holds every request N ms
//! and answers `{"action":"allow"}`. It counts the requests and measures how long it
//! really held each (a sleep is never exactly N ms), so the report can compare the
//! latency the hook added with the hook's own time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n{\"action\":\"allow\"}";

pub struct HookServer {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    calls: Arc<AtomicU64>,
    /// How long each request was held, µs.
    held: Arc<Mutex<Histogram<u64>>>,
    task: JoinHandle<()>,
}

impl HookServer {
    pub async fn start(delay: Duration) -> anyhow::Result<HookServer> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", l.local_addr()?);
        let calls = Arc::new(AtomicU64::new(0));
        let held = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
        let (c, h) = (calls.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (c, h) = (c.clone(), h.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(s, delay, &c, &h).await {
                        tracing::debug!(error = %e, "hook connection ended");
                    }
                });
            }
        });
        Ok(HookServer {
            url,
            calls,
            held,
            task,
        })
    }

    /// Requests answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// How long requests were held: (p50, p99) in µs.
    pub fn held_us(&self) -> (u64, u64) {
        let h = self.held.lock().expect("hook histogram");
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut s: TcpStream,
    delay: Duration,
    calls: &AtomicU64,
    held: &Mutex<Histogram<u64>>,
) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 64 * 1024 || s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..head_end + len);
        calls.fetch_add(1, Ordering::Relaxed);
        // A thread's sleep is close to the time asked; tokio's timer rounds up to the
        // next millisecond tick.
        let t = Instant::now();
        tokio::task::spawn_blocking(move || std::thread::sleep(delay))
            .await
            .map_err(std::io::Error::other)?;
        let _ = held
            .lock()
            .expect("hook histogram")
            .record(t.elapsed().as_micros() as u64);
        s.write_all(ANSWER).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_holds_each_request_and_answers_allow_on_one_connection() {
        let h = HookServer::start(Duration::from_millis(20)).await.unwrap();
        let addr = h
            .url
            .trim_start_matches("http://")
            .trim_end_matches("/hook");
        let mut s = TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            let t = Instant::now();
            s.write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .unwrap();
            let mut got = vec![0u8; ANSWER.len()];
            s.read_exact(&mut got).await.unwrap();
            assert!(t.elapsed() >= Duration::from_millis(20));
            assert!(String::from_utf8(got)
                .unwrap()
                .ends_with("{\"action\":\"allow\"}"));
        }
        assert_eq!(h.calls(), 2);
        assert!(h.held_us().1 >= 20_000);
    }
}
