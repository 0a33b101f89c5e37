//! The dashboard's numbers: a [`Summary`] built from two scrapes of our own `/metrics`
//! page (now, and a few seconds ago), so rates and percentiles are computed the way
//! Prometheus computes `rate()` and `histogram_quantile()`, and the dashboard, `ferry
//! admin status` and Grafana agree.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::prom::Sample;

/// One parse of the `/metrics` page.
pub struct Scrape {
    pub at: Instant,
    pub samples: Vec<Sample>,
}

/// p50 and p99 over the recent window; `None` when nothing was observed in it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Observations in the window.
    pub count: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    /// The roles this process runs, e.g. `gateway+logic+store`.
    pub role: String,
    pub healthy: bool,
    /// Why (un)healthy, e.g. "store answered in 0.3 ms".
    pub detail: String,
    pub uptime_s: u64,
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayRow {
    pub id: String,
    /// TCP connections open (long links, HTTP, not yet logged in).
    pub connections: u64,
    /// Logged-in long links.
    pub links: u64,
    pub frames_in_per_s: f64,
    pub frames_out_per_s: f64,
    pub bad_input: u64,
    pub timeouts: u64,
    pub slow_consumers: u64,
}

/// Totals since the process started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub connections: u64,
    pub links: u64,
    pub logins: u64,
    pub messages_in: u64,
    pub entries_out: u64,
    pub syncs: u64,
    pub notifies: u64,
    pub errors: u64,
}

/// Per second, over the last few seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rates {
    pub logins: f64,
    pub messages_in: f64,
    pub entries_out: f64,
    pub syncs: f64,
    pub notifies: f64,
    pub errors: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandRow {
    pub cmd: String,
    pub per_s: f64,
    /// Milliseconds.
    pub latency_ms: Quantiles,
    pub errors_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorRow {
    pub cmd: String,
    pub code: String,
    pub total: u64,
    pub per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileRow {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreRow {
    pub batch_size: Quantiles,
    pub commit_ms: Quantiles,
    pub write_queue: u64,
    pub files: Vec<FileRow>,
    pub total_bytes: u64,
}

/// Endpoint race reports from clients in one region.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegionRow {
    pub region: String,
    pub reports: u64,
    /// ok / (ok + fail) over all reports.
    pub success: Option<f64>,
    pub connect_ms: Quantiles,
}

/// Platform pushes through one provider (`ferry_push_*{provider}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushProviderRow {
    pub provider: String,
    /// Registered push targets.
    pub targets: u64,
    pub sent_total: u64,
    pub sent_per_s: f64,
    pub failed_total: u64,
    pub failed_per_s: f64,
}

/// Why pushes were failed or dropped, since start (`reason` label).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushReasonRow {
    /// `failed` (the provider refused or could not be reached) or `dropped` (decided
    /// against: online, synced, expired, muted, gone …).
    pub outcome: String,
    pub reason: String,
    pub total: u64,
    pub per_s: f64,
}

/// Platform pushes (APNs, FCM, Web Push, UnifiedPush) to devices without a live link.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushRow {
    pub providers: Vec<PushProviderRow>,
    pub reasons: Vec<PushReasonRow>,
    /// Inbox write → provider accepted, milliseconds (`ferry_push_latency_seconds`).
    pub latency_ms: Quantiles,
    /// Queue rows (one per device with pushes waiting), and those due now.
    pub queue: u64,
    pub queue_due: u64,
}

/// One point of the charts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Point {
    pub t_ms: u64,
    pub connections: u64,
    pub logins_per_s: f64,
    pub messages_per_s: f64,
    pub errors_per_s: f64,
    pub delivery_p50_ms: Option<f64>,
    pub delivery_p99_ms: Option<f64>,
}

/// Everything the dashboard shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub version: String,
    pub time_ms: u64,
    /// Seconds the rates are computed over.
    pub rate_window_s: f64,
    /// Seconds the percentiles are computed over.
    pub quantile_window_s: f64,
    pub nodes: Vec<Node>,
    pub gateways: Vec<GatewayRow>,
    pub totals: Totals,
    pub rates: Rates,
    /// Send → notify handed to the recipient's gateway, milliseconds (see
    /// `ferry_delivery_seconds`).
    pub delivery_ms: Quantiles,
    /// Entries a device was behind when it synced.
    pub sync_lag: Quantiles,
    pub commands: Vec<CommandRow>,
    pub errors: Vec<ErrorRow>,
    pub store: StoreRow,
    /// Empty until clients report endpoint races (the endpoint-list feature).
    pub regions: Vec<RegionRow>,
    pub push: PushRow,
    pub point: Point,
    /// The recent points, oldest first: sent with the first event and by
    /// `/api/admin/summary`, not with every update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Point>,
}

fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    pred: &'a dyn Fn(&Sample) -> bool,
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| s.name == name && pred(s))
}

fn any(_: &Sample) -> bool {
    true
}

/// Sum of every series of `name` that `pred` keeps.
pub fn total(samples: &[Sample], name: &str, pred: &dyn Fn(&Sample) -> bool) -> f64 {
    matching(samples, name, pred).map(|s| s.value).sum()
}

/// Increase per second between two scrapes; 0 without a base.
pub fn rate(
    now: &Scrape,
    base: Option<&Scrape>,
    name: &str,
    pred: &dyn Fn(&Sample) -> bool,
) -> f64 {
    let Some(base) = base else { return 0.0 };
    let dt = now.at.saturating_duration_since(base.at).as_secs_f64();
    if dt < 0.1 {
        return 0.0;
    }
    let inc = total(&now.samples, name, pred) - total(&base.samples, name, pred);
    // A counter that went down was reset: count from zero, as Prometheus does.
    let inc = if inc < 0.0 {
        total(&now.samples, name, pred)
    } else {
        inc
    };
    inc / dt
}

/// Cumulative bucket counts of histogram `name`, summed over the series `pred` keeps.
fn buckets(samples: &[Sample], name: &str, pred: &dyn Fn(&Sample) -> bool) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for s in matching(samples, &bucket, pred) {
        let Some(le) = s.label("le").and_then(super::prom::parse_value) else {
            continue;
        };
        match out.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += s.value,
            None => out.push((le, s.value)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Prometheus' `histogram_quantile` over cumulative `(le, count)` buckets.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().map(|b| b.1)?;
    if total <= 0.0 || !buckets.last()?.0.is_infinite() {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|b| b.1 >= rank)?;
    if buckets[i].0.is_infinite() {
        // Above the highest finite bucket: that bound is the best we can say.
        return buckets.get(i.wrapping_sub(1)).map(|b| b.0).or(Some(0.0));
    }
    let (lower, below) = if i == 0 {
        (0.0_f64.min(buckets[0].0), 0.0)
    } else {
        (buckets[i - 1].0, buckets[i - 1].1)
    };
    let (upper, count) = buckets[i];
    if count - below <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

/// p50/p99 of what `name` observed between the two scrapes, times `scale`.
pub fn quantiles(
    now: &Scrape,
    base: Option<&Scrape>,
    name: &str,
    pred: &dyn Fn(&Sample) -> bool,
    scale: f64,
) -> Quantiles {
    let mut b = buckets(&now.samples, name, pred);
    if let Some(base) = base {
        let old = buckets(&base.samples, name, pred);
        for (le, c) in &mut b {
            let before = old.iter().find(|(l, _)| l == le).map_or(0.0, |o| o.1);
            *c = (*c - before).max(0.0);
        }
    }
    let count = b.last().map_or(0.0, |x| x.1);
    Quantiles {
        p50: histogram_quantile(0.5, &b).map(|v| v * scale),
        p99: histogram_quantile(0.99, &b).map(|v| v * scale),
        count,
    }
}

fn distinct(samples: &[Sample], name: &str, label: &str) -> Vec<String> {
    let mut out: Vec<String> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| s.label(label).map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the scrapes cannot tell: this node's health and files.
pub struct Local {
    pub nodes: Vec<Node>,
    pub files: Vec<FileRow>,
    pub time_ms: u64,
}

/// Builds the summary from the newest scrape, the scrape `rate_base` (a few seconds
/// older) for rates and `quantile_base` (older still) for percentiles.
pub fn build(
    now: &Scrape,
    rate_base: Option<&Scrape>,
    quantile_base: Option<&Scrape>,
    local: Local,
) -> Summary {
    let s = &now.samples;
    let window = |b: Option<&Scrape>| {
        b.map_or(0.0, |b| {
            now.at.saturating_duration_since(b.at).as_secs_f64()
        })
    };
    let r = |name: &str| rate(now, rate_base, name, &any);
    let t = |name: &str| total(s, name, &any) as u64;

    let gateways = distinct(s, "ferry_gateway_connections", "gateway")
        .into_iter()
        .map(|id| {
            let this = |x: &Sample| x.label("gateway") == Some(id.as_str());
            GatewayRow {
                connections: total(s, "ferry_gateway_connections", &this) as u64,
                links: total(s, "ferry_gateway_links", &this) as u64,
                frames_in_per_s: rate(now, rate_base, "ferry_gateway_frames_in_total", &this),
                frames_out_per_s: rate(now, rate_base, "ferry_gateway_frames_out_total", &this),
                bad_input: total(s, "ferry_gateway_bad_input_total", &this) as u64,
                timeouts: total(s, "ferry_gateway_timeouts_total", &this) as u64,
                slow_consumers: total(s, "ferry_gateway_slow_consumers_total", &this) as u64,
                id,
            }
        })
        .collect::<Vec<_>>();

    let commands = distinct(s, "ferry_request_duration_seconds_count", "cmd")
        .into_iter()
        .map(|cmd| {
            let this = |x: &Sample| x.label("cmd") == Some(cmd.as_str());
            CommandRow {
                per_s: rate(
                    now,
                    rate_base,
                    "ferry_request_duration_seconds_count",
                    &this,
                ),
                latency_ms: quantiles(
                    now,
                    quantile_base,
                    "ferry_request_duration_seconds",
                    &this,
                    1000.0,
                ),
                errors_per_s: rate(now, rate_base, "ferry_errors_total", &this),
                cmd,
            }
        })
        .collect();

    let mut errors: Vec<ErrorRow> = s
        .iter()
        .filter(|x| x.name == "ferry_errors_total")
        .map(|x| {
            let (cmd, code) = (x.label("cmd"), x.label("code"));
            let this = |y: &Sample| y.label("cmd") == cmd && y.label("code") == code;
            ErrorRow {
                cmd: cmd.unwrap_or_default().to_owned(),
                code: code.unwrap_or_default().to_owned(),
                total: x.value as u64,
                per_s: rate(now, rate_base, "ferry_errors_total", &this),
            }
        })
        .collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.total));

    let regions = distinct(s, "ferry_endpoint_reports_total", "region")
        .into_iter()
        .chain(distinct(
            s,
            "ferry_endpoint_connect_seconds_count",
            "region",
        ))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|region| {
            let this = |x: &Sample| x.label("region") == Some(region.as_str());
            let ok = |x: &Sample| this(x) && x.label("result") == Some("ok");
            let reports = total(s, "ferry_endpoint_reports_total", &this);
            let good = total(s, "ferry_endpoint_reports_total", &ok);
            RegionRow {
                reports: reports as u64,
                success: (reports > 0.0).then(|| good / reports),
                connect_ms: quantiles(
                    now,
                    quantile_base,
                    "ferry_endpoint_connect_seconds",
                    &this,
                    1000.0,
                ),
                region,
            }
        })
        .collect();

    let push = push_row(now, rate_base, quantile_base);

    let totals = Totals {
        connections: t("ferry_gateway_connections"),
        links: t("ferry_gateway_links"),
        logins: t("ferry_logins_total"),
        messages_in: t("ferry_messages_in_total"),
        entries_out: t("ferry_entries_out_total"),
        syncs: t("ferry_syncs_total"),
        notifies: t("ferry_notifies_total"),
        errors: t("ferry_errors_total"),
    };
    let rates = Rates {
        logins: r("ferry_logins_total"),
        messages_in: r("ferry_messages_in_total"),
        entries_out: r("ferry_entries_out_total"),
        syncs: r("ferry_syncs_total"),
        notifies: r("ferry_notifies_total"),
        errors: r("ferry_errors_total"),
    };
    let delivery_ms = quantiles(now, quantile_base, "ferry_delivery_seconds", &any, 1000.0);
    let total_bytes = local.files.iter().map(|f| f.bytes).sum();
    let store = StoreRow {
        batch_size: quantiles(now, quantile_base, "ferry_store_batch_size", &any, 1.0),
        commit_ms: quantiles(
            now,
            quantile_base,
            "ferry_store_commit_seconds",
            &any,
            1000.0,
        ),
        write_queue: t("ferry_store_write_queue"),
        files: local.files,
        total_bytes,
    };
    let point = Point {
        t_ms: local.time_ms,
        connections: totals.connections,
        logins_per_s: rates.logins,
        messages_per_s: rates.messages_in,
        errors_per_s: rates.errors,
        delivery_p50_ms: delivery_ms.p50,
        delivery_p99_ms: delivery_ms.p99,
    };
    Summary {
        version: env!("CARGO_PKG_VERSION").into(),
        time_ms: local.time_ms,
        rate_window_s: window(rate_base),
        quantile_window_s: window(quantile_base),
        nodes: local.nodes,
        gateways,
        totals,
        rates,
        delivery_ms,
        sync_lag: quantiles(now, quantile_base, "ferry_sync_lag_entries", &any, 1.0),
        commands,
        errors,
        store,
        regions,
        push,
        point,
        history: Vec::new(),
    }
}

/// The push panel, from the `ferry_push_*` series (logic's push worker).
fn push_row(now: &Scrape, rate_base: Option<&Scrape>, quantile_base: Option<&Scrape>) -> PushRow {
    let s = &now.samples;
    let providers = [
        "ferry_push_targets",
        "ferry_push_sent_total",
        "ferry_push_failed_total",
    ]
    .iter()
    .flat_map(|name| distinct(s, name, "provider"))
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .map(|provider| {
        let this = |x: &Sample| x.label("provider") == Some(provider.as_str());
        PushProviderRow {
            targets: total(s, "ferry_push_targets", &this) as u64,
            sent_total: total(s, "ferry_push_sent_total", &this) as u64,
            sent_per_s: rate(now, rate_base, "ferry_push_sent_total", &this),
            failed_total: total(s, "ferry_push_failed_total", &this) as u64,
            failed_per_s: rate(now, rate_base, "ferry_push_failed_total", &this),
            provider,
        }
    })
    .collect();
    let mut reasons = Vec::new();
    for (outcome, name) in [
        ("failed", "ferry_push_failed_total"),
        ("dropped", "ferry_push_dropped_total"),
    ] {
        for reason in distinct(s, name, "reason") {
            let this = |x: &Sample| x.label("reason") == Some(reason.as_str());
            reasons.push(PushReasonRow {
                outcome: outcome.into(),
                total: total(s, name, &this) as u64,
                per_s: rate(now, rate_base, name, &this),
                reason,
            });
        }
    }
    reasons.sort_by_key(|r| std::cmp::Reverse(r.total));
    let state = |st: &'static str| move |x: &Sample| x.label("state") == Some(st);
    PushRow {
        providers,
        reasons,
        latency_ms: quantiles(
            now,
            quantile_base,
            "ferry_push_latency_seconds",
            &any,
            1000.0,
        ),
        queue: total(s, "ferry_push_queue", &state("rows")) as u64,
        queue_due: total(s, "ferry_push_queue", &state("due")) as u64,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_push_panel_reads_the_push_series() {
        let t0 = Instant::now();
        let old = scrape(
            t0,
            "ferry_push_sent_total{provider=\"apns\"} 10\n\
             ferry_push_latency_seconds_bucket{le=\"0.01\"} 0\n\
             ferry_push_latency_seconds_bucket{le=\"0.1\"} 0\n\
             ferry_push_latency_seconds_bucket{le=\"+Inf\"} 0\n",
        );
        let new = scrape(
            t0 + Duration::from_secs(2),
            "ferry_push_targets{provider=\"apns\"} 7\n\
             ferry_push_targets{provider=\"webpush\"} 3\n\
             ferry_push_sent_total{provider=\"apns\"} 30\n\
             ferry_push_failed_total{provider=\"webpush\",reason=\"rejected\"} 2\n\
             ferry_push_dropped_total{reason=\"online\"} 5\n\
             ferry_push_dropped_total{reason=\"expired\"} 1\n\
             ferry_push_queue{state=\"rows\"} 4\n\
             ferry_push_queue{state=\"due\"} 1\n\
             ferry_push_latency_seconds_bucket{le=\"0.01\"} 20\n\
             ferry_push_latency_seconds_bucket{le=\"0.1\"} 20\n\
             ferry_push_latency_seconds_bucket{le=\"+Inf\"} 20\n",
        );
        let p = push_row(&new, Some(&old), Some(&old));
        let names: Vec<_> = p.providers.iter().map(|r| r.provider.as_str()).collect();
        assert_eq!(names, ["apns", "webpush"]);
        assert_eq!(p.providers[0].targets, 7);
        assert_eq!(p.providers[0].sent_total, 30);
        assert!((p.providers[0].sent_per_s - 10.0).abs() < 1e-9);
        assert_eq!(p.providers[1].failed_total, 2);
        let r: Vec<_> = p
            .reasons
            .iter()
            .map(|r| (r.outcome.as_str(), r.reason.as_str(), r.total))
            .collect();
        assert_eq!(
            r,
            [
                ("dropped", "online", 5),
                ("failed", "rejected", 2),
                ("dropped", "expired", 1)
            ]
        );
        assert_eq!((p.queue, p.queue_due), (4, 1));
        assert_eq!(p.latency_ms.count, 20.0);
        assert!(p.latency_ms.p99.unwrap() <= 10.0);
    }

    use super::*;
    use crate::monitor::prom::parse;

    fn scrape(at: Instant, text: &str) -> Scrape {
        Scrape {
            at,
            samples: parse(text).unwrap(),
        }
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        // 100 observations: 50 ≤ 1, 40 in (1, 2], 10 in (2, 4].
        let b = [
            (1.0, 50.0),
            (2.0, 90.0),
            (4.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(histogram_quantile(0.5, &b), Some(1.0));
        assert_eq!(histogram_quantile(0.7, &b), Some(1.5));
        assert!((histogram_quantile(0.99, &b).unwrap() - 3.8).abs() < 1e-9);
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        // Everything above the last finite bound: the bound is the answer.
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 3.0)]),
            Some(1.0)
        );
    }

    #[test]
    fn rates_and_windows_come_from_two_scrapes() {
        let t0 = Instant::now();
        let old = scrape(
            t0,
            "ferry_messages_in_total 10\n\
             ferry_delivery_seconds_bucket{le=\"0.001\"} 5\n\
             ferry_delivery_seconds_bucket{le=\"0.01\"} 5\n\
             ferry_delivery_seconds_bucket{le=\"+Inf\"} 5\n\
             ferry_gateway_connections{gateway=\"gw-1\"} 1\n",
        );
        let new = scrape(
            t0 + Duration::from_secs(2),
            "ferry_messages_in_total 30\n\
             ferry_delivery_seconds_bucket{le=\"0.001\"} 5\n\
             ferry_delivery_seconds_bucket{le=\"0.01\"} 15\n\
             ferry_delivery_seconds_bucket{le=\"+Inf\"} 15\n\
             ferry_gateway_connections{gateway=\"gw-1\"} 4\n\
             ferry_gateway_connections{gateway=\"gw-2\"} 2\n",
        );
        let local = Local {
            nodes: Vec::new(),
            files: vec![FileRow {
                name: "ferry.db".into(),
                bytes: 4096,
            }],
            time_ms: 1,
        };
        let sum = build(&new, Some(&old), Some(&old), local);
        assert_eq!(sum.totals.messages_in, 30);
        assert!((sum.rates.messages_in - 10.0).abs() < 1e-9);
        // The 10 observations in the window all fell in (1 ms, 10 ms].
        assert_eq!(sum.delivery_ms.count, 10.0);
        let p50 = sum.delivery_ms.p50.unwrap();
        assert!((p50 - 5.5).abs() < 1e-9, "{p50}");
        assert_eq!(sum.totals.connections, 6);
        assert_eq!(sum.gateways.len(), 2);
        assert_eq!(sum.store.total_bytes, 4096);
        assert!(sum.regions.is_empty());
        assert!(sum.push.providers.is_empty() && sum.push.reasons.is_empty());
        // Without a base there is no rate, and the window is everything so far.
        let first = build(
            &new,
            None,
            None,
            Local {
                nodes: vec![],
                files: vec![],
                time_ms: 1,
            },
        );
        assert_eq!(first.rates.messages_in, 0.0);
        assert_eq!(first.delivery_ms.count, 15.0);
    }
}
