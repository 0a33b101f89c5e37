//! Latency histograms (microseconds) and how they travel from workers as JSON.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A histogram of 1 µs … 10 min with 3 significant digits.
pub fn new() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// `[[value, count], …]` of every recorded bucket.
pub fn to_json(h: &Histogram<u64>) -> Value {
    let pairs: Vec<Value> = h
        .iter_recorded()
        .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
        .collect();
    Value::Array(pairs)
}

/// Adds what [`to_json`] wrote into `h`.
pub fn merge_json(h: &mut Histogram<u64>, v: &Value) {
    for pair in v.as_array().into_iter().flatten() {
        let (Some(value), Some(count)) = (
            pair.get(0).and_then(Value::as_u64),
            pair.get(1).and_then(Value::as_u64),
        ) else {
            continue;
        };
        let _ = h.record_n(value.max(1), count);
    }
}

/// The figures a report shows, in microseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
        "mean_us": h.mean().round(),
    })
}
