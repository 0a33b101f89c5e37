//! One TCP proxy for every network fault the tests stage in front of a server (Ferry's
//! or PostgreSQL): cut every link, black-hole them (a half-open network), refuse new
//! ones (the upstream unreachable), pass only HTTP (a firewall that blocks raw TCP),
//! delay each chunk (a slow path) or only the HTTP flows' (a slow short link beside a
//! quick long link), cut only the long links (the flows that are not HTTP), drop flows
//! that stay idle (a NAT that forgets them), and record what clients send and receive
//! (to look for plaintext on the wire).
//!
//! The random, scheduled faults of the load tests are `ferry bench`'s fault proxy; this
//! one is switched by the test at the moment it chooses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What a proxy does to every flow from its start (the switches are methods).
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// Waited before forwarding each chunk, both ways.
    pub delay: Duration,
    /// Waited before forwarding each chunk of an HTTP flow (one whose first byte is an
    /// HTTP method's), both ways, on top of `delay`: short-link requests are slow while
    /// long links are not.
    pub http_delay: Duration,
    /// A flow idle this long is forgotten: from its next byte on, everything is
    /// swallowed both ways and the link stays open (a NAT that dropped the mapping).
    pub idle_drop: Option<Duration>,
    /// Keep every byte clients send (see [`Proxy::sent`]).
    pub record: bool,
}

/// A TCP proxy to one upstream; its task lives as long as the test's runtime.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    options: ProxyOptions,
    cut: Notify,
    cut_long: Notify,
    blackhole: AtomicBool,
    refuse: AtomicBool,
    http_only: AtomicBool,
    sent: Mutex<Vec<u8>>,
    received: Mutex<Vec<u8>>,
}

/// What the proxy knows about one flow.
struct Flow {
    last: Mutex<tokio::time::Instant>,
    /// The middlebox forgot the flow: bytes are swallowed both ways.
    forgotten: AtomicBool,
    /// What its client's first byte said: [`UNKNOWN`] until it came, then [`HTTP`] or
    /// [`LONG_LINK`].
    kind: AtomicU8,
}

const UNKNOWN: u8 = 0;
const HTTP: u8 = 1;
const LONG_LINK: u8 = 2;

/// Whether a flow whose client's first byte is `first` is HTTP, by the rule every Ferry
/// port follows (docs/protocol.md, the first byte a client sends): an upper-case ASCII
/// letter starts an HTTP request, `0x00`–`0x10` a long link.
fn starts_http(first: u8) -> bool {
    first.is_ascii_uppercase()
}

impl Proxy {
    /// A plain proxy on 127.0.0.1, port chosen by the kernel.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, upstream, ProxyOptions::default())
    }

    /// A proxy accepting on `listener` (any address of 127.0.0.0/8: another network, as
    /// the server sees it).
    pub fn on(listener: TcpListener, upstream: SocketAddr, options: ProxyOptions) -> Proxy {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            options,
            cut: Notify::new(),
            cut_long: Notify::new(),
            blackhole: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            http_only: AtomicBool::new(false),
            sent: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if s.refuse.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                tokio::spawn(serve(down, s.clone()));
            }
        });
        Proxy { addr, shared }
    }

    /// Closes every link open through the proxy now.
    pub fn cut(&self) {
        self.shared.cut.notify_waiters();
    }

    /// Closes the flows open now that are not HTTP (the long links; a flow whose client
    /// has not sent a byte yet counts as one). HTTP flows go on.
    pub fn cut_long_links(&self) {
        self.shared.cut_long.notify_waiters();
    }

    /// On: links stay open but nothing is forwarded (a half-open network).
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// On: new connections are closed at once (the upstream is unreachable); together
    /// with [`Proxy::cut`], the upstream is gone.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// On: new connections whose first byte is not an HTTP method's are closed.
    pub fn http_only(&self, on: bool) {
        self.shared.http_only.store(on, Ordering::SeqCst);
    }

    /// Every byte clients sent through the proxy so far (with `record`).
    pub fn sent(&self) -> Vec<u8> {
        self.shared.sent.lock().unwrap().clone()
    }

    /// Every byte the upstream sent back to clients so far (with `record`).
    pub fn received(&self) -> Vec<u8> {
        self.shared.received.lock().unwrap().clone()
    }
}

async fn serve(down: TcpStream, s: Arc<Shared>) {
    if s.http_only.load(Ordering::SeqCst) {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(Duration::from_secs(5), down.peek(&mut first)).await;
        if !matches!(peeked, Ok(Ok(1))) || !starts_http(first[0]) {
            return; // Not HTTP: closed.
        }
    }
    let Ok(up) = TcpStream::connect(s.upstream).await else {
        return;
    };
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    let flow = Flow {
        last: Mutex::new(tokio::time::Instant::now()),
        forgotten: AtomicBool::new(false),
        kind: AtomicU8::new(UNKNOWN),
    };
    // Each direction ends on its own (a half-close passes through); a cut ends both.
    let pumps = async {
        tokio::join!(
            pump(dr, uw, &flow, &s, true),
            pump(ur, dw, &flow, &s, false)
        )
    };
    tokio::pin!(pumps);
    loop {
        tokio::select! {
            _ = &mut pumps => return,
            _ = s.cut.notified() => return,
            _ = s.cut_long.notified() => {
                if flow.kind.load(Ordering::SeqCst) != HTTP {
                    return;
                }
            }
        }
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, flow: &Flow, s: &Shared, up: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if up {
            let kind = if starts_http(buf[0]) { HTTP } else { LONG_LINK };
            let _ = flow
                .kind
                .compare_exchange(UNKNOWN, kind, Ordering::SeqCst, Ordering::SeqCst);
        }
        if s.options.record {
            let record = if up { &s.sent } else { &s.received };
            record.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        if let Some(idle) = s.options.idle_drop {
            let mut last = flow.last.lock().unwrap();
            if last.elapsed() > idle {
                flow.forgotten.store(true, Ordering::SeqCst);
            }
            *last = tokio::time::Instant::now();
        }
        if flow.forgotten.load(Ordering::SeqCst) || s.blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if !s.options.delay.is_zero() {
            tokio::time::sleep(s.options.delay).await;
        }
        if !s.options.http_delay.is_zero() && flow.kind.load(Ordering::SeqCst) == HTTP {
            tokio::time::sleep(s.options.http_delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
