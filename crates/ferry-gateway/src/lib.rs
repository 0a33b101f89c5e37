//! Ferry's connection layer. A gateway holds client sockets and forwards: it tells the
//! long link from HTTP by the first byte (and carries the long link over HTTP too:
//! long-poll, and WebSocket upgrades of `GET /v1/ws`), decodes frames, enforces the login deadline,
//! answers heartbeats, drops silent links, and passes every other request over the bus
//! to logic, writing back whatever logic answers and pushes.
//!
//! It must not know what a message, a friend or a group is, and it keeps nothing that
//! matters: restart it at any time, its clients reconnect and sync, and nothing is lost.

mod api;
mod guard;
pub mod http;
pub(crate) mod keywork;
mod link;
pub mod lp;
mod registry;
mod secure;
mod ws;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Bus;
use ferry_proto::secure::StaticKey;
use ferry_proto::{sniff, Protocol};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use registry::Registry;

/// The accept queue asked of the kernel for a gateway port (capped by
/// `net.core.somaxconn`). Thousands of phones reconnecting at once after a network
/// blip must queue, not have their SYNs dropped: a dropped SYN costs the client a
/// one-second retry.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Binds a gateway port: `SO_REUSEADDR` (a restarted gateway gets its port back while old
/// connections linger in TIME_WAIT) and a deep accept queue ([`LISTEN_BACKLOG`]). `addr`
/// is an `IP:PORT` literal.
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr:?} is not an IP:PORT address: {e}"),
        )
    })?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Gateway settings. Every field has a default.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's name on the bus; must be unique in a cluster.
    pub id: String,
    /// The LOGIN frame must arrive within this many milliseconds of the connect.
    pub login_timeout_ms: u64,
    /// A link silent for this long is dropped. Clients are told this at login; a smart
    /// heartbeat stretches its interval up to it (mars: 10 min), so the default allows a
    /// 10-minute interval plus half a minute for the answer.
    pub heartbeat_timeout_ms: u64,
    /// Largest frame body a client may send.
    pub max_frame_bytes: usize,
    /// Largest short-link request body.
    pub max_http_body_bytes: usize,
    /// Largest short-link upload (avatar, client log report).
    pub max_upload_bytes: usize,
    /// Connections held at once; further connects wait in the kernel's backlog.
    pub max_connections: usize,
    /// Frames that may wait for a slow reader before its link is dropped.
    pub outbox_frames: usize,
    /// On shutdown, how long links get to drain before they are cut.
    pub shutdown_grace_ms: u64,
    /// Connections one client IP may hold at once (0: no limit). Carrier NAT puts many
    /// phones behind one address, so keep it high; it stops one host from taking every
    /// socket.
    pub max_connections_per_ip: usize,
    /// Short-link body limits per method (`"auth" = 2048`), overriding the command
    /// table's limit for that method (`ferry_proto::cmd`: 4 KiB for `register`, `auth`,
    /// `password`; 1 KiB for `auth/refresh`, `logout`; `max_upload_bytes` for uploads;
    /// `max_http_body_bytes` for the rest).
    pub body_limits: std::collections::BTreeMap<String, usize>,
    /// Long-poll: how long a poll is held when there is nothing to send.
    pub lp_poll_hold_ms: u64,
    /// Long-poll: a session nobody polls or sends to for this long ends.
    pub lp_idle_ms: u64,
    /// Long-poll: bytes a session may queue in either direction before it is closed
    /// (output nobody collects) or a send is refused (input the link has not taken).
    pub lp_max_pending_bytes: usize,
    /// Accept plaintext long links and short-link requests (local development only).
    /// Off: every link must start with the encrypted HELLO and every `POST /v1/…`
    /// request must be sealed (docs/protocol.md 1.4, 3.1).
    pub allow_plaintext: bool,
    /// Session resumption (docs/protocol.md 1.5): a ticket handed out after a full
    /// handshake is good for this many seconds (0: no tickets, every link does the full
    /// Noise handshake). A resumed session's new ticket keeps the first one's expiry, so
    /// a full handshake happens at least this often.
    pub ticket_lifetime_secs: u64,
    /// Key epoch of the resumption tickets: the ticket key is derived from the server
    /// key and this number, so raising it (on every gateway) refuses every ticket
    /// issued before, without a new server key.
    pub ticket_epoch: u32,
    /// Handshakes (a `HELLO` or `RESUME` read, its login not yet answered) this gateway
    /// works on at once (0: no limit). A new one beyond it, or while logic sheds new
    /// sessions, waits in the waiting room below; refused (before any X25519 work, with
    /// a plain `ERROR UNAVAILABLE` and `handshake_retry_after_ms`) when that is full or
    /// its wait is over.
    pub max_handshakes: usize,
    /// Handshakes that may wait at once for their turn, their connections open.
    pub handshake_queue: usize,
    /// How long a handshake waits for its turn at most, in milliseconds (0: no waiting,
    /// refused at once). Keep it under the clients' wait for a login answer (10 s in
    /// the SDK) and `login_timeout_ms`.
    pub handshake_hold_ms: u64,
    /// What a client whose handshake was refused (the limit above, or logic shedding new
    /// sessions) is told to wait before it tries again, in milliseconds.
    pub handshake_retry_after_ms: u32,
    /// Threads that do the X25519 of full handshakes, apart from the threads that
    /// forward connected users' frames (0: on those). One thread does a few thousand
    /// full handshakes a second; raise it where more new logins matter.
    pub key_work_threads: usize,
    /// How much lower the key-work threads' CPU priority is (added to their nice value,
    /// Linux): under a storm of new logins the forwarding gets the CPU first.
    pub key_work_nice: i32,
    /// Run the key-work threads under the SCHED_IDLE policy as well (Linux): a
    /// forwarding thread that wakes takes the core from them at once. Nice alone lets
    /// a key-work thread that got the core keep it for the rest of its slice (EEVDF's
    /// run to parity), and a connected user's frame waits behind an X25519. Off: new
    /// logins get a larger share of a saturated machine (at nice 10 the key work kept
    /// about a quarter of a core through the overload bench's storm; under SCHED_IDLE,
    /// what the forwarding leaves idle).
    pub key_work_idle: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: "gw-1".into(),
            login_timeout_ms: 10_000,
            heartbeat_timeout_ms: 630_000,
            max_frame_bytes: 64 * 1024,
            max_http_body_bytes: 64 * 1024,
            max_upload_bytes: 3 * 1024 * 1024,
            max_connections: 1_000_000,
            outbox_frames: 512,
            shutdown_grace_ms: 5_000,
            max_connections_per_ip: 10_000,
            body_limits: Default::default(),
            lp_poll_hold_ms: 25_000,
            lp_idle_ms: 60_000,
            lp_max_pending_bytes: 1024 * 1024,
            allow_plaintext: false,
            ticket_lifetime_secs: 86_400,
            ticket_epoch: 1,
            max_handshakes: 256,
            handshake_queue: 16_384,
            handshake_hold_ms: 5_000,
            handshake_retry_after_ms: 1_000,
            key_work_threads: 1,
            key_work_nice: 10,
            key_work_idle: true,
        }
    }
}

/// Live counters, read by the dashboard and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub links: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bad_input: AtomicU64,
    pub timeouts: AtomicU64,
    pub slow_consumers: AtomicU64,
    /// NOTIFY pushes not written to a link because its device had acknowledged their
    /// `latest_seq` (`Heartbeat.synckey`, `LoginReq.synckey`).
    pub notifies_skipped: AtomicU64,
    pub http_requests: AtomicU64,
    /// Connections refused by a limit (connections per IP).
    pub refused: AtomicU64,
    /// Full Noise IK handshakes the gateway started (each costs X25519 operations).
    pub full_handshakes: AtomicU64,
    /// Links resumed from a ticket (no X25519).
    pub resumed_handshakes: AtomicU64,
    /// RESUME hellos refused (the client falls back to a full handshake).
    pub resumes_refused: AtomicU64,
    /// Handshakes refused before any key work: `max_handshakes` were in progress.
    pub handshakes_refused_busy: AtomicU64,
    /// Handshakes refused before any key work: logic was shedding new sessions.
    pub handshakes_refused_shed: AtomicU64,
    /// Handshakes that waited for their turn in the waiting room (admitted or refused
    /// after).
    pub handshakes_held: AtomicU64,
}

/// What a connection holds while it lives: its place under `max_connections` and its
/// count against its client's address (`max_connections_per_ip`). An HTTP connection
/// upgraded to a WebSocket hands it on to its link.
pub(crate) struct Seat {
    _permit: OwnedSemaphorePermit,
    _slot: Option<guard::IpSlot>,
}

/// A gateway: serve it on any number of listeners with [`Gateway::serve`].
pub struct Gateway {
    cfg: GatewayConfig,
    /// Live connections per client IP (`cfg.max_connections_per_ip`).
    ip_conns: Arc<guard::IpConns>,
    bus: Arc<dyn Bus>,
    registry: Arc<Registry>,
    next_conn: AtomicU64,
    pub stats: Arc<Stats>,
    limit: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Routes the binary mounts beside the short link (metrics, dashboard): the gateway
    /// serves them without knowing what they are.
    extra_routes: std::sync::OnceLock<axum::Router>,
    /// Long-poll sessions: links carried over HTTP.
    lp: lp::LpSessions,
    /// The addresses this gateway accepts on (for the default endpoint list).
    listen: parking_lot::Mutex<Vec<std::net::SocketAddr>>,
    /// The server's static key: encrypted links and sealed short-link requests.
    key: Arc<StaticKey>,
    /// Sealed short-link requests seen lately (replays are refused).
    replay: secure::ReplayCache,
    /// Seals and opens session resumption tickets; derived from `key`, so the same on
    /// every gateway of a cluster.
    tickets: ferry_proto::resume::TicketKey,
    /// Client nonces of RESUME hellos seen lately (replays are refused).
    resume_seen: secure::NonceCache,
    /// Handshakes in progress (`cfg.max_handshakes`); each holds a [`secure::HandshakeSlot`].
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    /// The places under `cfg.max_handshakes` (closed when there is no limit).
    handshake_permits: Arc<Semaphore>,
    /// The places of the waiting room (`cfg.handshake_queue`).
    room: Arc<Semaphore>,
    /// Until when (`now_ms`) new handshakes are refused: logic shed a LOGIN (or could
    /// not be reached), so a new handshake's X25519 work would be spent for nothing.
    shed_until_ms: AtomicU64,
    /// The threads of full handshakes' key work (`cfg.key_work_threads`).
    key_work: keywork::KeyWork,
    /// Time zero for the links' `last_rx_ms`.
    epoch: std::time::Instant,
    /// Whether the sweeper (silent links, shutdown notice) runs: started by the first
    /// [`Gateway::serve`].
    sweeping: AtomicBool,
}

impl Gateway {
    /// Creates a gateway with the server's static `key` and attaches it to the bus for
    /// pushes. `shutdown` stops it.
    pub fn new(
        cfg: GatewayConfig,
        key: StaticKey,
        bus: Arc<dyn Bus>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let stats = Arc::new(Stats::default());
        let registry = Arc::new(Registry::new(cfg.outbox_frames, stats.clone()));
        bus.attach_gateway(&cfg.id, registry.clone());
        let tickets = ferry_proto::resume::TicketKey::derive(&key.private, cfg.ticket_epoch);
        let priority = keywork::Priority {
            nice: cfg.key_work_nice,
            idle: cfg.key_work_idle,
        };
        let key_work = keywork::KeyWork::start(cfg.key_work_threads, priority)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no key-work threads: full handshakes run on the forwarding threads");
                keywork::KeyWork::start(0, Default::default()).expect("no threads to start")
            });
        let handshake_permits = Arc::new(Semaphore::new(
            cfg.max_handshakes.min(Semaphore::MAX_PERMITS),
        ));
        if cfg.max_handshakes == 0 {
            handshake_permits.close();
        }
        let room = Arc::new(Semaphore::new(
            cfg.handshake_queue.min(Semaphore::MAX_PERMITS),
        ));
        Arc::new(Gateway {
            ip_conns: Default::default(),
            limit: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg,
            bus,
            registry,
            next_conn: AtomicU64::new(1),
            stats,
            tasks: TaskTracker::new(),
            shutdown,
            extra_routes: std::sync::OnceLock::new(),
            lp: lp::LpSessions::default(),
            listen: parking_lot::Mutex::new(Vec::new()),
            tickets,
            key_work,
            resume_seen: Default::default(),
            key: Arc::new(key),
            replay: Default::default(),
            handshakes: Default::default(),
            handshake_permits,
            room,
            shed_until_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            sweeping: AtomicBool::new(false),
        })
    }

    /// Logic refused a LOGIN as overloaded (or could not be reached): refuse new
    /// handshakes for `retry_after_ms` (the gateway's own when logic named none), so a
    /// storm of logins costs the gateway no key work while logic catches up. Returns
    /// that wait, for the refused client's own retry-after.
    pub(crate) fn logic_shed(&self, retry_after_ms: u32) -> u32 {
        let wait = match retry_after_ms {
            0 => self.cfg.handshake_retry_after_ms,
            n => n,
        };
        let now = self.now_ms();
        let was = self
            .shed_until_ms
            .fetch_max(now + u64::from(wait), Ordering::Relaxed);
        if was <= now {
            tracing::info!(
                wait_ms = wait,
                "logic sheds new sessions: new handshakes wait (or are refused) meanwhile"
            );
        }
        wait
    }

    /// Handshakes waiting for their turn now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.cfg.handshake_queue.min(Semaphore::MAX_PERMITS) - self.room.available_permits()
    }

    /// How long logic's shedding of new sessions lasts yet, in milliseconds (0: over).
    pub(crate) fn shed_remaining_ms(&self) -> u64 {
        self.shed_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(self.now_ms())
    }

    /// Milliseconds since the gateway started.
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Closes links that fell silent, and tells every link when the gateway shuts
    /// down. One task for all links, so no link carries a timer of its own.
    /// Holds the gateway weakly: it ends with the gateway, or at shutdown.
    async fn sweeper(gw: std::sync::Weak<Self>, shutdown: CancellationToken) {
        let Some(timeout) = gw.upgrade().map(|g| g.cfg.heartbeat_timeout_ms.max(1)) else {
            return;
        };
        let tick = Duration::from_millis((timeout / 8).clamp(20, 1_000));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    let Some(gw) = gw.upgrade() else { return };
                    let silent_before = gw.now_ms().saturating_sub(timeout);
                    gw.registry.sweep(silent_before);
                }
            }
        }
        if let Some(gw) = gw.upgrade() {
            gw.registry.shutdown_all();
        }
    }

    /// Serves `routes` on every port next to the short link, for HTTP connections
    /// accepted from now on. Once only: a second call hands its routes back. The paths
    /// must not clash with `/v1/…` or `/healthz`.
    pub fn mount(&self, routes: axum::Router) -> Result<(), axum::Router> {
        self.extra_routes.set(routes)
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The server's static public key (what clients pin), in hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.public)
    }

    /// Accepts connections on `listener` until shutdown. Call once per listener.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        // The sweeper starts with the first listener served, not in `new`: building a
        // gateway spawns nothing.
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(Self::sweeper(Arc::downgrade(&self), self.shutdown.clone()));
        }
        if let Ok(a) = listener.local_addr() {
            let mut l = self.listen.lock();
            if !l.contains(&a) {
                l.push(a);
            }
        }
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                p = self.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let gw = self.clone();
                    // Boxed: the task's future then carries a pointer, not the socket.
                    let accepted = Box::new((stream, peer.to_string()));
                    self.tasks.spawn(async move {
                        gw.stats.connections.fetch_add(1, Ordering::Relaxed);
                        gw.clone().connection(accepted, permit).await;
                        gw.stats.connections.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Waits, after shutdown was signalled, until every connection has finished or the
    /// grace period is over.
    pub async fn drained(&self) {
        self.tasks.close();
        let grace = Duration::from_millis(self.cfg.shutdown_grace_ms);
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "shutdown grace over; cutting links"
            );
        }
        self.bus.detach_gateway(&self.cfg.id);
    }

    /// Live long links.
    pub fn links(&self) -> u64 {
        self.stats.links.load(Ordering::Relaxed)
    }

    /// Open long-poll sessions (each also counts as a link once logged in).
    pub fn long_poll_sessions(&self) -> usize {
        self.lp.len()
    }

    /// The addresses this gateway serves on (those handed to [`Gateway::serve`]).
    pub fn listen_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listen.lock().clone()
    }

    async fn connection(
        self: Arc<Self>,
        accepted: Box<(TcpStream, String)>,
        permit: OwnedSemaphorePermit,
    ) {
        let (stream, peer) = *accepted;
        let _ = stream.set_nodelay(true);
        let deadline = Duration::from_millis(self.cfg.login_timeout_ms);
        let mut first = [0u8; 1];
        // Boxed, like every phase but the link's idle loop: a task is as large as its
        // largest state, for as long as it lives.
        let peeked = Box::pin(async {
            tokio::select! {
                _ = self.shutdown.cancelled() => None,
                r = tokio::time::timeout(deadline, stream.peek(&mut first)) => Some(r),
            }
        })
        .await;
        let Some(peeked) = peeked else { return };
        match peeked {
            Ok(Ok(1)) => {}
            Ok(_) => return,
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let ip = peer.parse::<std::net::SocketAddr>().map(|a| a.ip());
        let slot = match ip {
            Ok(ip) => match self.ip_conns.admit(ip, self.cfg.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    guard::refuse(stream, first[0], "too many connections from your address").await;
                    return;
                }
            },
            Err(_) => None,
        };
        let seat = Seat {
            _permit: permit,
            _slot: slot,
        };
        match sniff(first[0]) {
            Protocol::Frame => {
                link::run(self, stream, peer).await;
                drop(seat);
            }
            // An HTTP connection hands its seat to the WebSocket link it upgrades to.
            Protocol::Http => Box::pin(http::serve(self, stream, peer, seat)).await,
            Protocol::Unknown => {
                // Not a protocol of ours: no answer, and a close without a reset.
                self.stats.bad_input.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, byte = first[0], "unknown protocol; closing");
                let mut stream = stream;
                Box::pin(link::linger_close(&mut stream)).await;
            }
        }
    }
}
