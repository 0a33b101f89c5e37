//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that takes every write waiting in its queue,
//! runs them in one transaction and commits once — group commit: one fsync covers a whole
//! batch, so durable throughput grows with load instead of being capped by the disk's
//! sync latency. Reads run on a small pool of read-only connections (WAL lets them
//! proceed while the writer writes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Appended, Avatar, FriendChange, FriendList, FriendRow, GroupChange, GroupRow, InboxPage,
    MemberRow, MessageInfo, MomentRow, NewEvent, NewMessage, Reaction, ReportInfo, Result, Session,
    Store, StoreError, User,
};

mod groups;
mod social;

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

/// Most writes one transaction takes.
const MAX_BATCH: usize = 1024;
/// Writes that may wait for the writer before senders are held back.
const QUEUE: usize = 16 * 1024;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    device_id  TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX sessions_device ON sessions(user_id, device_id);
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    sender_id     INTEGER NOT NULL,
    client_msg_id INTEGER NOT NULL,
    sender_seq    INTEGER NOT NULL,
    recipient_seq INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    body          BLOB,
    UNIQUE (sender_id, client_msg_id)
);
CREATE TABLE inbox (
    user_id    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    msg_id     INTEGER,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_created ON inbox(created_ms);
CREATE TABLE devices (
    user_id    INTEGER NOT NULL,
    device_id  TEXT NOT NULL,
    synckey    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
"#,
    r#"
ALTER TABLE inbox ADD COLUMN payload BLOB;
ALTER TABLE users ADD COLUMN friend_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE friendships (
    user_id    INTEGER NOT NULL,
    peer_id    INTEGER NOT NULL,
    state      INTEGER NOT NULL,
    greeting   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer_id)
) WITHOUT ROWID;
CREATE INDEX friendships_version ON friendships(user_id, version);
CREATE TABLE avatars (
    user_id      INTEGER PRIMARY KEY,
    etag         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    image        BLOB NOT NULL,
    thumb        BLOB NOT NULL,
    updated_ms   INTEGER NOT NULL
);
CREATE TABLE reports (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL,
    device_id      TEXT NOT NULL,
    client_version TEXT NOT NULL,
    kind           TEXT NOT NULL,
    file_name      TEXT NOT NULL,
    length         INTEGER NOT NULL,
    md5            TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    data           BLOB NOT NULL
);
CREATE INDEX reports_created ON reports(created_ms);
CREATE TABLE moments (
    id         INTEGER PRIMARY KEY,
    author_id  INTEGER NOT NULL,
    text       TEXT NOT NULL,
    media_ids  TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX moments_author ON moments(author_id, id);
CREATE TABLE moment_likes (
    moment_id  INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (moment_id, user_id)
) WITHOUT ROWID;
CREATE TABLE moment_comments (
    id         INTEGER PRIMARY KEY,
    moment_id  INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX moment_comments_moment ON moment_comments(moment_id);
"#,
    r#"
CREATE TABLE groups (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    announcement  TEXT NOT NULL,
    owner_id      INTEGER NOT NULL,
    share_history INTEGER NOT NULL,
    last_gseq     INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL
);
CREATE TABLE group_members (
    group_id    INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    role        INTEGER NOT NULL,
    joined_gseq INTEGER NOT NULL,
    read_gseq   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_user ON group_members(user_id);
CREATE TABLE group_log (
    group_id   INTEGER NOT NULL,
    gseq       INTEGER NOT NULL,
    msg_id     INTEGER,
    payload    BLOB,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, gseq)
) WITHOUT ROWID;
"#,
];

/// A user's newest inbox seq: the inbox's last row, or `users.last_seq` when that is
/// higher. `last_seq` is a floor, written only by [`Store::prune`] before it deletes
/// entries (a user whose every entry was pruned must not get seq 1 again); sends never
/// write it. Updating it for both users of every message dirtied a page of the `users`
/// table each, for a value the inbox already holds (its primary key is `(user_id,
/// seq)`: one seek finds the last); without those updates the writer thread took 0.46 /
/// 0.42 cores instead of 0.57 / 0.50 at 10 000 msgs/s (`ferry bench p2p --rate 10000`).
const NEWEST_SEQ: &str = "SELECT max(u.last_seq, coalesce((SELECT max(i.seq) FROM inbox i
     WHERE i.user_id = u.id), 0)) FROM users u WHERE u.id = ?1";

/// A page of a user's inbox after a seq (the read behind every SYNC).
const INBOX_PAGE: &str = "SELECT i.seq, m.body, i.payload, i.created_ms FROM inbox i
     LEFT JOIN messages m ON m.id = i.msg_id
     WHERE i.user_id = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3";

fn newest_seq(c: &Connection, user: u64) -> Result<u64> {
    Ok(c.prepare_cached(NEWEST_SEQ)?
        .query_row([user as i64], |r| r.get::<_, i64>(0))
        .optional()?
        .ok_or(StoreError::UnknownUser(user))? as u64)
}

/// What the writer thread remembers between batches. Cleared whenever a batch fails,
/// so it can never disagree with the file.
#[derive(Default)]
struct WriterState {
    /// Newest seq per user (read with [`newest_seq`] on first use).
    seqs: HashMap<u64, u64>,
    /// Next message id (loaded from `max(id)` on first use).
    next_msg_id: Option<u64>,
}

impl WriterState {
    fn next_seq(&mut self, txn: &Transaction, user: u64) -> Result<u64> {
        let last = match self.seqs.get(&user) {
            Some(s) => *s,
            None => newest_seq(txn, user)?,
        };
        self.seqs.insert(user, last + 1);
        Ok(last + 1)
    }

    fn next_msg_id(&mut self, txn: &Transaction) -> Result<u64> {
        let id = match self.next_msg_id {
            Some(id) => id,
            None => {
                let max: Option<i64> =
                    txn.query_row("SELECT max(id) FROM messages", [], |r| r.get(0))?;
                max.unwrap_or(0) as u64 + 1
            }
        };
        self.next_msg_id = Some(id + 1);
        Ok(id)
    }

    /// Undoes the last [`next_msg_id`](Self::next_msg_id) and the `next_seq` calls that
    /// took `seqs` (one (user, seq) per call), when nothing was written with them.
    fn give_back(&mut self, msg_id: u64, seqs: &[(u64, u64)]) {
        self.next_msg_id = Some(msg_id);
        for &(user, seq) in seqs {
            self.seqs.insert(user, seq - 1);
        }
    }
}

/// A write: runs inside the batch transaction and returns what to tell its caller
/// once the batch has committed (or failed).
type Job = Box<dyn FnOnce(&Transaction, &mut WriterState) -> Finish + Send>;
struct Finish {
    /// The job failed in a way that may have left partial writes: the batch must roll back.
    poisoned: bool,
    /// It failed because the disk is full.
    full: bool,
    reply: Box<dyn FnOnce(std::result::Result<(), BatchError>) + Send>,
}

/// Why a batch did not commit.
#[derive(Debug, Clone)]
enum BatchError {
    /// The disk (or the file system under the data folder) is full: nothing of the batch
    /// was written, and the same writes succeed once space is freed. Callers are told
    /// the store is unavailable, which clients retry after a pause.
    Full,
    Failed(String),
}

impl BatchError {
    fn of(e: &rusqlite::Error) -> BatchError {
        if is_full(e) {
            BatchError::Full
        } else {
            BatchError::Failed(e.to_string())
        }
    }
}

/// SQLITE_FULL: SQLite's answer to ENOSPC (and to hitting `max_page_count`).
fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull))
}

fn store_full(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(e) => is_full(e),
        StoreError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

/// The embedded SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<ReadPool>,
    path: PathBuf,
    /// Dropping it stops the checkpointer (after a last checkpoint).
    _checkpoints: std::sync::mpsc::Sender<()>,
}

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// WAL frames (pages written) from which a checkpointer pass has the writer restart the
/// WAL from its start: ~16 MiB at the default 4 KiB page.
const RESTART_AT_FRAMES: u64 = 4096;
/// Frames the writer may find left to copy when it restarts the WAL.
const CAUGHT_UP_FRAMES: u64 = 256;
/// How long the writer waits for readers to leave the WAL when restarting it, and how
/// often it looks.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(5);
const RESTART_POLL: std::time::Duration = std::time::Duration::from_micros(50);
/// How long a connection waits for a lock another one holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the thread that checkpoints the WAL on its own connection (PASSIVE: it never
/// blocks the writer or readers), and raises `restart_due` after a pass that left a long
/// WAL entirely copied back. Stops when the returned sender is dropped.
///
/// A passive checkpoint alone never lets the WAL start over under a steady stream of
/// commits: SQLite rewinds the WAL only when a write begins with every frame already
/// copied back, and the writer always commits more before the checkpointer catches up
/// (the WAL grew by ~1 GB in a 10 s `ferry bench p2p`, every commit writing to newly
/// allocated blocks). The writer therefore finishes the job itself between two batches
/// ([`restart_wal`]) — right after such a pass, when only the frames of a batch or two
/// are left to copy.
fn spawn_checkpointer(
    path: &Path,
    restart_due: Arc<AtomicBool>,
) -> Result<std::sync::mpsc::Sender<()>> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("ferry-store-ckpt".into())
        .spawn(move || {
            let pass = || {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((
                        r.get::<_, i64>(1)?.max(0) as u64,
                        r.get::<_, i64>(2)?.max(0) as u64,
                    ))
                })
            };
            let checkpoint = || {
                let (mut log, mut copied) = match pass() {
                    Ok(p) => p,
                    Err(e) => return tracing::warn!(error = %e, "WAL checkpoint failed"),
                };
                if log < RESTART_AT_FRAMES {
                    return;
                }
                // The writer kept committing while this pass copied and synced: copy those
                // frames too, a few times over, so the writer's restart finds only a batch
                // or two left (each pass is shorter than the one before).
                for _ in 0..4 {
                    let Ok((l, c)) = pass() else { break };
                    let grew = l.saturating_sub(log);
                    (log, copied) = (l, c);
                    if grew <= CAUGHT_UP_FRAMES {
                        break;
                    }
                }
                // A reader on an old snapshot can keep a pass from copying everything; a WAL
                // far too long is restarted anyway (copying what is left).
                if copied == log || log >= 4 * RESTART_AT_FRAMES {
                    restart_due.store(true, Ordering::Release);
                }
            };
            // Until the store is dropped (the sender goes) — nothing is ever sent.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(CHECKPOINT_EVERY)
            {
                checkpoint();
            }
            checkpoint();
        })?;
    Ok(tx)
}

/// Run by the writer between batches just after the checkpointer copied a long WAL back:
/// copies the few frames committed since (no write can start meanwhile — this is the only
/// writer), syncs the database file and waits briefly for readers to leave the WAL, so the
/// next commit writes from the WAL's start again, over blocks the file already has.
///
/// Every write waits while this runs. Restarting whenever the WAL was long, up to 250 ms
/// after the last pass, held them for 7.2 ms on average (up to 25 ms) every 0.4 s at
/// 10 000 msgs/s (`ferry_store_wal_restart_seconds`); right after the passes, 4.2–4.7 ms.
fn restart_wal(conn: &Connection, restart_due: &AtomicBool) {
    if !restart_due.swap(false, Ordering::Acquire) {
        return;
    }
    let started = std::time::Instant::now();
    // Wait for readers only briefly: every write waits while this runs. A reader still in
    // the WAL then leaves the restart for a later pass (`busy` = 1). Only reads that began
    // before the WAL was copied back hold it (later ones read the database file), and a
    // read takes tens of microseconds: poll finely. SQLite's own busy timeout sleeps 1, 2,
    // 5 … ms between tries, which made a restart hold writes for ~6 ms.
    let _ = conn.busy_handler(Some(restart_busy));
    let restarted = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    });
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    match restarted {
        Ok((busy, frames)) => {
            metrics::histogram!("ferry_store_wal_restart_seconds")
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(busy, frames, "WAL restarted");
        }
        Err(e) => tracing::warn!(error = %e, "WAL restart failed"),
    }
}

/// The busy handler of [`restart_wal`]: true = try again.
fn restart_busy(tries: i32) -> bool {
    std::thread::sleep(RESTART_POLL);
    RESTART_POLL * (tries.max(0) as u32 + 1) < RESTART_WAIT
}

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
    // with 1 MiB. Leaf pages come from the OS page cache instead, shared by all.
    conn.pragma_update(None, "cache_size", -1024)?;
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
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        stable_plans(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Fsync => "FULL",
            Durability::Os => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        // The writer is the one serial path of every send: give it a large page cache,
        // and leave checkpoints to the checkpointer thread so a commit never pays for
        // copying the WAL back into the database.
        conn.pragma_update(None, "cache_size", -64 * 1024)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        migrate(&mut conn)?;
        let restart_due = Arc::new(AtomicBool::new(false));
        let checkpoints = spawn_checkpointer(&path, restart_due.clone())?;

        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("ferry-store-writer".into())
            .spawn(move || writer(conn, rx, &restart_due))?;
        Ok(SqliteStore {
            jobs: tx,
            readers: Arc::new(ReadPool {
                path: path.clone(),
                idle: Mutex::new(Vec::new()),
            }),
            path,
            _checkpoints: checkpoints,
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
            let full = out.as_ref().err().is_some_and(store_full);
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
        self.readers.with(f)
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this build ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let txn = conn.transaction()?;
        txn.execute_batch(sql)?;
        txn.pragma_update(None, "user_version", (i + 1) as i64)?;
        txn.commit()?;
        tracing::info!(version = i + 1, "store migrated");
    }
    Ok(())
}

fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Job>, restart_due: &AtomicBool) {
    let mut state = WriterState::default();
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut finished: Vec<Finish> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let size = batch.len();
        let started = std::time::Instant::now();
        let outcome = run_batch(&mut conn, &mut state, &mut batch, &mut finished);
        metrics::histogram!("ferry_store_batch_size").record(size as f64);
        metrics::histogram!("ferry_store_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("ferry_store_write_queue").set(rx.len() as f64);
        match &outcome {
            Ok(()) => {}
            Err(BatchError::Full) => {
                // Not a crash: the batch rolled back and its callers are told to retry.
                // Said once per batch, and the writer goes on taking writes.
                metrics::counter!("ferry_store_batch_failures_total", "reason" => "full")
                    .increment(1);
                tracing::warn!(writes = size, "store: disk full; batch refused");
                state = WriterState::default();
            }
            Err(BatchError::Failed(_)) => {
                metrics::counter!("ferry_store_batch_failures_total", "reason" => "error")
                    .increment(1);
                state = WriterState::default();
            }
        }
        for f in finished.drain(..) {
            (f.reply)(outcome.clone());
        }
        restart_wal(&conn, restart_due);
    }
    tracing::debug!("store writer stopped");
}

fn run_batch(
    conn: &mut Connection,
    state: &mut WriterState,
    batch: &mut Vec<Job>,
    finished: &mut Vec<Finish>,
) -> std::result::Result<(), BatchError> {
    let txn = match conn.transaction() {
        Ok(t) => t,
        Err(e) => {
            // Still run nothing, but answer everyone.
            for job in batch.drain(..) {
                drop(job);
            }
            return Err(BatchError::of(&e));
        }
    };
    let (mut poisoned, mut full) = (false, false);
    for job in batch.drain(..) {
        let f = job(&txn, state);
        poisoned |= f.poisoned;
        full |= f.full;
        finished.push(f);
    }
    if full {
        return Err(BatchError::Full);
    }
    if poisoned {
        return Err(BatchError::Failed("a write in the batch failed".into()));
    }
    let committing = std::time::Instant::now();
    let committed = txn.commit().map_err(|e| {
        if !is_full(&e) {
            tracing::error!(error = %e, "store commit failed");
        }
        BatchError::of(&e)
    });
    // The commit is where the fsync happens: this is the disk's share of a batch.
    metrics::histogram!("ferry_store_commit_seconds").record(committing.elapsed().as_secs_f64());
    committed
}

/// Builds an inbox entry from a message body (joined from `messages`) or an event
/// payload. An entry whose message was deleted keeps its seq with no kind.
fn decode_entry(
    seq: u64,
    time_ms: i64,
    body: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
) -> Result<v1::Entry> {
    let corrupt = |e: prost::DecodeError| StoreError::Corrupt(format!("inbox entry {seq}: {e}"));
    let mut entry = match (body, payload) {
        (Some(b), _) => v1::Entry {
            kind: Some(v1::entry::Kind::Message(
                v1::Message::decode(&b[..]).map_err(corrupt)?,
            )),
            ..Default::default()
        },
        (None, Some(p)) => v1::Entry::decode(&p[..]).map_err(corrupt)?,
        (None, None) => v1::Entry::default(),
    };
    entry.seq = seq;
    entry.time_ms = time_ms;
    Ok(entry)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn row_user(r: &rusqlite::Row) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        password_hash: r.get(2)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, name: &str, password_hash: &str) -> Result<u64> {
        let (name, hash) = (name.to_owned(), password_hash.to_owned());
        self.write(move |txn, _| {
            let exists = txn
                .prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
                .exists([&name])?;
            if exists {
                return Err(StoreError::UserExists);
            }
            txn.prepare_cached(
                "INSERT INTO users (name, password_hash, created_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, hash, now_ms()])?;
            Ok(txn.last_insert_rowid() as u64)
        })
        .await
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT id, name, password_hash FROM users WHERE name = ?1")?
                    .query_row([name], row_user)
                    .optional()?,
            )
        })
        .await
    }

    async fn user_by_id(&self, id: u64) -> Result<Option<User>> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT id, name, password_hash FROM users WHERE id = ?1")?
                    .query_row([id as i64], row_user)
                    .optional()?,
            )
        })
        .await
    }

    async fn put_session(&self, token_hash: [u8; 32], user_id: u64, device_id: &str) -> Result<()> {
        let device_id = device_id.to_owned();
        self.write(move |txn, _| {
            txn.prepare_cached("DELETE FROM sessions WHERE user_id = ?1 AND device_id = ?2")?
                .execute(params![user_id as i64, device_id])?;
            txn.prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, device_id, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![&token_hash[..], user_id as i64, device_id, now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<Session>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT user_id, device_id, created_ms FROM sessions WHERE token_hash = ?1",
            )?
            .query_row([&token_hash[..]], |r| {
                Ok(Session {
                    user_id: r.get::<_, i64>(0)? as u64,
                    device_id: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<bool> {
        self.write(move |txn, _| {
            Ok(txn
                .prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                .execute([&token_hash[..]])?
                > 0)
        })
        .await
    }

    async fn append_message(&self, msg: NewMessage) -> Result<Appended> {
        self.write(move |txn, state| {
            let sender = msg.sender_id as i64;
            let cmid = msg.client_msg_id as i64;
            // Check the recipient before touching anything, so an unknown one leaves no
            // partial write behind.
            let recipient_seq_probe = state.seqs.contains_key(&msg.recipient_id)
                || txn
                    .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
                    .exists([msg.recipient_id as i64])?;
            if !recipient_seq_probe {
                return Err(StoreError::UnknownUser(msg.recipient_id));
            }
            let msg_id = state.next_msg_id(txn)?;
            let sender_seq = state.next_seq(txn, msg.sender_id)?;
            let recipient_seq = if msg.recipient_id == msg.sender_id {
                sender_seq
            } else {
                state.next_seq(txn, msg.recipient_id)?
            };
            let mut body = msg.message;
            body.msg_id = msg_id;
            body.time_ms = msg.time_ms;
            // The idempotency check is the insert itself (the unique index on sender and
            // client id): a separate lookup first cost the writer a second seek per
            // message.
            let inserted = txn
                .prepare_cached(
                    "INSERT INTO messages (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (sender_id, client_msg_id) DO NOTHING",
                )?
                .execute(params![
                    msg_id as i64,
                    sender,
                    cmid,
                    sender_seq as i64,
                    recipient_seq as i64,
                    msg.time_ms,
                    body.encode_to_vec()
                ])?;
            if inserted == 0 {
                // A retry of a stored message: hand back the ids just taken (nothing
                // else took any since) and answer with the stored ones.
                let taken = [(msg.sender_id, sender_seq), (msg.recipient_id, recipient_seq)];
                let calls = if msg.recipient_id == msg.sender_id { 1 } else { 2 };
                state.give_back(msg_id, &taken[..calls]);
                return Ok(txn
                    .prepare_cached(
                        "SELECT id, sender_seq, recipient_seq, created_ms FROM messages
                         WHERE sender_id = ?1 AND client_msg_id = ?2",
                    )?
                    .query_row(params![sender, cmid], |r| {
                        Ok(Appended {
                            msg_id: r.get::<_, i64>(0)? as u64,
                            sender_seq: r.get::<_, i64>(1)? as u64,
                            recipient_seq: r.get::<_, i64>(2)? as u64,
                            time_ms: r.get(3)?,
                            duplicate: true,
                        })
                    })?);
            }
            let mut inbox = txn.prepare_cached(
                "INSERT INTO inbox (user_id, seq, msg_id, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            inbox.execute(params![sender, sender_seq as i64, msg_id as i64, msg.time_ms])?;
            if msg.recipient_id != msg.sender_id {
                inbox.execute(params![
                    msg.recipient_id as i64,
                    recipient_seq as i64,
                    msg_id as i64,
                    msg.time_ms
                ])?;
            }
            Ok(Appended {
                msg_id,
                sender_seq,
                recipient_seq,
                time_ms: msg.time_ms,
                duplicate: false,
            })
        })
        .await
    }

    async fn inbox(&self, user_id: u64, after: u64, limit: u32) -> Result<InboxPage> {
        self.read(move |c| {
            let txn = c.unchecked_transaction()?;
            let latest_seq = newest_seq(&txn, user_id)?;
            let mut stmt = txn.prepare_cached(INBOX_PAGE)?;
            let mut rows =
                stmt.query(params![user_id as i64, after as i64, i64::from(limit) + 1])?;
            let mut entries = Vec::new();
            let mut more = false;
            while let Some(row) = rows.next()? {
                if entries.len() == limit as usize {
                    more = true;
                    break;
                }
                let seq = row.get::<_, i64>(0)? as u64;
                let body: Option<Vec<u8>> = row.get(1)?;
                let payload: Option<Vec<u8>> = row.get(2)?;
                let time_ms: i64 = row.get(3)?;
                entries.push(decode_entry(seq, time_ms, body, payload)?);
            }
            Ok(InboxPage {
                entries,
                latest_seq,
                more,
            })
        })
        .await
    }

    async fn latest_seq(&self, user_id: u64) -> Result<u64> {
        self.read(move |c| newest_seq(c, user_id)).await
    }

    async fn set_synckey(&self, user_id: u64, device_id: &str, synckey: u64) -> Result<()> {
        let device_id = device_id.to_owned();
        self.write(move |txn, _| {
            txn.prepare_cached(
                "INSERT INTO devices (user_id, device_id, synckey, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET synckey = excluded.synckey,
                 updated_ms = excluded.updated_ms",
            )?
            .execute(params![user_id as i64, device_id, synckey as i64, now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn synckey(&self, user_id: u64, device_id: &str) -> Result<Option<u64>> {
        let device_id = device_id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT synckey FROM devices WHERE user_id = ?1 AND device_id = ?2",
            )?
            .query_row(params![user_id as i64, device_id], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64))
        })
        .await
    }

    async fn prune(&self, before_ms: i64) -> Result<u64> {
        self.write(move |txn, _| {
            // Keep each pruned user's newest seq as the floor of the next one.
            txn.prepare_cached(
                "UPDATE users SET last_seq = max(last_seq, (SELECT max(i.seq) FROM inbox i
                   WHERE i.user_id = users.id))
                 WHERE id IN (SELECT DISTINCT user_id FROM inbox WHERE created_ms < ?1)",
            )?
            .execute([before_ms])?;
            let n = txn
                .prepare_cached("DELETE FROM inbox WHERE created_ms < ?1")?
                .execute([before_ms])?;
            txn.prepare_cached("DELETE FROM messages WHERE created_ms < ?1")?
                .execute([before_ms])?;
            Ok(n as u64)
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: u64) -> Result<Vec<String>> {
        self.write(move |txn, _| social::delete_user_sessions(txn, user_id))
            .await
    }

    async fn set_password(&self, user_id: u64, password_hash: &str) -> Result<Vec<String>> {
        let hash = password_hash.to_owned();
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached("UPDATE users SET password_hash = ?1 WHERE id = ?2")?
                .execute(params![hash, user_id as i64])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            social::delete_user_sessions(txn, user_id)
        })
        .await
    }

    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        self.write(move |txn, state| social::append_events(txn, state, &events))
            .await
    }

    async fn friendship(&self, user_id: u64, peer_id: u64) -> Result<Option<FriendRow>> {
        self.read(move |c| social::friendship(c, user_id, peer_id))
            .await
    }

    async fn change_friends(&self, change: FriendChange) -> Result<Vec<u64>> {
        self.write(move |txn, state| social::change_friends(txn, state, change))
            .await
    }

    async fn friends(&self, user_id: u64, since_version: u64) -> Result<FriendList> {
        self.read(move |c| social::friends(c, user_id, since_version))
            .await
    }

    async fn set_avatar(&self, user_id: u64, avatar: Avatar) -> Result<()> {
        self.write(move |txn, _| social::set_avatar(txn, user_id, avatar))
            .await
    }

    async fn avatar(&self, user_id: u64) -> Result<Option<Avatar>> {
        self.read(move |c| social::avatar(c, user_id)).await
    }

    async fn add_report(&self, info: ReportInfo, data: Vec<u8>) -> Result<u64> {
        self.write(move |txn, _| social::add_report(txn, info, data))
            .await
    }

    async fn reports(&self, before_id: u64, limit: u32) -> Result<Vec<ReportInfo>> {
        self.read(move |c| social::reports(c, before_id, limit))
            .await
    }

    async fn report(&self, id: u64) -> Result<Option<(ReportInfo, Vec<u8>)>> {
        self.read(move |c| social::report(c, id)).await
    }

    async fn prune_reports(&self, before_ms: i64) -> Result<u64> {
        self.write(move |txn, _| {
            Ok(txn
                .prepare_cached("DELETE FROM reports WHERE created_ms < ?1")?
                .execute([before_ms])? as u64)
        })
        .await
    }

    async fn add_moment(&self, moment: MomentRow, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        self.write(move |txn, state| social::add_moment(txn, state, moment, &events))
            .await
    }

    async fn moment(&self, id: u64) -> Result<Option<MomentRow>> {
        self.read(move |c| social::moment(c, id)).await
    }

    async fn delete_moment(&self, id: u64) -> Result<bool> {
        self.write(move |txn, _| social::delete_moment(txn, id))
            .await
    }

    async fn timeline(
        &self,
        authors: &[u64],
        before_id: u64,
        limit: u32,
    ) -> Result<Vec<MomentRow>> {
        let authors = authors.to_vec();
        self.read(move |c| social::timeline(c, &authors, before_id, limit))
            .await
    }

    async fn set_like(
        &self,
        moment_id: u64,
        user_id: u64,
        on: bool,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<bool> {
        self.write(move |txn, state| {
            social::set_like(txn, state, moment_id, user_id, on, time_ms, event)
        })
        .await
    }

    async fn add_comment(
        &self,
        moment_id: u64,
        user_id: u64,
        text: &str,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<u64> {
        let text = text.to_owned();
        self.write(move |txn, state| {
            social::add_comment(txn, state, moment_id, user_id, &text, time_ms, event)
        })
        .await
    }

    async fn reactions(&self, moment_ids: &[u64]) -> Result<Vec<Reaction>> {
        let ids = moment_ids.to_vec();
        self.read(move |c| social::reactions(c, &ids)).await
    }

    async fn create_group(
        &self,
        group: GroupRow,
        members: Vec<(u64, i32)>,
        event: v1::GroupEntry,
        inbox: Vec<NewEvent>,
    ) -> Result<()> {
        self.write(move |txn, state| groups::create(txn, state, group, &members, event, &inbox))
            .await
    }

    async fn group(&self, group_id: u64) -> Result<Option<GroupRow>> {
        self.read(move |c| groups::group(c, group_id)).await
    }

    async fn group_members(&self, group_id: u64) -> Result<Vec<MemberRow>> {
        self.read(move |c| groups::members(c, group_id)).await
    }

    async fn group_member(&self, group_id: u64, user_id: u64) -> Result<Option<MemberRow>> {
        self.read(move |c| groups::member(c, group_id, user_id))
            .await
    }

    async fn user_groups(&self, user_id: u64) -> Result<Vec<(GroupRow, MemberRow)>> {
        self.read(move |c| groups::user_groups(c, user_id)).await
    }

    async fn change_group(&self, change: GroupChange) -> Result<u64> {
        self.write(move |txn, state| groups::change(txn, state, change))
            .await
    }

    async fn append_group_message(&self, group_id: u64, msg: NewMessage) -> Result<Appended> {
        self.write(move |txn, state| groups::append_message(txn, state, group_id, msg))
            .await
    }

    async fn group_log(
        &self,
        group_id: u64,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<v1::GroupEntry>, u64, bool)> {
        self.read(move |c| groups::log(c, group_id, after, limit))
            .await
    }

    async fn message_info(&self, msg_id: u64) -> Result<Option<MessageInfo>> {
        self.read(move |c| groups::message_info(c, msg_id)).await
    }

    async fn recall_message(
        &self,
        msg_id: u64,
        group: Option<(u64, v1::GroupEntry)>,
        inbox: Vec<NewEvent>,
    ) -> Result<(Option<u64>, Vec<u64>)> {
        self.write(move |txn, state| groups::recall(txn, state, msg_id, group, &inbox))
            .await
    }

    async fn set_group_read(&self, group_id: u64, user_id: u64, gseq: u64) -> Result<()> {
        self.write(move |txn, _| {
            txn.prepare_cached(
                "UPDATE group_members SET read_gseq = max(read_gseq, ?3) WHERE group_id = ?1 AND user_id = ?2",
            )?
            .execute(params![group_id as i64, user_id as i64, gseq as i64])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
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
}
