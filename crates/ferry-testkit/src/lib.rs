//! Ferry's test kit: the one copy of what the integration tests share, so that every
//! test sets up what it needs by itself.
//!
//! - [`procs`]: free ports, a `nats-server` of the test's own, `ferry` processes
//!   (cluster nodes, a server to SIGKILL).
//! - [`pg`]: a throw-away PostgreSQL server (initdb + postgres from the installed
//!   server binaries, in a temporary folder, on a free loopback port), started once per
//!   test process, and a fresh database per test.
//! - [`s3`]: a real S3-compatible server (moto's server mode, from hash-pinned PyPI
//!   wheels in a venv under the target folder), started once per test process, and a
//!   fresh bucket per test.
//! - [`python`]: hash-pinned Python virtual environments under the target folder (for
//!   moto and the tests that check Ferry against a second implementation in Python).
//! - [`proxy`]: one TCP proxy with every fault the tests inject (cut, black hole,
//!   refuse, delay, idle-flow drop, HTTP only, recording).
//! - with the `server` feature: [`server`] (an in-process [`ferry::Server`] on port 0,
//!   users, SDK clients and waiting for their events) and [`raw`] (long links and HTTP
//!   requests spoken by hand, plain and encrypted) and [`ws`] (the long link over
//!   WebSocket, by hand).
//!
//! The split by feature: ferry-bus and ferry-store test their crates against a real
//! nats-server and PostgreSQL; they take the kit without features, so their tests build
//! without the server they are part of (only the process half, no Ferry crate).
//! `crates/ferry`'s tests turn `server` on, which links the `ferry` library (a
//! dev-dependency cycle ferry → ferry-testkit → ferry that cargo allows for
//! integration tests).
//!
//! One PostgreSQL server per test process: `cargo test` runs each test binary as one
//! process, so a binary's tests share one server (a database each). A runner that
//! starts a process per test (cargo-nextest) would start a server per test — it works,
//! and costs an `initdb` each.
//!
//! What it must not do: be a dependency of anything but tests (`[dev-dependencies]`
//! only: it panics instead of returning errors, and starts processes); talk to anything
//! but 127.0.0.1; leave processes or folders behind (each child is killed on drop, the
//! PostgreSQL server dies with the test process and its folder is removed at exit or by
//! the next run). It holds no test: what a test asserts stays in the test, and the kit's
//! own checks only say that a set-up step worked.
//!
//! It uses `unsafe` for a few libc calls (the parent-death signal, `atexit`, the
//! `postgres` user's ids), so it stays out of a workspace-wide `unsafe_code = "forbid"`.

pub mod node;
pub mod pg;
pub mod procs;
pub mod proxy;
pub mod python;
#[cfg(feature = "server")]
pub mod raw;
pub mod s3;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod ws;

pub use node::npm_ci;
pub use pg::Db;
pub use procs::{free_port, Nats, Node};
pub use proxy::{Proxy, ProxyOptions};
pub use python::python_venv;
#[cfg(feature = "server")]
pub use raw::{
    error_code, error_of, http_post, http_request, login_frame, HttpAnswer, RawLink, SecureRaw,
};
#[cfg(feature = "server")]
pub use server::*;
#[cfg(feature = "server")]
pub use ws::{WsEvent, WsLink};
