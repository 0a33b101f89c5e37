//! `ferry bench push`: devices without a live link, each with an APNs push target, and
//! senders messaging them — how many pushes per second one server hands to a provider,
//! how long from a send to the provider receiving the push, and what a registered
//! target costs the server in memory.
//!
//! The provider is [`ferry_push::sim`], started in this process: a local HTTPS (HTTP/2)
//! server that plays APNs and checks every request against Apple's contract (the JWT
//! verified, headers, body); it runs in counting mode and notes, per push, the device
//! token, the `ferry.seq` it covers and when it arrived. The server is the bench's own
//! `ferry serve` (a `--server` cannot be pointed at the sim), configured with the sim's
//! keys and CA and `logic.push.quiet_ms = 0`, so that every message may push (a real
//! deployment coalesces a device's pushes for 10 s; here each device gets a message only
//! every `devices / rate` seconds anyway).
//!
//! Each sender owns the devices `j, j + S, j + 2S …` and sends to them in turn on one
//! long link, pipelined (`--window`) and in order, so a device's messages get its inbox
//! seqs in the order they were sent; a push's `ferry.seq` then names the newest message
//! it covers, and latency is measured from that message's send (before the store's
//! commit: conservative) to the push's arrival at the provider.
//!
//! Memory per target: the server's resident memory after every device is signed in,
//! and again after each registered its target (the difference over the count, which
//! includes the store's page cache for the new rows), and the push index's own estimate
//! (`ferry_push_index_bytes`, read from `/metrics`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_proto::cmd;
use ferry_proto::v1;
use ferry_push::sim::Sim;
use ferry_push::Provider;
use serde_json::json;

use super::conn::{FerryConn, IO_TIMEOUT};
use super::report::{us, Report};
use super::{bar, hist, server, users, BenchArgs, PASSWORD};

/// The APNs topic every bench target registers with.
const TOPIC: &str = "com.ferry.bench";

/// A device's APNs token: 32 bytes of hex that name the device's index.
fn token_of(i: usize) -> String {
    format!("{:064x}", 0xfe44_0000_0000_0000u64 as u128 + i as u128)
}

fn device_of(token: &str) -> Option<usize> {
    let v = u128::from_str_radix(token, 16).ok()?;
    usize::try_from(v.checked_sub(0xfe44_0000_0000_0000u64 as u128)?).ok()
}

pub async fn run(
    args: &BenchArgs,
    devices: usize,
    senders: usize,
    rate: Option<f64>,
    window: usize,
) -> anyhow::Result<Report> {
    if !args.server.is_empty() {
        bail!("push needs the bench's own server (it points the server at its provider)");
    }
    if devices == 0 || senders == 0 || window == 0 {
        bail!("--devices, --senders and --window must be at least 1");
    }
    let senders = senders.min(devices);
    let sim = Sim::start().await.map_err(anyhow::Error::msg)?;
    sim.set_recording(false);
    let keys = tempfile::tempdir()?;
    let cfg = sim.config(keys.path()).map_err(anyhow::Error::msg)?;
    let apns = cfg.apns.context("the sim made no APNs settings")?;
    let extra = format!(
        "[logic.push]\nquiet_ms = 0\n\
         [push]\nca_file = {ca:?}\n\
         [push.apns]\nkey_file = {key:?}\nkey_id = {kid:?}\nteam_id = {team:?}\n\
         url = {url:?}\nsandbox_url = {sandbox:?}\nconcurrency = 256\n",
        ca = cfg.ca_file.context("no CA file")?.display().to_string(),
        key = apns.key_file.display().to_string(),
        kid = apns.key_id,
        team = apns.team_id,
        url = apns.url,
        sandbox = apns.sandbox_url,
    );
    let own = server::OwnServer::start_with(&args.durability, None, &extra).await?;
    let result = measure(args, &own, &sim, devices, senders, rate, window).await;
    if result.is_err() {
        eprintln!("server log:\n{}", own.log_tail());
    }
    own.stop().await;
    result
}

/// What one sender did: per device it owns, when each message was sent, in order —
/// `None` for one the server refused (it has no seq).
type Sends = HashMap<usize, Vec<Option<Instant>>>;

async fn measure(
    args: &BenchArgs,
    own: &server::OwnServer,
    sim: &Sim,
    devices: usize,
    senders: usize,
    rate: Option<f64>,
    window: usize,
) -> anyhow::Result<Report> {
    let addr = own.addr.clone();
    let short = super::conn::short(&addr).await?;

    // Devices: signed in (their inbox's newest seq noted), never connected.
    let names: Vec<String> = (0..devices)
        .map(|i| format!("{}pd{i}", args.prefix))
        .collect();
    let pb = bar(devices as u64, "devices: register + auth");
    let signed = users::each(
        devices,
        users::IN_FLIGHT,
        |i| {
            let (short, name) = (short.clone(), names[i].clone());
            async move { users::register_and_auth(&short, &name, PASSWORD).await }
        },
        |_| pb.inc(1),
    )
    .await?
    .into_iter()
    .collect::<anyhow::Result<Vec<v1::AuthResp>>>()?;
    pb.finish_and_clear();
    let base: Vec<u64> = signed.iter().map(|a| a.latest_seq).collect();
    let tokens: Vec<String> = signed.into_iter().map(|a| a.token).collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = server::rss_kib(own.pid());
    let index_before = index_bytes(own).await;

    let pb = bar(devices as u64, "devices: push/register");
    let registered = users::each(
        devices,
        users::IN_FLIGHT,
        |i| {
            let (short, token) = (short.clone(), tokens[i].clone());
            async move {
                let req = v1::PushRegisterReq {
                    target: Some(v1::PushTarget {
                        provider: v1::PushProvider::Apns as i32,
                        token: token_of(i),
                        app_id: TOPIC.into(),
                        ..Default::default()
                    }),
                };
                short
                    .call::<_, v1::PushListResp>("push/register", Some(&token), &req)
                    .await
                    .with_context(|| format!("push/register of device {i}"))
            }
        },
        |_| pb.inc(1),
    )
    .await?;
    pb.finish_and_clear();
    if let Some(e) = registered.into_iter().find_map(Result::err) {
        return Err(e);
    }
    // The index refreshes from the store every second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = server::rss_kib(own.pid());
    let index_after = index_bytes(own).await;
    let rss_per_target = rss_before
        .zip(rss_after)
        .map(|(b, a)| a.saturating_sub(b) as f64 * 1024.0 / devices as f64);
    let index_per_target = index_before
        .zip(index_after)
        .map(|(b, a)| (a - b) / devices as f64);

    // Senders.
    let sender_names: Vec<String> = (0..senders)
        .map(|j| format!("{}ps{j}", args.prefix))
        .collect();
    let sender_tokens = users::sign_in_all(&short, &sender_names, PASSWORD, |_| {}).await?;
    let mut links = Vec::with_capacity(senders);
    for t in &sender_tokens {
        let mut c = FerryConn::connect(&addr).await?;
        c.login(t, 0).await?;
        links.push(c);
    }

    let refused = Arc::new(AtomicU64::new(0));
    eprintln!(
        "push: {devices} targets registered; sending for {} s",
        args.duration
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let per_sender_gap = rate.map(|r| Duration::from_secs_f64(senders as f64 / r.max(1.0)));
    let pushed_at_start = sim.count(Provider::Apns);
    let server_cpu_start = server::cpu_us(own.pid());
    let bench_cpu_start = server::cpu_us(std::process::id());
    let mut tasks = tokio::task::JoinSet::new();
    for (j, mut link) in links.into_iter().enumerate() {
        let owned: Vec<usize> = (j..devices).step_by(senders).collect();
        let names = names.clone();
        let refused = refused.clone();
        tasks.spawn(async move {
            let mut sends: Sends = HashMap::new();
            // Request id → (device, its message's place in `sends`).
            let mut pending: HashMap<u32, (usize, usize)> = HashMap::new();
            let mut next = 0usize;
            let mut in_flight = 0usize;
            let mut req = 1u32;
            let mut acked = 0u64;
            let mut tick = per_sender_gap.map(|g| {
                let mut t = tokio::time::interval(g);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while Instant::now() < deadline {
                while in_flight < window {
                    if let Some(t) = &mut tick {
                        if tokio::time::timeout(Duration::from_millis(1), t.tick())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    let d = owned[next % owned.len()];
                    next += 1;
                    req = req.wrapping_add(1).max(2);
                    let m = v1::SendMsg {
                        client_msg_id: (j as u64) << 40 | next as u64,
                        to: names[d].clone(),
                        text: "push bench".into(),
                        ..Default::default()
                    };
                    let mine = sends.entry(d).or_default();
                    pending.insert(req, (d, mine.len()));
                    mine.push(Some(Instant::now()));
                    link.send(cmd::SEND, req, &m).await?;
                    in_flight += 1;
                }
                if in_flight == 0 {
                    continue;
                }
                let f = tokio::time::timeout(IO_TIMEOUT, link.read_frame())
                    .await
                    .context("ack timed out")??;
                if f.cmd == cmd::response(cmd::SEND) {
                    pending.remove(&f.req_id);
                    in_flight -= 1;
                    acked += 1;
                } else if f.cmd == cmd::ERROR {
                    // Counted, not fatal: the report shows how many the server refused.
                    refuse(&mut sends, &mut pending, f.req_id);
                    in_flight -= 1;
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The rest of the window's acks.
            while in_flight > 0 {
                let f = tokio::time::timeout(IO_TIMEOUT, link.read_frame())
                    .await
                    .context("ack timed out")??;
                if f.cmd == cmd::response(cmd::SEND) {
                    pending.remove(&f.req_id);
                    in_flight -= 1;
                    acked += 1;
                } else if f.cmd == cmd::ERROR {
                    refuse(&mut sends, &mut pending, f.req_id);
                    in_flight -= 1;
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok((sends, acked))
        });
    }
    // Per device, the send time of each message the server stored, in seq order.
    let mut sends: Vec<Vec<Instant>> = vec![Vec::new(); devices];
    let mut acked = 0u64;
    while let Some(done) = tasks.join_next().await {
        let (s, a) = done.context("a sender failed")??;
        acked += a;
        for (d, v) in s {
            sends[d] = v.into_iter().flatten().collect();
        }
    }
    let sending = started.elapsed();
    let pushed_at_end = sim.count(Provider::Apns);
    let server_cpu = server_cpu_start
        .zip(server::cpu_us(own.pid()))
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1e6 / sending.as_secs_f64());
    let bench_cpu = bench_cpu_start
        .zip(server::cpu_us(std::process::id()))
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1e6 / sending.as_secs_f64());
    // Drain: wait (bounded) until every device's newest message is covered by a push.
    let newest: Vec<u64> = (0..devices)
        .map(|d| base[d] + sends[d].len() as u64)
        .collect();
    let drain = Instant::now() + super::DRAIN;
    let mut covered = vec![0u64; devices];
    let mut arrivals = Vec::new();
    loop {
        for a in sim.take_arrivals() {
            if let Some(d) = device_of(&a.key).filter(|&d| d < devices) {
                covered[d] = covered[d].max(a.seq);
                arrivals.push((d, a.seq, a.at));
            }
        }
        let missing = (0..devices).filter(|&d| covered[d] < newest[d]).count();
        if missing == 0 || Instant::now() > drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let uncovered = (0..devices).filter(|&d| covered[d] < newest[d]).count();

    // Latency: the push's newest message's send → its arrival.
    let mut lat = hist::new();
    let mut unmatched = 0u64;
    let mut first_at: Option<Instant> = None;
    let mut last_at: Option<Instant> = None;
    for &(d, seq, at) in &arrivals {
        let k = seq.checked_sub(base[d] + 1).map(|k| k as usize);
        match k.and_then(|k| sends[d].get(k)) {
            Some(sent) => hist::record(
                &mut lat,
                at.saturating_duration_since(*sent).as_micros() as u64,
            ),
            None => unmatched += 1,
        }
        first_at = Some(first_at.map_or(at, |f| f.min(at)));
        last_at = Some(last_at.map_or(at, |l| l.max(at)));
    }
    let pushes = arrivals.len() as u64;
    let span = first_at
        .zip(last_at)
        .map(|(f, l)| l.saturating_duration_since(f).as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-3);
    let pushes_per_s = pushes as f64 / span;
    let in_window_per_s = (pushed_at_end - pushed_at_start) as f64 / sending.as_secs_f64();
    let violations = sim.violations();
    let lat_s = hist::summary(&lat);
    let offered = rate.map_or("closed loop".to_string(), |r| format!("{r:.0} msgs/s"));

    let mut report = Report::new(format!(
        "push: {devices} offline devices (APNs), {senders} senders, {offered}"
    ));
    report.row("messages acknowledged", acked);
    report.row("sends refused", refused.load(Ordering::Relaxed));
    report.row("pushes received by the provider", pushes);
    report.row("pushes/s (first → last push)", format!("{pushes_per_s:.0}"));
    report.row("pushes/s (while sending)", format!("{in_window_per_s:.0}"));
    report.row("send → provider p50", us(&lat_s["p50_us"]));
    report.row("send → provider p99", us(&lat_s["p99_us"]));
    report.row("send → provider max", us(&lat_s["max_us"]));
    report.row(
        "devices whose newest message no push covered",
        format!("{uncovered} of {devices}"),
    );
    report.row("contract violations", violations.len());
    let cores = |c: Option<f64>| c.map_or("—".into(), |c| format!("{c:.2} cores"));
    report.row(
        "CPU while sending: server / bench + provider",
        format!("{} / {}", cores(server_cpu), cores(bench_cpu)),
    );
    report.row(
        "memory per target (RSS Δ / index estimate)",
        format!(
            "{} / {}",
            rss_per_target.map_or("—".into(), |b| format!("{b:.0} B")),
            index_per_target.map_or("—".into(), |b| format!("{b:.0} B")),
        ),
    );
    report.json = json!({
        "scenario": "push",
        "machine": super::machine(),
        "devices": devices,
        "senders": senders,
        "window": window,
        "rate": rate,
        "duration_s": args.duration,
        "messages": acked,
        "refused": refused.load(Ordering::Relaxed),
        "pushes": pushes,
        "pushes_per_s": pushes_per_s,
        "pushes_per_s_while_sending": in_window_per_s,
        "send_to_provider": lat_s,
        "unmatched_pushes": unmatched,
        "uncovered_devices": uncovered,
        "violations": violations.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>(),
        "rss_per_target_bytes": rss_per_target,
        "server_cores_while_sending": server_cpu,
        "bench_cores_while_sending": bench_cpu,
        "index_per_target_bytes": index_per_target,
    });
    if !violations.is_empty() {
        bail!(
            "the provider saw {} contract violations, first: {:?}",
            violations.len(),
            violations[0]
        );
    }
    Ok(report)
}

/// A refused send (ERROR for request `req`): its message has no seq, so it is taken out
/// of the device's sequence.
fn refuse(sends: &mut Sends, pending: &mut HashMap<u32, (usize, usize)>, req: u32) {
    if let Some((d, i)) = pending.remove(&req) {
        if let Some(slot) = sends.get_mut(&d).and_then(|v| v.get_mut(i)) {
            *slot = None;
        }
    }
}

/// `ferry_push_index_bytes` from the server's `/metrics` (with its admin token).
async fn index_bytes(own: &server::OwnServer) -> Option<f64> {
    let text = own.admin_get("/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("ferry_push_index_bytes "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_device() {
        for i in [0, 1, 19_999, 1 << 30] {
            let t = token_of(i);
            assert_eq!(t.len(), 64);
            assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(device_of(&t), Some(i));
        }
        assert_eq!(device_of("zz"), None);
        assert_eq!(device_of(&"0".repeat(64)), None);
    }
}
