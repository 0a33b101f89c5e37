//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that takes every write waiting in its queue,
//! runs them in one transaction and commits once — group commit: one fsync covers a whole
//! batch, so durable throughput grows with load instead of being capped by the disk's
//! sync latency. Reads run on a small pool of read-only connections (WAL lets them
//! proceed while the writer writes).
//!
//! This module holds the store type and its plumbing (opening, the read pool, handing a
//! write to the writer); `writer.rs` is the writer and checkpointer threads, `walbuf.rs`
//! the VFS that gathers the writer's WAL writes, `pcache.rs` the page cache that skips
//! SQLite's needless sweeps, `schema.rs` the migrations, and each
//! domain's trait is implemented in the file of its name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::{Result, StoreError};
use writer::{BatchError, Finish, Job, WriterState};

/// The newest inbox seq of the user row `u`, as an SQL expression (see
/// `inbox::NEWEST_SEQ`): one definition for every statement that reads it.
macro_rules! newest_seq_of_u {
    () => {
        "max(u.last_seq, coalesce((SELECT max(i.seq) FROM inbox i WHERE i.user_id = u.id), 0))"
    };
}

mod accounts;
mod audit;
mod bots;
mod conv;
mod groups;
mod hooks;
mod inbox;
mod keyruns;
mod msgops;
mod ops;
mod pcache;
mod push;
mod reports;
mod schema;
mod search;
mod social;
mod user_admin;
mod walbuf;
mod writer;

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit (`synchronous=FULL`): an acknowledged write survives a
    /// power loss. The default.
    #[default]
    Fsync,
    /// Leave flushing to the OS (`synchronous=NORMAL`): survives a crash of the process
    /// but not of the machine.
    Os,
}

/// The embedded SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<ReadPool>,
    path: PathBuf,
    /// Dropping it stops the checkpointer (after a last checkpoint).
    _checkpoints: std::sync::mpsc::Sender<()>,
    /// How far the writer's commits are on disk: reads wait for theirs.
    durable: Arc<writer::Durable>,
}

/// How long a connection waits for a lock another one holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How much of the WAL file SQLite keeps when the WAL starts over (`journal_size_limit`):
/// above the longest WAL between two restarts, so each restart writes over blocks the file
/// already has. At 64 MiB the WAL of a closed-loop `ferry bench p2p` (≈ 55 000 msgs/s)
/// grew to 134–181 MiB and was truncated to 64 every ≈ 0.4 s: every cycle gave back
/// 70–117 MiB and allocated them again (ext4 block allocation, new page-cache pages, the
/// truncate), and the writer spent ≈ 7 % more CPU per message (docs/benchmarks.md). Only
/// a WAL that long is kept; a quieter server's stays as long as its writes between
/// restarts (3 MiB at 200 msgs/s, 66 MiB at 2 000/s since the WAL restarts at 64 MiB).
const WAL_KEEP_BYTES: i64 = 512 * 1024 * 1024;

/// The page size of a new database. Every commit writes each page it changed whole into
/// the WAL, and the pages a batch of sends changes are scattered (each sender's and
/// recipient's inbox, each sender's idempotency entry): ≈ 3.4 pages a message at 20 000
/// msgs/s (WAL frames written over messages stored, docs/benchmarks.md). At 1 KiB
/// instead of SQLite's default 4 KiB a commit writes a quarter of the bytes, the
/// checkpointer copies a quarter back, and the WAL restarts a quarter as often for its
/// length: the open loop's p90 and p99 at 20 000 msgs/s fell by a third
/// (docs/benchmarks.md, *Smaller pages*). A row longer than ≈ 990 bytes (a long message)
/// spills into overflow pages. A database made before keeps its 4 KiB.
const PAGE_SIZE: i64 = 1024;

/// The writer's page cache, in KiB. Not larger: SQLite scans its page cache's whole hash
/// table at the end of every transaction in which a B-tree balance swapped two pages'
/// numbers — it parks a page under the lock-byte page's number (1 GiB into the file) for
/// the swap, and the commit then drops every cached page above the database's size,
/// visiting each hash bucket when the gap is that wide. A fifth to two fifths of the
/// commits do (22 % at 2 000 msgs/s, 42 % in a closed-loop `ferry bench p2p`, counted with
/// uprobes), and the scan grows with the cache: at 64 MiB (65 536 pages of 1 KiB) it was
/// 4 % of the server's CPU in the closed loop, ≈ 0.4 ms added to each such commit. 8 MiB
/// took the closed loop's CPU per message down by ≈ 7 % (15.9 against 17.1 µs, means of 4
/// interleaved rounds; docs/benchmarks.md, *The page cache's scan*); pages beyond it come
/// from the OS page cache. Since then the page cache skips that scan when nothing is left
/// to drop (`pcache.rs`), which a process whose SQLite was started before the store does
/// not get; the size was not measured again.
const WRITER_CACHE_KIB: i64 = 8 * 1024;

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.idle.lock().pop() {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = f(&conn);
        let mut idle = self.idle.lock();
        if idle.len() < 16 {
            idle.push(conn);
        }
        out
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Small: a reader's cache is private to its connection (each holds its own copy of
    // the same pages) and is thrown away at the next read after any commit, so under
    // writes a large one buys nothing. With 8 MiB each they held what logins had read:
    // `ferry bench idle --connections 10000` measured 2 329 B per connection, 2 119 B
    // with 1 MiB. Leaf pages come from the OS page cache instead, shared by all. 512 KiB
    // since pages are 1 KiB (`PAGE_SIZE`): each cached page costs ≈ 290 B of SQLite's
    // own besides (docs/benchmarks.md), and four times as many of them in 1 MiB cost
    // ≈ 46 B more per idle connection.
    conn.pragma_update(None, "cache_size", -512)?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Keeps a cached statement's plan when new values are bound to it. SQLite (built with
/// STAT4, as the bundled one is) otherwise marks a statement whose plan *could* depend on
/// a bound value — any `?` compared with an indexed column — as expired at every bind,
/// and parses and plans it again at the next step: the inbox read of every SYNC was
/// re-prepared each time (8 % of the tokio threads' CPU in an open-loop `ferry bench
/// p2p`). This store never runs ANALYZE, so the plans cannot improve by it anyway.
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/ferry.db`, runs migrations and starts the writer.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("ferry.db");
        // Before any connection: SQLite takes its page cache when it starts.
        pcache::install();
        // The writer's WAL writes reach the file in one call per commit (`walbuf.rs`),
        // which is sound only where every commit syncs the WAL before other connections
        // can see it: at `synchronous=FULL`.
        let mut conn = match durability {
            Durability::Fsync => Connection::open_with_flags_and_vfs(
                &path,
                OpenFlags::default(),
                walbuf::vfs().map_err(|e| StoreError::Io(std::io::Error::other(e)))?,
            )?,
            Durability::Os => Connection::open(&path)?,
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        stable_plans(&conn)?;
        // Only a new database takes it (an existing one keeps the size it was made with).
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Fsync => "FULL",
            Durability::Os => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        // Leave checkpoints to the checkpointer thread so a commit never pays for copying
        // the WAL back into the database.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
        schema::migrate(&mut conn)?;
        let wal = Arc::new(writer::WalState::default());
        let durable = writer::Durable::new();
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let checkpoints =
            writer::spawn_checkpointer(&path, page_size.max(512) as u64, wal.clone())?;

        let (tx, rx) = mpsc::channel(writer::QUEUE);
        std::thread::Builder::new()
            .name("ferry-store-writer".into())
            .spawn({
                let durable = durable.clone();
                let defer = durability == Durability::Fsync;
                move || writer::writer(conn, rx, &wal, durable, defer)
            })?;
        Ok(SqliteStore {
            jobs: tx,
            readers: Arc::new(ReadPool {
                path: path.clone(),
                idle: Mutex::new(Vec::new()),
            }),
            path,
            _checkpoints: checkpoints,
            durable,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction, &mut WriterState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |txn, state| {
            let out = f(txn, state);
            let poisoned = matches!(out, Err(StoreError::Sqlite(_) | StoreError::Io(_)));
            let full = out.as_ref().err().is_some_and(writer::store_full);
            if let (true, false, Err(e)) = (poisoned, full, &out) {
                // The other writes of its batch are only told that it failed.
                tracing::error!(error = %e, "store: a write failed; its batch rolls back");
            }
            Finish {
                poisoned,
                full,
                reply: Box::new(move |commit| {
                    let _ = tx.send(match commit {
                        Ok(()) => out,
                        Err(BatchError::Full) => Err(StoreError::Unavailable(
                            "the disk under the data folder is full".into(),
                        )),
                        Err(BatchError::Failed(e)) => Err(StoreError::WriteFailed(e)),
                    });
                }),
            }
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // Run on the calling thread. A read is an indexed lookup or one page of rows from
        // the page cache (tens of microseconds; WAL readers never wait for the writer),
        // far less than handing it to another thread and back, which costs two wake-ups
        // and was the largest share of the server's CPU per message.
        let out = self.readers.with(f);
        // What it read may be a commit whose WAL sync is still under way.
        self.durable.settled().await;
        out
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use rusqlite::params;

    use super::inbox::INBOX_PAGE;
    use super::*;

    /// A cached statement keeps its plan across binds: the inbox read of every SYNC used
    /// to be parsed and planned again each time (see [`stable_plans`]).
    #[test]
    fn cached_reads_are_not_prepared_again_for_new_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Os).unwrap();
        let writer = Connection::open(store.path()).unwrap();
        for seq in 1..=20i64 {
            writer
                .execute(
                    "INSERT INTO inbox (user_id, seq, created_ms) VALUES (?1, ?2, 0)",
                    params![1 + seq % 3, seq],
                )
                .unwrap();
        }
        let reader = open_reader(store.path()).unwrap();
        for user in 1..=5i64 {
            let mut stmt = reader.prepare_cached(INBOX_PAGE).unwrap();
            let mut rows = stmt.query(params![user, user * 3, 10]).unwrap();
            while rows.next().unwrap().is_some() {}
        }
        let stmt = reader.prepare_cached(INBOX_PAGE).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    /// A commit whose WAL sync is still under way (held back here) is visible to SQLite's
    /// readers, but the write is not answered, and a read through the store that saw it
    /// waits too: both come once the sync is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_answered_before_its_commit_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path(), Durability::Fsync).unwrap());
        store
            .write(|txn, _| Ok(txn.execute_batch("CREATE TABLE t (v INTEGER)")?))
            .await
            .unwrap();
        let count = |store: Arc<SqliteStore>| async move {
            store
                .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?))
                .await
                .unwrap()
        };
        assert_eq!(count(store.clone()).await, 0);

        store.durable.hold.store(true, Ordering::SeqCst);
        let write = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(|txn, _| Ok(txn.execute("INSERT INTO t (v) VALUES (1)", [])?))
                    .await
                    .unwrap()
            }
        });
        // Committed and published: another connection sees the row.
        let plain = Connection::open(store.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while plain
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap()
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit never came"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let read = tokio::spawn(count(store.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!write.is_finished(), "a write answered before its sync");
        assert!(
            !read.is_finished(),
            "a read answered with a commit not yet synced"
        );

        store.durable.hold.store(false, Ordering::SeqCst);
        assert_eq!(write.await.unwrap(), 1);
        assert_eq!(read.await.unwrap(), 1);
        assert_eq!(count(store.clone()).await, 1);
    }

    /// Writes from many tasks at once: batches committed while a sync is under way go to
    /// the syncer, and every write is answered, in each task's order, with what it stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_behind_a_sync_are_synced_and_answered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path(), Durability::Fsync).unwrap());
        store
            .write(|txn, _| Ok(txn.execute_batch("CREATE TABLE t (task INTEGER, n INTEGER)")?))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..16i64)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..200i64 {
                        let id = store
                            .write(move |txn, _| {
                                txn.execute("INSERT INTO t (task, n) VALUES (?1, ?2)", [task, n])?;
                                Ok(txn.last_insert_rowid())
                            })
                            .await
                            .unwrap();
                        // What was answered is on disk and readable.
                        let seen: i64 = store
                            .read(move |c| {
                                Ok(c.query_row("SELECT n FROM t WHERE rowid = ?1", [id], |r| {
                                    r.get(0)
                                })?)
                            })
                            .await
                            .unwrap();
                        assert_eq!(seen, n);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(store.durable.handed_off.load(Ordering::SeqCst) > 0);
        let plain = Connection::open(store.path()).unwrap();
        let n: i64 = plain
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 16 * 200);
    }
}
