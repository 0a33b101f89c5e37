//! `ferry bench login`: K clients logging in at once with stored tokens, again and
//! again for the duration (connect, LOGIN, answer, close). Tokens come from the short
//! link first (not measured); what is measured is the long-link login race: logins/s
//! and each login's time from connect to answer.
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

use super::conn::{self, FerryConn};
use super::idle::{proto_name, specs};
use super::report::{us, Report};
use super::worker::{Cmd, Ctx, Out, Spec};
use super::xmpp::{self, XmppConn};
use super::{bar, hist, BenchArgs, Proto, Target, Workers, PASSWORD};

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
    let mut w = Workers::spawn(specs(args, target, "login", clients)).await?;
    let pb = bar(clients as u64, "preparing users");
    w.wait_all(
        "prepare",
        Duration::from_secs(1800),
        |o| matches!(o, Out::Prepared { .. }),
        |w| pb.set_position(w.sum(Out::done)),
    )
    .await?;
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
    w.send(&Cmd::Stop).await?;
    let results = w
        .wait_all(
            "report",
            Duration::from_secs(30),
            |o| matches!(o, Out::Result { .. }),
            |_| {},
        )
        .await?;
    w.finish().await;
    pb.finish_and_clear();

    let mut h = hist::new();
    let (mut logins, mut failed, mut per_sec) = (0, 0, 0.0);
    for o in &results {
        if let Out::Result { value } = o {
            hist::merge_json(&mut h, &value["hist"]);
            let n = value["logins"].as_u64().unwrap_or(0);
            logins += n;
            failed += value["failed"].as_u64().unwrap_or(0);
            per_sec += n as f64 / value["window_secs"].as_f64().unwrap_or(secs).max(1e-9);
        }
    }
    let latency = hist::summary(&h);
    let mut r = Report::new(format!(
        "login · {} · {clients} clients at once",
        proto_name(args.protocol)
    ));
    r.row("logins/s", format!("{per_sec:.0}"));
    r.row("logins / failures", format!("{logins} / {failed}"));
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

async fn login_once(spec: &Spec, i: usize, cred: &str) -> anyhow::Result<()> {
    let server = spec.server(i);
    match spec.protocol {
        Proto::Ferry => {
            let mut c = FerryConn::connect(server).await?;
            reset(&c.stream);
            c.login(cred, 0).await?;
        }
        Proto::Xmpp => {
            let c = XmppConn::login(server, &spec.domain, &spec.user(i), cred).await?;
            reset(&c.stream);
        }
    }
    Ok(())
}

pub async fn worker(mut ctx: Ctx) -> anyhow::Result<()> {
    let creds = ctx.prepare().await?;
    loop {
        match ctx.cmd().await? {
            Cmd::Go => break,
            Cmd::Stop => return Ok(()),
            _ => {}
        }
    }
    let h = Arc::new(Mutex::new(hist::new()));
    let stop = CancellationToken::new();
    let go = Instant::now();
    let mut set = JoinSet::new();
    for (i, cred) in creds.into_iter().enumerate() {
        let Some(cred) = cred else { continue };
        let (spec, h, stop, counters) = (
            ctx.spec.clone(),
            h.clone(),
            stop.clone(),
            ctx.counters.clone(),
        );
        set.spawn(async move {
            let mut said = false;
            while !stop.is_cancelled() {
                let t = Instant::now();
                let r = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = login_once(&spec, i, &cred) => r,
                };
                match r {
                    Ok(()) => {
                        hist::record(&mut h.lock().expect("hist"), t.elapsed().as_micros() as u64);
                        counters.done.fetch_add(1, Ordering::Relaxed);
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
            "hist": hist::to_json(&h),
        }),
    });
    Ok(())
}
