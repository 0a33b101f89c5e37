//! `ferry bench reconnect`: SDK clients in pairs, each sending to its peer; a third of
//! the way in the bench's own server is SIGKILLed (a crash: no drain, no goodbye) and
//! restarted on the same port and data. More clients than one process may hold open
//! (20 000 files here) run against the bench's own cluster instead, and then every
//! gateway and logic node is SIGKILLed and restarted (NATS and PostgreSQL stay up).
//! Figures: how long until every client is logged in again and has every message
//! acknowledged before the crash, how many were back after 1, 2, 5 and 10 s, and what
//! was lost or duplicated over the whole run (both must be 0).
//!
//! This scenario uses the real SDK (`ferry_client::Client`): its back-off, resume from
//! synckey and send retries are what is being measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_client::{Client, ClientConfig, Event};
use ferry_proto::v1;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use hdrhistogram::Histogram;

use super::hist;
use super::ledger::{self, Ledger, Totals};
use super::report::Report;
use super::worker::{Cmd, Ctx, Out};
use super::{specs, unix_s, users, BenchArgs, Target, Workers, DRAIN, PASSWORD};

/// How long the clients get to come back after the restart.
const RECOVERY: Duration = Duration::from_secs(60);

pub async fn run(args: &BenchArgs, clients: usize, rate: f64) -> anyhow::Result<Report> {
    if !args.server.is_empty() {
        bail!("reconnect kills and restarts the server: run it without --server");
    }
    anyhow::ensure!(clients >= 2, "--clients must be at least 2");
    anyhow::ensure!(rate > 0.0 && rate <= 1000.0, "--rate must be in (0, 1000]");
    let mut target = Target::for_links(args, clients).await?;
    let result = measure(args, &mut target, clients / 2, rate).await;
    target.stop().await;
    result
}

async fn measure(
    args: &BenchArgs,
    target: &mut Target,
    pairs: usize,
    rate: f64,
) -> anyhow::Result<Report> {
    let specs = specs(args, target, "reconnect", (pairs, 2), Some(rate), 1);
    let clients = 2 * pairs;
    let (mut w, pb, _) = Workers::prepared(specs).await?;
    pb.set_message("connecting (SDK)");
    w.connect("connect", (1, 1), Some(&pb)).await?;
    pb.set_message("sending");
    let t0 = Instant::now();
    w.send(&Cmd::Go).await?;
    let secs = args.duration;
    let kill_at = t0 + Duration::from_secs_f64(secs / 3.0);
    while w.next(kill_at).await?.is_some() {
        pb.set_position(w.sum(Out::connected));
    }
    pb.set_message("server killed");
    let rss_before_kill = target.rss_kib();
    target.kill().await?;
    let killed = unix_s();
    w.send(&Cmd::Killed { at: killed }).await?;
    target.restart().await?;
    let restarted = unix_s();
    pb.set_message("waiting for clients");
    let outs = match w
        .wait_all(
            "come back",
            RECOVERY,
            |o| matches!(o, Out::Event { name, .. } if name == "synced"),
            |w| pb.set_position(w.sum(Out::connected)),
        )
        .await
    {
        Ok(outs) => outs,
        Err(e) => bail!(
            "{e}: {} of {clients} clients were back {:.1} s after the restart",
            w.sum(Out::connected),
            unix_s() - restarted
        ),
    };
    let synced = outs
        .iter()
        .filter_map(|o| match o {
            Out::Event { at, .. } => Some(*at),
            _ => None,
        })
        .fold(restarted, f64::max);
    // The "back" events came before "synced"; they were recorded as other reports.
    let end = t0 + Duration::from_secs_f64(secs);
    pb.set_message("sending");
    while w.next(end).await?.is_some() {
        pb.set_position(w.sum(Out::connected));
    }
    pb.set_message("draining");
    let results = w.results(DRAIN + Duration::from_secs(20)).await?;
    pb.finish_and_clear();
    let mut tot = json!({});
    let mut back: f64 = restarted;
    // Clients back per tenth of a second after the kill, summed over the workers.
    let mut per_tenth: Vec<u64> = Vec::new();
    let (mut before, mut while_back) = (hist::new(), hist::new());
    for value in &results {
        hist::merge_json(&mut before, &value["sends_before_kill"]);
        hist::merge_json(&mut while_back, &value["sends_while_back"]);
        let counts = value["back_per_tenth_after_kill"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, c) in counts.iter().enumerate() {
            if per_tenth.len() <= i {
                per_tenth.resize(i + 1, 0);
            }
            per_tenth[i] += c.as_u64().unwrap_or(0);
        }
        for k in ["sent", "acked", "received", "lost", "duplicated", "errors"] {
            let v = tot[k].as_u64().unwrap_or(0) + value[k].as_u64().unwrap_or(0);
            tot[k] = json!(v);
        }
        back = back.max(value["back_at"].as_f64().unwrap_or(restarted));
    }
    let server = match target.cluster() {
        Some(c) => format!("a cluster of {} gateways", c.addrs.len()),
        None => "the server".into(),
    };
    let mut r = Report::new(format!(
        "reconnect · ferry · {clients} SDK clients · {server} SIGKILLed and restarted"
    ));
    r.row(
        "server down (kill → listening again)",
        format!("{:.0} ms", (restarted - killed) * 1e3),
    );
    r.row(
        "every client logged in again",
        format!("{:.0} ms after the restart", (back - restarted) * 1e3),
    );
    r.row(
        "every client synced",
        format!("{:.0} ms after the restart", (synced - restarted) * 1e3),
    );
    // Back by `secs` after the restart.
    let down = restarted - killed;
    let at = |secs: f64| -> u64 {
        let tenths = ((secs + down) * 10.0).floor() as usize;
        per_tenth.iter().take(tenths).sum()
    };
    r.row(
        "logged in 1 / 2 / 5 / 10 s after the restart",
        format!("{} / {} / {} / {}", at(1.0), at(2.0), at(5.0), at(10.0)),
    );
    r.row(
        "sent / acked / delivered",
        format!("{} / {} / {}", tot["sent"], tot["acked"], tot["received"]),
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    r.row(
        "send → ack before the kill: p50 / p99",
        format!("{:.1} / {:.1} ms", ms(&before, 0.5), ms(&before, 0.99)),
    );
    r.row(
        "send → ack by clients back, during the recovery: p50 / p99",
        format!(
            "{:.1} / {:.1} ms ({} sends)",
            ms(&while_back, 0.5),
            ms(&while_back, 0.99),
            while_back.len()
        ),
    );
    r.row("lost", &tot["lost"]);
    r.row("duplicated", &tot["duplicated"]);
    r.json = json!({
        "scenario": "reconnect",
        "protocol": "ferry",
        "machine": super::machine(),
        "clients": clients,
        "server": target.describe(),
        "rate_per_client": rate,
        "secs": secs,
        "server_rss_before_kill_kib": rss_before_kill,
        "down_ms": (restarted - killed) * 1e3,
        "all_back_ms_after_restart": (back - restarted) * 1e3,
        "all_synced_ms_after_restart": (synced - restarted) * 1e3,
        "all_synced_ms_after_kill": (synced - killed) * 1e3,
        "back_per_tenth_after_kill": per_tenth,
        "sent": tot["sent"],
        "acked": tot["acked"],
        "received": tot["received"],
        "lost": tot["lost"],
        "duplicated": tot["duplicated"],
        "errors": tot["errors"],
        "sends_before_kill": hist::summary(&before),
        "sends_while_back": hist::summary(&while_back),
    });
    Ok(r)
}

struct Peer {
    client: Client,
    /// When its last login was (unix µs, as the worker saw the Connected event): it is
    /// back when that is after the kill. A time, not a count, so a worker that reads the
    /// kill late (starved of CPU while clients already log in again) counts right.
    last_login_us: AtomicU64,
}

pub async fn worker(mut ctx: Ctx) -> anyhow::Result<()> {
    let spec = ctx.spec.clone();
    // Users exist, and are friends, before the SDK logs in with their passwords.
    let creds = ctx.prepare().await?;
    let unprepared = creds.iter().filter(|c| c.is_none()).count();
    if unprepared > 0 {
        bail!("{unprepared} users could not be set up (the first error is above)");
    }
    if !ctx.until(|c| matches!(c, Cmd::Connect { .. })).await? {
        return Ok(());
    }
    let t0 = Instant::now();
    let login =
        |i: usize| Client::connect(ClientConfig::new(spec.server(i), spec.user(i), PASSWORD));
    let counters = ctx.counters.clone();
    let logged_in = users::each(spec.users, users::IN_FLIGHT, login, |r| {
        if r.is_ok() {
            counters.connected.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await?;
    let mut peers = Vec::with_capacity(spec.users);
    for (i, r) in logged_in.into_iter().enumerate() {
        let (client, events) = r.with_context(|| format!("SDK login of {}", spec.user(i)))?;
        let p = Arc::new(Peer {
            client,
            last_login_us: AtomicU64::new(unix_us()),
        });
        peers.push(Some((p, events)));
    }
    ctx.emit(Out::Connected {
        n: spec.users as u64,
        failed: 0,
        secs: t0.elapsed().as_secs_f64(),
    });
    if !ctx.until(|c| matches!(c, Cmd::Go)).await? {
        return Ok(());
    }
    let ledgers: Vec<Arc<Ledger>> = (0..spec.users).map(|_| Arc::default()).collect();
    let sends: Arc<std::sync::Mutex<Vec<TimedSend>>> = Arc::default();
    let stop_send = CancellationToken::new();
    let end = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut clients = Vec::new();
    for (i, slot) in peers.iter_mut().enumerate() {
        let (p, mut events) = slot.take().expect("all connected");
        clients.push(p.clone());
        // Receiving: entries from the peer, and link changes.
        let (inn, me, end2) = (ledgers[i ^ 1].clone(), spec.user(i), end.clone());
        let (p2, counters) = (p.clone(), ctx.counters.clone());
        tasks.spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = end2.cancelled() => return,
                    e = events.recv() => match e { Some(e) => e, None => return },
                };
                match ev {
                    Event::Entry(e) => {
                        if let Some(v1::entry::Kind::Message(m)) = e.kind {
                            if m.from != me && inn.receive_text(&m.text) {
                                counters.done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    // After the kill, `connected` counts the clients back (below).
                    Event::Connected { .. } => {
                        p2.last_login_us.store(unix_us(), Ordering::Relaxed);
                    }
                    Event::Disconnected { .. } => {}
                    Event::Stopped { error } => {
                        eprintln!("client {me} stopped: {error}");
                        return;
                    }
                    Event::Group { .. } | Event::Typing { .. } => {}
                }
            }
        });
        // Sending: one message at a time, retried by the SDK until acknowledged.
        let (out, peer, stop) = (ledgers[i].clone(), spec.user(i ^ 1), stop_send.clone());
        let timed = sends.clone();
        let period = Duration::from_secs_f64(1.0 / spec.rate_per_conn.unwrap_or(1.0));
        // Spread over the period, as people's messages are: 20 000 clients sending in
        // the same millisecond every period would be a storm of their own.
        let offset = period.mul_f64(rand::random::<f64>());
        tasks.spawn(async move {
            // The client's last login when each send began: a send by a client back
            // after the crash is one a connected user made during the recovery.
            let login_at_send = AtomicU64::new(0);
            let text = |seq| {
                login_at_send.store(p.last_login_us.load(Ordering::Relaxed), Ordering::Relaxed);
                format!("{seq} {}", unix_s())
            };
            let took = |d: Duration| {
                let us = d.as_micros() as u64;
                let send = TimedSend {
                    began_us: unix_us().saturating_sub(us),
                    login_us: login_at_send.load(Ordering::Relaxed),
                    took_us: us,
                };
                timed.lock().expect("timed sends").push(send);
            };
            let every = (offset, period);
            ledger::send_steadily(&p.client, &peer, &out, every, stop, text, took).await
        });
    }
    // Watch for the kill, then for every client to be back and synced.
    let mut killed: Option<(u64, Vec<u64>)> = None;
    // Clients back, per tenth of a second after the kill (each counted once).
    let mut back_per_tenth: Vec<u64> = Vec::new();
    let mut is_back = vec![false; clients.len()];
    let mut back_at = None;
    let mut synced_at = None;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            c = ctx.cmd() => match c? {
                Cmd::Killed { at } => {
                    let killed_us = (at * 1e6) as u64;
                    let acked = ledgers.iter().map(|l| l.inner.lock().expect("ledger").acked_n).collect();
                    killed = Some((killed_us, acked));
                }
                Cmd::Stop => break,
                _ => {}
            },
            _ = poll.tick(), if killed.is_some() && synced_at.is_none() => {
                let (killed_us, acked) = killed.as_ref().expect("checked");
                let mut back = 0;
                let mut last_us = 0;
                for (i, p) in clients.iter().enumerate() {
                    let login_us = p.last_login_us.load(Ordering::Relaxed);
                    if login_us > *killed_us {
                        back += 1;
                        last_us = last_us.max(login_us);
                        if !is_back[i] {
                            is_back[i] = true;
                            // By when it logged in, not when this poll saw it.
                            let tenth = ((login_us - killed_us) / 100_000) as usize;
                            if back_per_tenth.len() <= tenth {
                                back_per_tenth.resize(tenth + 1, 0);
                            }
                            back_per_tenth[tenth] += 1;
                        }
                    }
                }
                ctx.counters.connected.store(back as u64, Ordering::Relaxed);
                if back_at.is_none() && back == clients.len() {
                    let at = last_us as f64 / 1e6;
                    back_at = Some(at);
                    ctx.emit(Out::Event { name: "back".into(), at });
                }
                // Synced: every message acknowledged before the kill has arrived.
                if back_at.is_some() && ledgers.iter().zip(acked).all(|(l, &a)| {
                    let b = l.inner.lock().expect("ledger");
                    (1..=a).all(|s| b.received.get(s))
                }) {
                    let at = unix_s();
                    synced_at = Some(at);
                    ctx.emit(Out::Event { name: "synced".into(), at });
                }
            }
        }
    }
    stop_send.cancel();
    ledger::settle(&ledgers, DRAIN).await;
    end.cancel();
    let mut value = Totals::of(&ledgers).json();
    value["back_at"] = json!(back_at);
    value["synced_at"] = json!(synced_at);
    value["back_per_tenth_after_kill"] = json!(back_per_tenth);
    if let Some((killed_us, _)) = &killed {
        let sends = sends.lock().expect("timed sends");
        let synced_us = synced_at.map_or(u64::MAX, |at| (at * 1e6) as u64);
        let (before, after) = split_sends(&sends, *killed_us, synced_us);
        value["sends_before_kill"] = hist::to_json(&before);
        value["sends_while_back"] = hist::to_json(&after);
    }
    ctx.emit(Out::Result { value });
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        for p in &clients {
            p.client.close().await;
        }
    })
    .await;
    tasks.abort_all();
    Ok(())
}

/// One send's timing, send → acknowledged.
struct TimedSend {
    /// When it began (unix µs).
    began_us: u64,
    /// The sender's last login when it began (unix µs).
    login_us: u64,
    took_us: u64,
}

/// Send → ack times of the sends acknowledged before the kill, and of the sends begun
/// during the recovery (before `synced_us`, when this worker's clients were all back and
/// synced) by clients already logged in again: connected users, whose latency the storm
/// of returning clients must not take.
fn split_sends(
    sends: &[TimedSend],
    killed_us: u64,
    synced_us: u64,
) -> (Histogram<u64>, Histogram<u64>) {
    let (mut before, mut after) = (hist::new(), hist::new());
    for s in sends {
        if s.began_us + s.took_us < killed_us {
            hist::record(&mut before, s.took_us);
        } else if s.login_us > killed_us && s.began_us < synced_us {
            hist::record(&mut after, s.took_us);
        }
    }
    (before, after)
}

/// Now, in unix microseconds.
fn unix_us() -> u64 {
    (unix_s() * 1e6) as u64
}
