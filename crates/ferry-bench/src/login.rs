//! `ferry bench login`: K clients logging in at once with stored tokens, again and
//! again for the duration (connect, LOGIN, answer, close). Tokens come from the short
//! link first (not measured); what is measured is the long-link login race: logins/s
//! and each login's time from connect to answer.
//!
//! Encrypted, logins resume from tickets (docs/protocol.md 1.5) as the SDK's do: a first
//! pass (not timed) logs every client in once with the full Noise handshake and keeps
//! the ticket its answer carries; in the timed pass each login resumes with the ticket
//! the previous one got. `FERRY_BENCH_RESUME=0` measures full handshakes throughout. The
//! report says how many logins of each kind there were.
//!
//! A client closes with an RST (SO_LINGER 0) so that tens of thousands of closed
//! connections do not pile up in TIME_WAIT and exhaust loopback ports.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::conn::{self, FerryConn, Ticket};
use super::idle::proto_name;
use super::report::{us, Report};
use super::worker::{Cmd, Ctx, Out, Spec};
use super::xmpp::{self, XmppConn};
use super::{hist, specs, BenchArgs, Proto, Target, Workers, PASSWORD};

pub async fn run(args: &BenchArgs, clients: usize) -> anyhow::Result<Report> {
    let target = Target::new(args).await?;
    let result = measure(args, &target, clients).await;
    target.stop().await;
    result
}

async fn measure(args: &BenchArgs, target: &Target, clients: usize) -> anyhow::Result<Report> {
    anyhow::ensure!(clients > 0, "--clients must be at least 1");
    let wire = match args.protocol {
        Proto::Ferry => conn::wire_probe(&target.addrs[0], &args.prefix, PASSWORD).await,
        Proto::Xmpp => {
            xmpp::wire_probe(&target.addrs[0], &args.xmpp_domain, &args.prefix, PASSWORD).await
        }
    }
    .context("wire probe")?;
    let specs = specs(args, target, "login", (clients, 1), None, 1);
    let (mut w, pb, _) = Workers::prepared(specs).await?;
    // The first pass: a full handshake per client, for the tickets.
    let resume = matches!(args.protocol, Proto::Ferry)
        && conn::resumption_enabled()
        && conn::server_key(&target.addrs[0]).await?.is_some();
    let mut first_pass = serde_json::Value::Null;
    if resume {
        pb.set_message("first pass: full handshakes for the tickets");
        let t0 = Instant::now();
        let (n, failed) = w.connect("tickets", (1, 1), None).await?;
        let took = t0.elapsed().as_secs_f64();
        first_pass = json!({ "tickets": n, "failed": failed, "secs": took });
    }
    let secs = args.duration;
    pb.set_length((secs * 10.0) as u64);
    pb.set_position(0);
    pb.set_message("logging in");
    let t0 = Instant::now();
    w.send(&Cmd::Go).await?;
    let end = t0 + Duration::from_secs_f64(secs);
    while w.next(end).await?.is_some() {
        pb.set_position((t0.elapsed().as_secs_f64() * 10.0) as u64);
        pb.set_message(format!(
            "{:.0} logins/s",
            w.sum(Out::done) as f64 / t0.elapsed().as_secs_f64()
        ));
    }
    let results = w.results(Duration::from_secs(30)).await?;
    pb.finish_and_clear();

    let mut h = hist::new();
    let (mut logins, mut failed, mut per_sec) = (0, 0, 0.0);
    let (mut resumed, mut full) = (0, 0);
    for value in &results {
        hist::merge_json(&mut h, &value["hist"]);
        let n = value["logins"].as_u64().unwrap_or(0);
        logins += n;
        failed += value["failed"].as_u64().unwrap_or(0);
        resumed += value["resumed"].as_u64().unwrap_or(0);
        full += value["full"].as_u64().unwrap_or(0);
        per_sec += n as f64 / value["window_secs"].as_f64().unwrap_or(secs).max(1e-9);
    }
    let latency = hist::summary(&h);
    let mut r = Report::new(format!(
        "login · {} · {clients} clients at once",
        proto_name(args.protocol)
    ));
    r.row("logins/s", format!("{per_sec:.0}"));
    r.row("logins / failures", format!("{logins} / {failed}"));
    if matches!(args.protocol, Proto::Ferry) {
        let how = if wire["encrypted"] == json!(false) {
            "plaintext".to_owned()
        } else if resume {
            format!("{resumed} resumed from a ticket, {full} full Noise IK")
        } else {
            format!("{full} full Noise IK (FERRY_BENCH_RESUME=0)")
        };
        r.row("handshakes", how);
    }
    if let Some(n) = first_pass["tickets"].as_u64() {
        r.row(
            "first pass (full, for tickets)",
            format!(
                "{n} tickets in {:.2} s",
                first_pass["secs"].as_f64().unwrap_or(0.0)
            ),
        );
    }
    r.row(
        "login time p50 / p90 / p99 / max",
        format!(
            "{} / {} / {} / {}",
            us(&latency["p50_us"]),
            us(&latency["p90_us"]),
            us(&latency["p99_us"]),
            us(&latency["max_us"])
        ),
    );
    r.row(
        "login: bytes sent / received",
        format!(
            "{} / {}",
            wire["login_sent_bytes"], wire["login_received_bytes"]
        ),
    );
    r.row("login round trips", &wire["login_round_trips"]);
    let probe = &wire["login_resumed"];
    if probe.is_object() {
        r.row(
            "resumed login: bytes sent / received, round trips",
            format!(
                "{} / {}, {}",
                probe["sent_bytes"], probe["received_bytes"], probe["round_trips"]
            ),
        );
    }
    r.json = json!({
        "scenario": "login",
        "protocol": args.protocol,
        "machine": super::machine(),
        "server": target.describe(),
        "clients": clients,
        "secs": secs,
        "logins": logins,
        "failed": failed,
        "logins_per_sec": per_sec,
        "resumption": resume,
        "resumed": resumed,
        "full_handshakes": full,
        "first_pass": first_pass,
        "latency": latency,
        "wire": wire,
    });
    Ok(r)
}

/// Closes with an RST: no TIME_WAIT left behind on the client's port.
#[allow(deprecated)]
fn reset(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// One login: connect, LOGIN, answer, close. With a ticket it resumes (and keeps the
/// new ticket); a refused ticket is forgotten and the login done again in full.
/// Returns whether it resumed.
async fn login_once(
    spec: &Spec,
    i: usize,
    cred: &str,
    ticket: &mut Option<Ticket>,
    keep_tickets: bool,
) -> anyhow::Result<bool> {
    let server = spec.server(i);
    match spec.protocol {
        Proto::Ferry => {
            let mut c = FerryConn::connect(server).await?;
            reset(c.stream.tcp());
            match c.login_with(cred, 0, ticket.as_ref()).await {
                Err(e) if conn::is_resume_refused(&e) => {
                    *ticket = None;
                    c = FerryConn::connect(server).await?;
                    reset(c.stream.tcp());
                    c.login(cred, 0).await?;
                }
                r => {
                    r?;
                }
            }
            // A full handshake's answer brings the ticket (or none); a resumed link
            // keeps the one it came with.
            if keep_tickets && (!c.resumed || c.ticket.is_some()) {
                *ticket = c.ticket.take();
            }
            Ok(c.resumed)
        }
        Proto::Xmpp => {
            let c = XmppConn::login(server, &spec.domain, &spec.user(i), cred).await?;
            reset(&c.stream);
            Ok(false)
        }
    }
}

/// The first pass: one full login per client, for its ticket. Emits `Connected`.
async fn ticket_pass(ctx: &Ctx, creds: &[Option<String>]) -> Vec<Option<Ticket>> {
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for (i, cred) in creds.iter().enumerate() {
        let Some(cred) = cred.clone() else { continue };
        let spec = ctx.spec.clone();
        set.spawn(async move {
            let mut t = None;
            let r = login_once(&spec, i, &cred, &mut t, true).await;
            (i, r.ok().and(t))
        });
    }
    let mut tickets = vec![None; creds.len()];
    let (mut n, mut failed) = (0, 0);
    while let Some(done) = set.join_next().await {
        match done {
            Ok((i, Some(t))) => {
                tickets[i] = Some(t);
                n += 1;
            }
            _ => failed += 1,
        }
    }
    ctx.emit(Out::Connected {
        n,
        failed,
        secs: t0.elapsed().as_secs_f64(),
    });
    tickets
}

pub async fn worker(mut ctx: Ctx) -> anyhow::Result<()> {
    let creds = ctx.prepare().await?;
    let mut tickets = vec![None; creds.len()];
    let mut keep_tickets = false;
    loop {
        match ctx.cmd().await? {
            Cmd::Go => break,
            Cmd::Stop => return Ok(()),
            Cmd::Connect { .. } => {
                tickets = ticket_pass(&ctx, &creds).await;
                keep_tickets = true;
            }
            _ => {}
        }
    }
    let resumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h = Arc::new(Mutex::new(hist::new()));
    let stop = CancellationToken::new();
    let go = Instant::now();
    let mut set = JoinSet::new();
    for ((i, cred), mut ticket) in creds.into_iter().enumerate().zip(tickets) {
        let Some(cred) = cred else { continue };
        let (spec, h, stop, counters, resumed) = (
            ctx.spec.clone(),
            h.clone(),
            stop.clone(),
            ctx.counters.clone(),
            resumed.clone(),
        );
        set.spawn(async move {
            let mut said = false;
            while !stop.is_cancelled() {
                let t = Instant::now();
                let r = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = login_once(&spec, i, &cred, &mut ticket, keep_tickets) => r,
                };
                match r {
                    Ok(was_resumed) => {
                        hist::record(&mut h.lock().expect("hist"), t.elapsed().as_micros() as u64);
                        counters.done.fetch_add(1, Ordering::Relaxed);
                        if was_resumed {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if !said {
                            eprintln!("worker {}: login failed: {e:#}", spec.worker);
                            said = true;
                        }
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    loop {
        if let Cmd::Stop = ctx.cmd().await? {
            break;
        }
    }
    let window_secs = go.elapsed().as_secs_f64();
    let logins = ctx.counters.done.load(Ordering::Relaxed);
    let failed = ctx.counters.failed.load(Ordering::Relaxed);
    let resumed = resumed.load(Ordering::Relaxed);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    set.abort_all();
    let h = h.lock().expect("hist");
    ctx.emit(Out::Result {
        value: json!({
            "window_secs": window_secs,
            "logins": logins,
            "failed": failed,
            "resumed": resumed,
            "full": logins - resumed.min(logins),
            "hist": hist::to_json(&h),
        }),
    });
    Ok(())
}
