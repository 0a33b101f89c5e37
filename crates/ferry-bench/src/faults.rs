//! `ferry bench faults`: SDK clients in pairs, each sending to its peer at a steady rate
//! through the fault proxy ([`super::faultproxy`]) while one fault is applied — delay
//! with jitter, stalls, byte-by-byte chunking, random RSTs, half-open flows — or while
//! the bench's own server is SIGKILLed and restarted, or while its data folder (a small
//! tmpfs) is full. At the end the faults stop, everything settles, and the figures are:
//! messages acknowledged, lost (acknowledged, never delivered), duplicated, never
//! acknowledged, reconnects, and whether the server stayed up. `bench/faults.sh` runs
//! every fault in turn and prints the table.
//!
//! [`Pairs`] is the workload; `crates/ferry/tests/it/faults.rs` drives it too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use ferry_client::{Client, ClientConfig, Event, ShortLink};
use ferry_proto::v1;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::faultproxy::{FaultProxy, Faults};
use super::fulldisk::SmallDisk;
use super::ledger::{self, Ledger, Totals};
use super::report::Report;
use super::server::OwnServer;
use super::{BenchArgs, PASSWORD};

/// The faults `ferry bench faults` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// No fault: the baseline.
    None,
    /// 100 ms added each way, plus 0–100 ms jitter.
    Delay,
    /// 5 % of chunks held 1.5 s.
    Stall,
    /// Every byte stream cut into 7-byte pieces written 1 ms apart.
    Chunk,
    /// Every connection reset (RST) after 0.5–3 s.
    Cut,
    /// Every connection half-open after 1–4 s: no byte forwarded, nothing closed.
    HalfOpen,
    /// The server SIGKILLed a third of the way in and restarted.
    Kill,
    /// The data folder (a 16 MiB tmpfs) filled a third of the way in, freed at two
    /// thirds.
    Disk,
    /// A cluster's logic node (`--stop-pid`) SIGSTOPped for `--duration` seconds after
    /// half that long of normal traffic, then SIGCONTed; the clients talk to the
    /// cluster's gateway (`--server`) directly. Acks/s and latency before and during.
    LogicStop,
}

impl Fault {
    /// What the proxy does for this fault.
    pub fn faults(self) -> Faults {
        let mut f = Faults::default();
        match self {
            Fault::Delay => (f.delay_ms, f.jitter_ms) = (100, 100),
            Fault::Stall => (f.stall_prob, f.stall_ms) = (0.05, 1_500),
            Fault::Chunk => (f.chunk_bytes, f.chunk_gap_ms) = (7, 1),
            Fault::Cut => (f.cut_min_ms, f.cut_max_ms) = (500, 3_000),
            Fault::HalfOpen => (f.half_open_min_ms, f.half_open_max_ms) = (1_000, 4_000),
            Fault::None | Fault::Kill | Fault::Disk | Fault::LogicStop => {}
        }
        f
    }
}

/// What a run of [`Pairs`] saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    /// Acknowledged by the server, never delivered to the peer.
    pub lost: u64,
    pub duplicated: u64,
    /// Sent, but not acknowledged by the end of the drain.
    pub unacked: u64,
    /// Links the SDK saw drop (each one followed by a reconnect).
    pub disconnects: u64,
    /// From the end of the faults until everything sent was acknowledged and delivered.
    pub settle_secs: f64,
    /// Sends the SDK had to retry (each costs it a pause), as refusals seen by a send.
    pub sends_slow: u64,
}

impl Outcome {
    /// The rows every fault report shows: what was sent and what became of it.
    fn rows(&self, r: &mut Report) {
        r.row(
            "sent / acked / delivered",
            format!("{} / {} / {}", self.sent, self.acked, self.received),
        );
        r.row("lost (acked, never delivered)", self.lost);
        r.row("duplicated", self.duplicated);
        r.row("never acknowledged", self.unacked);
        r.row("client disconnects", self.disconnects);
    }
}

/// One client of a pair.
struct Peer {
    client: Client,
}

/// SDK clients in pairs (2k ↔ 2k+1), each sending `rate` messages/s to its peer, one at
/// a time (the SDK retries a send until it is acknowledged).
pub struct Pairs {
    peers: Vec<Arc<Peer>>,
    ledgers: Vec<Arc<Ledger>>,
    stop_send: CancellationToken,
    end: CancellationToken,
    senders: JoinSet<()>,
    receivers: JoinSet<()>,
    disconnects: Arc<AtomicU64>,
    slow: Arc<AtomicU64>,
    /// Every answered send: when it was answered and how long it took.
    latencies: Arc<std::sync::Mutex<Vec<(Instant, Duration)>>>,
}

impl Pairs {
    /// Registers `2 * pairs` users named `{prefix}{i}` at `short_addr` (the server
    /// itself), connects them at `link_addr` (the proxy, say) with `config(server,
    /// user, password)` and starts the sending.
    pub async fn start(
        short_addr: &str,
        link_addr: &str,
        prefix: &str,
        password: &str,
        pairs: usize,
        rate: f64,
        config: impl Fn(&str, &str, &str) -> ClientConfig,
    ) -> anyhow::Result<Pairs> {
        anyhow::ensure!(pairs > 0, "at least one pair");
        anyhow::ensure!(rate > 0.0 && rate <= 1000.0, "rate in (0, 1000]");
        // Sealed, as the SDK's short link: a cluster refuses plaintext by default.
        let key = ferry_client::fetch_server_key(short_addr)
            .await
            .with_context(|| format!("asking {short_addr} for its key"))?;
        let short = ShortLink::sealed(short_addr, Some(key));
        let n = 2 * pairs;
        let users: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        super::users::sign_in_all(&short, &users, password, |_| {}).await?;
        let mut peers = Vec::new();
        let mut events = Vec::new();
        for u in &users {
            let (client, ev) = Client::connect(config(link_addr, u, password))
                .await
                .with_context(|| format!("SDK login of {u}"))?;
            peers.push(Arc::new(Peer { client }));
            events.push(ev);
        }
        let ledgers: Vec<Arc<Ledger>> = (0..n).map(|_| Arc::default()).collect();
        let stop_send = CancellationToken::new();
        let end = CancellationToken::new();
        let disconnects = Arc::new(AtomicU64::new(0));
        let slow = Arc::new(AtomicU64::new(0));
        let latencies: Arc<std::sync::Mutex<Vec<(Instant, Duration)>>> = Arc::default();
        let mut senders = JoinSet::new();
        let mut receivers = JoinSet::new();
        for (i, mut ev) in events.into_iter().enumerate() {
            // Receiving: the peer's messages into its ledger; link drops counted.
            let (inn, me, end2) = (ledgers[i ^ 1].clone(), users[i].clone(), end.clone());
            let disc = disconnects.clone();
            receivers.spawn(async move {
                loop {
                    let e = tokio::select! {
                        _ = end2.cancelled() => return,
                        e = ev.recv() => match e { Some(e) => e, None => return },
                    };
                    match e {
                        Event::Entry(e) => {
                            let Some(v1::entry::Kind::Message(m)) = e.kind else {
                                continue;
                            };
                            if m.from == me {
                                continue;
                            }
                            inn.receive_text(&m.text);
                        }
                        Event::Disconnected { .. } => {
                            disc.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::Stopped { error } => {
                            eprintln!("client {me} stopped: {error}");
                            return;
                        }
                        _ => {}
                    }
                }
            });
            // Sending: on a fixed period; a send that takes longer delays the next.
            let (out, peer, stop) = (ledgers[i].clone(), users[i ^ 1].clone(), stop_send.clone());
            let (p, slow, lat) = (peers[i].clone(), slow.clone(), latencies.clone());
            let period = Duration::from_secs_f64(1.0 / rate);
            senders.spawn(async move {
                // Spread over the period, so the pairs do not all send at once.
                let offset = period.mul_f64(rand::random::<f64>());
                let slow_after = period.max(Duration::from_secs(1));
                let text = |seq| format!("{seq} fault-bench");
                let took = |t: Duration| {
                    if t > slow_after {
                        slow.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.lock().expect("latencies").push((Instant::now(), t));
                };
                let every = (offset, period);
                ledger::send_steadily(&p.client, &peer, &out, every, stop, text, took).await
            });
        }
        Ok(Pairs {
            peers,
            ledgers,
            stop_send,
            end,
            senders,
            receivers,
            disconnects,
            slow,
            latencies,
        })
    }

    /// The latencies of the sends answered between `from` and `to`.
    pub fn latencies(&self, from: Instant, to: Instant) -> Vec<Duration> {
        self.latencies
            .lock()
            .expect("latencies")
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| *d)
            .collect()
    }

    /// Messages acknowledged so far, per client.
    pub fn acked_each(&self) -> Vec<u64> {
        self.ledgers
            .iter()
            .map(|l| l.inner.lock().expect("ledger").acked_n)
            .collect()
    }

    /// Messages acknowledged so far, over all clients.
    pub fn acked(&self) -> u64 {
        self.acked_each().iter().sum()
    }

    /// Stops sending, waits (at most `drain`) for every send to be acknowledged and
    /// every acknowledged message delivered, closes the clients and counts.
    pub async fn finish(mut self, drain: Duration) -> Outcome {
        self.stop_send.cancel();
        let t = Instant::now();
        let deadline = t + drain;
        // The sends in flight run to their end (or are abandoned at the deadline).
        while !self.senders.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, self.senders.join_next()).await;
        }
        self.senders.abort_all();
        while Instant::now() < deadline {
            if self.ledgers.iter().all(|l| {
                let b = l.inner.lock().expect("ledger");
                b.received_n >= b.acked_n
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let settle_secs = t.elapsed().as_secs_f64();
        // A little longer, so a late duplicate would still be seen.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.end.cancel();
        for p in &self.peers {
            let _ = tokio::time::timeout(Duration::from_secs(3), p.client.close()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while self.receivers.join_next().await.is_some() {}
        })
        .await;
        self.receivers.abort_all();
        let t = Totals::of(&self.ledgers);
        Outcome {
            sent: t.sent,
            acked: t.acked,
            received: t.received,
            lost: t.lost,
            duplicated: t.duplicated,
            // A sender counts a message sent before it is acknowledged: never fewer.
            unacked: t.sent.saturating_sub(t.acked),
            settle_secs,
            disconnects: self.disconnects.load(Ordering::Relaxed),
            sends_slow: self.slow.load(Ordering::Relaxed),
        }
    }
}

/// The SDK settings of the bench's clients: a short heartbeat and quick reconnects,
/// so a dead link is noticed within seconds.
pub fn client_config(server: &str, user: &str, password: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(server, user, password);
    cfg.heartbeat = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_secs(1);
    cfg
}

/// `ferry bench faults`.
pub async fn run(
    args: &BenchArgs,
    fault: Fault,
    pairs: usize,
    rate: f64,
    stop_pid: Option<u32>,
) -> anyhow::Result<Report> {
    if fault == Fault::LogicStop {
        return logic_stop(args, pairs, rate, stop_pid).await;
    }
    if !args.server.is_empty() {
        bail!("faults runs its own server (it kills it, or fills its disk): drop --server");
    }
    let secs = args.duration;
    let disk =
        if fault == Fault::Disk {
            Some(SmallDisk::mount(16 << 20).context(
                "mounting a 16 MiB tmpfs for the data folder (the disk fault needs root)",
            )?)
        } else {
            None
        };
    let data = disk.as_ref().map(|d| d.path().join("data"));
    let mut server = OwnServer::start_with(&args.durability, data, "").await?;
    let pid = server.pid();
    let upstream: std::net::SocketAddr = server.addr.parse()?;
    let proxy = FaultProxy::start("127.0.0.1:0", upstream, Faults::default()).await?;
    let prefix = format!("{}f{}-", args.prefix, std::process::id());
    let pairs_run = Pairs::start(
        &server.addr,
        &proxy.addr.to_string(),
        &prefix,
        PASSWORD,
        pairs,
        rate,
        client_config,
    )
    .await?;
    proxy.set(fault.faults());
    let t0 = Instant::now();
    let at = |f: f64| t0 + Duration::from_secs_f64(secs * f);
    let mut notes = Vec::new();
    let mut kill_recover = None;
    match fault {
        Fault::Kill => {
            tokio::time::sleep_until(at(1.0 / 3.0).into()).await;
            server.kill().await?;
            let killed = Instant::now();
            let before = pairs_run.acked_each();
            notes.push(format!("SIGKILL after {} acks", before.iter().sum::<u64>()));
            server.restart().await?;
            notes.push(format!(
                "restarted in {:.2} s",
                killed.elapsed().as_secs_f64()
            ));
            // Recovered: every client has had a send acknowledged since the kill.
            while killed.elapsed() < Duration::from_secs(60)
                && pairs_run
                    .acked_each()
                    .iter()
                    .zip(&before)
                    .any(|(now, then)| now <= then)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            kill_recover = Some(killed.elapsed().as_secs_f64());
        }
        Fault::Disk => {
            let d = disk.as_ref().expect("mounted");
            tokio::time::sleep_until(at(1.0 / 3.0).into()).await;
            let filled = d.fill(0)?;
            let before = pairs_run.acked();
            notes.push(format!("filled {} KiB", filled >> 10));
            tokio::time::sleep_until(at(2.0 / 3.0).into()).await;
            let during = pairs_run.acked() - before;
            d.free()?;
            notes.push(format!("{during} acks while full"));
        }
        _ => {}
    }
    tokio::time::sleep_until(at(1.0).into()).await;
    // The faults end; everything must settle.
    proxy.set(Faults::default());
    let outcome = pairs_run.finish(Duration::from_secs(30)).await;
    let alive = server.alive();
    let same_pid = server.pid() == pid;
    let log = server.log_tail();
    server.stop().await;
    drop(disk);

    let ok = outcome.lost == 0 && outcome.duplicated == 0 && outcome.unacked == 0 && alive;
    let mut r = Report::new(format!(
        "faults · {} · {pairs} pairs · {rate}/s each · {secs} s",
        fault
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    ));
    r.row("fault", fault.faults().describe());
    for n in &notes {
        r.row("", n);
    }
    outcome.rows(&mut r);
    r.row("sends that took > 1 s", outcome.sends_slow);
    r.row(
        "settled after the fault",
        format!("{:.2} s", outcome.settle_secs),
    );
    if let Some(s) = kill_recover {
        r.row(
            "every client acknowledged again after the SIGKILL",
            format!("{s:.2} s"),
        );
    }
    r.row(
        "server",
        if !alive {
            format!("DOWN\n{log}")
        } else if fault == Fault::Kill || same_pid {
            "up".into()
        } else {
            "up (restarted?)".into()
        },
    );
    r.row("verdict", if ok { "PASS" } else { "FAIL" });
    r.json = json!({
        "scenario": "faults",
        "fault": fault,
        "faults": fault.faults(),
        "pairs": pairs,
        "rate": rate,
        "secs": secs,
        "outcome": outcome,
        "proxy": proxy.stats.json(),
        "kill_recover_secs": kill_recover,
        "notes": notes,
        "server_alive": alive,
        "ok": ok,
        "machine": super::machine(),
    });
    drop(proxy);
    if !ok {
        super::report::print(&r);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&r.json)?)?;
        }
        bail!(
            "fault {fault:?}: lost, duplicated or unacknowledged messages, or the server went down"
        );
    }
    Ok(r)
}

/// Sends `sig` (`STOP`, `CONT`) to `pid` with kill(1).
fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .context("running kill")?
        .success();
    anyhow::ensure!(ok, "kill -{sig} {pid} failed");
    Ok(())
}

/// SIGCONT on drop: the stopped node never stays stopped, whatever happens.
struct Stopped(u32);
impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = signal(self.0, "CONT");
    }
}

/// The `q` quantile of `v` (sorted here), zero when empty.
fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `ferry bench faults --fault logic-stop`: steady traffic through a cluster's gateway
/// for `duration / 2` s, then one logic node SIGSTOPped for `duration` s, then SIGCONT
/// and `duration / 4` s more. Acks/s and p50/p99 latency in each phase; lost and
/// duplicated at the end. The routes a node dropped on waking are in its log
/// (`bench/faults.sh` counts them).
async fn logic_stop(
    args: &BenchArgs,
    pairs: usize,
    rate: f64,
    stop_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let Some(pid) = stop_pid else {
        bail!("logic-stop needs --stop-pid (a logic node of the cluster at --server)");
    };
    let Some(addr) = args.server.first() else {
        bail!("logic-stop needs --server (a gateway of the cluster)");
    };
    let stop_secs = args.duration;
    anyhow::ensure!(
        (1.0..=600.0).contains(&stop_secs),
        "--duration (the stop) in [1, 600] s"
    );
    let prefix = format!("{}ls{}-", args.prefix, std::process::id());
    let run = Pairs::start(addr, addr, &prefix, PASSWORD, pairs, rate, client_config).await?;
    // Warm-up: every client's first sends done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let phase = |secs: f64| Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let a0 = run.acked();
    tokio::time::sleep(phase(stop_secs / 2.0)).await;
    let t1 = Instant::now();
    let a1 = run.acked();
    signal(pid, "STOP")?;
    let stopped = Stopped(pid);
    tokio::time::sleep(phase(stop_secs)).await;
    drop(stopped);
    let t2 = Instant::now();
    let a2 = run.acked();
    tokio::time::sleep(phase(stop_secs / 4.0)).await;
    let t3 = Instant::now();
    let a3 = run.acked();
    let mut before = run.latencies(t0, t1);
    let mut during = run.latencies(t1, t2);
    let mut after = run.latencies(t2, t3);
    let outcome = run.finish(Duration::from_secs(30)).await;
    let rate_of = |n: u64, from: Instant, to: Instant| n as f64 / (to - from).as_secs_f64();
    let (r_before, r_during, r_after) = (
        rate_of(a1 - a0, t0, t1),
        rate_of(a2 - a1, t1, t2),
        rate_of(a3 - a2, t2, t3),
    );
    let ratio = if r_before > 0.0 {
        r_during / r_before
    } else {
        0.0
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50_b, p99_b) = (quantile(&mut before, 0.5), quantile(&mut before, 0.99));
    let (p50_d, p99_d) = (quantile(&mut during, 0.5), quantile(&mut during, 0.99));
    let max_d = during.last().copied().unwrap_or_default();
    let (p50_a, p99_a) = (quantile(&mut after, 0.5), quantile(&mut after, 0.99));
    let ok = outcome.lost == 0
        && outcome.duplicated == 0
        && outcome.unacked == 0
        && ratio >= 0.8
        && p99_d <= Duration::from_millis(1500);
    let mut r = Report::new(format!(
        "faults · logic-stop · {pairs} pairs · {rate}/s each · node {pid} stopped {stop_secs} s"
    ));
    r.row("acks/s before", format!("{r_before:.0}"));
    r.row(
        "acks/s while stopped",
        format!("{r_during:.0} ({:.0} % of before)", ratio * 100.0),
    );
    r.row("acks/s after SIGCONT", format!("{r_after:.0}"));
    r.row(
        "latency before p50 / p99",
        format!("{:.0} / {:.0} ms", ms(p50_b), ms(p99_b)),
    );
    r.row(
        "latency while stopped p50 / p99 / max",
        format!("{:.0} / {:.0} / {:.0} ms", ms(p50_d), ms(p99_d), ms(max_d)),
    );
    r.row(
        "latency after p50 / p99",
        format!("{:.0} / {:.0} ms", ms(p50_a), ms(p99_a)),
    );
    outcome.rows(&mut r);
    r.row("verdict", if ok { "PASS" } else { "FAIL" });
    r.json = json!({
        "scenario": "faults",
        "fault": Fault::LogicStop,
        "pairs": pairs,
        "rate": rate,
        "secs": stop_secs,
        "outcome": outcome,
        "acks_per_sec": { "before": r_before, "during": r_during, "after": r_after },
        "during_over_before": ratio,
        "latency_ms": {
            "before": { "p50": ms(p50_b), "p99": ms(p99_b) },
            "during": { "p50": ms(p50_d), "p99": ms(p99_d), "max": ms(max_d) },
            "after": { "p50": ms(p50_a), "p99": ms(p99_a) },
        },
        "server_alive": true,
        "ok": ok,
        "machine": super::machine(),
    });
    if !ok {
        super::report::print(&r);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&r.json)?)?;
        }
        bail!("logic-stop: below 80 % of the rate, p99 over 1.5 s, or messages lost");
    }
    Ok(r)
}

/// `ferry bench proxy`: the fault proxy alone, for `--duration` seconds.
pub async fn proxy(
    args: &BenchArgs,
    listen: &str,
    upstream: &str,
    faults: Faults,
) -> anyhow::Result<Report> {
    let upstream: std::net::SocketAddr = upstream.parse().context("--upstream IP:PORT")?;
    let listen_addr: std::net::SocketAddr = listen.parse().context("--listen IP:PORT")?;
    if !upstream.ip().is_loopback() || !listen_addr.ip().is_loopback() {
        bail!("the fault proxy only works on loopback addresses");
    }
    let p = FaultProxy::start(listen, upstream, faults.clone()).await?;
    println!(
        "fault proxy listening on {} → {upstream} ({})",
        p.addr,
        faults.describe()
    );
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(args.duration)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let mut r = Report::new(format!("fault proxy · {}", faults.describe()));
    for (k, v) in p.stats.json().as_object().into_iter().flatten() {
        r.row(k.as_str(), v);
    }
    r.json = json!({ "scenario": "proxy", "faults": faults, "stats": p.stats.json() });
    Ok(r)
}
