//! The link driver: one task that owns the long link. It picks an endpoint (racing the
//! candidates, TCP first, HTTP long-poll when no TCP endpoint works), logs in,
//! heartbeats (the smart heartbeat of the current network), syncs, routes answers to
//! waiting requests, reports connect timings when idle, refreshes the endpoint list,
//! and reconnects with back-off and jitter.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::frame::encode_msg;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, Frame, ProtoMessage};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::smart::{self, Endpoint, HeartbeatState, RaceError, Transport};
use crate::transport::Conn;
use crate::{ClientError, Cmd, Event, Held, Shared, ShortLink, Status, GAP_WAIT};

/// Why a link session ended.
enum End {
    /// The app closed the client.
    Closed,
    /// Give up for good.
    Fatal(ClientError),
    /// Reconnect. `logged_in` resets the back-off.
    Lost { reason: String, logged_in: bool },
    /// The app said the network changed: reconnect at once.
    NetworkChanged,
    /// A better link (TCP, while on long-poll) is logged in: move to it.
    Switch(Box<Connected>),
}

/// A logged-in link, before its session starts.
pub(crate) struct Connected {
    conn: Conn,
    login: v1::LoginResp,
    /// The link resumed from the device's ticket (no Noise handshake).
    resumed: bool,
}

/// Full jitter: a random wait in [d/2, d].
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

/// Switches to another network: its own heartbeat, and no bans from the old one.
fn network_changed(shared: &Shared, network: String) {
    let mut smart = shared.smart.lock();
    smart.bans.clear();
    smart.network = network;
}

pub(crate) async fn drive(
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<Event>,
    first: oneshot::Sender<Result<(), ClientError>>,
) {
    let mut first = Some(first);
    let mut backoff = shared.cfg.backoff_min;
    let mut ready: Option<Connected> = None;
    'outer: loop {
        let conn = match ready.take() {
            Some(c) => Ok(c),
            None => {
                // Stay closable while endpoints are tried.
                let est = establish(&shared);
                tokio::pin!(est);
                loop {
                    tokio::select! {
                        r = &mut est => break r,
                        c = cmds.recv() => match c {
                            None | Some(Cmd::Close) => break 'outer,
                            Some(Cmd::Network(n)) => {
                                network_changed(&shared, n);
                                est.set(establish(&shared));
                            }
                            // No link: dropping the reply tells the caller to retry once
                            // connected (senders wait for `Status::Connected`).
                            Some(Cmd::Request { .. }) => {}
                        },
                    }
                }
            }
        };
        let end = match conn {
            Ok(c) => session(&shared, c, &mut cmds, &events, &mut first).await,
            Err(end) => end,
        };
        shared.status.send_replace(Status::Connecting);
        shared.smart.lock().current = None;
        shared.save_state();
        match end {
            End::Closed => break,
            End::Fatal(error) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(error));
                } else {
                    let _ = events.send(Event::Stopped { error });
                }
                break;
            }
            End::Switch(c) => {
                let _ = events.send(Event::Disconnected {
                    reason: format!("moving to {}", c.conn.endpoint),
                });
                ready = Some(*c);
                continue;
            }
            End::NetworkChanged => {
                backoff = shared.cfg.backoff_min;
                let _ = events.send(Event::Disconnected {
                    reason: "network changed".into(),
                });
                continue;
            }
            End::Lost { reason, logged_in } => {
                tracing::debug!(%reason, "link lost; reconnecting");
                if logged_in {
                    backoff = shared.cfg.backoff_min;
                    let _ = events.send(Event::Disconnected { reason });
                }
            }
        }
        // Wait out the back-off, but stay closable; a network change ends the wait.
        let wait = tokio::time::sleep(jitter(backoff));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                c = cmds.recv() => match c {
                    None | Some(Cmd::Close) => break 'outer,
                    Some(Cmd::Network(n)) => {
                        network_changed(&shared, n);
                        backoff = shared.cfg.backoff_min;
                        continue 'outer;
                    }
                    Some(Cmd::Request { .. }) => {}
                },
            }
        }
        backoff = (backoff * 2).min(shared.cfg.backoff_max);
    }
    shared.status.send_replace(Status::Stopped);
}

/// Why one connect attempt failed.
enum AttemptError {
    /// This endpoint did not work (`kind`: refused, timeout, reset, closed, …).
    Endpoint { kind: &'static str, detail: String },
    /// No endpoint will: stop racing.
    Stop(End),
}

impl RaceError for AttemptError {
    fn timed_out() -> Self {
        AttemptError::Endpoint {
            kind: "timeout",
            detail: "no answer in time".into(),
        }
    }

    fn stops_race(&self) -> bool {
        matches!(self, AttemptError::Stop(_))
    }
}

/// A short word for what went wrong, as reports carry it.
fn kind_of(e: &ClientError) -> &'static str {
    match e {
        ClientError::Timeout => "timeout",
        ClientError::Io(m) if m.contains("refused") => "refused",
        ClientError::Io(m) if m.contains("reset") => "reset",
        ClientError::Io(m) if m.contains("closed") || m.contains("ended") => "closed",
        ClientError::Io(_) => "io",
        ClientError::Http(m) if m.contains("refused") => "refused",
        ClientError::Http(_) => "http",
        ClientError::Protocol(_) => "protocol",
        ClientError::Server { .. } => "server",
        ClientError::Closed => "closed",
    }
}

fn endpoint_err(e: ClientError) -> AttemptError {
    AttemptError::Endpoint {
        kind: kind_of(&e),
        detail: e.to_string(),
    }
}

/// The bootstrap servers as addresses. IP literals are used as they are; a host name
/// (bootstrap only: endpoint lists are IP literals) is resolved once.
async fn bootstrap(shared: &Shared) -> Vec<SocketAddr> {
    let known = shared.smart.lock().bootstrap.clone();
    if !known.is_empty() {
        return known;
    }
    let mut out = Vec::new();
    for s in shared.cfg.all_servers() {
        match s.parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => {
                let found = tokio::time::timeout(
                    shared.cfg.connect_timeout,
                    tokio::net::lookup_host(s.clone()),
                )
                .await;
                match found {
                    Ok(Ok(addrs)) => out.extend(addrs),
                    _ => tracing::warn!(server = %s, "bootstrap server not found"),
                }
            }
        }
    }
    out.dedup();
    shared.smart.lock().bootstrap.clone_from(&out);
    out
}

/// The endpoints to race for `transport`, best first: the last one that worked, the
/// server's list, then the bootstrap servers; banned ones left out (unless all are).
fn candidates(shared: &Shared, transport: Transport, boot: &[SocketAddr]) -> Vec<Endpoint> {
    let mut all: Vec<Endpoint> = Vec::new();
    {
        let st = shared.state.lock();
        let listed = std::iter::once(&st.last_endpoint).chain(st.endpoints.iter());
        for e in listed.filter_map(|s| s.parse::<Endpoint>().ok()) {
            if e.transport == transport && !all.contains(&e) {
                all.push(e);
            }
        }
    }
    for a in boot {
        let e = Endpoint::new(*a, transport);
        if !all.contains(&e) {
            all.push(e);
        }
    }
    let now = Instant::now();
    let smart = shared.smart.lock();
    let allowed: Vec<Endpoint> = all
        .iter()
        .copied()
        .filter(|e| !smart.bans.banned(e, now))
        .collect();
    if allowed.is_empty() {
        all
    } else {
        allowed
    }
}

/// Records an attempt: bans, and a sample for the next report.
fn record(shared: &Shared, ep: Endpoint, ok: bool, took: Duration, kind: &str) {
    let now = Instant::now();
    let mut smart = shared.smart.lock();
    if ok {
        smart.bans.succeeded(ep);
    } else if let Some(ban) = smart.bans.failed(ep, now, &shared.cfg.smart) {
        tracing::info!(endpoint = %ep, secs = ban.as_secs(), "endpoint keeps failing; banned");
    }
    if smart.samples.len() >= 64 {
        smart.samples.pop_front();
    }
    smart.samples.push_back((
        now,
        v1::ConnectSample {
            ip: ep.addr.ip().to_string(),
            port: u32::from(ep.addr.port()),
            transport: ep.transport.to_proto() as i32,
            ok,
            connect_ms: took.as_millis().min(u128::from(u32::MAX)) as u32,
            error: kind.to_owned(),
            age_ms: 0,
        },
    ));
}

/// Whether `addr` answers `GET /healthz`: it serves HTTP and is not a black hole. Unlike
/// a sign-in this is harmless to race (two sign-ins of one device would each issue a
/// token, the later revoking the earlier).
async fn http_alive(addr: SocketAddr, connect_timeout: Duration) -> Result<(), ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout)??;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    if head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else {
        Err(ClientError::Http(format!(
            "{addr}: {}",
            String::from_utf8_lossy(&head)
        )))
    }
}

/// A token, signing in when there is none: the candidates are raced with a harmless
/// probe, and the one sign-in goes to the first that answered.
async fn ensure_token(shared: &Arc<Shared>, boot: &[SocketAddr]) -> Result<String, End> {
    let token = shared.state.lock().token.clone();
    if !token.is_empty() {
        return Ok(token);
    }
    struct AuthError(ClientError);
    impl RaceError for AuthError {
        fn timed_out() -> Self {
            AuthError(ClientError::Timeout)
        }
        fn stops_race(&self) -> bool {
            !self.0.is_retryable()
        }
    }
    let mut addrs: Vec<SocketAddr> = candidates(shared, Transport::Http, boot)
        .into_iter()
        .map(|e| e.addr)
        .collect();
    addrs.dedup();
    let cfg = &shared.cfg;
    let out = smart::race(
        addrs.len(),
        cfg.smart.race_stagger,
        cfg.smart.race_parallel,
        cfg.smart.attempt_timeout,
        |i| {
            let (addr, timeout) = (addrs[i], cfg.connect_timeout);
            async move { http_alive(addr, timeout).await.map_err(AuthError) }
        },
    )
    .await;
    let last = match out.winner {
        Some((i, (), _)) => {
            let device = shared.state.lock().device_id.clone();
            let short = ShortLink::sealed(&addrs[i].to_string(), cfg.security.key());
            let signed = tokio::time::timeout(
                cfg.smart.attempt_timeout,
                short.auth(&cfg.username, &cfg.password, &device),
            )
            .await
            .unwrap_or(Err(ClientError::Timeout));
            match signed {
                Ok(a) => {
                    let mut s = shared.state.lock();
                    s.token = a.token.clone();
                    s.user_id = a.user_id;
                    s.token_expires_ms = a.token_expires_ms;
                    drop(s);
                    shared.save_state();
                    return Ok(a.token);
                }
                Err(e) => Some(e),
            }
        }
        None => out.failures.into_iter().last().map(|f| f.1 .0),
    };
    Err(match last {
        Some(e) if !e.is_retryable() => End::Fatal(e),
        Some(e) => End::Lost {
            reason: format!("auth: {e}"),
            logged_in: false,
        },
        None => End::Lost {
            reason: "auth: no server to ask".into(),
            logged_in: false,
        },
    })
}

/// Connects to `ep` and logs in.
async fn attempt(
    shared: Arc<Shared>,
    ep: Endpoint,
    token: String,
    synckey: u64,
) -> Result<Connected, AttemptError> {
    let cfg = &shared.cfg;
    let mut conn = Conn::connect(ep, cfg.connect_timeout, cfg.request_timeout)
        .await
        .map_err(endpoint_err)?;
    let login = v1::LoginReq {
        token,
        synckey,
        client_version: cfg.client_version.clone(),
    };
    let mut out = BytesMut::new();
    encode_msg(cmd::LOGIN, 1, &login, &mut out);
    // Encrypted (the LOGIN inside the Noise IK HELLO, or inside a RESUME hello when the
    // device holds a ticket) unless configured plaintext.
    let key = cfg.security.key();
    let ticket = key.and_then(|_| {
        let s = shared.state.lock();
        s.resumption.as_ref().and_then(|t| t.usable(now_ms()))
    });
    let mut frames = conn
        .login(&out, key, ticket.as_ref())
        .await
        .map_err(endpoint_err)?;
    let mut resumed = ticket.is_some();
    if resumed && resume_refused(&frames[0]) {
        resumed = false;
        // The server does not take the ticket (expired, another key or epoch, a clock
        // too far off): forget it and do the full handshake on a new connection.
        tracing::debug!(endpoint = %ep, "resumption refused; full handshake");
        shared.state.lock().resumption = None;
        conn = Conn::connect(ep, cfg.connect_timeout, cfg.request_timeout)
            .await
            .map_err(endpoint_err)?;
        frames = conn.login(&out, key, None).await.map_err(endpoint_err)?;
    }
    let first = frames.remove(0);
    if first.cmd == cmd::ERROR {
        let e = v1::Error::decode(first.body.clone()).unwrap_or_default();
        let err = ClientError::from_error(e);
        return Err(match err.code() {
            Some(ErrorCode::Unauthorized) => {
                // The token is gone (revoked, replaced): get a new one right away.
                shared.state.lock().token.clear();
                AttemptError::Stop(End::Lost {
                    reason: "token refused".into(),
                    logged_in: false,
                })
            }
            _ if err.is_retryable() => AttemptError::Endpoint {
                kind: "login",
                detail: err.to_string(),
            },
            _ => AttemptError::Stop(End::Fatal(err)),
        });
    }
    if first.cmd != cmd::response(cmd::LOGIN) {
        return Err(AttemptError::Endpoint {
            kind: "protocol",
            detail: format!("unexpected answer 0x{:02x} to login", first.cmd),
        });
    }
    let resp = v1::LoginResp::decode(first.body.clone()).map_err(|e| AttemptError::Endpoint {
        kind: "protocol",
        detail: format!("login answer: {e}"),
    })?;
    // Frames behind the login answer (a notify, say) are kept for the session.
    conn.unread(&frames);
    Ok(Connected {
        conn,
        login: resp,
        resumed,
    })
}

/// Whether `f` is the plain `ERROR RESUME_REFUSED` a server answers a RESUME it does
/// not take with.
fn resume_refused(f: &Frame) -> bool {
    f.cmd == cmd::ERROR
        && v1::Error::decode(f.body.clone())
            .is_ok_and(|e| e.code == ErrorCode::ResumeRefused as i32)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How a race over candidates ended without a link.
enum RaceEnd {
    Stop(End),
    Failed(String),
}

/// Races `cands` (see [`smart::race`]); records every finished attempt.
async fn race_login(shared: &Arc<Shared>, cands: &[Endpoint]) -> Result<Connected, RaceEnd> {
    if cands.is_empty() {
        return Err(RaceEnd::Failed("no candidates".into()));
    }
    let (token, synckey) = {
        let s = shared.state.lock();
        (s.token.clone(), s.synckey)
    };
    let cfg = &shared.cfg.smart;
    let out = smart::race(
        cands.len(),
        cfg.race_stagger,
        cfg.race_parallel,
        cfg.attempt_timeout,
        |i| attempt(shared.clone(), cands[i], token.clone(), synckey),
    )
    .await;
    let mut why = Vec::new();
    let mut stop = None;
    for (i, e, took) in out.failures {
        match e {
            AttemptError::Endpoint { kind, detail } => {
                tracing::debug!(endpoint = %cands[i], %detail, "connect attempt failed");
                record(shared, cands[i], false, took, kind);
                why.push(format!("{}: {kind}", cands[i]));
            }
            AttemptError::Stop(end) => stop = Some(end),
        }
    }
    if let Some((i, c, took)) = out.winner {
        record(shared, cands[i], true, took, "");
        return Ok(c);
    }
    match stop {
        Some(end) => Err(RaceEnd::Stop(end)),
        None => Err(RaceEnd::Failed(why.join(", "))),
    }
}

/// Gets a logged-in link: TCP candidates first, then (when allowed) the long link over
/// HTTP long-poll.
async fn establish(shared: &Arc<Shared>) -> Result<Connected, End> {
    let boot = bootstrap(shared).await;
    ensure_token(shared, &boot).await?;
    let mut why = Vec::new();
    let mut transports = vec![Transport::Tcp];
    if shared.cfg.smart.long_poll {
        transports.push(Transport::Http);
    }
    for t in transports {
        let cands = candidates(shared, t, &boot);
        match race_login(shared, &cands).await {
            Ok(c) => return Ok(c),
            Err(RaceEnd::Stop(end)) => return Err(end),
            Err(RaceEnd::Failed(reason)) => why.push(reason),
        }
    }
    Err(End::Lost {
        reason: format!("no endpoint answered ({})", why.join("; ")),
        logged_in: false,
    })
}

/// Fetches the endpoint list (when its version changed) and keeps it.
async fn refresh_endpoints(shared: Arc<Shared>, via: SocketAddr) {
    let version = shared.state.lock().endpoints_version;
    let key = shared.cfg.security.key();
    match ShortLink::sealed(&via.to_string(), key)
        .endpoints(version)
        .await
    {
        Ok(list) => {
            let every = Duration::from_secs(u64::from(list.refresh_secs.max(10)));
            shared.smart.lock().refresh_every = every;
            if list.unchanged {
                return;
            }
            let eps: Vec<String> = list
                .endpoints
                .iter()
                .filter_map(|e| {
                    let ip = e.ip.parse().ok()?;
                    let port = u16::try_from(e.port).ok()?;
                    let t = Transport::from_proto(e.transport)?;
                    Some(Endpoint::new(SocketAddr::new(ip, port), t).to_string())
                })
                .collect();
            tracing::debug!(version = list.version, n = eps.len(), "new endpoint list");
            let mut s = shared.state.lock();
            s.endpoints = eps;
            s.endpoints_version = list.version;
            drop(s);
            shared.save_state();
        }
        Err(e) => tracing::debug!(error = %e, "endpoint list not refreshed"),
    }
}

/// Sends the connect samples gathered so far (at most 32).
async fn send_report(shared: Arc<Shared>, via: SocketAddr) {
    let (samples, token) = {
        let mut smart = shared.smart.lock();
        let n = smart.samples.len().min(32);
        let now = Instant::now();
        let samples: Vec<v1::ConnectSample> = smart
            .samples
            .drain(..n)
            .map(|(at, mut s)| {
                s.age_ms = now.duration_since(at).as_millis().min(u128::from(u32::MAX)) as u32;
                s
            })
            .collect();
        (samples, shared.state.lock().token.clone())
    };
    if samples.is_empty() {
        return;
    }
    match ShortLink::sealed(&via.to_string(), shared.cfg.security.key())
        .report_endpoints(&token, samples)
        .await
    {
        Ok(n) => tracing::debug!(accepted = n, "connect report sent"),
        Err(e) => tracing::debug!(error = %e, "connect report not sent"),
    }
}

/// One logged-in link, until it ends.
async fn session(
    shared: &Arc<Shared>,
    connected: Connected,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    events: &mpsc::UnboundedSender<Event>,
    first: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
) -> End {
    let Connected {
        mut conn,
        login,
        resumed,
    } = connected;
    let endpoint = conn.endpoint;
    {
        let mut s = shared.state.lock();
        s.user_id = login.user_id;
        s.token_expires_ms = login.token_expires_ms;
        if !login.token.is_empty() {
            // The server renewed a token past half its life; the old one is gone.
            s.token = login.token.clone();
        }
        // A full handshake's answer carries the ticket to resume with from now on (none:
        // the next link does the full handshake too). A resumed link keeps using the
        // ticket it came with, unless the answer replaces it.
        let fresh = conn
            .take_ticket()
            .as_ref()
            .and_then(crate::state::StoredTicket::from_login);
        if fresh.is_some() || !resumed {
            s.resumption = fresh;
        }
        s.last_endpoint = endpoint.to_string();
    }
    shared.save_state();
    shared.smart.lock().current = Some(endpoint);
    *shared.username.lock() = login.username.clone();
    // The heartbeat: learnt per network on TCP; on long-poll the polls keep the path
    // open, so the safe interval is used as it is.
    let cfg = &shared.cfg;
    let server_limit = if login.idle_timeout_ms > 0 {
        Duration::from_millis(login.idle_timeout_ms * 4 / 5)
    } else if login.heartbeat_secs > 0 {
        Duration::from_secs(u64::from(login.heartbeat_secs))
    } else {
        cfg.smart.heartbeat_max
    };
    let hb_limit = cfg.smart.heartbeat_max.min(server_limit);
    let hb_min = cfg.heartbeat.min(hb_limit);
    let learn = endpoint.transport == Transport::Tcp;
    let network = shared.smart.lock().network.clone();
    let mut hb = shared
        .state
        .lock()
        .heartbeats
        .get(&network)
        .cloned()
        .unwrap_or_else(|| HeartbeatState::new(hb_min));
    let interval = |hb: &HeartbeatState| {
        if learn {
            hb.interval(hb_min, hb_limit)
        } else {
            hb_min
        }
    };
    let save_hb = |hb: &HeartbeatState| {
        shared
            .state
            .lock()
            .heartbeats
            .insert(network.clone(), hb.clone());
        shared.smart.lock().heartbeat = interval(hb);
        shared.save_state();
    };
    shared.smart.lock().heartbeat = interval(&hb);

    shared.status.send_replace(Status::Connected);
    tracing::debug!(%endpoint, "logged in");
    let _ = events.send(Event::Connected {
        latest_seq: login.latest_seq,
        endpoint,
    });
    if let Some(f) = first.take() {
        let _ = f.send(Ok(()));
    }

    let mut link = Session::new(shared, events);
    // Which groups moved while this device was away.
    let id = link.next_req_id();
    ferry_proto::frame::encode_raw(cmd::GROUP_LIST, id, &[], &mut link.out);
    link.group_list_req = Some(id);
    if login.latest_seq > link.synckey() {
        link.start_sync();
    }
    tokio::spawn(refresh_endpoints(shared.clone(), endpoint.addr));
    let now = Instant::now();
    let mut refresh_at = now + shared.smart.lock().refresh_every;
    // Any traffic either way keeps middleboxes' flow state alive.
    let mut last_activity = now;
    // When the oldest frame sent since the last one received went out.
    let mut unanswered_since: Option<Instant> = None;
    // A heartbeat waits for its answer.
    let mut hb_outstanding = false;
    let mut dirty_since_save = false;
    let mut last_report = now;
    // On long-poll: when to try TCP again, and the attempt in flight.
    let mut probe_at = (endpoint.transport == Transport::Http).then(|| now + cfg.smart.tcp_retry);
    let mut probe: Option<oneshot::Receiver<Result<Connected, RaceEnd>>> = None;
    let lost = |reason: String| End::Lost {
        reason,
        logged_in: true,
    };
    loop {
        if !link.out.is_empty() {
            if let Err(e) = conn.send(&link.out).await {
                if hb_outstanding && learn && hb.failure(&cfg.smart, hb_min, hb_limit) {
                    save_hb(&hb);
                }
                return lost(format!("write: {e}"));
            }
            link.out.clear();
            let now = Instant::now();
            last_activity = now;
            unanswered_since.get_or_insert(now);
        }
        let now = Instant::now();
        let hb_due = last_activity + interval(&hb);
        let mut wake = hb_due.min(refresh_at);
        if let Some(t) = unanswered_since {
            wake = wake.min(t + cfg.smart.answer_timeout);
        }
        if let Some(t) = probe_at.filter(|_| probe.is_none()) {
            wake = wake.min(t);
        }
        if let Some(t) = link.gap_deadline {
            wake = wake.min(t);
        }
        let report_due = last_activity.max(last_report) + cfg.smart.report_idle;
        let want_report = !shared.smart.lock().samples.is_empty();
        if want_report {
            wake = wake.min(report_due);
        }
        tokio::select! {
            c = cmds.recv() => match c {
                None | Some(Cmd::Close) => return End::Closed,
                Some(Cmd::Network(n)) => {
                    network_changed(shared, n);
                    return End::NetworkChanged;
                }
                Some(Cmd::Request { cmd, body, reply }) => {
                    let id = link.next_req_id();
                    ferry_proto::frame::encode_raw(cmd, id, &body, &mut link.out);
                    link.pending.insert(id, reply);
                }
            },
            r = conn.frames() => match r {
                Ok(frames) => {
                    last_activity = Instant::now();
                    unanswered_since = None;
                    if hb_outstanding {
                        hb_outstanding = false;
                        if learn && hb.success(&cfg.smart, hb_min, hb_limit) {
                            tracing::debug!(interval_ms = hb.interval_ms, %network, "heartbeat interval up");
                            save_hb(&hb);
                        }
                    }
                    for f in frames {
                        match link.on_frame(f) {
                            Ok(applied) => dirty_since_save |= applied,
                            Err(end) => return end,
                        }
                    }
                }
                Err(e) => {
                    if hb_outstanding && learn && hb.failure(&cfg.smart, hb_min, hb_limit) {
                        save_hb(&hb);
                    }
                    return lost(e.to_string());
                }
            },
            r = async { probe.as_mut().expect("probe in flight").await }, if probe.is_some() => {
                probe = None;
                match r {
                    Ok(Ok(better)) => return End::Switch(Box::new(better)),
                    Ok(Err(RaceEnd::Stop(end))) => return end,
                    _ => probe_at = Some(Instant::now() + cfg.smart.tcp_retry),
                }
            },
            _ = tokio::time::sleep_until(wake.max(now)) => {
                let now = Instant::now();
                link.gap_expired(now);
                if unanswered_since.is_some_and(|t| now >= t + cfg.smart.answer_timeout) {
                    if hb_outstanding && learn {
                        tracing::debug!(interval_ms = hb.interval_ms, %network, "heartbeat lost");
                        if hb.failure(&cfg.smart, hb_min, hb_limit) {
                            tracing::debug!(interval_ms = hb.interval_ms, %network, "heartbeat interval down");
                        }
                        save_hb(&hb);
                    }
                    return lost("no answer from the server".into());
                }
                if now >= hb_due && !hb_outstanding {
                    let beat = v1::Heartbeat { synckey: link.synckey() };
                    let id = link.next_req_id();
                    encode_msg(cmd::HEARTBEAT, id, &beat, &mut link.out);
                    hb_outstanding = true;
                    if dirty_since_save {
                        shared.save_state();
                        dirty_since_save = false;
                    }
                }
                if probe.is_none() && probe_at.is_some_and(|t| now >= t) {
                    probe_at = None;
                    let (tx, rx) = oneshot::channel();
                    let shared2 = shared.clone();
                    tokio::spawn(async move {
                        let boot = bootstrap(&shared2).await;
                        let cands = candidates(&shared2, Transport::Tcp, &boot);
                        let _ = tx.send(race_login(&shared2, &cands).await);
                    });
                    probe = Some(rx);
                }
                if want_report && now >= report_due && link.pending.is_empty() {
                    last_report = now;
                    tokio::spawn(send_report(shared.clone(), endpoint.addr));
                }
                if now >= refresh_at {
                    refresh_at = now + shared.smart.lock().refresh_every;
                    tokio::spawn(refresh_endpoints(shared.clone(), endpoint.addr));
                }
            }
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    events: &'a mpsc::UnboundedSender<Event>,
    pending: HashMap<u32, oneshot::Sender<Frame>>,
    next_id: u32,
    /// The id of the SYNC in flight, if any.
    sync_req: Option<u32>,
    /// A notify came while a sync was in flight: sync again after it.
    resync: bool,
    /// Inline entries that arrived ahead of the synckey, waiting for the ones before
    /// them (see [`GAP_WAIT`]).
    held: Held,
    /// When to give up waiting for the held entries' gap and sync.
    gap_deadline: Option<Instant>,
    /// GROUP_SYNCs in flight: request id → group.
    group_syncs: HashMap<u32, u64>,
    /// Groups with a sync in flight, and those to sync again after it.
    group_busy: HashSet<u64>,
    group_again: HashSet<u64>,
    /// The GROUP_LIST sent after login.
    group_list_req: Option<u32>,
    out: BytesMut,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, events: &'a mpsc::UnboundedSender<Event>) -> Session<'a> {
        Session {
            shared,
            events,
            pending: HashMap::new(),
            next_id: 2,
            sync_req: None,
            resync: false,
            held: Held::default(),
            gap_deadline: None,
            group_syncs: HashMap::new(),
            group_busy: HashSet::new(),
            group_again: HashSet::new(),
            group_list_req: None,
            out: BytesMut::new(),
        }
    }

    fn synckey(&self) -> u64 {
        self.shared.state.lock().synckey
    }

    fn next_req_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(2);
        id
    }

    fn start_sync(&mut self) {
        if self.sync_req.is_some() {
            self.resync = true;
            return;
        }
        let id = self.next_req_id();
        let req = v1::SyncReq {
            synckey: self.synckey(),
            limit: 0,
        };
        encode_msg(cmd::SYNC, id, &req, &mut self.out);
        self.sync_req = Some(id);
        self.resync = false;
        self.gap_deadline = None;
    }

    /// Applies the held entries that now continue the synckey, drops those already
    /// applied, and starts the gap timer when some are still waiting.
    fn drain_held(&mut self) -> bool {
        let run = self.held.take_run(self.synckey());
        let applied = self.apply(run);
        if self.held.is_empty() {
            self.gap_deadline = None;
        } else if self.sync_req.is_none() {
            self.gap_deadline
                .get_or_insert_with(|| Instant::now() + GAP_WAIT);
        }
        applied
    }

    /// The gap before the held entries did not fill in time: what is missing was lost
    /// on the way, so sync.
    fn gap_expired(&mut self, now: Instant) {
        if self.gap_deadline.is_some_and(|t| now >= t) {
            self.gap_deadline = None;
            self.start_sync();
        }
    }

    /// Hands the entries that continue the synckey to the app; true if any were new.
    fn apply(&mut self, entries: Vec<v1::Entry>) -> bool {
        let mut applied = false;
        for e in entries {
            let mut s = self.shared.state.lock();
            if e.seq <= s.synckey {
                continue;
            }
            s.synckey = e.seq;
            drop(s);
            applied = true;
            // Joining a group: fetch its log from where this user may read.
            if let Some(v1::entry::Kind::Group(g)) = &e.kind {
                use v1::group_event::Kind as K;
                if matches!(g.kind(), K::Created | K::Joined) {
                    self.start_group_sync(g.group_id);
                }
            }
            let _ = self.events.send(Event::Entry(e));
        }
        applied
    }

    fn group_cursor(&self, group: u64) -> u64 {
        self.shared
            .state
            .lock()
            .group_cursors
            .get(&group)
            .copied()
            .unwrap_or(0)
    }

    fn start_group_sync(&mut self, group: u64) {
        if !self.group_busy.insert(group) {
            self.group_again.insert(group);
            return;
        }
        let id = self.next_req_id();
        let req = v1::GroupSyncReq {
            group_id: group,
            after: self.group_cursor(group),
            limit: 0,
        };
        encode_msg(cmd::GROUP_SYNC, id, &req, &mut self.out);
        self.group_syncs.insert(id, group);
    }

    /// Hands a group's entries that continue its cursor to the app.
    fn apply_group(&mut self, group: u64, entries: Vec<v1::GroupEntry>) -> bool {
        let mut applied = false;
        for e in entries {
            let mut s = self.shared.state.lock();
            let cursor = s.group_cursors.entry(group).or_insert(0);
            if e.gseq <= *cursor {
                continue;
            }
            *cursor = e.gseq;
            drop(s);
            applied = true;
            let _ = self.events.send(Event::Group {
                group_id: group,
                entry: e,
            });
        }
        applied
    }

    fn on_group_sync(&mut self, group: u64, f: Frame) -> Result<bool, End> {
        self.group_busy.remove(&group);
        let again = self.group_again.remove(&group);
        if f.cmd == cmd::ERROR {
            // No longer a member (or the group is gone): forget it.
            self.shared.state.lock().group_cursors.remove(&group);
            return Ok(false);
        }
        let r = v1::GroupSyncResp::decode(f.body).map_err(|e| End::Lost {
            reason: format!("undecodable group sync: {e}"),
            logged_in: true,
        })?;
        let applied = self.apply_group(group, r.entries);
        {
            let mut s = self.shared.state.lock();
            let cursor = s.group_cursors.entry(group).or_insert(0);
            *cursor = (*cursor).max(r.cursor);
        }
        if r.more || again || r.latest_gseq > self.group_cursor(group) {
            self.start_group_sync(group);
        }
        Ok(applied)
    }

    /// Handles one incoming frame. `Ok(true)` when entries were applied.
    fn on_frame(&mut self, f: Frame) -> Result<bool, End> {
        let bad = |what: &str, e: prost::DecodeError| End::Lost {
            reason: format!("undecodable {what}: {e}"),
            logged_in: true,
        };
        match f.cmd {
            cmd::NOTIFY => {
                let n = v1::Notify::decode(f.body).map_err(|e| bad("notify", e))?;
                let synckey = self.synckey();
                if n.latest_seq <= synckey {
                    return Ok(false);
                }
                // Entries inline up to latest_seq are applied, or held until the ones
                // before them arrive; anything else is fetched by a sync.
                let inline = n.entries.last().map(|e| e.seq) == Some(n.latest_seq)
                    && n.entries.windows(2).all(|w| w[1].seq == w[0].seq + 1);
                if !inline {
                    self.start_sync();
                    return Ok(false);
                }
                self.held.hold(n.entries, synckey);
                if self.held.is_full() {
                    self.start_sync();
                }
                Ok(self.drain_held())
            }
            cmd::KICK => {
                let k = v1::Kick::decode(f.body).unwrap_or_default();
                let code = ErrorCode::try_from(k.code).unwrap_or(ErrorCode::Unavailable);
                if code == ErrorCode::Kicked || code == ErrorCode::Unauthorized {
                    return Err(End::Fatal(ClientError::Server {
                        code,
                        message: k.reason,
                        retry_after_ms: 0,
                    }));
                }
                Err(End::Lost {
                    reason: format!("server: {}", k.reason),
                    logged_in: true,
                })
            }
            _ if Some(f.req_id) == self.sync_req => {
                self.sync_req = None;
                if f.cmd == cmd::ERROR {
                    let e = v1::Error::decode(f.body).unwrap_or_default();
                    return Err(End::Lost {
                        reason: format!("sync refused: {}", e.message),
                        logged_in: true,
                    });
                }
                let r = v1::SyncResp::decode(f.body).map_err(|e| bad("sync answer", e))?;
                let mut applied = self.apply(r.entries);
                {
                    let mut s = self.shared.state.lock();
                    if r.synckey > s.synckey {
                        s.synckey = r.synckey;
                    }
                }
                applied |= self.drain_held();
                if r.more || self.resync || r.latest_seq > self.synckey() {
                    self.start_sync();
                }
                Ok(applied)
            }
            cmd::GROUP_NOTIFY => {
                let n = v1::GroupNotify::decode(f.body).map_err(|e| bad("group notify", e))?;
                let cursor = self.group_cursor(n.group_id);
                if n.latest_gseq <= cursor {
                    return Ok(false);
                }
                let continues = cursor > 0
                    && n.entries.first().map(|e| e.gseq) == Some(cursor + 1)
                    && n.entries.last().map(|e| e.gseq) == Some(n.latest_gseq)
                    && n.entries.windows(2).all(|w| w[1].gseq == w[0].gseq + 1);
                if continues && !self.group_busy.contains(&n.group_id) {
                    return Ok(self.apply_group(n.group_id, n.entries));
                }
                self.start_group_sync(n.group_id);
                Ok(false)
            }
            cmd::TYPING_PUSH => {
                if let Ok(t) = v1::Typing::decode(f.body) {
                    let _ = self.events.send(Event::Typing { from: t.to });
                }
                Ok(false)
            }
            _ if self.group_syncs.contains_key(&f.req_id) => {
                let group = self.group_syncs.remove(&f.req_id).unwrap_or_default();
                self.on_group_sync(group, f)
            }
            _ if Some(f.req_id) == self.group_list_req => {
                self.group_list_req = None;
                if f.cmd == cmd::response(cmd::GROUP_LIST) {
                    let list =
                        v1::GroupListResp::decode(f.body).map_err(|e| bad("group list", e))?;
                    for g in list.groups {
                        if g.latest_gseq > self.group_cursor(g.group_id) {
                            self.start_group_sync(g.group_id);
                        }
                    }
                }
                Ok(false)
            }
            c if c == cmd::response(cmd::HEARTBEAT) => Ok(false),
            _ => {
                if let Some(reply) = self.pending.remove(&f.req_id) {
                    let _ = reply.send(f);
                }
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DeviceState;

    fn shared() -> Shared {
        Shared {
            cfg: crate::ClientConfig::new("127.0.0.1:1", "bob", "pw"),
            state: parking_lot::Mutex::new(DeviceState::default()),
            status: tokio::sync::watch::channel(Status::Connected).0,
            username: parking_lot::Mutex::new("bob".into()),
            smart: parking_lot::Mutex::new(Default::default()),
        }
    }

    /// A NOTIFY carrying entry `seq` inline (as the server sends one per message).
    fn notify(seq: u64) -> Frame {
        let body = v1::Notify {
            latest_seq: seq,
            entries: vec![v1::Entry {
                seq,
                ..Default::default()
            }],
        }
        .encode_to_vec();
        Frame::new(cmd::NOTIFY, 0, body)
    }

    fn applied(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let Event::Entry(e) = ev {
                seqs.push(e.seq);
            }
        }
        seqs
    }

    #[tokio::test]
    async fn reordered_notifies_are_applied_in_order_without_a_sync() {
        let sh = shared();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut s = Session::new(&sh, &tx);
        assert!(!s.on_frame(notify(2)).ok().unwrap());
        assert!(s.gap_deadline.is_some(), "seq 2 waits for seq 1");
        assert!(s.on_frame(notify(1)).ok().unwrap());
        assert!(s.on_frame(notify(3)).ok().unwrap());
        assert_eq!(applied(&mut rx), [1, 2, 3]);
        assert_eq!(s.synckey(), 3);
        assert!(s.out.is_empty() && s.sync_req.is_none(), "no SYNC was sent");
        assert!(s.held.is_empty() && s.gap_deadline.is_none());
    }

    #[tokio::test]
    async fn a_gap_that_does_not_fill_in_time_is_synced() {
        let sh = shared();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut s = Session::new(&sh, &tx);
        s.on_frame(notify(1)).ok().unwrap();
        s.on_frame(notify(3)).ok().unwrap();
        assert_eq!(applied(&mut rx), [1]);
        let deadline = s.gap_deadline.expect("waiting for seq 2");
        s.gap_expired(deadline - Duration::from_millis(1));
        assert!(s.sync_req.is_none(), "not yet");
        s.gap_expired(deadline);
        let id = s.sync_req.expect("a SYNC went out");
        let frame = Frame::parse(&mut s.out, ferry_proto::MAX_BODY_LEN)
            .unwrap()
            .expect("a whole frame");
        assert_eq!((frame.cmd, frame.req_id), (cmd::SYNC, id));
        assert_eq!(v1::SyncReq::decode(frame.body).unwrap().synckey, 1);
        // The answer brings 2; the held 3 follows it.
        let answer = v1::SyncResp {
            entries: vec![v1::Entry {
                seq: 2,
                ..Default::default()
            }],
            synckey: 2,
            latest_seq: 3,
            more: false,
        };
        let f = Frame::new(cmd::response(cmd::SYNC), id, answer.encode_to_vec());
        assert!(s.on_frame(f).ok().unwrap());
        assert_eq!(applied(&mut rx), [2, 3]);
        assert!(s.sync_req.is_none(), "3 was held: nothing left to fetch");
    }

    #[tokio::test]
    async fn a_notify_without_its_entry_inline_syncs_at_once() {
        let sh = shared();
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut s = Session::new(&sh, &tx);
        let body = v1::Notify {
            latest_seq: 4,
            entries: Vec::new(),
        }
        .encode_to_vec();
        let f = Frame::new(cmd::NOTIFY, 0, body);
        s.on_frame(f).ok().unwrap();
        assert!(s.sync_req.is_some());
    }
}
