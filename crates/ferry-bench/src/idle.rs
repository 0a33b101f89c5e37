//! `ferry bench idle`: N logged-in connections holding heartbeats.
//!
//! Figures: the connect+login rate, the server's RSS before and after (and after each
//! step, for the memory-vs-connections plot), user-space bytes per connection, and the
//! kernel's TCP memory (`/proc/net/sockstat`) and slab growth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::conn::FerryConn;
use super::report::Report;
use super::wire::Wire;
use super::worker::{Cmd, Counters, Ctx, Out, Spec};
use super::xmpp::XmppConn;
use super::{meminfo_kib, sockstat, specs, BenchArgs, Proto, Target, Workers};

/// How an idle connection heartbeats (`--heartbeat`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeartbeatMode {
    /// As the SDK does on a network it has never seen: start at its safe interval
    /// (`ClientConfig::heartbeat`, 3.5 min), capped by what the server's idle timeout
    /// allows, and stretch it as the SDK's smart heartbeat learns (every answered
    /// heartbeat counts; `HeartbeatState::success`).
    Smart,
    /// As the SDK does once it has learnt a network: the longest interval allowed
    /// (`SmartConfig::heartbeat_max`, 10 min, or 4/5 of the server's idle timeout).
    Learned,
    /// A fixed interval (older clients, or a stress test).
    Fixed(Duration),
}

impl std::str::FromStr for HeartbeatMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "smart" => Ok(HeartbeatMode::Smart),
            "learned" => Ok(HeartbeatMode::Learned),
            secs => match secs.parse::<f64>() {
                Ok(x) if (1.0..=3600.0).contains(&x) => {
                    Ok(HeartbeatMode::Fixed(Duration::from_secs_f64(x)))
                }
                _ => Err(format!(
                    "{s:?}: expected smart, learned or a number of seconds in [1, 3600]"
                )),
            },
        }
    }
}

impl std::fmt::Display for HeartbeatMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeartbeatMode::Smart => f.write_str("smart"),
            HeartbeatMode::Learned => f.write_str("learned"),
            HeartbeatMode::Fixed(d) => write!(f, "{}", d.as_secs_f64()),
        }
    }
}

/// The SDK's heartbeat bounds for a link whose LOGIN answer said `idle_timeout_ms`
/// (or, from older servers, `heartbeat_secs`): (the safe interval a network starts
/// with, the longest allowed). The same arithmetic as the SDK's link
/// (`ferry_client`'s heartbeat controller), from its own defaults.
pub fn sdk_bounds(idle_timeout_ms: u64, heartbeat_secs: u32) -> (Duration, Duration) {
    let cfg = ferry_client::ClientConfig::new("", "", "");
    let server_limit = if idle_timeout_ms > 0 {
        Duration::from_millis(idle_timeout_ms * 4 / 5)
    } else if heartbeat_secs > 0 {
        Duration::from_secs(u64::from(heartbeat_secs))
    } else {
        cfg.smart.heartbeat_max
    };
    let limit = cfg.smart.heartbeat_max.min(server_limit);
    (cfg.heartbeat.min(limit), limit)
}

impl Beats {
    fn json(&self) -> Value {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "sent": g(&self.sent),
            "answered": g(&self.answered),
            "links": g(&self.links),
            "start_ms_sum": g(&self.start_ms_sum),
            "start_ms_min": g(&self.start_ms_min),
            "start_ms_max": g(&self.start_ms_max),
            "ended": g(&self.ended),
            "end_ms_sum": g(&self.end_ms_sum),
            "end_ms_max": g(&self.end_ms_max),
        })
    }
}

/// Heartbeat figures of one worker, summed into the report.
#[derive(Debug, Default)]
struct Beats {
    sent: std::sync::atomic::AtomicU64,
    answered: std::sync::atomic::AtomicU64,
    /// Connections' intervals (ms) when they started and when the hold ended.
    start_ms_sum: std::sync::atomic::AtomicU64,
    start_ms_min: std::sync::atomic::AtomicU64,
    start_ms_max: std::sync::atomic::AtomicU64,
    end_ms_sum: std::sync::atomic::AtomicU64,
    end_ms_max: std::sync::atomic::AtomicU64,
    links: std::sync::atomic::AtomicU64,
    ended: std::sync::atomic::AtomicU64,
}
/// Connects+logins one worker has in flight at once.
const IN_FLIGHT: usize = 256;

/// One memory sample.
fn sample(target: &Target, connections: u64) -> Value {
    let (sockets, pages) = sockstat().unwrap_or((0, 0));
    json!({
        "connections": connections,
        "server_rss_kib": target.rss_kib(),
        "tcp_sockets": sockets,
        "tcp_mem_pages": pages,
        "slab_kib": meminfo_kib("Slab"),
    })
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

pub async fn run(
    args: &BenchArgs,
    connections: usize,
    steps: usize,
    heartbeat: HeartbeatMode,
) -> anyhow::Result<Report> {
    let target = Target::new(args).await?;
    let result = measure(args, &target, connections, steps.max(1), heartbeat).await;
    target.stop().await;
    result
}

async fn measure(
    args: &BenchArgs,
    target: &Target,
    connections: usize,
    steps: usize,
    heartbeat: HeartbeatMode,
) -> anyhow::Result<Report> {
    let mut specs = specs(args, target, "idle", (connections, 1), None, 1);
    for s in &mut specs {
        s.heartbeat = heartbeat.to_string();
    }
    let (mut w, pb, prepare_failed) = Workers::prepared(specs).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sample(target, 0);
    let mut points = vec![before.clone()];
    pb.set_message("connecting");
    pb.set_position(0);
    let mut connect_secs = 0.0;
    let mut connected = 0;
    let mut login_failed = 0;
    for step in 1..=steps {
        let t0 = Instant::now();
        (connected, login_failed) = w.connect("connect", (step, steps), Some(&pb)).await?;
        connect_secs += t0.elapsed().as_secs_f64();
        pb.set_position(connected);
        // Let the server's allocator settle before reading its memory.
        tokio::time::sleep(Duration::from_secs(1)).await;
        points.push(sample(target, connected));
    }
    let after = points.last().cloned().unwrap_or_default();
    pb.set_message("holding");
    let hold = Duration::from_secs_f64(args.duration);
    let end = Instant::now() + hold;
    while let Some(_out) = w.next(end).await? {
        pb.set_position(w.sum(Out::connected));
    }
    let held_at_end = w.sum(Out::connected);
    let end_sample = sample(target, held_at_end);
    let results = w.results(Duration::from_secs(30)).await?;
    pb.finish_and_clear();

    let mut dropped = 0;
    let mut retries = 0;
    let mut worker_rss = 0;
    let hb_sum = |k: &str| -> u64 {
        results
            .iter()
            .filter_map(|v| v["heartbeat"][k].as_u64())
            .sum()
    };
    let hb_fold = |k: &str, f: fn(u64, u64) -> u64, init: u64| -> u64 {
        results
            .iter()
            .filter_map(|v| v["heartbeat"][k].as_u64())
            .fold(init, f)
    };
    let links = hb_sum("links").max(1) as f64;
    let ended = hb_sum("ended").max(1) as f64;
    let hb_sent = hb_sum("sent");
    let heartbeat_json = json!({
        "mode": heartbeat.to_string(),
        "start_interval_secs": {
            "min": hb_fold("start_ms_min", u64::min, u64::MAX) as f64 / 1e3,
            "mean": hb_sum("start_ms_sum") as f64 / links / 1e3,
            "max": hb_fold("start_ms_max", u64::max, 0) as f64 / 1e3,
        },
        "end_interval_secs": {
            "mean": hb_sum("end_ms_sum") as f64 / ended / 1e3,
            "max": hb_fold("end_ms_max", u64::max, 0) as f64 / 1e3,
        },
        "sent": hb_sent,
        "answered": hb_sum("answered"),
        // From the first link up to the stop, so the connect phase is in it too.
        "sent_per_sec_over_hold": hb_sent as f64 / args.duration,
        // What the held links cost the server once all are up: links / interval.
        "steady_per_sec": hb_sum("links") as f64 * 1e3 / (hb_sum("start_ms_sum") as f64 / links).max(1.0),
    });
    for value in &results {
        dropped += value["dropped"].as_u64().unwrap_or(0);
        retries += value["login_retries"].as_u64().unwrap_or(0);
        worker_rss += value["worker_rss_kib"].as_u64().unwrap_or(0);
    }
    let n = connected.max(1) as f64;
    let rss_delta_kib = num(&after, "server_rss_kib") - num(&before, "server_rss_kib");
    let per_conn = target
        .rss_kib()
        .map(|_| rss_delta_kib * 1024.0 / n)
        .filter(|_| connected > 0);
    let tcp_mem_delta = (num(&after, "tcp_mem_pages") - num(&before, "tcp_mem_pages")) * 4096.0;
    let slab_delta = (num(&after, "slab_kib") - num(&before, "slab_kib")) * 1024.0;
    let rate = connected as f64 / connect_secs.max(1e-9);
    let json = json!({
        "scenario": "idle",
        "protocol": args.protocol,
        "transport": args.transport,
        "machine": super::machine(),
        "server": target.describe(),
        "connections_requested": connections,
        "connected": connected,
        "held_at_end": held_at_end,
        "prepare_failed": prepare_failed,
        "login_failed": login_failed,
        "login_retries": retries,
        "dropped_while_idle": dropped,
        "held_secs": args.duration,
        "connect_login_secs": connect_secs,
        "connect_login_per_sec": rate,
        "server_rss_before_kib": before["server_rss_kib"],
        "server_rss_after_kib": after["server_rss_kib"],
        "server_rss_end_kib": end_sample["server_rss_kib"],
        "server_bytes_per_connection": per_conn,
        "kernel_tcp_mem_bytes_delta": tcp_mem_delta,
        "kernel_tcp_mem_bytes_per_connection": tcp_mem_delta / n,
        "kernel_slab_bytes_delta": slab_delta,
        "kernel_slab_bytes_per_socket": slab_delta / (2.0 * n),
        "bench_workers_rss_kib": worker_rss,
        "heartbeat": heartbeat_json,
        "points": points,
    });
    if let Some(dir) = &args.plot_dir {
        let name = format!("memory-{}.svg", proto_name(args.protocol));
        super::plot::memory(&dir.join(name), &json, args.protocol)?;
    }
    let fmt_b = |v: Option<f64>| v.map_or("n/a (no --server-pid)".into(), |b| format!("{b:.0} B"));
    let mut r = Report::new(format!(
        "idle · {} over {} · {connected} connections",
        proto_name(args.protocol),
        args.transport.name()
    ));
    r.row(
        "connected / requested",
        format!("{connected} / {connections}"),
    );
    r.row("held at the end of the hold", held_at_end);
    r.row("login failures", login_failed + prepare_failed);
    r.row("logins tried again (shed by the server)", retries);
    r.row("dropped while idle", dropped);
    r.row(
        "heartbeat (SDK smart heartbeat)",
        format!(
            "{heartbeat}: interval {:.0} s at start, {:.0} s at end (mean); {} sent, {} answered; steady {:.0}/s",
            heartbeat_json["start_interval_secs"]["mean"]
                .as_f64()
                .unwrap_or(0.0),
            heartbeat_json["end_interval_secs"]["mean"]
                .as_f64()
                .unwrap_or(0.0),
            heartbeat_json["sent"],
            heartbeat_json["answered"],
            heartbeat_json["steady_per_sec"].as_f64().unwrap_or(0.0)
        ),
    );
    r.row("connect+login rate", format!("{rate:.0} /s"));
    r.row(
        "server RSS before → after",
        format!(
            "{} → {} KiB",
            before["server_rss_kib"], after["server_rss_kib"]
        ),
    );
    r.row("server memory per connection", fmt_b(per_conn));
    r.row(
        "kernel TCP buffer memory per conn",
        format!("{:.0} B", tcp_mem_delta / n),
    );
    r.row(
        "kernel slab per socket (both ends)",
        format!("{:.0} B", slab_delta / (2.0 * n)),
    );
    r.json = json;
    Ok(r)
}

pub fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Ferry => "ferry",
        Proto::Xmpp => "xmpp",
    }
}

/// The worker half: connects its users step by step and holds them.
pub async fn worker(mut ctx: Ctx) -> anyhow::Result<()> {
    let mode: HeartbeatMode = match ctx.spec.heartbeat.as_str() {
        "" => HeartbeatMode::Smart,
        m => m.parse().map_err(anyhow::Error::msg)?,
    };
    let beats = Arc::new(Beats {
        start_ms_min: u64::MAX.into(),
        ..Beats::default()
    });
    let creds = ctx.prepare().await?;
    let stop = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut failed = 0;
    loop {
        match ctx.cmd().await? {
            Cmd::Connect { step, steps } => {
                let t0 = Instant::now();
                let upto = ctx.spec.users * step / steps.max(1);
                let mut waits = Vec::new();
                for (i, cred) in creds.iter().enumerate().take(upto).skip(next) {
                    let (tx, rx) = oneshot::channel();
                    waits.push(rx);
                    let Some(cred) = cred.clone() else {
                        let _ = tx.send(false);
                        continue;
                    };
                    tasks.spawn(hold(
                        ctx.spec.clone(),
                        i,
                        cred,
                        mode,
                        limit.clone(),
                        ctx.counters.clone(),
                        beats.clone(),
                        stop.clone(),
                        tx,
                    ));
                }
                next = next.max(upto);
                for rx in waits {
                    if !rx.await.unwrap_or(false) {
                        failed += 1;
                    }
                }
                ctx.emit(Out::Connected {
                    n: ctx.counters.connected.load(Ordering::Relaxed),
                    failed,
                    secs: t0.elapsed().as_secs_f64(),
                });
            }
            Cmd::Stop => {
                let dropped = ctx.counters.failed.load(Ordering::Relaxed);
                stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                ctx.emit(Out::Result {
                    value: json!({
                        "dropped": dropped,
                        "login_retries": ctx.counters.retried.load(Ordering::Relaxed),
                        "worker_rss_kib": super::server::rss_kib(std::process::id()),
                        "heartbeat": beats.json(),
                    }),
                });
                return Ok(());
            }
            Cmd::Go | Cmd::Killed { .. } => {}
        }
    }
}

/// Connects and logs in user `i`, reports on `ready`, then holds the link with
/// heartbeats (`mode`) until `stop`. A link the server drops counts in `failed`.
#[allow(clippy::too_many_arguments)]
async fn hold(
    spec: Spec,
    i: usize,
    cred: String,
    mode: HeartbeatMode,
    limit: Arc<Semaphore>,
    counters: Arc<Counters>,
    beats: Arc<Beats>,
    stop: CancellationToken,
    ready: oneshot::Sender<bool>,
) {
    let permit = limit.acquire_owned().await;
    let server = spec.server(i).to_owned();
    let (stream, mut channel, beat, (min, max)): (Wire, _, &'static [u8], _) = match spec.protocol {
        Proto::Ferry => {
            // Like the SDK: a login the server sheds (UNAVAILABLE, RATE_LIMITED) or a
            // connect that fails is tried again after a growing, jittered pause —
            // a few times, then it counts as failed.
            let mut attempt = 0u32;
            loop {
                let tried = async {
                    let mut c = FerryConn::connect_over(&server, spec.transport).await?;
                    let resp = c.login(&cred, 0).await?;
                    let (stream, channel) = c.into_parts();
                    anyhow::Ok((stream, channel, resp.idle_timeout_ms, resp.heartbeat_secs))
                }
                .await;
                match tried {
                    Ok((stream, channel, idle_ms, hb_secs)) => {
                        break (
                            stream,
                            channel,
                            HEARTBEAT_FRAME,
                            sdk_bounds(idle_ms, hb_secs),
                        )
                    }
                    Err(_) if attempt < LOGIN_RETRIES && !stop.is_cancelled() => {
                        attempt += 1;
                        counters.retried.fetch_add(1, Ordering::Relaxed);
                        let base = 250u64 << attempt.min(5);
                        let pause = base + rand::random::<u64>() % base;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    Err(e) => return fail(&spec, ready, e),
                }
            }
        }
        Proto::Xmpp => {
            match XmppConn::login(&server, &spec.domain, &spec.user(i), &cred).await {
                // No idle timeout is told: the SDK's own bounds.
                Ok(c) => (Wire::Tcp(c.stream), None, b" ", sdk_bounds(0, 0)),
                Err(e) => return fail(&spec, ready, e),
            }
        }
    };
    drop(permit);
    counters.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(true);
    let mut stream = stream;
    // The SDK's smart heartbeat: its state for this (never seen, or learnt) network.
    let smart = ferry_client::SmartConfig::default();
    let mut state = match mode {
        HeartbeatMode::Learned => {
            let mut s = ferry_client::HeartbeatState::new(max);
            s.stable = true;
            s
        }
        _ => ferry_client::HeartbeatState::new(min),
    };
    let interval = |state: &ferry_client::HeartbeatState| match mode {
        HeartbeatMode::Fixed(d) => d,
        _ => state.interval(min, max),
    };
    let first = interval(&state);
    let ms = |d: Duration| d.as_millis() as u64;
    beats.links.fetch_add(1, Ordering::Relaxed);
    beats.start_ms_sum.fetch_add(ms(first), Ordering::Relaxed);
    beats.start_ms_min.fetch_min(ms(first), Ordering::Relaxed);
    beats.start_ms_max.fetch_max(ms(first), Ordering::Relaxed);
    // The first heartbeat at a random point of the interval: the links stand for
    // clients that logged in at different times.
    let offset = Duration::from_millis(rand::random::<u64>() % ms(first).max(1));
    let next = tokio::time::sleep_until(tokio::time::Instant::now() + offset);
    tokio::pin!(next);
    let mut outstanding = false;
    let dropped = loop {
        tokio::select! {
            _ = stop.cancelled() => break false,
            _ = &mut next => {
                // On an encrypted link the heartbeat goes out sealed (the answers are
                // only drained, never opened: an idle client needs nothing from them).
                let sealed = match channel.as_mut() {
                    Some(ch) => {
                        let mut out = bytes::BytesMut::new();
                        if ch.seal(beat, &mut out).is_err() {
                            break true;
                        }
                        Some(out)
                    }
                    None => None,
                };
                let bytes = sealed.as_deref().unwrap_or(beat);
                if stream.write_all(bytes).await.is_err() {
                    break true;
                }
                beats.sent.fetch_add(1, Ordering::Relaxed);
                outstanding = true;
                next.as_mut().reset(tokio::time::Instant::now() + interval(&state));
            }
            r = stream.heard() => match r {
                Ok(true) => {
                    // Anything heard answers the heartbeat (as in the SDK), and
                    // teaches the smart heartbeat; the next one is an interval
                    // after this.
                    if std::mem::take(&mut outstanding) {
                        beats.answered.fetch_add(1, Ordering::Relaxed);
                        if mode != HeartbeatMode::Learned {
                            state.success(&smart, min, max);
                        }
                    }
                    next.as_mut().reset(tokio::time::Instant::now() + interval(&state));
                }
                Ok(false) | Err(_) => break true,
            },
        }
    };
    let end = interval(&state);
    beats.ended.fetch_add(1, Ordering::Relaxed);
    beats.end_ms_sum.fetch_add(ms(end), Ordering::Relaxed);
    beats.end_ms_max.fetch_max(ms(end), Ordering::Relaxed);
    counters.connected.fetch_sub(1, Ordering::Relaxed);
    if dropped {
        counters.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many times a shed or failed login is tried again.
const LOGIN_RETRIES: u32 = 5;

/// An empty-bodied HEARTBEAT frame (request id 2).
const HEARTBEAT_FRAME: &[u8] = &[0, 0, 0, ferry_proto::cmd::HEARTBEAT, 0, 0, 0, 2];

fn fail(spec: &Spec, ready: oneshot::Sender<bool>, e: anyhow::Error) {
    use std::sync::atomic::AtomicBool;
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("worker {}: a login failed: {e:#}", spec.worker);
    }
    let _ = ready.send(false);
}
