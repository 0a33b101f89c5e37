//! `ferry bench webhooks`: webhook deliveries per second from one server to a local
//! receiver, with N endpoints subscribed to `message.sent` (docs/webhooks.md).
//!
//! The receiver runs in this process: a minimal HTTP/1.1 server on 127.0.0.1 (keep-
//! alive, answers 200 at once) that counts deliveries per endpoint (its URL path) and
//! checks that each endpoint's events arrive in the order their messages were sent
//! (the message text carries its number). The server is the bench's own `ferry serve`;
//! the endpoints are registered through its admin API (`POST /v1/admin/webhooks`, the
//! data folder's admin token).
//!
//! One sender sends `--messages` on one long link, `--window` unacknowledged; every
//! acknowledged message is one delivery per endpoint. Deliveries/s is taken from the
//! first delivery to the last; latency from a send (before its ack) to its delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_proto::{cmd, v1, ProtoMessage};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::conn::{FerryConn, IO_TIMEOUT};
use super::report::{us, Report};
use super::{bar, hist, server, users, BenchArgs, PASSWORD};

/// What the receiver saw.
#[derive(Default)]
struct Tally {
    deliveries: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    /// Per endpoint: the last message number delivered, deliveries out of order, repeats.
    per: Mutex<HashMap<String, (i64, u64, u64)>>,
    /// Send → delivery, µs.
    latency: Mutex<Vec<u64>>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Serves one keep-alive connection: each POST counted, answered 200.
async fn serve(stream: tokio::net::TcpStream, tally: Arc<Tally>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).await?;
        let at = now_us();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if let Some((num, sent)) = v["data"]["message"]["text"]
            .as_str()
            .and_then(|t| t.split_once(' '))
            .and_then(|(n, s)| Some((n.parse::<i64>().ok()?, s.parse::<u64>().ok()?)))
        {
            tally.deliveries.fetch_add(1, Ordering::Relaxed);
            tally
                .first_us
                .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed)
                .ok();
            tally.last_us.fetch_max(at, Ordering::Relaxed);
            let mut per = tally.per.lock().unwrap_or_else(|p| p.into_inner());
            let e = per.entry(path).or_insert((-1, 0, 0));
            if num <= e.0 {
                e.2 += 1;
            } else {
                if num != e.0 + 1 {
                    e.1 += 1;
                }
                e.0 = num;
            }
            drop(per);
            tally
                .latency
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(at.saturating_sub(sent));
        }
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

/// One admin API call on the bench's own server (plain HTTP/1.1, one connection).
async fn admin(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} /v1/{path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let (head, rest) = text.split_once("\r\n\r\n").context("no HTTP answer")?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if !status.starts_with('2') {
        bail!("{method} {path}: {head} {rest}");
    }
    Ok(serde_json::from_str(rest).unwrap_or(Value::Null))
}

pub async fn run(
    args: &BenchArgs,
    endpoints: usize,
    messages: u64,
    window: usize,
) -> anyhow::Result<Report> {
    if !args.server.is_empty() {
        bail!(
            "webhooks needs the bench's own server (it registers endpoints with its admin token)"
        );
    }
    if endpoints == 0 || messages == 0 || window == 0 {
        bail!("--endpoints, --messages and --window must be at least 1");
    }
    let own = server::OwnServer::start_with(&args.durability, None, "").await?;
    let result = measure(args, &own, endpoints, messages, window).await;
    if result.is_err() {
        eprintln!("server log:\n{}", own.log_tail());
    }
    own.stop().await;
    result
}

async fn measure(
    args: &BenchArgs,
    own: &server::OwnServer,
    endpoints: usize,
    messages: u64,
    window: usize,
) -> anyhow::Result<Report> {
    let addr = own.addr.clone();
    // The receiver.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let raddr = listener.local_addr()?;
    let tally = Arc::new(Tally::default());
    let acceptor = {
        let tally = tally.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s, tally.clone()));
            }
        })
    };
    // The endpoints.
    let token = std::fs::read_to_string(own.data_dir().join("admin-token"))
        .context("the server's admin token")?;
    let token = token.trim();
    for i in 0..endpoints {
        admin(
            &addr,
            token,
            "POST",
            "admin/webhooks",
            &json!({"url": format!("http://{raddr}/e{i}"), "events": ["message.sent"]}),
        )
        .await?;
    }
    // The sender.
    let short = super::conn::short(&addr).await?;
    let names = [
        format!("{}wh-s", args.prefix),
        format!("{}wh-r", args.prefix),
    ];
    let tokens = users::sign_in_all(&short, &names, PASSWORD, |_| {}).await?;
    let mut sender = FerryConn::connect(&addr).await?;
    sender.login(&tokens[0], 0).await?;

    let pb = bar(messages, "sending");
    let started = Instant::now();
    let (mut sent, mut acked, mut in_flight, mut req) = (0u64, 0u64, 0usize, 1u32);
    while acked < messages {
        while in_flight < window && sent < messages {
            req = req.wrapping_add(1).max(2);
            let m = v1::SendMsg {
                client_msg_id: sent + 1,
                to: names[1].clone(),
                text: format!("{} {}", sent, now_us()),
                ..Default::default()
            };
            sender.send(cmd::SEND, req, &m).await?;
            sent += 1;
            in_flight += 1;
        }
        let f = tokio::time::timeout(IO_TIMEOUT, sender.read_frame())
            .await
            .context("ack timed out")??;
        if f.cmd == cmd::response(cmd::SEND) {
            in_flight -= 1;
            acked += 1;
            pb.inc(1);
        } else if f.cmd == cmd::ERROR {
            let e = v1::Error::decode(f.body).unwrap_or_default();
            bail!("send refused: {}", e.message);
        }
    }
    pb.finish_and_clear();
    let send_s = started.elapsed().as_secs_f64();
    let want = acked * endpoints as u64;
    let drain = Instant::now() + Duration::from_secs(120);
    while tally.deliveries.load(Ordering::Relaxed) < want && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acceptor.abort();
    let deliveries = tally.deliveries.load(Ordering::Relaxed);
    let span_us = tally
        .last_us
        .load(Ordering::Relaxed)
        .saturating_sub(tally.first_us.load(Ordering::Relaxed))
        .max(1);
    let per_s = deliveries as f64 / (span_us as f64 / 1e6);
    let mut h = hist::new();
    for l in tally
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        hist::record(&mut h, *l);
    }
    let lat = hist::summary(&h);
    let (mut out_of_order, mut repeats) = (0, 0);
    for (_, (_, o, r)) in tally.per.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out_of_order += o;
        repeats += r;
    }
    let mut report = Report::new(format!(
        "webhooks: {endpoints} endpoints, {messages} messages, window {window}"
    ));
    report.row("messages acknowledged", format!("{acked} in {send_s:.2} s"));
    report.row("deliveries", format!("{deliveries} of {want}"));
    report.row("deliveries/s", format!("{per_s:.0}"));
    report.row("send → delivery p50", us(&lat["p50_us"]));
    report.row("send → delivery p99", us(&lat["p99_us"]));
    report.row(
        "out of order / repeats",
        format!("{out_of_order} / {repeats}"),
    );
    report.json = json!({
        "scenario": "webhooks",
        "machine": super::machine(),
        "endpoints": endpoints,
        "messages": acked,
        "window": window,
        "send_seconds": send_s,
        "deliveries": deliveries,
        "expected_deliveries": want,
        "deliveries_per_s": per_s,
        "send_to_delivery": lat,
        "out_of_order": out_of_order,
        "repeats": repeats,
    });
    if deliveries < want {
        bail!("only {deliveries} of {want} deliveries within 120 s");
    }
    Ok(report)
}
