//! Plots drawn by the bench itself (`plotters`, SVG backend: text is left to the SVG
//! viewer, so no system fonts are needed): latency against offered load, and server
//! memory against connections. `ferry bench plot` draws several reports in one figure.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use serde_json::Value;

use super::idle::proto_name;
use super::Proto;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(0, 0, 0),
];

/// A named line of points.
pub type Series = (String, Vec<(f64, f64)>);

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x1, mut y0, mut y1) = (0.0f64, f64::MAX, 0.0f64);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if y0 == f64::MAX {
        y0 = 0.0;
    }
    (0.0, x1.max(1.0) * 1.05, y0, y1.max(1e-9))
}

/// Lines on linear axes.
pub fn linear(path: &Path, title: &str, x: &str, y: &str, series: &[Series]) -> anyhow::Result<()> {
    let (_, _, _, y1) = bounds(series);
    lines(path, (title, x, y), series, 0f64..y1 * 1.1)
}

/// Lines with a logarithmic y axis (latencies span orders of magnitude).
pub fn log_y(path: &Path, title: &str, x: &str, y: &str, series: &[Series]) -> anyhow::Result<()> {
    let (_, _, y0, y1) = bounds(series);
    lines(
        path,
        (title, x, y),
        series,
        (y0.max(0.01) * 0.8..y1 * 1.5).log_scale(),
    )
}

/// Draws `series` as lines with dots into an SVG file at `path`, the y axis on `ys`
/// (linear or logarithmic), with a legend.
fn lines<Y>(
    path: &Path,
    (title, x, y): (&str, &str, &str),
    series: &[Series],
    ys: Y,
) -> anyhow::Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (x0, x1, _, _) = bounds(series);
    let root = SVGBackend::new(path, (860, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(46)
        .y_label_area_size(76)
        .build_cartesian_2d(x0..x1, ys)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Server RSS (MiB) against connections, from an idle report.
pub fn memory_series(report: &Value, name: &str) -> Series {
    let pts = report["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["connections"].as_f64()?,
                p["server_rss_kib"].as_f64()? / 1024.0,
            ))
        })
        .collect();
    (name.to_owned(), pts)
}

/// p50 and p99 (ms) against offered load, from a p2p sweep report.
pub fn latency_series(points: &[Value], name: &str) -> Vec<Series> {
    ["p50_us", "p99_us"]
        .iter()
        .map(|q| {
            let pts = points
                .iter()
                .filter_map(|p| {
                    Some((
                        p["offered_per_sec"].as_f64()?,
                        p["latency"][q].as_f64()? / 1000.0,
                    ))
                })
                .collect();
            (format!("{name} {}", &q[..3]), pts)
        })
        .collect()
}

pub fn memory(path: &Path, report: &Value, proto: Proto) -> anyhow::Result<()> {
    let s = memory_series(report, proto_name(proto));
    linear(
        path,
        "server memory (RSS) against idle logged-in connections",
        "connections",
        "RSS (MiB)",
        &[s],
    )
}

pub fn latency(path: &Path, points: &[Value], proto: Proto) -> anyhow::Result<()> {
    log_y(
        path,
        "send → receive latency against offered load (1:1 messages)",
        "offered load (messages/s)",
        "latency (ms, log scale)",
        &latency_series(points, proto_name(proto)),
    )
}

/// `ferry bench plot`: idle reports become one memory figure, p2p sweep reports one
/// latency figure; each report is named by its protocol.
pub fn from_reports(files: &[PathBuf], out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut mem = Vec::new();
    let mut lat = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value = serde_json::from_str(&text)?;
        let name = match v["protocol"].as_str() {
            Some("xmpp") => "ejabberd (XMPP)",
            _ => "ferry",
        };
        match v["scenario"].as_str() {
            Some("idle") => mem.push(memory_series(&v, name)),
            Some("p2p") => {
                if let Some(points) = v["sweep"].as_array() {
                    lat.extend(latency_series(points, name));
                }
            }
            _ => {}
        }
    }
    std::fs::create_dir_all(out_dir)?;
    let mut written = Vec::new();
    if !mem.is_empty() {
        let p = out_dir.join("memory-vs-connections.svg");
        linear(
            &p,
            "server memory (RSS) against idle logged-in connections",
            "connections",
            "RSS (MiB)",
            &mem,
        )?;
        written.push(p);
    }
    if !lat.is_empty() {
        let p = out_dir.join("latency-vs-load.svg");
        log_y(
            &p,
            "send → receive latency against offered load (1:1 messages)",
            "offered load (messages/s)",
            "latency (ms, log scale)",
            &lat,
        )?;
        written.push(p);
    }
    Ok(written)
}
