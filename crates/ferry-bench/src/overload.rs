//! `ferry bench overload`: the server at twice its capacity. Does priority admission
//! (`ferry-logic/src/admission.rs`, after DAGOR) keep connected users served while new
//! logins are shed?
//!
//! Phases, all on the bench's own server, every one bounded in time:
//! 1. capacity — closed loop, a few seconds each: connected users' sends alone, with a
//!    sync every fourth send as in the open loop (each link keeps 2 requests
//!    unanswered) → C_send/s; then token logins alone
//!    (a fixed number of clients logging in again and again) → C_login/s.
//! 2. baseline — open loop: connected users send `send_share × C_send` messages/s (and a
//!    sync every fourth send), nothing else.
//! 3. overload — the same sends, plus a storm of new logins at
//!    `(factor − send_share) × C_login`/s: `factor` (2) times capacity in all.
//!
//! For each class (send, sync, login) the report gives what was offered, admitted, shed
//! with UNAVAILABLE + retry-after, failed otherwise, and the admitted requests' latency
//! from their *scheduled* time (open loop: a slow server shows as latency, it is not
//! hidden by a slower sender). Outstanding requests are capped per link and for the
//! storm, so the load generator never queues without bound either; what the cap
//! refused is reported as "not offered".
//!
//! The load generator runs in this process on the same machine as the server; the storm
//! on a runtime (threads) of its own, so its churn does not queue in front of the
//! connected links' tasks (`--storm-threads`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use ferry_proto::frame::encode_msg;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, Frame, ProtoMessage};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::conn::FerryConn;
use super::report::{us, Report};
use super::server::{rss_kib, OwnServer};
use super::{hist, users, BenchArgs, PASSWORD};

/// Requests one connected link may have unanswered in the open-loop phases.
const LINK_CAP: usize = 256;
/// Storm logins in progress at once at most.
const STORM_CAP: usize = 2_000;
/// How long a closed-loop capacity phase runs.
const CAPACITY_SECS: f64 = 3.0;
/// Requests each link keeps unanswered while send capacity is measured. Small, so that
/// what is measured is what the open loop gets: with 8 per link (as before 2026-12-04)
/// the server batched 800 sends per commit and "capacity" came out near 55 000/s,
/// while the open loop at half of it already waited ~1 s at p99 — the baseline was
/// over capacity before any login arrived.
const CAPACITY_WINDOW: usize = 2;
/// Anything unanswered this long is counted as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// `ferry bench overload` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct OverloadArgs {
    /// Connected pairs of users sending to each other.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Users whose tokens the login storm uses (round robin).
    #[arg(long, default_value_t = 200)]
    pub storm_users: usize,
    /// Clients logging in at once while the login capacity is measured.
    #[arg(long, default_value_t = 64)]
    pub storm_clients: usize,
    /// Offered load in units of capacity.
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    /// The part of `factor` that is connected users' sends (the rest is new logins).
    #[arg(long, default_value_t = 0.5)]
    pub send_share: f64,
    /// `[logic.admission] max_in_flight` of the bench's server.
    #[arg(long, default_value_t = 128)]
    pub max_in_flight: usize,
    /// Threads of the storm's own runtime (0: the storm shares the connected links'
    /// runtime, as before 2026-12-05, and its churn queues in front of their tasks).
    #[arg(long, default_value_t = 2)]
    pub storm_threads: usize,
    /// How much lower the storm's threads' CPU priority is than the rest of the bench
    /// (added to their nice value, Linux; 0: the same). The storm's clients do their
    /// own X25519 for every HELLO — as much key work as the server's — and on a real
    /// deployment that runs on the devices, not on the server's cores: at the same
    /// priority it takes the server's CPU and shows as its latency.
    #[arg(long, default_value_t = 10)]
    pub storm_nice: i32,
}

/// A runtime of the storm's own, shut down without waiting when dropped (a runtime may
/// not be dropped the ordinary way inside another one).
struct StormRuntime(Option<tokio::runtime::Runtime>);

impl StormRuntime {
    /// `threads` 0: none (the storm runs on the caller's runtime, at its priority);
    /// else that many threads at `nice` more than the process's.
    fn new(threads: usize, nice: i32) -> anyhow::Result<Self> {
        if threads == 0 {
            return Ok(StormRuntime(None));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("bench-storm")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()
            .context("the storm's runtime")?;
        Ok(StormRuntime(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for StormRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Adds `nice` to the calling thread's nice value (`ferry_sched`; Linux only).
fn lower_priority(nice: i32) {
    let p = ferry_sched::Priority { nice, idle: false };
    if let Err(e) = ferry_sched::lower_this_thread(p) {
        eprintln!("overload: the storm's threads keep their priority: {e}");
    }
}

/// One request class's figures in one phase.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    shed: u64,
    failed: u64,
    retry_after_ms: u32,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            hist: hist::new(),
            ok: 0,
            shed: 0,
            failed: 0,
            retry_after_ms: 0,
        }
    }
}

impl Tally {
    fn ok(&mut self, since: Instant) {
        self.ok += 1;
        hist::record(&mut self.hist, since.elapsed().as_micros() as u64);
    }

    fn refused(&mut self, e: &v1::Error) {
        if e.code == ErrorCode::Unavailable as i32 && e.retry_after_ms > 0 {
            self.shed += 1;
            self.retry_after_ms = e.retry_after_ms;
        } else {
            self.failed += 1;
        }
    }

    fn json(&self, secs: f64) -> Value {
        json!({
            "admitted": self.ok,
            "admitted_per_sec": self.ok as f64 / secs,
            "shed": self.shed,
            "failed": self.failed,
            "retry_after_ms": self.retry_after_ms,
            "latency": hist::summary(&self.hist),
        })
    }
}

#[derive(Default)]
struct Phase {
    sends: Mutex<Tally>,
    syncs: Mutex<Tally>,
    logins: Mutex<Tally>,
    /// Requests the generator's own caps kept from being offered.
    not_offered: AtomicU64,
    offered_sends: AtomicU64,
    offered_logins: AtomicU64,
}

/// A connected user's link between phases.
struct Link {
    /// Encrypted like the SDK's unless the bench runs plaintext (`FERRY_BENCH_PLAINTEXT`).
    conn: FerryConn,
    next_id: u32,
    synckey: u64,
    /// Base of this link's client_msg_ids (unique per run).
    id_base: u64,
    peer: String,
}

#[derive(Clone, Copy)]
enum Load {
    /// Keep this many sends unanswered.
    Closed(usize),
    /// Sends per second, a sync with every fourth.
    Open(f64),
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Send,
    Sync,
}

async fn link_phase(mut l: Link, load: Load, ph: Arc<Phase>, stop: CancellationToken) -> Link {
    let mut pending: HashMap<u32, (Instant, Kind)> = HashMap::new();
    let mut out = BytesMut::new();
    let mut ticker = match load {
        Load::Open(r) => {
            let period = Duration::from_secs_f64(1.0 / r.max(0.01));
            let first = tokio::time::Instant::now() + period.mul_f64(rand::random::<f64>());
            let mut t = tokio::time::interval_at(first, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            Some(t)
        }
        Load::Closed(_) => None,
    };
    let mut ticks = 0u64;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        if let Load::Closed(w) = load {
            // The open loop's mix: a sync with every fourth send.
            while pending.len() < w {
                ticks += 1;
                push(&mut l, &mut out, &mut pending, Kind::Send, Instant::now());
                if ticks.is_multiple_of(4) {
                    push(&mut l, &mut out, &mut pending, Kind::Sync, Instant::now());
                }
            }
        }
        if !out.is_empty() {
            if l.conn.send_raw(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            // Cancel-safe: what was read stays in the connection's buffers.
            f = l.conn.read_frame() => match f {
                Ok(f) => answer(&mut l, f, &mut pending, &ph),
                Err(_) => break,
            },
            t = async { ticker.as_mut().expect("open").tick().await }, if ticker.is_some() => {
                let at = t.into_std();
                ticks += 1;
                ph.offered_sends.fetch_add(1, Ordering::Relaxed);
                if pending.len() >= LINK_CAP {
                    ph.not_offered.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                push(&mut l, &mut out, &mut pending, Kind::Send, at);
                if ticks.is_multiple_of(4) {
                    push(&mut l, &mut out, &mut pending, Kind::Sync, at);
                }
            }
            _ = check.tick() => {
                pending.retain(|_, (t, kind)| {
                    let keep = t.elapsed() < ANSWER_TIMEOUT;
                    if !keep {
                        let tally = if *kind == Kind::Send { &ph.sends } else { &ph.syncs };
                        tally.lock().expect("tally").failed += 1;
                    }
                    keep
                });
            }
        }
    }
    l
}

fn push(
    l: &mut Link,
    out: &mut BytesMut,
    pending: &mut HashMap<u32, (Instant, Kind)>,
    kind: Kind,
    at: Instant,
) {
    l.next_id = l.next_id.wrapping_add(1).max(2);
    let id = l.next_id;
    match kind {
        Kind::Send => {
            let m = v1::SendMsg {
                client_msg_id: l.id_base + u64::from(id),
                to: l.peer.clone(),
                text: "overload".into(),
                r#type: v1::MsgType::Text as i32,
                ..Default::default()
            };
            encode_msg(cmd::SEND, id, &m, out);
        }
        Kind::Sync => {
            let r = v1::SyncReq {
                synckey: l.synckey,
                limit: 0,
            };
            encode_msg(cmd::SYNC, id, &r, out);
        }
    }
    pending.insert(id, (at, kind));
}

fn answer(l: &mut Link, f: Frame, pending: &mut HashMap<u32, (Instant, Kind)>, ph: &Phase) {
    if f.cmd == cmd::NOTIFY {
        return;
    }
    let Some((at, kind)) = pending.remove(&f.req_id) else {
        return;
    };
    let tally = match kind {
        Kind::Send => &ph.sends,
        Kind::Sync => &ph.syncs,
    };
    let mut t = tally.lock().expect("tally");
    if f.cmd == cmd::ERROR {
        t.refused(&v1::Error::decode(f.body).unwrap_or_default());
        return;
    }
    if kind == Kind::Sync {
        if let Ok(r) = v1::SyncResp::decode(f.body) {
            l.synckey = l.synckey.max(r.synckey);
        }
    }
    t.ok(at);
}

/// Closes with an RST: no TIME_WAIT left behind on the client's port.
#[allow(deprecated)]
fn reset(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// One new login: connect, LOGIN with a stored token, the answer, close.
async fn login_once(addr: &str, token: &str, at: Instant, ph: &Phase) {
    let r = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let mut c = FerryConn::connect(addr).await?;
        reset(c.stream.tcp());
        let req = v1::LoginReq {
            token: token.to_owned(),
            synckey: 0,
            client_version: "overload".into(),
            ..Default::default()
        };
        let mut login = BytesMut::new();
        encode_msg(cmd::LOGIN, 1, &req, &mut login);
        c.login_exchange(&login, None).await
    })
    .await;
    let mut t = ph.logins.lock().expect("tally");
    match r {
        Ok(Ok(f)) if f.cmd == cmd::response(cmd::LOGIN) => t.ok(at),
        Ok(Ok(f)) if f.cmd == cmd::ERROR => {
            t.refused(&v1::Error::decode(f.body).unwrap_or_default())
        }
        _ => t.failed += 1,
    }
}

/// Logins: `Closed(n)` clients in a loop, or `Open(rate)` arrivals per second.
async fn storm(
    addr: String,
    tokens: Arc<Vec<String>>,
    load: Load,
    ph: Arc<Phase>,
    stop: CancellationToken,
) {
    let mut set = JoinSet::new();
    let mut k = 0usize;
    match load {
        Load::Closed(n) => {
            for c in 0..n {
                let (addr, tokens, ph, stop) =
                    (addr.clone(), tokens.clone(), ph.clone(), stop.clone());
                set.spawn(async move {
                    let mut i = c;
                    while !stop.is_cancelled() {
                        ph.offered_logins.fetch_add(1, Ordering::Relaxed);
                        login_once(&addr, &tokens[i % tokens.len()], Instant::now(), &ph).await;
                        i += n;
                    }
                });
            }
            stop.cancelled().await;
        }
        Load::Open(rate) => {
            let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let at = tokio::select! {
                    _ = stop.cancelled() => break,
                    t = tick.tick() => t.into_std(),
                };
                while set.try_join_next().is_some() {}
                ph.offered_logins.fetch_add(1, Ordering::Relaxed);
                if set.len() >= STORM_CAP {
                    ph.not_offered.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let (addr, token, ph) =
                    (addr.clone(), tokens[k % tokens.len()].clone(), ph.clone());
                k += 1;
                set.spawn(async move { login_once(&addr, &token, at, &ph).await });
            }
        }
    }
    // Logins under way finish (bounded by their own timeout).
    let _ = tokio::time::timeout(ANSWER_TIMEOUT + Duration::from_secs(1), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    set.abort_all();
}

/// The highest RSS of process `pid` until `stop`, sampled every 100 ms.
async fn peak_rss(pid: u32, stop: CancellationToken) -> Option<u64> {
    let mut peak = rss_kib(pid);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return peak,
            _ = tick.tick() => peak = peak.max(rss_kib(pid)),
        }
    }
}

/// Runs one phase: the links under `link_load` (if any) and the storm under
/// `storm_load` (if any) for `secs`; gives the links back.
async fn phase(
    addr: &str,
    links: Vec<Link>,
    link_load: Option<Load>,
    (storm_rt, tokens): (&StormRuntime, &Arc<Vec<String>>),
    storm_load: Option<Load>,
    secs: f64,
) -> anyhow::Result<(Vec<Link>, Arc<Phase>, f64)> {
    let ph = Arc::new(Phase::default());
    let stop = CancellationToken::new();
    let mut link_tasks = JoinSet::new();
    let mut idle = Vec::new();
    for l in links {
        match link_load {
            Some(load) => {
                link_tasks.spawn(link_phase(l, load, ph.clone(), stop.clone()));
            }
            None => idle.push(l),
        }
    }
    let storm_task = storm_load.map(|load| {
        storm_rt.handle().spawn(storm(
            addr.to_owned(),
            tokens.clone(),
            load,
            ph.clone(),
            stop.clone(),
        ))
    });
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.cancel();
    let window = t0.elapsed().as_secs_f64();
    if let Some(t) = storm_task {
        t.await.context("storm task")?;
    }
    while let Some(l) = link_tasks.join_next().await {
        idle.push(l.context("link task")?);
    }
    Ok((idle, ph, window))
}

pub async fn run(args: &BenchArgs, o: &OverloadArgs) -> anyhow::Result<Report> {
    if !args.server.is_empty() {
        bail!("overload runs its own server (its admission limit is part of the setup): drop --server");
    }
    anyhow::ensure!(
        o.pairs > 0 && o.storm_users > 0 && o.storm_clients > 0,
        "counts must be positive"
    );
    anyhow::ensure!(
        o.factor > o.send_share && o.send_share > 0.0 && o.factor <= 10.0,
        "need 0 < --send-share < --factor <= 10"
    );
    let extra = format!("[logic.admission]\nmax_in_flight = {}\n", o.max_in_flight);
    let server = OwnServer::start_with(&args.durability, None, &extra).await?;
    let r = measure(args, o, &server.addr, server.pid()).await;
    server.stop().await;
    r
}

async fn measure(
    args: &BenchArgs,
    o: &OverloadArgs,
    addr: &str,
    pid: u32,
) -> anyhow::Result<Report> {
    let short = super::conn::short(addr).await?;
    let prefix = format!("{}o{}-", args.prefix, std::process::id());
    // Users: the connected pairs, then the storm's.
    let n = 2 * o.pairs;
    eprintln!("overload: preparing {} users", n + o.storm_users);
    let names: Vec<String> = (0..n + o.storm_users)
        .map(|i| format!("{prefix}{i}"))
        .collect();
    let mut tokens = users::sign_in_all(&short, &names, PASSWORD, |_| {}).await?;
    let storm_tokens = Arc::new(tokens.split_off(n));
    let run_id = u64::from(rand::random::<u32>()) << 32;
    let mut links = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let mut c = FerryConn::connect(addr).await?;
        let resp = c
            .login(tok, 0)
            .await
            .with_context(|| format!("login of user {i}"))?;
        links.push(Link {
            conn: c,
            next_id: 1,
            synckey: resp.latest_seq,
            id_base: run_id + ((i as u64) << 24),
            peer: format!("{prefix}{}", i ^ 1),
        });
    }

    // The storm runs on threads of its own. On one runtime with the connected links its
    // thousands of clients' X25519 and connection churn queue in front of the links'
    // tasks, and that queueing in the load generator showed as the server's latency; on
    // a real deployment the storm's devices are elsewhere. The OS still shares the same
    // cores between the two and the server; at a lower priority (`--storm-nice`) the
    // storm's key work gets what the server and the timed links leave, as the devices'
    // own CPU would cost the server nothing.
    let storm_rt = StormRuntime::new(o.storm_threads, o.storm_nice)?;
    eprintln!("overload: capacity (closed loop, {CAPACITY_SECS} s each)");
    let (links, cap_s, w) = phase(
        addr,
        links,
        Some(Load::Closed(CAPACITY_WINDOW)),
        (&storm_rt, &storm_tokens),
        None,
        CAPACITY_SECS,
    )
    .await?;
    let c_send = cap_s.sends.lock().expect("tally").ok as f64 / w;
    let (links, cap_l, w) = phase(
        addr,
        links,
        None,
        (&storm_rt, &storm_tokens),
        Some(Load::Closed(o.storm_clients)),
        CAPACITY_SECS,
    )
    .await?;
    let c_login = cap_l.logins.lock().expect("tally").ok as f64 / w;
    anyhow::ensure!(
        c_send > 0.0 && c_login > 0.0,
        "no capacity measured (sends {c_send}/s, logins {c_login}/s)"
    );

    let send_rate = o.send_share * c_send;
    let login_rate = (o.factor - o.send_share) * c_login;
    let per_link = send_rate / links.len() as f64;
    let secs = args.duration;
    eprintln!(
        "overload: baseline, sends at {send_rate:.0}/s for {:.0} s",
        secs / 2.0
    );
    let (links, base, wb) = phase(
        addr,
        links,
        Some(Load::Open(per_link)),
        (&storm_rt, &storm_tokens),
        None,
        secs / 2.0,
    )
    .await?;
    eprintln!("overload: {:.1}× capacity: sends {send_rate:.0}/s + logins {login_rate:.0}/s for {secs:.0} s", o.factor);
    // The server's memory: before the storm, its peak during it (sampled every 100 ms),
    // and after.
    let rss_before = rss_kib(pid);
    let sampling = CancellationToken::new();
    let peak = tokio::spawn(peak_rss(pid, sampling.clone()));
    let (links, over, wo) = phase(
        addr,
        links,
        Some(Load::Open(per_link)),
        (&storm_rt, &storm_tokens),
        Some(Load::Open(login_rate)),
        secs,
    )
    .await?;
    sampling.cancel();
    let rss_peak = peak.await.unwrap_or(None);
    let rss_after = rss_kib(pid);
    drop(links);

    let class = |ph: &Phase, w: f64| {
        json!({
            "send": ph.sends.lock().expect("tally").json(w),
            "sync": ph.syncs.lock().expect("tally").json(w),
            "login": ph.logins.lock().expect("tally").json(w),
            "offered_sends": ph.offered_sends.load(Ordering::Relaxed),
            "offered_logins": ph.offered_logins.load(Ordering::Relaxed),
            "not_offered": ph.not_offered.load(Ordering::Relaxed),
            "secs": w,
        })
    };
    let jb = class(&base, wb);
    let jo = class(&over, wo);
    let mut r = Report::new(format!(
        "overload · {} pairs connected + login storm · {:.1}× capacity · max_in_flight {}",
        o.pairs, o.factor, o.max_in_flight
    ));
    r.row(
        "load generator: storm threads · their nice",
        format!("{} · +{}", o.storm_threads, o.storm_nice),
    );
    r.row("capacity: sends/s (closed loop)", format!("{c_send:.0}"));
    r.row("capacity: logins/s (closed loop)", format!("{c_login:.0}"));
    r.row(
        "offered: sends/s + logins/s",
        format!(
            "{send_rate:.0} ({:.1}×) + {login_rate:.0} ({:.1}×)",
            o.send_share,
            o.factor - o.send_share
        ),
    );
    let line = |j: &Value| {
        format!(
            "{} admitted ({:.0}/s) · shed {} · failed {} · p50 {} · p99 {} · max {}",
            j["admitted"],
            j["admitted_per_sec"].as_f64().unwrap_or(0.0),
            j["shed"],
            j["failed"],
            us(&j["latency"]["p50_us"]),
            us(&j["latency"]["p99_us"]),
            us(&j["latency"]["max_us"])
        )
    };
    r.row("baseline: sends", line(&jb["send"]));
    r.row("baseline: syncs", line(&jb["sync"]));
    r.row("overload: sends", line(&jo["send"]));
    r.row("overload: syncs", line(&jo["sync"]));
    r.row("overload: new logins", line(&jo["login"]));
    r.row(
        "overload: retry-after told to shed logins",
        format!("{} ms", jo["login"]["retry_after_ms"]),
    );
    r.row("overload: not offered (generator caps)", &jo["not_offered"]);
    let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    r.row(
        "server RSS: before the storm · its peak · after",
        format!(
            "{} · {} · {}",
            mib(rss_before),
            mib(rss_peak),
            mib(rss_after)
        ),
    );
    r.json = json!({
        "scenario": "overload",
        "machine": super::machine(),
        "pairs": o.pairs,
        "storm_users": o.storm_users,
        "max_in_flight": o.max_in_flight,
        "storm_threads": o.storm_threads,
        "storm_nice": o.storm_nice,
        "factor": o.factor,
        "send_share": o.send_share,
        "capacity": { "sends_per_sec": c_send, "logins_per_sec": c_login },
        "offered": { "sends_per_sec": send_rate, "logins_per_sec": login_rate },
        "baseline": jb,
        "overload": jo,
        "server_rss_kib": { "before_storm": rss_before, "storm_peak": rss_peak, "after_storm": rss_after },
        "capacity_phases": { "sends": class(&cap_s, CAPACITY_SECS), "logins": class(&cap_l, CAPACITY_SECS) },
    });
    Ok(r)
}
