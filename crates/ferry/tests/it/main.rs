//! Ferry's integration tests, one binary (the suite links once): each module is what was
//! a test binary of its own, with its helpers from `ferry-testkit`.
//!
//! The tests share this process and run side by side (as many at a time as
//! `--test-threads`, the number of cores by default). None sets an environment
//! variable, a signal handler or a limit of the process; the ones that need a server
//! start their own on port 0 (or their own processes), PostgreSQL gives each a
//! database of its own, and everything they count is per server. The one exception is
//! kept out: `tests/dashboard.rs` asserts exact deltas of counters in the process-wide
//! metrics recorder, which every server of the process feeds, so it stays a binary of
//! its own, where nothing else moves them.

/// The `ferry` binary of this build (for the tests that run it as a process).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

mod admin_ops;
mod admin_users;
mod api;
mod bad_input;
mod bench_smoke;
mod bench_workers;
mod bots;
mod cli_push;
mod client_push;
mod client_push_targets;
mod cluster;
mod cluster_media;
mod cluster_media_s3;
mod cluster_order;
mod config;
mod conv;
mod crash;
mod faults;
mod groups;
mod limits;
mod liveness;
mod media;
mod messaging;
mod msgops;
mod push;
mod push_cluster;
mod readme;
mod resume;
mod search;
mod secure;
mod security;
mod session;
mod sizes;
mod smart;
mod social;
mod webhooks;
mod wire;
mod ws;

/// `ferry <args> --config <config>` as a process, once it printed a line starting with
/// `ready` (the cluster tests' gateways and logic nodes).
fn node(args: &[&str], config: &std::path::Path, ready: &str) -> ferry_testkit::Node {
    ferry_testkit::Node::spawn(
        std::process::Command::new(FERRY)
            .current_dir(node_dir(config))
            .args(args)
            .arg("--config")
            .arg(config),
        ready,
    )
}

/// Where a cluster test's nodes run: the folder of their config (the test's own), so
/// what a node keeps under the default `data_dir` (the search index, the admin token, a
/// server key the config does not name) stays there, shared by the nodes of one cluster
/// as before, and never lands in the source tree — where a stray file once looked like a
/// changed source to the binding tests, which then rebuilt the server and the library
/// (ten minutes of `.ci/run`).
fn node_dir(config: &std::path::Path) -> &std::path::Path {
    config
        .parent()
        .filter(|d| d.is_absolute())
        .expect("a cluster test's config lives in its own temporary folder")
}
