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
