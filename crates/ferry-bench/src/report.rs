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

/// The median of `v` (the mean of the two middle values of an even count); `None` when
/// empty.
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let k = v.len();
    match k {
        0 => None,
        _ if k % 2 == 1 => Some(v[k / 2]),
        _ => Some((v[k / 2 - 1] + v[k / 2]) / 2.0),
    }
}

/// `v` in its order, `decimals` after the point, joined with " · ".
fn joined(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" · ")
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
    // Closed-loop runs, in the order given: a comparison script may run several rounds,
    // each protocol in turn, so that the box's drift falls on both (bench/xmpp-compare.sh).
    let closed = |p: &str| -> Vec<&Value> {
        of(p, "p2p")
            .into_iter()
            .filter(|r| r["mode"] == "closed" && r["sweep"].is_null())
            .collect()
    };
    let rates = |p: &str| -> Vec<f64> {
        closed(p)
            .iter()
            .filter_map(|r| r["delivered_per_sec"].as_f64())
            .collect()
    };
    add("p2p closed loop: messages/s", &|p| {
        let v = rates(p);
        let m = median(&v)?;
        Some(match v.len() {
            1 => format!("{m:.0}"),
            k => format!("{m:.0} (median of {k}: {})", joined(&v, 0)),
        })
    });
    add("p2p closed loop: p99", &|p| {
        let v: Vec<f64> = closed(p)
            .iter()
            .filter_map(|r| r["latency"]["p99_us"].as_f64())
            .collect();
        median(&v).map(|m| us(&Value::from(m)))
    });
    add("p2p closed loop: server · bench CPU a message", &|p| {
        let of_cpu = |k: &str| -> Vec<f64> {
            closed(p)
                .iter()
                .filter_map(|r| r["cpu"][k].as_f64())
                .collect()
        };
        let (server, bench) = (of_cpu("server_us_per_msg"), of_cpu("bench_us_per_msg"));
        let m = |v: &[f64]| median(v).map_or("n/a".into(), |x| format!("{x:.2} µs"));
        (!server.is_empty() || !bench.is_empty()).then(|| format!("{} · {}", m(&server), m(&bench)))
    });
    add("p2p closed loop: Ferry ÷ XMPP", &|p| {
        if p != "ferry" {
            return None;
        }
        // Round i of one against round i of the other.
        let ratios: Vec<f64> = rates("ferry")
            .iter()
            .zip(rates("xmpp"))
            .filter(|(_, x)| *x > 0.0)
            .map(|(f, x)| f / x)
            .collect();
        let m = median(&ratios)?;
        Some(match ratios.len() {
            1 => format!("{m:.2}×"),
            k => format!("{m:.2}× (median of {k} rounds: {})", joined(&ratios, 2)),
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `compare` over closed-loop reports: (file name, protocol, msgs/s, p99 µs) each.
    fn compared(runs: &[(&str, &str, f64, f64)]) -> Report {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<std::path::PathBuf> = runs
            .iter()
            .map(|&(name, proto, rate, p99)| {
                let path = dir.path().join(name);
                let v = json!({
                    "scenario": "p2p", "protocol": proto, "mode": "closed",
                    "delivered_per_sec": rate, "latency": { "p99_us": p99 },
                    "cpu": { "server_us_per_msg": 1e6 / rate, "bench_us_per_msg": 2e5 / rate },
                    "lost": 0, "duplicated": 0,
                });
                std::fs::write(&path, v.to_string()).unwrap();
                path
            })
            .collect();
        compare(&files).unwrap()
    }

    fn row<'a>(r: &'a Report, name: &str) -> &'a str {
        &r.rows.iter().find(|(k, _)| k == name).unwrap().1
    }

    #[test]
    fn medians_and_middle_values() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(joined(&[2.5, 3.0], 2), "2.50 · 3.00");
    }

    #[test]
    fn rounds_are_paired_in_order_and_their_ratios_medianed() {
        let r = compared(&[
            ("p2p-1-ferry.json", "ferry", 90_000.0, 30_000.0),
            ("p2p-2-ferry.json", "ferry", 120_000.0, 20_000.0),
            ("p2p-3-ferry.json", "ferry", 100_000.0, 25_000.0),
            ("p2p-1-xmpp.json", "xmpp", 45_000.0, 80_000.0),
            ("p2p-2-xmpp.json", "xmpp", 40_000.0, 90_000.0),
            ("p2p-3-xmpp.json", "xmpp", 25_000.0, 70_000.0),
        ]);
        // Ratios by round: 2.00, 3.00, 4.00 — not the ratio of the medians (100k / 40k).
        let ratio = row(&r, "p2p closed loop: Ferry ÷ XMPP");
        assert!(
            ratio.starts_with("3.00× (median of 3 rounds: 2.00 · 3.00 · 4.00)"),
            "{ratio}"
        );
        let rates = row(&r, "p2p closed loop: messages/s");
        assert!(
            rates.starts_with("100000 (median of 3: 90000 · 120000 · 100000)"),
            "{rates}"
        );
        assert!(
            rates.ends_with("40000 (median of 3: 45000 · 40000 · 25000)"),
            "{rates}"
        );
        assert!(row(&r, "p2p closed loop: p99").starts_with("25.00 ms"));
        // CPU a message: the medians, Ferry's 1e6 / 100 000 and 2e5 / 100 000.
        let cpu = row(&r, "p2p closed loop: server · bench CPU a message");
        assert!(cpu.starts_with("10.00 µs · 2.00 µs"), "{cpu}");
        assert!(cpu.ends_with("25.00 µs · 5.00 µs"), "{cpu}");
    }

    #[test]
    fn one_round_reads_as_before() {
        let r = compared(&[
            ("p2p-ferry.json", "ferry", 99_000.0, 30_000.0),
            ("p2p-xmpp.json", "xmpp", 33_000.0, 80_000.0),
        ]);
        assert!(row(&r, "p2p closed loop: Ferry ÷ XMPP").starts_with("3.00× "));
        assert!(row(&r, "p2p closed loop: messages/s").starts_with("99000 "));
        // No XMPP column for the ratio.
        assert!(row(&r, "p2p closed loop: Ferry ÷ XMPP").ends_with('—'));
    }
}
