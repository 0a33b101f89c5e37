//! The process-wide metrics recorder: the `metrics` facade that the role crates record
//! through, rendered as Prometheus text by `metrics-exporter-prometheus` (through its
//! handle: the exporter's own HTTP listener is not used, `/metrics` is one of our routes).
//!
//! Every metric the role crates record is described here, so `/metrics` carries a
//! `# HELP` line for each and operators find one list of names.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 100 µs to 10 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Writes per group commit.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Inbox entries a device is behind.
const ENTRIES: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process; later calls return the same handle). Every
/// `Server` in a process shares it, as every role in one process shares one `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), BATCH))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_entries".into()), ENTRIES))
                .expect("bucket lists are non-empty");
            let handle = match builder.install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    // Someone else installed a global recorder first (a test harness or an
                    // embedding program): keep a private one so /metrics still renders.
                    tracing::warn!(error = %e, "a metrics recorder was already installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            handle
        })
        .clone()
}

fn describe() {
    // Logic.
    describe_counter!(
        "ferry_logins_total",
        "Long-link LOGINs that succeeded (refusals are in ferry_errors_total{cmd=\"login\"})."
    );
    describe_counter!(
        "ferry_messages_in_total",
        "Messages accepted and stored (retries of an already stored message not included)."
    );
    describe_counter!(
        "ferry_messages_duplicate_total",
        "SENDs answered from the idempotency record: a client retried a stored message."
    );
    describe_counter!(
        "ferry_entries_out_total",
        "Inbox entries sent to devices, by way: inline in a notify, or in a sync answer."
    );
    describe_counter!(
        "ferry_syncs_total",
        "SYNC requests answered (long and short link)."
    );
    describe_counter!(
        "ferry_notifies_total",
        "NOTIFY pushes handed to a gateway holding the user's links."
    );
    describe_counter!(
        "ferry_notify_failures_total",
        "NOTIFY pushes the bus could not deliver to a gateway (the device syncs later)."
    );
    describe_counter!(
        "ferry_errors_total",
        "Requests refused or failed, by command and error code."
    );
    describe_histogram!(
        "ferry_request_duration_seconds",
        Unit::Seconds,
        "Time logic spent on a request, by command (bus hop included, socket excluded)."
    );
    describe_histogram!(
        "ferry_delivery_seconds",
        Unit::Seconds,
        "From a SEND reaching logic to the recipient's NOTIFY being handed to its gateway: \
         store write, fsync and routing. The last hop to the device is not included; \
         `ferry bench` measures send to receipt end to end."
    );
    describe_histogram!(
        "ferry_sync_lag_entries",
        "How many inbox entries a device was behind when it sent SYNC (latest seq - synckey)."
    );
    // Store.
    describe_histogram!(
        "ferry_store_batch_size",
        "Writes in one group commit (one transaction, one fsync)."
    );
    describe_histogram!(
        "ferry_store_batch_seconds",
        Unit::Seconds,
        "Time to run one group commit: the batch's statements plus the commit."
    );
    describe_histogram!(
        "ferry_store_commit_seconds",
        Unit::Seconds,
        "Time of the COMMIT of one batch: its WAL writes, and the fsync unless the \
         embedded store's syncer thread does it (ferry_store_sync_seconds)."
    );
    describe_histogram!(
        "ferry_store_sync_seconds",
        Unit::Seconds,
        "Embedded store: one fdatasync of the WAL, by the writer when idle or by the \
         syncer thread for every batch committed while the last sync was under way."
    );
    describe_histogram!(
        "ferry_store_key_merge_seconds",
        Unit::Seconds,
        "Embedded store: time to merge the idempotency keys the writer held in memory \
         into key_runs (runs of a sender's keys) and message_keys, whole or a slice of 256 keys \
         (inside a group commit)."
    );
    describe_gauge!(
        "ferry_store_write_queue",
        "Writes waiting for the store's writer after its latest batch."
    );
    describe_counter!(
        "ferry_store_batch_failures_total",
        "Group commits that failed and were rolled back (every write in them was refused)."
    );
    // Reserved for the endpoint-list feature: clients' race reports by region.
    describe_counter!(
        "ferry_endpoint_reports_total",
        "Endpoint race results reported by clients, by region and result (ok or fail)."
    );
    describe_histogram!(
        "ferry_endpoint_connect_seconds",
        Unit::Seconds,
        "Connect-and-handshake times clients reported, by region."
    );
}
