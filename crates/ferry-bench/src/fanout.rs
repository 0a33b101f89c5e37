//! `ferry bench fanout`: one group, every member connected on its own long link, one
//! sender. Counts deliveries — a group message written to one member's link — per
//! second, and the time from a send to the *last* member's receipt of it.
//!
//! The members run in this process (up to [`super::MAX_CONNS_PER_WORKER`] links), each
//! a task that reads GROUP_NOTIFY frames and decodes the inline message, whose text
//! carries its number and send time. The sender keeps `--window` messages in flight and
//! sends `--messages` in all, or stops at `--duration`. A member that misses an inline
//! entry (a gap) would have to sync; the bench counts those as `gaps` (0 expected on
//! loopback) rather than hiding them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_proto::v1::{self, group_entry};
use ferry_proto::{cmd, ProtoMessage};
use serde_json::json;
use std::sync::Mutex;

use super::conn::{FerryConn, IO_TIMEOUT};
use super::report::{us, Report};
use super::{bar, hist, users, BenchArgs, Target, MAX_CONNS_PER_WORKER, PASSWORD};

/// Member links connecting and logging in at once.
const LOGINS_IN_FLIGHT: usize = 256;

/// What the members saw of one message.
#[derive(Default)]
struct Seen {
    receipts: u64,
    /// Latest receipt, in µs after the send.
    last_us: u64,
}

/// Shared by the member tasks.
#[derive(Default)]
struct Tally {
    deliveries: AtomicU64,
    /// Notifies whose first entry did not continue the member's cursor.
    gaps: AtomicU64,
    /// Notifies without entries (the member would sync).
    bare: AtomicU64,
    /// message number → receipts so far.
    seen: Mutex<HashMap<u64, Seen>>,
    first_us: AtomicU64,
    last_us: AtomicU64,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub async fn run(
    args: &BenchArgs,
    members: usize,
    messages: u64,
    window: usize,
) -> anyhow::Result<Report> {
    if !(2..=MAX_CONNS_PER_WORKER).contains(&members) {
        bail!("--members must be in 2..={MAX_CONNS_PER_WORKER}");
    }
    if window == 0 || messages == 0 {
        bail!("--messages and --window must be at least 1");
    }
    let target = Target::new(args).await?;
    let result = measure(args, &target, members, messages, window).await;
    target.stop().await;
    result
}

async fn measure(
    args: &BenchArgs,
    target: &Target,
    members: usize,
    messages: u64,
    window: usize,
) -> anyhow::Result<Report> {
    let addr = target.addrs[0].clone();
    let short = super::conn::short(&addr).await?;
    let names: Vec<String> = (0..members)
        .map(|i| format!("{}g{i}", args.prefix))
        .collect();

    // Accounts and tokens.
    let pb = bar(members as u64, "register + auth");
    let tokens = users::sign_in_all(&short, &names, PASSWORD, |_| pb.inc(1)).await?;
    pb.finish_and_clear();

    // The group: member 0 owns it; the rest are added in batches (bodies stay small).
    let owner = &tokens[0];
    let created: v1::GroupResp = short
        .call(
            "group/create",
            Some(owner),
            &v1::GroupCreateReq { name: "fanout".into(), ..Default::default() },
        )
        .await
        .context("group/create (the server must allow messaging between non-friends: logic.open_messaging)")?;
    let gid = created.group.context("no group in the answer")?.group_id;
    for batch in names[1..].chunks(500) {
        let _: v1::GroupResp = short
            .call(
                "group/add",
                Some(owner),
                &v1::GroupMembersReq {
                    group_id: gid,
                    usernames: batch.to_vec(),
                },
            )
            .await
            .context("group/add")?;
    }

    // Every member on its own link, reading GROUP_NOTIFY.
    let tally = Arc::new(Tally::default());
    let pb = bar(members as u64, "connect + login");
    let login = |i: usize| {
        let (addr, token) = (addr.clone(), tokens[i].clone());
        async move {
            let mut c = FerryConn::connect(&addr).await?;
            c.login(&token, 0).await?;
            anyhow::Ok(c)
        }
    };
    let mut links = users::each(members, LOGINS_IN_FLIGHT, login, |_| pb.inc(1))
        .await?
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    pb.finish_and_clear();
    let sender_conn = links.pop().context("no links")?;
    let mut readers = tokio::task::JoinSet::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    for mut c in links {
        let (tally, stop) = (tally.clone(), stop.clone());
        readers.spawn(async move {
            let mut cursor = 0u64;
            loop {
                let f = tokio::select! {
                    _ = stop.notified() => return,
                    f = c.read_frame() => match f { Ok(f) => f, Err(_) => return },
                };
                if f.cmd != cmd::GROUP_NOTIFY {
                    continue;
                }
                let Ok(n) = v1::GroupNotify::decode(f.body) else {
                    continue;
                };
                if n.entries.is_empty() {
                    tally.bare.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                for e in n.entries {
                    if cursor != 0 && e.gseq != cursor + 1 && e.gseq > cursor {
                        tally.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    cursor = cursor.max(e.gseq);
                    let Some(group_entry::Kind::Message(m)) = e.kind else {
                        continue;
                    };
                    let Some((num, sent)) = m.text.split_once(' ') else {
                        continue;
                    };
                    let (Ok(num), Ok(sent)) = (num.parse::<u64>(), sent.parse::<u64>()) else {
                        continue;
                    };
                    let at = now_us();
                    tally.deliveries.fetch_add(1, Ordering::Relaxed);
                    tally
                        .first_us
                        .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed)
                        .ok();
                    tally.last_us.fetch_max(at, Ordering::Relaxed);
                    let mut seen = tally.seen.lock().unwrap_or_else(|p| p.into_inner());
                    let s = seen.entry(num).or_default();
                    s.receipts += 1;
                    s.last_us = s.last_us.max(at.saturating_sub(sent));
                }
            }
        });
    }
    // The sender is the last member (it receives its own messages too, not counted).
    let receivers = (members - 1) as u64;
    let pb = bar(messages, "sending");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut sender = sender_conn;
    let mut in_flight = 0usize;
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut req = 1u32;
    while acked < messages && Instant::now() < deadline {
        while in_flight < window && sent < messages {
            req = req.wrapping_add(1).max(2);
            let m = v1::SendMsg {
                client_msg_id: sent + 1,
                group_id: gid,
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
    // Wait (bounded) for the last deliveries.
    let want = acked * receivers;
    let drain = Instant::now() + super::DRAIN;
    while tally.deliveries.load(Ordering::Relaxed) < want && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.notify_waiters();
    readers.abort_all();
    while readers.join_next().await.is_some() {}

    let deliveries = tally.deliveries.load(Ordering::Relaxed);
    let span_us = tally
        .last_us
        .load(Ordering::Relaxed)
        .saturating_sub(tally.first_us.load(Ordering::Relaxed))
        .max(1);
    let per_s = deliveries as f64 / (span_us as f64 / 1e6);
    let mut last = hist::new();
    let mut incomplete = 0u64;
    let mut duplicated = 0u64;
    for s in tally
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
    {
        hist::record(&mut last, s.last_us);
        if s.receipts < receivers {
            incomplete += 1;
        }
        duplicated += s.receipts.saturating_sub(receivers);
    }
    let lost = want.saturating_sub(deliveries - duplicated.min(deliveries));
    let lat = hist::summary(&last);
    let mut report = Report::new(format!("fanout: a {members}-member group, window {window}"));
    report.row("messages acknowledged", acked);
    report.row("deliveries", format!("{deliveries} of {want}"));
    report.row("deliveries/s", format!("{per_s:.0}"));
    report.row("send → last member p50", us(&lat["p50_us"]));
    report.row("send → last member p99", us(&lat["p99_us"]));
    report.row("send → last member max", us(&lat["max_us"]));
    report.row(
        "lost / duplicated / gaps / bare",
        format!(
            "{lost} / {duplicated} / {} / {}",
            tally.gaps.load(Ordering::Relaxed),
            tally.bare.load(Ordering::Relaxed)
        ),
    );
    report.json = json!({
        "scenario": "fanout",
        "target": target.describe(),
        "machine": super::machine(),
        "members": members,
        "window": window,
        "messages": acked,
        "deliveries": deliveries,
        "expected_deliveries": want,
        "deliveries_per_s": per_s,
        "send_to_last_member": lat,
        "messages_incomplete": incomplete,
        "lost": lost,
        "duplicated": duplicated,
        "gaps": tally.gaps.load(Ordering::Relaxed),
        "bare_notifies": tally.bare.load(Ordering::Relaxed),
    });
    Ok(report)
}
