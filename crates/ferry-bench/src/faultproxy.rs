//! A TCP proxy that injects network faults in user space (this kernel has no `netem`
//! and no iptables): added delay with jitter, random stalls, byte-level chunking with
//! slow writes, abrupt cuts (RST to both ends) and half-open flows (forwarding stops in
//! both directions while both sockets stay open, as when every packet of a flow is
//! dropped). `ferry bench faults` and `crates/ferry/tests/it/faults.rs` put it between
//! SDK clients and the server; `ferry bench proxy` runs it alone for manual experiments.
//!
//! Each direction of a connection is a reader and a writer joined by a small bounded
//! queue, so a delay shifts the bytes in time without throttling throughput, and the
//! order of the bytes is kept (as TCP keeps it). The faults can be changed while the
//! proxy runs ([`FaultProxy::set`]): a test turns them off to let everything settle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a half-open flow is held before the proxy lets go of its sockets (silently:
/// the ends only learn of it from their own timeouts, or not at all).
pub const HALF_OPEN_HOLD: Duration = Duration::from_secs(120);

/// The faults applied to every connection. All zero: a transparent proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Faults {
    /// Added one-way delay per direction, ms.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Extra random delay 0..=jitter_ms per chunk read (order is kept), ms.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Chance per chunk that its direction stalls for `stall_ms` before forwarding it.
    #[arg(long, default_value_t = 0.0)]
    pub stall_prob: f64,
    #[arg(long, default_value_t = 0)]
    pub stall_ms: u64,
    /// Write at most this many bytes at a time (0: as read) …
    #[arg(long, default_value_t = 0)]
    pub chunk_bytes: usize,
    /// … with this pause between the pieces, ms (slow writes).
    #[arg(long, default_value_t = 0)]
    pub chunk_gap_ms: u64,
    /// Reset every connection (RST to both ends) after a random time in
    /// [cut_min_ms, cut_max_ms] (0: never).
    #[arg(long, default_value_t = 0)]
    pub cut_min_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub cut_max_ms: u64,
    /// Turn every connection half-open after a random time in
    /// [half_open_min_ms, half_open_max_ms] (0: never).
    #[arg(long, default_value_t = 0)]
    pub half_open_min_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub half_open_max_ms: u64,
}

impl Faults {
    fn pick(lo: u64, hi: u64) -> Option<Duration> {
        if hi == 0 {
            return None;
        }
        let lo = lo.min(hi);
        Some(Duration::from_millis(rand::random_range(lo..=hi)))
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.delay_ms > 0 || self.jitter_ms > 0 {
            parts.push(format!("delay {}+0..{} ms", self.delay_ms, self.jitter_ms));
        }
        if self.stall_prob > 0.0 {
            parts.push(format!(
                "stall {} ms with p={}",
                self.stall_ms, self.stall_prob
            ));
        }
        if self.chunk_bytes > 0 {
            parts.push(format!(
                "{} B pieces every {} ms",
                self.chunk_bytes, self.chunk_gap_ms
            ));
        }
        if self.cut_max_ms > 0 {
            parts.push(format!(
                "RST after {}..{} ms",
                self.cut_min_ms, self.cut_max_ms
            ));
        }
        if self.half_open_max_ms > 0 {
            parts.push(format!(
                "half-open after {}..{} ms",
                self.half_open_min_ms, self.half_open_max_ms
            ));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub cuts: AtomicU64,
    pub half_opened: AtomicU64,
    pub stalls: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

impl Stats {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "connections": g(&self.connections),
            "cuts": g(&self.cuts),
            "half_opened": g(&self.half_opened),
            "stalls": g(&self.stalls),
            "bytes_up": g(&self.bytes_up),
            "bytes_down": g(&self.bytes_down),
        })
    }
}

/// A running proxy; dropping it closes the listener and every connection.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// The faults, and how often they were changed (connections re-plan on a change).
    faults: Arc<Mutex<(u64, Faults)>>,
    pub stats: Arc<Stats>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and forwards to `upstream`.
    pub async fn start(
        listen: &str,
        upstream: SocketAddr,
        faults: Faults,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let me = FaultProxy {
            addr,
            faults: Arc::new(Mutex::new((0, faults))),
            stats: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (faults, stats, stop) = (me.faults.clone(), me.stats.clone(), me.stop.clone());
        tokio::spawn(async move {
            loop {
                let down = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => {
                            // Out of files or the like: back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let (faults, stats, stop) = (faults.clone(), stats.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(Ok(up)) =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream))
                            .await
                    else {
                        reset(&down);
                        return;
                    };
                    connection(down, up, faults, stats, stop).await;
                });
            }
        });
        Ok(me)
    }

    /// Replaces the faults. Open connections follow at once: delays and stalls from
    /// their next chunk on, and their cut or half-open time is drawn again from now.
    pub fn set(&self, f: Faults) {
        let mut g = self.faults.lock().expect("faults");
        *g = (g.0 + 1, f);
    }

    pub fn faults(&self) -> Faults {
        self.faults.lock().expect("faults").1.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Closes with an RST instead of a FIN once the stream is dropped.
#[allow(deprecated)]
fn reset(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

async fn connection(
    down: TcpStream,
    up: TcpStream,
    faults: Arc<Mutex<(u64, Faults)>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    // When this connection is cut or turns half-open: drawn from the faults of the
    // moment, and again whenever they change.
    let schedule = |seen: &mut u64| {
        let g = faults.lock().expect("faults");
        *seen = g.0;
        let now = Instant::now();
        let far = now + Duration::from_secs(365 * 24 * 3600);
        let f = &g.1;
        (
            Faults::pick(f.cut_min_ms, f.cut_max_ms).map_or(far, |d| now + d),
            Faults::pick(f.half_open_min_ms, f.half_open_max_ms).map_or(far, |d| now + d),
        )
    };
    let mut seen = 0;
    let (mut cut_at, mut half_at) = schedule(&mut seen);
    let mut watch = tokio::time::interval(Duration::from_millis(100));
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    enum End {
        Normal,
        Reset,
        HalfOpen,
    }
    let end = {
        let a = direction(&mut dr, &mut uw, &faults, &stats, &stats.bytes_up);
        let b = direction(&mut ur, &mut dw, &faults, &stats, &stats.bytes_down);
        tokio::pin!(a, b);
        let (mut a_done, mut b_done) = (false, false);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break End::Normal,
                ok = &mut a, if !a_done => { if !ok { break End::Reset; } a_done = true; }
                ok = &mut b, if !b_done => { if !ok { break End::Reset; } b_done = true; }
                _ = tokio::time::sleep_until(cut_at) => {
                    stats.cuts.fetch_add(1, Ordering::Relaxed);
                    break End::Reset;
                }
                _ = tokio::time::sleep_until(half_at) => {
                    stats.half_opened.fetch_add(1, Ordering::Relaxed);
                    break End::HalfOpen;
                }
                _ = watch.tick() => {
                    if faults.lock().expect("faults").0 != seen {
                        (cut_at, half_at) = schedule(&mut seen);
                    }
                }
            }
            if a_done && b_done {
                break End::Normal;
            }
        }
    };
    match end {
        End::Normal => {}
        End::Reset => {
            reset(dw.as_ref());
            reset(uw.as_ref());
        }
        End::HalfOpen => {
            // Nothing is read or written any more, and nothing is closed: both ends
            // see a connection that is up and silent. Held for a bounded time.
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(HALF_OPEN_HOLD) => {}
            }
            reset(dw.as_ref());
            reset(uw.as_ref());
        }
    }
    drop((dr, dw, ur, uw));
}

/// One direction: false when it ended with an error (a reset), true at a clean EOF
/// (which is passed on as a FIN).
async fn direction(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    faults: &Mutex<(u64, Faults)>,
    stats: &Stats,
    bytes: &AtomicU64,
) -> bool {
    // (when to forward, bytes); None is the EOF.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Bytes>)>(64);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) => 0,
                Ok(n) => n,
                Err(_) => return false,
            };
            let (delay, jitter) = {
                let f = &faults.lock().expect("faults").1;
                (f.delay_ms, f.jitter_ms)
            };
            let extra = if jitter > 0 {
                rand::random_range(0..=jitter)
            } else {
                0
            };
            // Never before an earlier chunk: the byte order is TCP's.
            let at = (Instant::now() + Duration::from_millis(delay + extra)).max(last);
            last = at;
            let chunk = (n > 0).then(|| Bytes::copy_from_slice(&buf[..n]));
            if tx.send((at, chunk)).await.is_err() {
                return false;
            }
            if n == 0 {
                return true;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let Some(chunk) = chunk else {
                let _ = to.shutdown().await;
                return true;
            };
            let (stall, piece, gap) = {
                let f = &faults.lock().expect("faults").1;
                let stall = (f.stall_prob > 0.0 && rand::random::<f64>() < f.stall_prob)
                    .then(|| Duration::from_millis(f.stall_ms));
                (stall, f.chunk_bytes, Duration::from_millis(f.chunk_gap_ms))
            };
            if let Some(s) = stall {
                stats.stalls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(s).await;
            }
            let piece = if piece == 0 { chunk.len() } else { piece };
            for (i, p) in chunk.chunks(piece).enumerate() {
                if i > 0 && !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                if to.write_all(p).await.is_err() {
                    return false;
                }
                bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
            }
        }
        false
    };
    tokio::pin!(read, write);
    let mut read_done = false;
    loop {
        tokio::select! {
            ok = &mut read, if !read_done => {
                if !ok {
                    return false;
                }
                read_done = true;
            }
            // The writer ends after the EOF, or at the first failed write.
            ok = &mut write => return ok,
        }
    }
}
