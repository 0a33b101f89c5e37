//! `ferry admin status [--watch]`: the dashboard's summary in a terminal, fetched from
//! `GET /api/admin/summary` with the admin token.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::summary::{Quantiles, Summary};
use super::token;

/// Where to ask, and with which token.
#[derive(Debug, Clone)]
pub struct Target {
    /// `IP:PORT` of any gateway port.
    pub server: String,
    /// The admin token; when absent, read from `data_dir/admin-token`.
    pub token: Option<String>,
    pub data_dir: PathBuf,
}

impl Target {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = self.token.as_deref().filter(|t| !t.is_empty()) {
            return Ok(t.to_owned());
        }
        let file = token::path(&self.data_dir);
        let t = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no --token given and {} cannot be read (use --token or FERRY_ADMIN_TOKEN)",
                file.display()
            )
        })?;
        Ok(t.trim().to_owned())
    }
}

/// Fetches the newest summary.
pub async fn fetch(server: &str, token: &str) -> anyhow::Result<Summary> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = http::Request::get(format!("http://{server}/api/admin/summary"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .context("the server did not answer within 10 s")?
        .with_context(|| format!("connecting to {server}"))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .context("the answer did not finish within 10 s")??
        .to_bytes();
    match status {
        http::StatusCode::OK => serde_json::from_slice(&body).context("decoding the summary"),
        http::StatusCode::UNAUTHORIZED => anyhow::bail!("the server refused the admin token"),
        s => anyhow::bail!("the server answered {s}"),
    }
}

/// Prints the summary once, or every two seconds with `watch` until Ctrl-C.
pub async fn run(target: &Target, watch: bool) -> anyhow::Result<()> {
    let token = target.token()?;
    if !watch {
        let s = fetch(&target.server, &token).await?;
        print!("{}", render(&s, &target.server));
        return Ok(());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
        let text = match fetch(&target.server, &token).await {
            Ok(s) => render(&s, &target.server),
            Err(e) => format!(
                "{}: {e:#}\n(retrying every 2 s; Ctrl-C to stop)\n",
                target.server
            ),
        };
        // Home the cursor and clear the screen, then draw.
        print!("\x1b[H\x1b[2J{text}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.0} ms"),
        None => "—".into(),
    }
}

fn q_ms(q: &Quantiles) -> String {
    format!("p50 {} · p99 {}", ms(q.p50), ms(q.p99))
}

fn num(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0}"))
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The summary as terminal text.
pub fn render(s: &Summary, server: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ferry {} at {server}", s.version);
    for n in &s.nodes {
        let _ = writeln!(
            o,
            "  node {} ({}) {} · up {} · {}",
            n.id,
            n.role,
            if n.healthy { "HEALTHY" } else { "UNHEALTHY" },
            duration(n.uptime_s),
            n.detail
        );
    }
    let (t, r) = (&s.totals, &s.rates);
    let _ = writeln!(
        o,
        "connections {} (long links {})   logins/s {:.1}   messages/s {:.1}   errors/s {:.2}",
        t.connections, t.links, r.logins, r.messages_in, r.errors
    );
    let _ = writeln!(
        o,
        "totals: logins {} · messages {} · entries out {} · syncs {} · notifies {} · errors {}",
        t.logins, t.messages_in, t.entries_out, t.syncs, t.notifies, t.errors
    );
    let _ = writeln!(
        o,
        "delivery (send → push) {}   sync lag p50 {} · p99 {} entries   (last {:.0} s)",
        q_ms(&s.delivery_ms),
        num(s.sync_lag.p50),
        num(s.sync_lag.p99),
        s.quantile_window_s
    );
    let files: Vec<String> = s
        .store
        .files
        .iter()
        .map(|f| format!("{} {}", f.name, bytes(f.bytes)))
        .collect();
    let _ = writeln!(
        o,
        "store: size {} ({}) · commit {} · batch p50 {} p99 {} · queue {}",
        bytes(s.store.total_bytes),
        if files.is_empty() {
            "no files".into()
        } else {
            files.join(", ")
        },
        q_ms(&s.store.commit_ms),
        num(s.store.batch_size.p50),
        num(s.store.batch_size.p99),
        s.store.write_queue
    );
    if !s.gateways.is_empty() {
        let _ = writeln!(o, "gateways:");
        for g in &s.gateways {
            let _ = writeln!(
                o,
                "  {:<12} connections {:>7} · links {:>7} · frames in/s {:>8.1} out/s {:>8.1} · bad input {} · timeouts {} · slow {}",
                g.id, g.connections, g.links, g.frames_in_per_s, g.frames_out_per_s,
                g.bad_input, g.timeouts, g.slow_consumers
            );
        }
    }
    if !s.commands.is_empty() {
        let _ = writeln!(o, "requests:");
        for c in &s.commands {
            let _ = writeln!(
                o,
                "  {:<18} {:>8.1}/s · {} · errors/s {:.2}",
                c.cmd,
                c.per_s,
                q_ms(&c.latency_ms),
                c.errors_per_s
            );
        }
    }
    if s.errors.is_empty() {
        let _ = writeln!(o, "errors: none");
    } else {
        let _ = writeln!(o, "errors:");
        for e in &s.errors {
            let _ = writeln!(
                o,
                "  {:<18} {:<18} {:>8} total · {:.2}/s",
                e.cmd, e.code, e.total, e.per_s
            );
        }
    }
    if s.push.providers.is_empty() {
        let _ = writeln!(o, "push: no targets registered");
    } else {
        let _ = writeln!(
            o,
            "push: write → provider {} · queued devices {} ({} due)",
            q_ms(&s.push.latency_ms),
            s.push.queue,
            s.push.queue_due
        );
        for p in &s.push.providers {
            let _ = writeln!(
                o,
                "  {:<12} targets {:>8} · sent {:>8} ({:.1}/s) · failed {} ({:.2}/s)",
                p.provider, p.targets, p.sent_total, p.sent_per_s, p.failed_total, p.failed_per_s
            );
        }
        for r in &s.push.reasons {
            let _ = writeln!(
                o,
                "  {:<8} {:<14} {:>8} total · {:.2}/s",
                r.outcome, r.reason, r.total, r.per_s
            );
        }
    }
    if s.regions.is_empty() {
        let _ = writeln!(o, "endpoints by region: no reports yet");
    } else {
        let _ = writeln!(o, "endpoints by region:");
        for r in &s.regions {
            let _ = writeln!(
                o,
                "  {:<12} reports {:>8} · success {} · connect {}",
                r.region,
                r.reports,
                r.success
                    .map_or("—".into(), |v| format!("{:.1}%", v * 100.0)),
                q_ms(&r.connect_ms)
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(duration(3725), "1h02m");
        assert_eq!(ms(Some(1.234)), "1.23 ms");
        assert_eq!(ms(None), "—");
    }
}
