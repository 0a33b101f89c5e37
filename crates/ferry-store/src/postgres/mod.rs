//! The cluster store: PostgreSQL through a connection pool (tokio-postgres + deadpool).
//!
//! Semantics match the SQLite store exactly (the conformance suite runs against both):
//!
//! * **Per-user seq without gaps.** A message bumps `users.last_seq` of the sender and of
//!   the recipient (`UPDATE … RETURNING`) in the same transaction as its inserts. The
//!   row locks are taken in ascending user id order, so two users writing to each other
//!   cannot deadlock, and a seq is only ever visible together with its inbox entry.
//! * **Idempotency** on `(sender_id, client_msg_id)`: a unique index. Two concurrent
//!   retries of one message serialise on the sender's row; the loser hits the unique
//!   index, rolls back (giving its seq back) and answers with the original.
//! * **Durable before returning**: `COMMIT` with PostgreSQL's default
//!   `synchronous_commit = on` returns once the WAL is flushed. PostgreSQL's own group
//!   commit batches concurrent commits into one flush.
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
mod groups;
mod inbox;
mod reports;
mod schema;
mod social;

/// How often a write that lost a race (unique index, deadlock, serialisation) is retried.
const WRITE_ATTEMPTS: usize = 5;

/// PostgreSQL store settings.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// A libpq-style URL or key=value string, e.g. `postgres://ferry@127.0.0.1/ferry`.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long a request waits for a pooled connection, and a new connection to open.
    pub timeout: Duration,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            pool_size: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PgStore {
    pool: Pool,
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
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
        .wait_timeout(Some(cfg.timeout))
        .create_timeout(Some(cfg.timeout))
        .recycle_timeout(Some(cfg.timeout))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

impl PgStore {
    /// Connects (lazily: the pool opens connections as needed) and runs migrations.
    pub async fn connect(cfg: &PgConfig) -> Result<Self> {
        let store = PgStore {
            pool: pool(cfg, "ferry")?,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }
}
