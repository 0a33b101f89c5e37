//! Connecting: a logged-in long link from nothing. Resolves the bootstrap servers,
//! signs in for a device token when there is none (racing a harmless probe, then one
//! sign-in), races the candidate endpoints (the last that worked, the server's list,
//! the bootstrap servers; banned ones left out) over TCP and then HTTP long-poll, and
//! logs in on the winner — resuming from the device's ticket when it has one. Every
//! attempt is recorded for bans and for the connect reports ([`send_report`]); the
//! endpoint list is refreshed by [`spawn_refresh`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::frame::encode_msg;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, Frame, ProtoMessage};
use tokio::time::Instant;

use crate::smart::{self, Endpoint, RaceError, Transport};
use crate::transport::Conn;
use crate::{ClientError, ErrorKind, Shared, ShortLink};

/// Why a link session ended.
pub(crate) enum End {
    /// The app closed the client.
    Closed,
    /// Give up for good.
    Fatal(ClientError),
    /// Reconnect. `logged_in` resets the back-off.
    Lost { reason: String, logged_in: bool },
    /// The server is up but shedding load, and said when to come back: reconnect
    /// after about that long (server pushback), without growing the back-off.
    Busy { retry_after: Duration },
    /// The app said the network changed: reconnect at once.
    NetworkChanged,
    /// A better link (TCP, while on long-poll) is logged in: move to it.
    Switch(Box<Connected>),
    /// The app has been in the background for the grace period: no link until it comes
    /// back to the foreground.
    Background,
}

/// A logged-in link, before its session starts.
pub(crate) struct Connected {
    pub conn: Conn,
    pub login: v1::LoginResp,
    /// The link resumed from the device's ticket (no Noise handshake).
    pub resumed: bool,
}

/// A LOGIN this client sent, until it is answered with a session: dropped before that
/// (refused, timed out, the connection lost, the attempt cut short by the race), it
/// notes when the LOGIN went out. A server may still apply such a LOGIN — its gateway
/// stopped waiting, logic had it queued — and so replace the link this client makes
/// next: `KICK{KICKED}` on that link within [`own_login_may_land`] is this client's own
/// doing (log in again), not another copy of the device taking over (stop).
struct LoginInFlight {
    shared: Arc<Shared>,
    sent: Option<Instant>,
}

impl Drop for LoginInFlight {
    fn drop(&mut self) {
        if let Some(sent) = self.sent {
            let mut smart = self.shared.smart.lock();
            smart.login_unanswered_at =
                Some(smart.login_unanswered_at.map_or(sent, |t| t.max(sent)));
        }
    }
}

/// How long after it went out a LOGIN that got no answer may still land: well past a
/// gateway's wait for logic (5 s) and the SDK's own attempt timeout (10 s); the browser
/// SDK uses the same.
const OWN_LOGIN_LANDS_WITHIN: Duration = Duration::from_secs(30);

/// Whether a LOGIN of this client that got no answer may still reach a server and
/// replace the current link.
pub(crate) fn own_login_may_land(shared: &Shared) -> bool {
    shared
        .smart
        .lock()
        .login_unanswered_at
        .is_some_and(|t| t.elapsed() < OWN_LOGIN_LANDS_WITHIN)
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

/// A short word for what went wrong, as reports carry it. The socket's own error kind
/// when there is one; otherwise the words of the message (hyper says "refused" only
/// in its text).
fn kind_of(e: &ClientError) -> &'static str {
    use std::io::ErrorKind as Io;
    if let Some(io) = e.io_error() {
        match io.kind() {
            Io::ConnectionRefused => return "refused",
            Io::ConnectionReset => return "reset",
            _ => {}
        }
    }
    let text = e.to_string();
    match e.kind() {
        ErrorKind::Timeout => "timeout",
        ErrorKind::Io if text.contains("refused") => "refused",
        ErrorKind::Io if text.contains("reset") => "reset",
        ErrorKind::Io if text.contains("closed") || text.contains("ended") => "closed",
        ErrorKind::Io => "io",
        ErrorKind::Http if text.contains("refused") => "refused",
        ErrorKind::Http => "http",
        ErrorKind::Protocol => "protocol",
        ErrorKind::Server => "server",
        _ => "closed",
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
pub(crate) async fn bootstrap(shared: &Shared) -> Vec<SocketAddr> {
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
pub(crate) fn candidates(
    shared: &Shared,
    transport: Transport,
    boot: &[SocketAddr],
) -> Vec<Endpoint> {
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
        .map_err(|_| ClientError::timeout())??;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    if head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else {
        Err(ClientError::http(format!(
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
            AuthError(ClientError::timeout())
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
            .unwrap_or(Err(ClientError::timeout()));
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
        protocol: ferry_proto::PROTOCOL_VERSION,
        // Our own messages' entries come in their SendAck (the sync machine applies
        // them): one frame fewer per message than a NOTIFY beside the ack.
        echo_in_ack: true,
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
    let mut in_flight = LoginInFlight {
        shared: shared.clone(),
        sent: Some(Instant::now()),
    };
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
        in_flight.sent = Some(Instant::now());
        frames = conn.login(&out, key, None).await.map_err(endpoint_err)?;
    }
    let first = frames.remove(0);
    if first.cmd == cmd::ERROR {
        let e = v1::Error::decode(first.body.clone()).unwrap_or_default();
        let err = ClientError::from_error(e);
        // Shed (logic overloaded, the gateway's handshakes full): come back when told,
        // without racing other endpoints or long-poll, which would only add to the load.
        if let (Some(ErrorCode::Unavailable | ErrorCode::RateLimited), Some(retry_after)) =
            (err.code(), err.retry_after())
        {
            return Err(AttemptError::Stop(End::Busy { retry_after }));
        }
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
    match check_protocol(resp.protocol) {
        Err(e) => return Err(AttemptError::Stop(End::Fatal(e))),
        Ok(v) if v >= 2 => conn.set_compact(),
        Ok(_) => {}
    }
    // Frames behind the login answer (a notify, say) are kept for the session.
    conn.unread(&frames);
    in_flight.sent = None;
    Ok(Connected {
        conn,
        login: resp,
        resumed,
    })
}

/// The version a server answered in `LoginResp.protocol`, refused unless this SDK
/// speaks it (0: a server from before versions, which speaks 1). A server answers at
/// most what the LOGIN named, so a refusal means a server that breaks that rule: going
/// on could misread everything it sends.
pub(crate) fn check_protocol(answered: u32) -> Result<u32, ClientError> {
    let v = answered.max(1);
    if v > ferry_proto::PROTOCOL_VERSION {
        return Err(ClientError::new(
            crate::ErrorKind::Protocol,
            format!(
                "the server speaks protocol {v}; this client speaks up to {}",
                ferry_proto::PROTOCOL_VERSION
            ),
        ));
    }
    Ok(v)
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
pub(crate) enum RaceEnd {
    Stop(End),
    Failed(String),
}

/// Races `cands` (see [`smart::race`]); records every finished attempt.
pub(crate) async fn race_login(
    shared: &Arc<Shared>,
    cands: &[Endpoint],
) -> Result<Connected, RaceEnd> {
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
pub(crate) async fn establish(shared: &Arc<Shared>) -> Result<Connected, End> {
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
        if t == Transport::Tcp && tcp_worked_lately(shared) {
            // The server's trouble, not the network's: back off and try TCP again
            // rather than move onto long-poll (and back again minutes later).
            break;
        }
    }
    Err(End::Lost {
        reason: format!("no endpoint answered ({})", why.join("; ")),
        logged_in: false,
    })
}

/// Whether TCP worked on this network less than `long_poll_after` ago.
fn tcp_worked_lately(shared: &Shared) -> bool {
    let within = shared.cfg.smart.long_poll_after;
    shared
        .smart
        .lock()
        .tcp_worked_at
        .is_some_and(|t| t.elapsed() < within)
}

/// Starts [`refresh_endpoints`] unless one is on its way already (a link lost and
/// logged in again within the refresh's round trip would ask twice).
pub(crate) fn spawn_refresh(shared: &Arc<Shared>, via: SocketAddr) {
    {
        let mut smart = shared.smart.lock();
        if smart.refreshing {
            return;
        }
        smart.refreshing = true;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        refresh_endpoints(&shared, via).await;
        shared.smart.lock().refreshing = false;
    });
}

/// Fetches the endpoint list (when its version changed) and keeps it.
async fn refresh_endpoints(shared: &Shared, via: SocketAddr) {
    let version = shared.state.lock().endpoints_version;
    let key = shared.cfg.security.key();
    match ShortLink::sealed(&via.to_string(), key)
        .endpoints(version)
        .await
    {
        Ok(list) => {
            let every = Duration::from_secs(u64::from(list.refresh_secs.max(10)));
            {
                let mut smart = shared.smart.lock();
                smart.refresh_every = every;
                smart.refreshed_at = Some(tokio::time::Instant::now());
            }
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
pub(crate) async fn send_report(shared: Arc<Shared>, via: SocketAddr) {
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
