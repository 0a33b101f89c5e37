//! The results table printed at the end of a run; the same figures go to `--json`.

use std::fmt::Display;

use serde_json::Value;

/// A run's results: a titled table for people and the JSON with every figure.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub title: String,
    pub rows: Vec<(String, String)>,
    pub json: Value,
}

impl Report {
    pub fn new(title: impl Into<String>) -> Report {
        Report {
            title: title.into(),
            ..Default::default()
        }
    }

    pub fn row(&mut self, name: impl Into<String>, value: impl Display) {
        self.rows.push((name.into(), value.to_string()));
    }
}

/// Formats microseconds for people.
pub fn us(v: &Value) -> String {
    match v.as_f64() {
        None => "n/a".into(),
        Some(x) if x >= 1_000_000.0 => format!("{:.2} s", x / 1e6),
        Some(x) if x >= 1_000.0 => format!("{:.2} ms", x / 1e3),
        Some(x) => format!("{x:.0} µs"),
    }
}

/// Prints the table on stdout.
pub fn print(r: &Report) {
    let width = r
        .rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!();
    println!("{}", r.title);
    println!("{}", "─".repeat(r.title.chars().count().max(width + 20)));
    for (k, v) in &r.rows {
        println!("{k:<width$}  {v}");
    }
    println!();
}

/// `ferry bench compare`: the same figures of Ferry and XMPP reports side by side.
pub fn compare(files: &[std::path::PathBuf]) -> anyhow::Result<Report> {
    use anyhow::Context;
    let mut reports = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value = serde_json::from_str(&text)?;
        reports.push(v);
    }
    let of = |proto: &str, scenario: &str| -> Vec<&Value> {
        reports
            .iter()
            .filter(|r| r["protocol"] == proto && r["scenario"] == scenario)
            .collect()
    };
    let protos = ["ferry", "xmpp"];
    let mut rows: Vec<(String, [String; 2])> = Vec::new();
    let mut add = |name: &str, f: &dyn Fn(&str) -> Option<String>| {
        let vals = protos.map(|p| f(p).unwrap_or_else(|| "—".into()));
        rows.push((name.to_owned(), vals));
    };
    let wire = |p: &str| -> Option<Value> {
        ["login", "p2p"]
            .iter()
            .flat_map(|s| of(p, s))
            .map(|r| r["wire"].clone())
            .find(|w| w.is_object())
    };
    let n = |v: &Value| v.as_f64().map(|x| format!("{x:.0}"));
    add("login: bytes both ways (after TCP connect)", &|p| {
        wire(p).and_then(|w| {
            Some(format!(
                "{} ({} sent + {} received)",
                w["login_bytes"],
                w["login_sent_bytes"].as_u64()?,
                w["login_received_bytes"].as_u64()?
            ))
        })
    });
    add("login: round trips", &|p| {
        wire(p).map(|w| w["login_round_trips"].to_string())
    });
    add("\"hello\": bytes sent", &|p| {
        wire(p).map(|w| w["hello_sent_bytes"].to_string())
    });
    add("\"hello\": bytes delivered", &|p| {
        wire(p).map(|w| w["hello_delivered_bytes"].to_string())
    });
    add("idle: server memory per connection", &|p| {
        of(p, "idle").last().and_then(|r| {
            Some(format!(
                "{:.0} B ({} conns)",
                r["server_bytes_per_connection"].as_f64()?,
                r["connected"]
            ))
        })
    });
    add("idle: connect+login /s", &|p| {
        of(p, "idle")
            .last()
            .and_then(|r| n(&r["connect_login_per_sec"]))
    });
    let closed = |p: &str| -> Option<Value> {
        of(p, "p2p")
            .into_iter()
            .find(|r| r["mode"] == "closed" && r["sweep"].is_null())
            .cloned()
    };
    add("p2p closed loop: messages/s", &|p| {
        closed(p).and_then(|r| n(&r["delivered_per_sec"]))
    });
    add("p2p closed loop: p99", &|p| {
        closed(p).map(|r| us(&r["latency"]["p99_us"]))
    });
    let mut offered: Vec<f64> = reports
        .iter()
        .flat_map(|r| r["sweep"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["offered_per_sec"].as_f64())
        .collect();
    offered.sort_by(f64::total_cmp);
    offered.dedup();
    for o in offered {
        add(
            &format!("p2p open loop {o:.0}/s: delivered/s · p99"),
            &|p| {
                of(p, "p2p")
                    .iter()
                    .flat_map(|r| r["sweep"].as_array().cloned().unwrap_or_default())
                    .find(|pt| pt["offered_per_sec"].as_f64() == Some(o))
                    .map(|pt| {
                        format!(
                            "{:.0} · {}",
                            pt["delivered_per_sec"].as_f64().unwrap_or(0.0),
                            us(&pt["latency"]["p99_us"])
                        )
                    })
            },
        );
    }
    add("login: logins/s", &|p| {
        of(p, "login").last().and_then(|r| n(&r["logins_per_sec"]))
    });
    add("login: p99", &|p| {
        of(p, "login").last().map(|r| us(&r["latency"]["p99_us"]))
    });
    add("lost / duplicated (all runs)", &|p| {
        let runs: Vec<&Value> = reports.iter().filter(|r| r["protocol"] == p).collect();
        if runs.is_empty() {
            return None;
        }
        let mut lost = 0;
        let mut dup = 0;
        for r in runs {
            let pts = r["sweep"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![(*r).clone()]);
            for pt in pts {
                lost += pt["lost"].as_u64().unwrap_or(0);
                dup += pt["duplicated"].as_u64().unwrap_or(0);
            }
        }
        Some(format!("{lost} / {dup}"))
    });
    let mut r = Report::new("Ferry | XMPP (ejabberd), same machine, same workloads");
    let w0 = rows
        .iter()
        .map(|(_, v)| v[0].chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    r.row("", format!("{:<w0$}   {}", "ferry", "xmpp"));
    for (name, [a, b]) in &rows {
        r.row(name.as_str(), format!("{a:<w0$}   {b}"));
    }
    r.json = Value::Array(
        rows.iter()
            .map(|(k, [a, b])| serde_json::json!({ "figure": k, "ferry": a, "xmpp": b }))
            .collect(),
    );
    Ok(r)
}
