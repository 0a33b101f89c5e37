//! The cluster store: PostgreSQL through a connection pool (tokio-postgres + deadpool).
//!
//! Semantics match the SQLite store exactly (the conformance suite runs against both):
//!
//! * **Group commit.** Messages and inbox events go through a write queue
//!   (`writer.rs`): a writer task takes every write waiting (up to a batch) and stores
//!   them in one transaction of two round trips, its statements pipelined on one
//!   connection — as the SQLite store's writer thread does. One commit, one WAL flush
//!   and one row lock per user cover a whole batch instead of one message.
//! * **Per-user seq without gaps.** A batch locks its users' rows in ascending id order
//!   (`SELECT … FOR UPDATE`), allocates their seqs in queue order from `users.last_seq`,
//!   and writes each user's new `last_seq` once, in the same transaction as the inserts:
//!   two nodes writing to the same users cannot deadlock, and a seq is only ever visible
//!   together with its inbox entry.
//! * **Idempotency** on `(sender_id, client_msg_id)`: read under the sender's row lock
//!   in the batch's first round trip (so no other writer can store the same key
//!   between the check and the insert), and a unique index behind it.
//! * **Durable before returning**: `COMMIT` with PostgreSQL's default
//!   `synchronous_commit = on` returns once the WAL is flushed.
//! * **Synckeys** are buffered and written at most once a second (`synckeys.rs`).
//! * **Unavailable, not internal**: a connection refused or lost, a server shutting down
//!   or restarting, too many connections, a pool wait that timed out, are
//!   [`StoreError::Unavailable`] (see [`is_unavailable`]) — retryable.
//!
//! Schema migrations run at start-up under an advisory lock, so several logic nodes may
//! start at once.
//!
//! This module holds the store type, its settings and the connection pool;
//! `schema.rs` the migrations, and each domain's trait is implemented in the file of its
//! name.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::{Result, StoreError};

mod accounts;
mod audit;
mod bots;
mod conv;
mod groups;
mod hooks;
mod inbox;
mod msgops;
mod ops;
mod push;
mod reports;
mod schema;
mod search;
mod social;
mod synckeys;
mod user_admin;
mod writer;

/// How often a write that lost a race (unique index, deadlock, serialisation) is retried.
const WRITE_ATTEMPTS: usize = 5;

/// PostgreSQL store settings.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// A libpq-style URL or key=value string, e.g. `postgres://ferry@127.0.0.1/ferry`.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long a new connection may take to open (the store's pool bounds it further by
    /// twice `wait`).
    pub timeout: Duration,
    /// How long a request waits for a pooled connection before it is refused as
    /// unavailable (`[cluster] postgres_wait_ms`): overload turns into fast, retryable
    /// refusals instead of a pile of long waits.
    pub wait: Duration,
    /// Writer tasks storing messages and events in batches (`[cluster]
    /// postgres_writers`); each takes one pooled connection while it writes. A user's
    /// sends always go to the same writer (by sender id), so they stay in order.
    pub writers: usize,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            pool_size: 16,
            timeout: Duration::from_secs(5),
            wait: Duration::from_secs(1),
            writers: 1,
        }
    }
}

/// How long a session may stay idle inside a transaction before the server ends it: a
/// node that stalls (or loses its network) mid-transaction must not hold users' row
/// locks for longer than that.
const IDLE_IN_TRANSACTION_MS: u64 = 2_000;

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PgStore {
    pool: Pool,
    writer: writer::Writers,
    synckeys: synckeys::Synckeys,
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The database cannot be reached or is going away: a connection that failed, was lost
/// or closed, or timed out (no SQLSTATE), or the server's answers meaning the same —
/// SQLSTATE class 08 (connection exception), 57P01–57P03 (admin / crash shutdown,
/// cannot connect now: a restart), 53300 (too many connections), 25P03 (idle in
/// transaction timeout). Retry later; never an internal error.
pub(crate) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "25P03")
        }
        None => {
            // tokio-postgres keeps its error kind private; its message names it.
            let m = e.to_string();
            [
                "error communicating with the server",
                "connection closed",
                "error connecting to server",
                "timeout waiting for server",
            ]
            .iter()
            .any(|p| m.starts_with(p))
        }
    }
}

/// A race another writer won: try again.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::UNIQUE_VIOLATION)
            | Some(&SqlState::T_R_DEADLOCK_DETECTED)
            | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A connection pool for `cfg` (connections open lazily, every wait bounded by
/// `cfg.timeout`); `app` names the connections in `pg_stat_activity` unless the URL does.
pub(crate) fn pool(cfg: &PgConfig, app: &str) -> Result<Pool> {
    let mut pg = tokio_postgres::Config::from_str(&cfg.url)?;
    pg.connect_timeout(cfg.timeout);
    if pg.get_application_name().is_none() {
        pg.application_name(app);
    }
    let idle = format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}");
    let options = match pg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {idle}"),
        _ => idle,
    };
    pg.options(options);
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(cfg.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(cfg.wait))
        // A request that finds no idle connection may wait for a new one to open: bound
        // that too by a small multiple of the pool wait (a black-holed database must be
        // refused quickly, not after the full connect timeout).
        .create_timeout(Some(cfg.timeout.min(2 * cfg.wait)))
        .recycle_timeout(Some(cfg.timeout.min(2 * cfg.wait)))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

impl PgStore {
    /// Connects (lazily: the pool opens connections as needed) and runs migrations.
    pub async fn connect(cfg: &PgConfig) -> Result<Self> {
        let pool = pool(cfg, "ferry")?;
        let store = PgStore {
            writer: writer::Writers::start(pool.clone(), cfg.writers),
            synckeys: synckeys::Synckeys::start(pool.clone()),
            pool,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }
}
