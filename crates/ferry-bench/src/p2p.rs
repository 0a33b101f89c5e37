//! `ferry bench p2p`: pairs of users exchanging 1:1 messages in both directions.
//!
//! Every message's text is `SEQ TIMESTAMP`: a per-sender sequence number (so the
//! receiver finds losses and duplicates exactly) and the send time in µs on the
//! worker's monotonic clock (both ends of a pair live in the same worker process).
//! Open loop (`--rate`) sends on a fixed schedule and stamps the *scheduled* time, so a
//! slow server shows up as latency instead of being hidden by a slower sender. Closed
//! loop keeps `--window` messages per sender sent but not yet delivered.
//!
//! A Ferry receiver behaves as the SDK does: it takes its own messages' entries in their
//! acks (`LoginReq.echo_in_ack`), applies inline notify entries that
//! continue its synckey, holds those that arrive ahead of it for up to
//! [`ferry_client::GAP_WAIT`] (notifies are not ordered), and otherwise syncs. A
//! message counts as lost when the server acknowledged it (durable) and it never
//! reached the peer by the end of the drain.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use ferry_proto::frame::{encode_msg, encode_raw};
use ferry_proto::{cmd, v1, Frame, ProtoMessage, MAX_BODY_LEN};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::conn::{self, FerryConn, SharedChannel};
use super::idle::proto_name;
use super::ledger::{self, Ledger, Totals};
use super::report::{us, Report};
use super::wire::{ReadHalf, WriteHalf};
use super::worker::{Cmd, Counters, Ctx, Out, Spec};
use super::xmpp::{self, XmppConn};
use super::{hist, specs, users, BenchArgs, Proto, Target, Workers, DRAIN, PASSWORD};

const HEARTBEAT: Duration = Duration::from_secs(30);
/// Request ids: SEND uses the message's seq (below this), the others are above.
const SYNC_ID: u32 = 0x8000_0000;
const HEARTBEAT_ID: u32 = 0x4000_0000;
/// Links a worker connects and logs in at once.
const LOGINS_IN_FLIGHT: usize = 256;
/// Pause before a refused SYNC is sent again.
const SYNC_RETRY: Duration = Duration::from_millis(20);

/// µs since the worker started: the clock of the timestamps in the messages.
fn now_us() -> u64 {
    at_us(Instant::now())
}

fn at_us(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_secs(1));
    t.saturating_duration_since(epoch).as_micros() as u64
}

fn text(seq: u64, ts_us: u64) -> String {
    format!("{seq} {ts_us}")
}

fn parse_text(t: &str) -> Option<(u64, u64)> {
    let (a, b) = t.split_once(' ')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

pub async fn run(
    args: &BenchArgs,
    pairs: usize,
    rate: Option<f64>,
    window: usize,
    sweep: &[f64],
) -> anyhow::Result<Report> {
    let target = Target::new(args).await?;
    let result = measure(args, &target, pairs, rate, window, sweep).await;
    target.stop().await;
    result
}

async fn measure(
    args: &BenchArgs,
    target: &Target,
    pairs: usize,
    rate: Option<f64>,
    window: usize,
    sweep: &[f64],
) -> anyhow::Result<Report> {
    anyhow::ensure!(pairs > 0, "--pairs must be at least 1");
    let wire = match args.protocol {
        Proto::Ferry => conn::wire_probe(&target.addrs[0], &args.prefix, PASSWORD).await,
        Proto::Xmpp => {
            xmpp::wire_probe(&target.addrs[0], &args.xmpp_domain, &args.prefix, PASSWORD).await
        }
    }
    .context("wire probe")?;
    let rates: Vec<Option<f64>> = if sweep.is_empty() {
        vec![rate]
    } else {
        sweep.iter().map(|r| Some(*r)).collect()
    };
    let mut points = Vec::new();
    for r in rates {
        points.push(once(args, target, pairs, r, window).await?);
    }
    let main = points.last().cloned().unwrap_or_default();
    let mut json = json!({
        "scenario": "p2p",
        "protocol": args.protocol,
        "transport": args.transport,
        "machine": super::machine(),
        "server": target.describe(),
        "durability": if target.own.is_some() { json!(args.durability) } else { Value::Null },
        "wire": wire,
    });
    let obj = json.as_object_mut().expect("object");
    for (k, v) in main.as_object().into_iter().flatten() {
        obj.insert(k.clone(), v.clone());
    }
    if !sweep.is_empty() {
        obj.insert("sweep".into(), Value::Array(points.clone()));
        if let Some(dir) = &args.plot_dir {
            let name = format!("latency-{}.svg", proto_name(args.protocol));
            super::plot::latency(&dir.join(name), &points, args.protocol)?;
        }
    }
    let mut r = Report::new(format!(
        "p2p · {} over {} · {pairs} pairs · {}",
        proto_name(args.protocol),
        args.transport.name(),
        match rate {
            Some(r) if sweep.is_empty() => format!("open loop {r:.0}/s"),
            _ if !sweep.is_empty() => "sweep".to_string(),
            _ => format!("closed loop, window {window}"),
        }
    ));
    if !sweep.is_empty() {
        for p in &points {
            r.row(
                format!(
                    "offered {:.0}/s",
                    p["offered_per_sec"].as_f64().unwrap_or(0.0)
                ),
                format!(
                    "{:.0} msgs/s delivered · p50 {} · p99 {} · max {} · lost {} · dup {} · links dropped {} · CPU/msg {}",
                    p["delivered_per_sec"].as_f64().unwrap_or(0.0),
                    us(&p["latency"]["p50_us"]),
                    us(&p["latency"]["p99_us"]),
                    us(&p["latency"]["max_us"]),
                    p["lost"],
                    p["duplicated"],
                    p["links_dropped"],
                    cpu_text(&p["cpu"])
                ),
            );
        }
    } else {
        r.row(
            "delivered messages/s",
            format!("{:.0}", main["delivered_per_sec"].as_f64().unwrap_or(0.0)),
        );
        r.row(
            match args.protocol {
                Proto::Ferry => "acknowledged (durable) /s",
                Proto::Xmpp => "written (XMPP has no ack) /s",
            },
            format!("{:.0}", main["acked_per_sec"].as_f64().unwrap_or(0.0)),
        );
        let l = &main["latency"];
        r.row(
            "latency p50 / p90 / p99 / max",
            format!(
                "{} / {} / {} / {}",
                us(&l["p50_us"]),
                us(&l["p90_us"]),
                us(&l["p99_us"]),
                us(&l["max_us"])
            ),
        );
        r.row(
            "sent / acked / delivered",
            format!(
                "{} / {} / {}",
                main["sent"], main["acked"], main["received"]
            ),
        );
        r.row("CPU per delivered message", cpu_text(&main["cpu"]));
        r.row("lost (acked, never delivered)", &main["lost"]);
        r.row("links dropped by the server", &main["links_dropped"]);
        r.row("duplicated", &main["duplicated"]);
        r.row(
            "refused by the server",
            format!("{} {}", main["errors"], main["refused_by_code"]),
        );
    }
    r.row(
        "login: bytes (sent+recv) / round trips",
        format!("{} / {}", wire["login_bytes"], wire["login_round_trips"]),
    );
    r.row(
        "\"hello\": bytes sent / delivered",
        format!(
            "{} / {}",
            wire["hello_sent_bytes"], wire["hello_delivered_bytes"]
        ),
    );
    r.json = json;
    Ok(r)
}

/// `p2p --before-hook-ms N`: the same run on the bench's own server without a
/// before-send hook, then with one that holds every message N ms; the latency the hook
/// added, against the target (issue 23: at most the hook's own time + 1 ms at p99).
pub async fn hooked(
    args: &BenchArgs,
    pairs: usize,
    rate: Option<f64>,
    window: usize,
    hook_ms: u64,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.server.is_empty(),
        "--before-hook-ms configures the bench's own server: leave out --server"
    );
    anyhow::ensure!(
        args.protocol == Proto::Ferry,
        "--before-hook-ms is a Ferry scenario"
    );
    anyhow::ensure!(pairs > 0, "--pairs must be at least 1");
    let hook = super::hook::HookServer::start(Duration::from_millis(hook_ms)).await?;
    let plain = Target::new(args).await?;
    let without = once(args, &plain, pairs, rate, window).await;
    plain.stop().await;
    let without = without?;
    let extra = format!(
        "[logic.before_send]\nurl = {:?}\ntimeout_ms = 5000\nfail_open = false\n",
        hook.url
    );
    let with_hook = Target::own(args, &extra).await?;
    let with = once(args, &with_hook, pairs, rate, window).await;
    with_hook.stop().await;
    let with = with?;
    let calls = hook.calls();
    let (held_p50, held_p99) = hook.held_us();
    let lat = |v: &Value, q: &str| v["latency"][q].as_f64().unwrap_or(f64::NAN);
    let added_p50 = lat(&with, "p50_us") - lat(&without, "p50_us");
    let added_p99 = lat(&with, "p99_us") - lat(&without, "p99_us");
    // The target: the hook's own time (as held, p99) plus 1 ms.
    let budget = held_p99 as f64 + 1_000.0;
    let json = json!({
        "scenario": "p2p_before_hook",
        "machine": super::machine(),
        "hook_ms": hook_ms,
        "hook_calls": calls,
        "hook_held_us": {"p50": held_p50, "p99": held_p99},
        "pairs": pairs,
        "rate": rate,
        "window": window,
        "without": without,
        "with": with,
        "added_p50_us": added_p50,
        "added_p99_us": added_p99,
        "target_p99_us": budget,
        "target_met": added_p99 <= budget,
    });
    let mut r = Report::new(format!(
        "p2p · before-send hook of {hook_ms} ms · {pairs} pairs · {}",
        match rate {
            Some(r) => format!("open loop {r:.0}/s"),
            None => format!("closed loop, window {window}"),
        }
    ));
    for (name, v) in [("without hook", &without), ("with hook", &with)] {
        r.row(
            format!("{name}: delivered/s · p50 / p99"),
            format!(
                "{:.0} · {} / {} · lost {}",
                v["delivered_per_sec"].as_f64().unwrap_or(0.0),
                us(&v["latency"]["p50_us"]),
                us(&v["latency"]["p99_us"]),
                v["lost"]
            ),
        );
    }
    r.row(
        "hook: calls · held p50 / p99",
        format!(
            "{calls} · {} / {}",
            us(&json!(held_p50)),
            us(&json!(held_p99))
        ),
    );
    r.row(
        "added by the hook: p50 / p99",
        format!("{} / {}", us(&json!(added_p50)), us(&json!(added_p99))),
    );
    r.row(
        "target: added p99 ≤ hook p99 + 1 ms",
        format!(
            "{} ({})",
            us(&json!(budget)),
            if added_p99 <= budget {
                "met"
            } else {
                "NOT met"
            }
        ),
    );
    r.json = json;
    Ok(r)
}

/// "server 31.2 µs (0.62 cores) · bench 18.0 µs": the CPU of a run's measured window
/// per delivered message.
fn cpu_text(cpu: &Value) -> String {
    let server = match (
        cpu["server_us_per_msg"].as_f64(),
        cpu["server_cores"].as_f64(),
    ) {
        (Some(us), Some(cores)) => format!("server {us:.1} µs ({cores:.2} cores)"),
        _ => "server n/a (no --server-pid)".into(),
    };
    match cpu["bench_us_per_msg"].as_f64() {
        Some(b) => format!("{server} · bench {b:.1} µs"),
        None => server,
    }
}

/// One measured run at one offered load.
pub(crate) async fn once(
    args: &BenchArgs,
    target: &Target,
    pairs: usize,
    rate: Option<f64>,
    window: usize,
) -> anyhow::Result<Value> {
    let conns = 2 * pairs;
    let rate_per_conn = rate.map(|r| r / conns as f64);
    let specs = specs(
        args,
        target,
        "p2p",
        (pairs, 2),
        rate_per_conn,
        window.max(1),
    );
    let (mut w, pb, _) = Workers::prepared(specs).await?;
    pb.set_message("connecting");
    let (_, login_failed) = w.connect("connect", (1, 1), Some(&pb)).await?;
    let secs = args.duration;
    pb.set_length((secs * 10.0) as u64);
    pb.set_position(0);
    pb.set_message(match rate {
        Some(r) => format!("sending {r:.0}/s"),
        None => "sending (closed loop)".into(),
    });
    let t0 = Instant::now();
    let cpu0 = (target.cpu_us(), w.cpu_us());
    w.send(&Cmd::Go).await?;
    let end = t0 + Duration::from_secs_f64(secs);
    while w.next(end).await?.is_some() {
        pb.set_position((t0.elapsed().as_secs_f64() * 10.0) as u64);
        let done = w.sum(Out::done) as f64;
        pb.set_message(format!("{:.0} msgs/s", done / t0.elapsed().as_secs_f64()));
    }
    // CPU used during the measured window: the server's (all its threads, store and
    // fsync included) and the load generator's, against the messages delivered in it.
    let cpu1 = (target.cpu_us(), w.cpu_us());
    let window_secs = t0.elapsed().as_secs_f64();
    pb.set_message("draining");
    let results = w.results(DRAIN + Duration::from_secs(20)).await?;
    pb.finish_and_clear();

    let mut h = hist::new();
    let sum = |k: &str| -> u64 { results.iter().filter_map(|v| v[k].as_u64()).sum() };
    let (sent, acked, received) = (sum("sent"), sum("acked"), sum("received"));
    let (lost, duplicated, errors) = (sum("lost"), sum("duplicated"), sum("errors"));
    let links_dropped = sum("links_dropped");
    let mut refused_by_code = std::collections::BTreeMap::<String, u64>::new();
    for value in &results {
        if let Some(m) = value["refused_by_code"].as_object() {
            for (k, v) in m {
                *refused_by_code.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    let mut per_sec = (0.0, 0.0);
    let mut delivered_in_window = 0.0;
    let mut drain_secs: f64 = 0.0;
    for value in &results {
        hist::merge_json(&mut h, &value["hist"]);
        let win = value["window_secs"].as_f64().unwrap_or(secs).max(1e-9);
        let delivered = value["delivered_in_window"].as_f64().unwrap_or(0.0);
        delivered_in_window += delivered;
        per_sec.0 += delivered / win;
        per_sec.1 += value["acked_in_window"].as_f64().unwrap_or(0.0) / win;
        drain_secs = drain_secs.max(value["drain_secs"].as_f64().unwrap_or(0.0));
    }
    // CPU µs used in the window by the server (None without its PIDs) and the bench.
    let server_us = cpu1.0.zip(cpu0.0).map(|(a, b)| a.saturating_sub(b) as f64);
    let bench_us = Some(cpu1.1.saturating_sub(cpu0.1) as f64);
    let per_msg = |us: Option<f64>| {
        us.filter(|_| delivered_in_window >= 1.0)
            .map(|us| us / delivered_in_window)
    };
    let cores = |us: Option<f64>| us.map(|us| us / 1e6 / window_secs);
    let cpu = json!({
        "server_us_per_msg": per_msg(server_us),
        "bench_us_per_msg": per_msg(bench_us),
        "server_cores": cores(server_us),
        "bench_cores": cores(bench_us),
    });
    Ok(json!({
        "pairs": pairs,
        "connections": conns,
        "login_failed": login_failed,
        "mode": if rate.is_some() { "open" } else { "closed" },
        "offered_per_sec": rate,
        "window": window,
        "secs": secs,
        "sent": sent,
        "acked": acked,
        "received": received,
        "delivered_per_sec": per_sec.0,
        "acked_per_sec": per_sec.1,
        "lost": lost,
        "duplicated": duplicated,
        "errors": errors,
        "refused_by_code": refused_by_code,
        "links_dropped": links_dropped,
        "drain_secs": drain_secs,
        "latency": hist::summary(&h),
        "cpu": cpu,
    }))
}

/// A logged-in link before the load starts.
enum Link {
    Ferry { conn: FerryConn, latest_seq: u64 },
    Xmpp(XmppConn),
}

async fn open(spec: &Spec, i: usize, cred: &str) -> anyhow::Result<Link> {
    let server = spec.server(i);
    Ok(match spec.protocol {
        Proto::Ferry => {
            let mut conn = FerryConn::connect_over(server, spec.transport).await?;
            // As the SDK does: its own messages' entries come in their acks.
            conn.echo_in_ack = true;
            let login = conn.login(cred, 0).await?;
            Link::Ferry {
                conn,
                latest_seq: login.latest_seq,
            }
        }
        Proto::Xmpp => {
            Link::Xmpp(XmppConn::login(server, &spec.domain, &spec.user(i), cred).await?)
        }
    })
}

/// Shared by every task of a worker.
struct Shared {
    hist: Mutex<Histogram<u64>>,
    counters: Arc<Counters>,
    /// Acks counted while the window is open.
    acked: std::sync::atomic::AtomicU64,
    stop_send: CancellationToken,
    end: CancellationToken,
    domain: String,
    /// Links the server closed before the end (a raw bench link does not reconnect, so
    /// what was pushed to it afterwards stays in the inbox and counts as lost here).
    dropped: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn link_ended(&self) {
        if !self.end.is_cancelled() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub async fn worker(mut ctx: Ctx) -> anyhow::Result<()> {
    let creds = ctx.prepare().await?;
    let spec = ctx.spec.clone();
    if !ctx.until(|c| matches!(c, Cmd::Connect { .. })).await? {
        return Ok(());
    }
    let t0 = Instant::now();
    let login = |i: usize| {
        let (spec, cred) = (spec.clone(), creds[i].clone());
        async move {
            match cred {
                Some(c) => open(&spec, i, &c).await,
                None => Err(anyhow::anyhow!("no credentials")),
            }
        }
    };
    let counters = ctx.counters.clone();
    let opened = users::each(spec.users, LOGINS_IN_FLIGHT, login, |r| {
        if r.is_ok() {
            counters.connected.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await?;
    let mut failed = 0;
    let mut links: Vec<Option<Link>> = Vec::with_capacity(spec.users);
    for r in opened {
        match r {
            Ok(l) => links.push(Some(l)),
            Err(e) => {
                if failed == 0 {
                    eprintln!("worker {}: login failed: {e:#}", spec.worker);
                }
                failed += 1;
                links.push(None);
            }
        }
    }
    ctx.emit(Out::Connected {
        n: ctx.counters.connected.load(Ordering::Relaxed),
        failed,
        secs: t0.elapsed().as_secs_f64(),
    });
    if !ctx.until(|c| matches!(c, Cmd::Go)).await? {
        return Ok(());
    }
    let shared = Arc::new(Shared {
        hist: Mutex::new(hist::new()),
        counters: ctx.counters.clone(),
        acked: Default::default(),
        stop_send: CancellationToken::new(),
        end: CancellationToken::new(),
        domain: spec.domain.clone(),
        dropped: Default::default(),
    });
    let ledgers: Vec<Arc<Ledger>> = (0..spec.users).map(|_| Arc::default()).collect();
    let go = Instant::now();
    let mut tasks = JoinSet::new();
    let up: Vec<bool> = links.iter().map(Option::is_some).collect();
    for i in 0..spec.users {
        // Both ends of a pair must be up, or neither sends.
        if !up[i] || !up[i ^ 1] {
            continue;
        }
        let link = links[i].take().expect("checked");
        let (me, peer) = (spec.user(i), spec.user(i ^ 1));
        let (out, inn) = (ledgers[i].clone(), ledgers[i ^ 1].clone());
        let rate = spec.rate_per_conn;
        let window = spec.window as u64;
        let sh = shared.clone();
        match link {
            Link::Ferry { conn, latest_seq } => {
                let (stream, buf, sealed, channel) = conn.into_split_parts();
                let (rd, wr) = stream.into_split();
                let (sync_tx, sync_rx) = mpsc::unbounded_channel();
                tasks.spawn(ferry_reader(
                    rd,
                    (buf, sealed, channel.clone()),
                    me,
                    latest_seq,
                    out.clone(),
                    inn,
                    sync_tx,
                    sh.clone(),
                ));
                tasks.spawn(writer(
                    Wire::Ferry(sync_rx),
                    (wr, channel),
                    peer,
                    out,
                    rate,
                    window,
                    sh,
                ));
            }
            Link::Xmpp(conn) => {
                let (stream, buf) = conn.into_parts();
                let (rd, wr) = stream.into_split();
                tasks.spawn(xmpp_reader(rd, buf, out.clone(), inn, sh.clone()));
                tasks.spawn(writer(
                    Wire::Xmpp,
                    (WriteHalf::Tcp(wr), None),
                    peer,
                    out,
                    rate,
                    window,
                    sh,
                ));
            }
        }
    }
    loop {
        if let Cmd::Stop = ctx.cmd().await? {
            break;
        }
    }
    let window_secs = go.elapsed().as_secs_f64();
    let delivered_in_window = ctx.counters.done.load(Ordering::Relaxed);
    let acked_in_window = shared.acked.load(Ordering::Relaxed);
    shared.stop_send.cancel();
    let drain_start = Instant::now();
    ledger::settle(&ledgers, DRAIN).await;
    let drain_secs = drain_start.elapsed().as_secs_f64();
    shared.end.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let mut value = Totals::of(&ledgers).json();
    let h = shared.hist.lock().expect("hist");
    value["window_secs"] = json!(window_secs);
    value["delivered_in_window"] = json!(delivered_in_window);
    value["acked_in_window"] = json!(acked_in_window);
    value["drain_secs"] = json!(drain_secs);
    value["links_dropped"] = json!(shared.dropped.load(Ordering::Relaxed));
    value["hist"] = hist::to_json(&h);
    ctx.emit(Out::Result { value });
    Ok(())
}

/// Records one delivered message.
fn delivered(sh: &Shared, from: &Ledger, t: &str) {
    let Some((seq, ts)) = parse_text(t) else {
        return;
    };
    let fresh = from.inner.lock().expect("ledger").receive(seq);
    if fresh {
        hist::record(
            &mut sh.hist.lock().expect("hist"),
            now_us().saturating_sub(ts),
        );
        sh.counters.done.fetch_add(1, Ordering::Relaxed);
    }
    from.delivered.notify_one();
}

/// The receiving half of a Ferry link: acks, notifies and sync answers.
#[allow(clippy::too_many_arguments)]
async fn ferry_reader(
    mut rd: ReadHalf,
    (mut buf, mut sealed, channel): (BytesMut, BytesMut, Option<SharedChannel>),
    me: String,
    mut synckey: u64,
    out: Arc<Ledger>,
    inn: Arc<Ledger>,
    sync_tx: mpsc::UnboundedSender<u64>,
    sh: Arc<Shared>,
) {
    let mut sync = Syncing::default();
    // Inline entries ahead of the synckey (as the SDK holds them).
    let mut held = ferry_client::Held::default();
    let apply = |e: v1::Entry, synckey: &mut u64| {
        *synckey = e.seq;
        if let Some(v1::entry::Kind::Message(m)) = e.kind {
            if m.from != me {
                delivered(&sh, &inn, &m.text);
            }
        }
    };
    loop {
        // On an encrypted link bytes arrive sealed: open what is whole.
        if let Some(ch) = &channel {
            if ch
                .lock()
                .expect("channel")
                .open(&mut sealed, &mut buf)
                .is_err()
            {
                return sh.link_ended();
            }
        }
        let frame = match Frame::parse(&mut buf, MAX_BODY_LEN) {
            Ok(Some(f)) => f,
            Ok(None) => {
                let into = if channel.is_some() {
                    &mut sealed
                } else {
                    &mut buf
                };
                into.reserve(8192);
                let gap = sync.gap_at.unwrap_or_else(tokio::time::Instant::now);
                tokio::select! {
                    _ = sh.end.cancelled() => return,
                    r = rd.read_buf(into) => match r {
                        Ok(0) | Err(_) => return sh.link_ended(),
                        Ok(_) => continue,
                    },
                    _ = tokio::time::sleep_until(gap), if sync.gap_at.is_some() => {
                        // What the gap misses was lost on the way: sync.
                        sync.request(&sync_tx, synckey);
                        continue;
                    }
                }
            }
            Err(_) => return,
        };
        let mut notify = None;
        match frame.cmd {
            c if c == cmd::response(cmd::SEND) => {
                let mut b = out.inner.lock().expect("ledger");
                if b.ack(u64::from(frame.req_id)) && !sh.stop_send.is_cancelled() {
                    sh.acked.fetch_add(1, Ordering::Relaxed);
                }
                drop(b);
                // The sender's own entry (echo_in_ack): a notify of that one entry.
                if let Ok(v1::SendAck { entry: Some(e), .. }) = v1::SendAck::decode(frame.body) {
                    notify = Some(v1::Notify {
                        latest_seq: e.seq,
                        entries: vec![e],
                    });
                }
            }
            cmd::NOTIFY => notify = v1::Notify::decode(frame.body).ok(),
            c if c == cmd::response(cmd::SYNC) => {
                sync.busy = false;
                let Ok(r) = v1::SyncResp::decode(frame.body) else {
                    continue;
                };
                for e in r.entries {
                    if e.seq == synckey + 1 {
                        apply(e, &mut synckey);
                    }
                }
                synckey = synckey.max(r.synckey);
                for e in held.take_run(synckey) {
                    apply(e, &mut synckey);
                }
                let again = std::mem::take(&mut sync.again);
                if r.more || r.latest_seq > synckey || again {
                    sync.request(&sync_tx, synckey);
                } else {
                    sync.held(!held.is_empty());
                }
            }
            cmd::ERROR => {
                if frame.req_id < HEARTBEAT_ID {
                    let e = v1::Error::decode(frame.body).unwrap_or_default();
                    out.inner.lock().expect("ledger").refuse(e.code);
                    tracing::warn!(message = %e.message, "send refused");
                } else if frame.req_id == SYNC_ID {
                    // Refused (an overloaded server sheds requests): what it would have
                    // brought is still missing, so ask again shortly — the SDK reconnects
                    // and syncs. Dropping it lost nothing on the server but left the
                    // entries undelivered when no later notify came (seen at --window 16).
                    let (tx, key) = (sync_tx.clone(), synckey);
                    tokio::spawn(async move {
                        tokio::time::sleep(SYNC_RETRY).await;
                        let _ = tx.send(key);
                    });
                }
            }
            _ => {}
        }
        if let Some(n) = notify.filter(|n| n.latest_seq > synckey) {
            // Inline entries up to latest_seq are applied, or held until the ones
            // before them arrive; anything else is fetched by a sync.
            let inline = n.entries.last().map(|e| e.seq) == Some(n.latest_seq)
                && n.entries.windows(2).all(|w| w[1].seq == w[0].seq + 1);
            let run = if inline {
                held.accept(n.entries, synckey)
            } else {
                held.take_run(synckey)
            };
            for e in run {
                apply(e, &mut synckey);
            }
            if n.latest_seq > synckey && (!inline || held.is_full()) {
                sync.request(&sync_tx, synckey);
            } else {
                sync.held(!held.is_empty());
            }
        }
    }
}

/// A receiver's syncing: one SYNC in flight at a time, one more asked for while it is,
/// and when to stop waiting for the gap before held entries.
#[derive(Default)]
struct Syncing {
    busy: bool,
    again: bool,
    gap_at: Option<tokio::time::Instant>,
}

impl Syncing {
    /// Sends a SYNC from `synckey`, or asks for one more after the one in flight.
    fn request(&mut self, tx: &mpsc::UnboundedSender<u64>, synckey: u64) {
        self.gap_at = None;
        if self.busy {
            self.again = true;
        } else {
            self.busy = true;
            let _ = tx.send(synckey);
        }
    }

    /// After held entries were applied: wait for the gap before those `left`, unless a
    /// SYNC in flight will fill it.
    fn held(&mut self, left: bool) {
        if !left {
            self.gap_at = None;
        } else if !self.busy {
            self.gap_at
                .get_or_insert_with(|| tokio::time::Instant::now() + ferry_client::GAP_WAIT);
        }
    }
}

/// The receiving half of an XMPP stream.
async fn xmpp_reader(
    mut rd: OwnedReadHalf,
    mut buf: Vec<u8>,
    out: Arc<Ledger>,
    inn: Arc<Ledger>,
    sh: Arc<Shared>,
) {
    loop {
        while let Some(s) = xmpp::take_stanza(&mut buf) {
            if !s.starts_with("<message") {
                continue;
            }
            if xmpp::attr(&s, "type") == Some("error") {
                out.inner.lock().expect("ledger").errors += 1;
                continue;
            }
            if let Some(b) = xmpp::body(&s) {
                delivered(&sh, &inn, b);
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        tokio::select! {
            _ = sh.end.cancelled() => return,
            r = rd.read(&mut chunk) => match r {
                Ok(0) | Err(_) => return sh.link_ended(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
        }
    }
}

enum Wire {
    /// Sync requests from the reader.
    Ferry(mpsc::UnboundedReceiver<u64>),
    Xmpp,
}

async fn tick(t: &mut Option<tokio::time::Interval>) -> tokio::time::Instant {
    match t {
        Some(t) => t.tick().await,
        None => std::future::pending().await,
    }
}

async fn sync_req(w: &mut Wire) -> Option<u64> {
    match w {
        Wire::Ferry(rx) => rx.recv().await,
        Wire::Xmpp => std::future::pending().await,
    }
}

/// The sending half of a link: messages to `peer` (open or closed loop), the reader's
/// sync requests, heartbeats.
async fn writer(
    mut wire: Wire,
    (mut wr, channel): (WriteHalf, Option<SharedChannel>),
    peer: String,
    out: Arc<Ledger>,
    rate: Option<f64>,
    window: u64,
    sh: Arc<Shared>,
) {
    let is_ferry = matches!(wire, Wire::Ferry(_));
    let mut buf = BytesMut::new();
    let mut seq: u64 = 0;
    // The server stores (sender, client_msg_id) once: a random base per run keeps a
    // rerun with the same users from being taken for a retry of an earlier message.
    let id_base = (rand::random::<u64>() >> 2) << 32;
    let put = |buf: &mut BytesMut, seq: u64, ts: u64| {
        let t = text(seq, ts);
        if is_ferry {
            let m = v1::SendMsg {
                client_msg_id: id_base + seq,
                to: peer.clone(),
                text: t,
                r#type: v1::MsgType::Text as i32,
                ..Default::default()
            };
            encode_msg(cmd::SEND, seq as u32, &m, buf);
            out.inner.lock().expect("ledger").sent = seq;
        } else {
            buf.extend_from_slice(XmppConn::message(&peer, &sh.domain, &t).as_bytes());
            let mut b = out.inner.lock().expect("ledger");
            b.sent = seq;
            // XMPP has no acknowledgement: a message written is a message sent.
            b.ack(seq);
            if !sh.stop_send.is_cancelled() {
                sh.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let mut ticker = rate.filter(|r| *r > 0.0).map(|r| {
        let period = Duration::from_secs_f64(1.0 / r);
        let offset = period.mul_f64(rand::random::<f64>());
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let closed = ticker.is_none();
    let start = tokio::time::Instant::now();
    let mut beats = tokio::time::interval_at(start + HEARTBEAT, HEARTBEAT);
    let mut stopped = false;
    loop {
        if closed && !stopped && !sh.stop_send.is_cancelled() {
            let received = out.inner.lock().expect("ledger").received_n;
            while seq - received.min(seq) < window {
                seq += 1;
                put(&mut buf, seq, now_us());
            }
        }
        if !buf.is_empty() {
            let sealed = match &channel {
                Some(ch) => {
                    let mut out = BytesMut::with_capacity(buf.len() + 64);
                    if ch.lock().expect("channel").seal(&buf, &mut out).is_err() {
                        return;
                    }
                    Some(out)
                }
                None => None,
            };
            if wr
                .write_all(sealed.as_deref().unwrap_or(&buf))
                .await
                .is_err()
            {
                return;
            }
            buf.clear();
        }
        tokio::select! {
            _ = sh.end.cancelled() => return,
            _ = sh.stop_send.cancelled(), if !stopped => stopped = true,
            k = sync_req(&mut wire) => match k {
                Some(k) => encode_msg(cmd::SYNC, SYNC_ID, &v1::SyncReq { synckey: k, limit: 0 }, &mut buf),
                None => return,
            },
            t = tick(&mut ticker), if !stopped => {
                seq += 1;
                put(&mut buf, seq, at_us(t.into_std()));
            }
            _ = out.delivered.notified(), if closed && !stopped => {}
            _ = beats.tick() => {
                if is_ferry {
                    encode_raw(cmd::HEARTBEAT, HEARTBEAT_ID, &[], &mut buf);
                } else {
                    buf.extend_from_slice(b" ");
                }
            }
        }
    }
}
