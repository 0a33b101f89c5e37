//! The SQLite writer: one thread that takes every write waiting in its queue, runs them
//! in one transaction and commits once (group commit); at `Durability::Fsync` the syncer
//! thread that syncs the WAL for commits made while the previous sync was under way, and
//! answers their writes once they are on disk ([`Durable`]); and the checkpointer thread that
//! copies the WAL back into the database file — with the writer restarting the WAL from
//! its start after a long one was copied back. The writer also holds the idempotency keys
//! of the messages stored since its last merge of them into `key_runs` and
//! `message_keys` ([`KeyTail`]), which it merges a slice at a time while idle.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use tokio::sync::mpsc;

use super::inbox::newest_seq;
use super::{keyruns, walbuf, BUSY_TIMEOUT};
use crate::{Appended, Result, StoreError};

/// The hasher of the writer's maps keyed by user ids (see `WriterState::seqs`).
type IdHasher = foldhash::fast::RandomState;

/// Most writes one transaction takes.
const MAX_BATCH: usize = 1024;
/// Writes that may wait for the writer before senders are held back.
pub(super) const QUEUE: usize = 16 * 1024;

/// What the writer thread remembers between batches. Cleared whenever a batch fails,
/// so it can never disagree with the file.
#[derive(Default)]
pub(super) struct WriterState {
    /// Newest seq per user (read with [`newest_seq`] on first use). Keyed by user ids,
    /// which the server hands out: a fast hash (foldhash) instead of SipHash.
    pub(super) seqs: HashMap<u64, u64, IdHasher>,
    /// Next message id (loaded on first use: past `max(id)` and every id merged).
    next_msg_id: Option<u64>,
    /// The keys of the messages stored since the last merge (loaded on first use).
    tail: Option<KeyTail>,
    /// A stored message's body is encoded here (inbox.rs, `append_one`): one buffer for
    /// the writer's life instead of an allocation per message on the one serial thread.
    pub(super) body: Vec<u8>,
}

/// The `(sender, client_msg_id)` keys of the messages not yet merged: those with an id
/// above `message_keys_merged.upto`, which the writer keeps in memory and merges in
/// sorted passes now and then: a slice per idle batch ([`WriterState::merge_slice`]), or
/// all at once ([`WriterState::merge_keys`]).
///
/// A unique index on `messages (sender_id, client_msg_id)` gave every commit a page per
/// sender in it, written to the WAL and copied back by the checkpointer. Merged a few
/// thousand at a time, a sender's keys share their pages and a commit carries only its
/// messages'. A sender's keys above every key of theirs merged before (nearly all: the
/// SDK's ids grow within a device) go into `key_runs`, dozens to a row ([`keyruns`]),
/// instead of a B-tree insert each into `message_keys` (7.35 % of a closed loop's server
/// samples);
/// the others into `message_keys`. A look-up per message would have cost more than was
/// saved, hence `highest` (docs/benchmarks.md, *Idempotency keys merged in sorted
/// batches*, *Keys in runs*).
struct KeyTail {
    /// The newest message id whose key is merged.
    upto: u64,
    keys: HashMap<(u64, u64), u64>,
    /// Per sender seen since the writer started: the highest client id among its merged
    /// keys, as SQLite orders them (signed: an id of 2^63 or more is stored negative), or
    /// `i64::MIN` for none. A client id above it cannot be merged: no look-up. The SDK's
    /// ids grow within a device, so a sender's new messages are nearly always above it.
    /// Raised by every merge that writes a sender's keys.
    highest: HashMap<u64, i64, IdHasher>,
    /// The merge under way in slices, if any ([`WriterState::merge_slice`]).
    slices: Option<SlicedMerge>,
    /// When the last merge ended (or the keys were loaded).
    since: std::time::Instant,
}

/// A merge of the keys held when it began, a slice of [`SLICE`] keys (in key order) per
/// batch that finds the writer idle, so that no batch waits for a whole merge.
struct SlicedMerge {
    /// The newest message id it merges: every key in memory when it began is at or below.
    upto: u64,
    /// The keys, in key order (sender, client id, as SQLite orders them).
    keys: Vec<Key>,
    /// Where the next slice starts in `keys`.
    next: usize,
}

/// A key as merged: sender, client id as SQLite orders it, message id.
type Key = (i64, i64, u64);

/// A row of `key_runs` whose keys do not decode.
fn damaged_run(sender: u64, first_cmid: i64) -> StoreError {
    StoreError::Corrupt(format!("key run of sender {sender} at {first_cmid}"))
}

/// Puts keys in key order, one per `(sender, client id)`: the newest message's, when a
/// key was stored anew after its message was deleted while a merge in slices held the
/// old one.
fn sort_keys(keys: &mut Vec<Key>) {
    keys.sort_unstable_by_key(|k| (k.0, k.1, std::cmp::Reverse(k.2)));
    keys.dedup_by_key(|k| (k.0, k.1));
}

impl KeyTail {
    /// The keys of the messages above `upto`, read from their rows.
    fn load(txn: &Transaction) -> Result<KeyTail> {
        let upto: i64 = txn.query_row("SELECT upto FROM message_keys_merged", [], |r| r.get(0))?;
        let mut keys = HashMap::new();
        let mut stmt =
            txn.prepare_cached("SELECT sender_id, client_msg_id, id FROM messages WHERE id > ?1")?;
        let mut rows = stmt.query([upto])?;
        while let Some(r) = rows.next()? {
            keys.insert(
                (r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64),
                r.get::<_, i64>(2)? as u64,
            );
        }
        Ok(KeyTail {
            upto: upto as u64,
            keys,
            highest: HashMap::default(),
            slices: None,
            since: std::time::Instant::now(),
        })
    }

    /// The keys held of messages above `after`, in no order.
    fn above(&self, after: u64) -> impl Iterator<Item = Key> + '_ {
        self.keys
            .iter()
            .filter(move |(_, &id)| id > after)
            .map(|(&(sender, cmid), &id)| (sender as i64, cmid as i64, id))
    }

    /// The keys held of messages above `after`, in key order.
    fn sorted(&self, after: u64) -> Vec<Key> {
        let mut keys: Vec<Key> = self.above(after).collect();
        sort_keys(&mut keys);
        keys
    }

    /// The highest client id among `sender`'s merged keys (see `highest`).
    fn highest(&mut self, txn: &Transaction, sender: u64) -> Result<i64> {
        if let Some(&h) = self.highest.get(&sender) {
            return Ok(h);
        }
        let single: Option<i64> = txn
            .prepare_cached("SELECT max(client_msg_id) FROM message_keys WHERE sender_id = ?1")?
            .query_row([sender as i64], |r| r.get(0))?;
        // Runs never overlap: the last one holds the highest.
        let runs: Option<i64> = txn
            .prepare_cached(
                "SELECT last_cmid FROM key_runs WHERE sender_id = ?1
                 ORDER BY first_cmid DESC LIMIT 1",
            )?
            .query_row([sender as i64], |r| r.get(0))
            .optional()?;
        let h = single.unwrap_or(i64::MIN).max(runs.unwrap_or(i64::MIN));
        self.highest.insert(sender, h);
        Ok(h)
    }

    /// Writes `keys` (in key order) into the file: each sender's keys above their
    /// highest merged client id as runs into `key_runs`, the rest one by one into
    /// `message_keys`. Raises the senders' highest merged ids.
    fn write(&mut self, txn: &Transaction, keys: &[Key]) -> Result<()> {
        let mut single = txn.prepare_cached(
            // OR REPLACE: a key already there names a message deleted since (every
            // insert is checked first); failing would fail every batch from now on.
            "INSERT OR REPLACE INTO message_keys (sender_id, client_msg_id, id)
             VALUES (?1, ?2, ?3)",
        )?;
        // OR IGNORE: no run of the sender begins at or above its highest merged client id
        // (never expected to meet one); failing would fail every batch from now on.
        let mut run = txn.prepare_cached(
            "INSERT OR IGNORE INTO key_runs (sender_id, first_cmid, last_cmid, first_id, max_id, n, rest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut ranged: Vec<(i64, u64)> = Vec::new();
        for one in keys.chunk_by(|a, b| a.0 == b.0) {
            let sender = one[0].0;
            let highest = self.highest(txn, sender as u64)?;
            let above = one.partition_point(|k| k.1 <= highest);
            for &(_, cmid, id) in &one[..above] {
                single.execute(params![sender, cmid, id as i64])?;
            }
            ranged.clear();
            ranged.extend(one[above..].iter().map(|k| (k.1, k.2)));
            for r in keyruns::encode(&ranged) {
                run.execute(params![
                    sender,
                    r.first_cmid,
                    r.last_cmid,
                    r.first_id as i64,
                    r.max_id as i64,
                    r.n,
                    r.rest
                ])?;
            }
            let top = one[one.len() - 1].1;
            if top > highest {
                self.highest.insert(sender as u64, top);
            }
        }
        Ok(())
    }

    /// Ends a merge of the keys of every message up to `upto` (inside its transaction):
    /// records `upto` in the file and lets go of those keys. A key stored since has a
    /// higher id and stays; so does one stored anew after its message was deleted (it
    /// holds the new id).
    fn merged(&mut self, txn: &Transaction, upto: u64) -> Result<()> {
        txn.prepare_cached("UPDATE message_keys_merged SET upto = ?1")?
            .execute([upto as i64])?;
        self.keys.retain(|_, &mut id| id > upto);
        self.upto = upto;
        self.slices = None;
        self.since = std::time::Instant::now();
        Ok(())
    }
}

/// The newest message id stored or merged: `max(id)` of `messages`, or `upto` when the
/// newest messages were deleted after their keys were merged.
fn newest_msg_id(txn: &Transaction) -> Result<u64> {
    let newest: i64 = txn.query_row(
        "SELECT max(coalesce((SELECT max(id) FROM messages), 0),
                    (SELECT upto FROM message_keys_merged))",
        [],
        |r| r.get(0),
    )?;
    Ok(newest as u64)
}

/// Keys held in memory before a batch that finds the writer idle begins to merge them in
/// slices, when they gathered slowly ([`WriterState::merge_due`]).
const MERGE_IDLE: usize = 2048;
/// Keys a batch that finds the writer idle merges (≈ 0.5 ms): a merge of all 2 048 at once
/// held the writer for 4.4 ms on average, and every write that arrived meanwhile waited
/// (docs/benchmarks.md, *Idempotency keys merged in slices*). Cut in key order, a slice
/// takes a few senders' keys whole, so they still share their pages.
const SLICE: usize = 256;
/// Keys that gathered faster than this many a second are merged whole, once
/// [`MERGE_ALWAYS`] are held: the writer is busy anyway, a slice costs more a key, and the
/// more keys a merge holds the longer a sender's runs (8 192 / 400 ≈ 20 keys a row for a
/// closed loop's 400 senders, against 5 from 2 048): 3.7 % less server CPU a message in
/// that loop, side by side (docs/benchmarks.md, *Keys in runs*).
const SLICE_BELOW_PER_SEC: f64 = 20_000.0;
/// Keys held in memory before the next batch merges them, idle or not. Bounds the memory
/// they take and what a restart reads back from `messages`.
const MERGE_ALWAYS: usize = 8192;

impl WriterState {
    pub(super) fn next_seq(&mut self, txn: &Transaction, user: u64) -> Result<u64> {
        let seq = match self.seqs.entry(user) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(newest_seq(txn, user)?),
        };
        *seq += 1;
        Ok(*seq)
    }

    pub(super) fn next_msg_id(&mut self, txn: &Transaction) -> Result<u64> {
        let id = match self.next_msg_id {
            Some(id) => id,
            None => {
                // Past every merged id too: a merged key names its id until its message
                // is deleted, and the tail is the messages above `upto`.
                newest_msg_id(txn)? + 1
            }
        };
        self.next_msg_id = Some(id + 1);
        Ok(id)
    }

    fn tail(&mut self, txn: &Transaction) -> Result<&mut KeyTail> {
        let tail = match self.tail.take() {
            Some(tail) => tail,
            None => KeyTail::load(txn)?,
        };
        Ok(self.tail.insert(tail))
    }

    /// The message `sender` stored as `client_msg_id`, answered as a duplicate: the exact
    /// idempotency check of every store of a message. `None` when there is none, or it
    /// was deleted since (its key may still be in memory): then it is stored anew.
    pub(super) fn stored_message(
        &mut self,
        txn: &Transaction,
        sender: u64,
        client_msg_id: u64,
    ) -> Result<Option<Appended>> {
        let Some(id) = self.stored_id(txn, sender, client_msg_id)? else {
            return Ok(None);
        };
        Ok(txn
            .prepare_cached(
                "SELECT sender_seq, recipient_seq, created_ms FROM messages WHERE id = ?1",
            )?
            .query_row([id as i64], |r| {
                Ok(Appended {
                    msg_id: id,
                    sender_seq: r.get::<_, i64>(0)? as u64,
                    recipient_seq: r.get::<_, i64>(1)? as u64,
                    time_ms: r.get(2)?,
                    duplicate: true,
                })
            })
            .optional()?)
    }

    /// The id of the message `sender` stored as `client_msg_id`, if any: the tail in
    /// memory, then (at or below the sender's highest merged id) one seek in
    /// `message_keys` (which holds a key stored anew after its message was deleted),
    /// then one in `key_runs`. The id may name a message deleted since.
    pub(super) fn stored_id(
        &mut self,
        txn: &Transaction,
        sender: u64,
        client_msg_id: u64,
    ) -> Result<Option<u64>> {
        let tail = self.tail(txn)?;
        if let Some(&id) = tail.keys.get(&(sender, client_msg_id)) {
            return Ok(Some(id));
        }
        let cmid = client_msg_id as i64;
        if cmid > tail.highest(txn, sender)? {
            return Ok(None);
        }
        let single = txn
            .prepare_cached(
                "SELECT id FROM message_keys WHERE sender_id = ?1 AND client_msg_id = ?2",
            )?
            .query_row(params![sender as i64, cmid], |r| r.get::<_, i64>(0))
            .optional()?;
        if let Some(id) = single {
            return Ok(Some(id as u64));
        }
        let run = txn
            .prepare_cached(
                // The one run that may hold it (no test of `last_cmid` here: SQLite
                // would go on through the sender's earlier runs when it fails).
                "SELECT first_cmid, first_id, rest FROM key_runs
                 WHERE sender_id = ?1 AND first_cmid <= ?2
                 ORDER BY first_cmid DESC LIMIT 1",
            )?
            .query_row(params![sender as i64, cmid], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .optional()?;
        let Some((first, first_id, rest)) = run else {
            return Ok(None);
        };
        keyruns::find(first, first_id as u64, &rest, cmid).ok_or_else(|| damaged_run(sender, first))
    }

    /// The ids of every message `sender` stored, merged or not (some may be deleted
    /// since), for the erasure of a user; and forgets the keys held in memory, which
    /// would otherwise be merged for a user who is gone.
    pub(super) fn sent_ids(&mut self, txn: &Transaction, sender: u64) -> Result<Vec<u64>> {
        let tail = self.tail(txn)?;
        let mut ids: Vec<u64> = tail
            .keys
            .iter()
            .filter(|((s, _), _)| *s == sender)
            .map(|(_, &id)| id)
            .collect();
        tail.keys.retain(|(s, _), _| *s != sender);
        if let Some(m) = tail.slices.as_mut() {
            // What a slice merged already is in the file, read below.
            let rest = m.keys.split_off(m.next);
            m.keys
                .extend(rest.into_iter().filter(|k| k.0 != sender as i64));
        }
        tail.highest.remove(&sender);
        let s = sender as i64;
        let mut single = txn.prepare_cached("SELECT id FROM message_keys WHERE sender_id = ?1")?;
        let mut rows = single.query([s])?;
        while let Some(r) = rows.next()? {
            ids.push(r.get::<_, i64>(0)? as u64);
        }
        let mut runs = txn.prepare_cached(
            "SELECT first_cmid, first_id, rest FROM key_runs WHERE sender_id = ?1",
        )?;
        let mut rows = runs.query([s])?;
        while let Some(r) = rows.next()? {
            let first: i64 = r.get(0)?;
            let keys = keyruns::keys(first, r.get::<_, i64>(1)? as u64, &r.get::<_, Vec<u8>>(2)?)
                .ok_or_else(|| damaged_run(sender, first))?;
            ids.extend(keys.into_iter().map(|k| k.1));
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Records the key of a message just inserted into `messages` (every insert calls
    /// this, after [`stored_id`](Self::stored_id) found no other). Loads the keys first,
    /// so that a run of inserts that never asks (system messages) is merged all the same.
    pub(super) fn stored(
        &mut self,
        txn: &Transaction,
        sender: u64,
        client_msg_id: u64,
        msg_id: u64,
    ) -> Result<()> {
        self.tail(txn)?.keys.insert((sender, client_msg_id), msg_id);
        Ok(())
    }

    /// What the next batch merges: a slice when it finds the writer `idle` and the keys
    /// gathered slowly (or a merge in slices is under way), and all of them once they are
    /// many, whatever the queue.
    fn merge_due(&self, idle: bool) -> Option<Merge> {
        let tail = self.tail.as_ref()?;
        let held = tail.keys.len();
        if held >= MERGE_ALWAYS {
            Some(Merge::All)
        } else if !idle {
            None
        } else if tail.slices.is_some() {
            Some(Merge::Slice)
        } else if held < MERGE_IDLE {
            None
        } else if (held as f64) < tail.since.elapsed().as_secs_f64() * SLICE_BELOW_PER_SEC {
            Some(Merge::Slice)
        } else {
            // Gathered fast: merged whole once `MERGE_ALWAYS` are held.
            None
        }
    }

    /// Merges the next [`SLICE`] keys of the merge under way (beginning one with every key
    /// in memory if none is), inside the batch's transaction. A message deleted before
    /// its key was merged leaves the key behind, as one deleted after (look-ups read the
    /// message). The last slice moves `upto` and lets go of the keys it merged.
    fn merge_slice(&mut self, txn: &Transaction) -> Result<()> {
        let tail = self.tail(txn)?;
        let mut merge = match tail.slices.take() {
            Some(m) => m,
            None => {
                let keys = tail.sorted(tail.upto);
                SlicedMerge {
                    upto: keys.iter().map(|k| k.2).max().unwrap_or(tail.upto),
                    keys,
                    next: 0,
                }
            }
        };
        let end = (merge.next + SLICE).min(merge.keys.len());
        tail.write(txn, &merge.keys[merge.next..end])?;
        merge.next = end;
        if end < merge.keys.len() {
            tail.slices = Some(merge);
            return Ok(());
        }
        tail.merged(txn, merge.upto)
    }

    /// Merges every key held, in key order, inside the batch's transaction: what a merge
    /// in slices had left, and every key stored since.
    fn merge_keys(&mut self, txn: &Transaction) -> Result<()> {
        let tail = self.tail(txn)?;
        let keys = match tail.slices.take() {
            None => tail.sorted(tail.upto),
            Some(mut m) => {
                let mut keys = m.keys.split_off(m.next);
                // Sorted once, with what was left of the slices.
                keys.extend(tail.above(m.upto));
                sort_keys(&mut keys);
                keys
            }
        };
        tail.write(txn, &keys)?;
        tail.merged(txn, newest_msg_id(txn)?)
    }
}

/// A write: runs inside the batch transaction and returns what to tell its caller
/// once the batch has committed (or failed).
pub(super) type Job = Box<dyn FnOnce(&Transaction, &mut WriterState) -> Finish + Send>;
pub(super) struct Finish {
    /// The job failed in a way that may have left partial writes: the batch must roll back.
    pub(super) poisoned: bool,
    /// It failed because the disk is full.
    pub(super) full: bool,
    pub(super) reply: Box<dyn FnOnce(std::result::Result<(), BatchError>) + Send>,
}

/// Why a batch did not commit.
#[derive(Debug, Clone)]
pub(super) enum BatchError {
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

pub(super) fn store_full(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(e) => is_full(e),
        StoreError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

/// How often the checkpointer copies the WAL back into the database file while it is
/// shorter than a restart's length. A pass copies each page once however often it changed
/// since the last, and an inbox's newest page changes with every entry until it fills:
/// every 1 s instead of 250 ms copied a third fewer pages, took 2.6 % off the server's CPU
/// a message at ≈ 38 000 msgs/s (7 of 7 pairs run side by side) and gave a lower p99 at
/// 10 000 msgs/s (3 of 3) (docs/benchmarks.md, *Smaller messages in memory, cheaper
/// hashes, fewer checkpoint copies*). A WAL that reaches a restart's length sooner is
/// passed at once ([`CHECKPOINT_LOOK`]): waiting a whole second let a closed loop's WAL
/// grow to 160 MiB instead of 113, and each look-up of a page in it grows with it.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(1000);
/// How often the checkpointer looks at the WAL's length between passes.
const CHECKPOINT_LOOK: std::time::Duration = std::time::Duration::from_millis(250);
/// How long the WAL grows before a checkpointer pass has the writer restart it from its
/// start: 64 MiB, whatever the page size (65 536 frames of a new database's 1 KiB pages,
/// 16 384 of an older one's 4 KiB). Every restart holds all writes ([`restart_wal`]: a
/// copy of the last frames and a sync of the database file, 2–25 ms at 20 000 msgs/s);
/// fewer restarts gave a lower p90 at 5 000 msgs/s and p99 at 2 000/s, and more
/// closed-loop throughput (docs/benchmarks.md, *Fewer WAL restarts*; the smaller pages
/// came later, *Smaller pages*). The WAL file keeps its length between restarts
/// (`WAL_KEEP_BYTES`), so it reaches 64 MiB and more on a busy server.
const RESTART_AT_BYTES: u64 = 64 * 1024 * 1024;
/// Frames the writer may find left to copy when it restarts the WAL.
const CAUGHT_UP_FRAMES: u64 = 256;
/// How long the writer waits for readers to leave the WAL when restarting it, and how
/// often it looks.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(5);
const RESTART_POLL: std::time::Duration = std::time::Duration::from_micros(50);

/// What the writer and the checkpointer tell each other about the WAL.
#[derive(Default)]
pub(super) struct WalState {
    /// Raised by the checkpointer after a pass that left a long WAL entirely copied back:
    /// the writer restarts it ([`restart_wal`]).
    restart_due: AtomicBool,
    /// The WAL's length in bytes after the writer's last commit ([`walbuf::wal_end`]).
    length: AtomicU64,
}

/// Starts the thread that checkpoints the WAL on its own connection (PASSIVE: it never
/// blocks the writer or readers), and raises `restart_due` after a pass that left a long
/// WAL entirely copied back. Stops when the returned sender is dropped. `page_size`: the
/// database's (at least 512), which a WAL frame holds.
///
/// A passive checkpoint alone never lets the WAL start over under a steady stream of
/// commits: SQLite rewinds the WAL only when a write begins with every frame already
/// copied back, and the writer always commits more before the checkpointer catches up
/// (the WAL grew by ~1 GB in a 10 s `ferry bench p2p`, every commit writing to newly
/// allocated blocks). The writer therefore finishes the job itself between two batches
/// ([`restart_wal`]) — right after such a pass, when only the frames of a batch or two
/// are left to copy.
pub(super) fn spawn_checkpointer(
    path: &Path,
    page_size: u64,
    wal: Arc<WalState>,
) -> Result<std::sync::mpsc::Sender<()>> {
    let restart_at = RESTART_AT_BYTES / page_size;
    // The bytes of that many frames (each a 24-byte header and a page).
    let restart_at_bytes = restart_at * (page_size + 24);
    // Its copies reach the database file a run of consecutive pages per call
    // (`walbuf.rs`), not a page per call.
    let vfs =
        super::walbuf::checkpoint_vfs().map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs)?;
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
                if log < restart_at {
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
                if copied == log || log >= 4 * restart_at {
                    wal.restart_due.store(true, Ordering::Release);
                }
            };
            // Until the store is dropped (the sender goes) — nothing is ever sent.
            let mut last = std::time::Instant::now();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(CHECKPOINT_LOOK)
            {
                let long = wal.length.load(Ordering::Relaxed) >= restart_at_bytes;
                if long || last.elapsed() >= CHECKPOINT_EVERY {
                    checkpoint();
                    last = std::time::Instant::now();
                }
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
///
/// True when it restarted the WAL (copied everything back with no reader left in it).
fn restart_wal(conn: &Connection, wal: &WalState) -> bool {
    if !wal.restart_due.swap(false, Ordering::Acquire) {
        return false;
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
            busy == 0
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL restart failed");
            false
        }
    }
}

/// The busy handler of [`restart_wal`]: true = try again.
fn restart_busy(tries: i32) -> bool {
    std::thread::sleep(RESTART_POLL);
    RESTART_POLL * (tries.max(0) as u32 + 1) < RESTART_WAIT
}

/// How far the writer's commits are published (readers may see them) and how far they
/// are on disk. At `Durability::Fsync` a commit's WAL sync is done after SQLite publishes
/// it, while the writer goes on with the next batch ([`writer`]); a read that may have
/// seen a commit not yet on disk waits for it ([`Durable::settled`]), as every reply does.
pub(super) struct Durable {
    /// The newest batch a reader may see: raised before the batch commits.
    published: AtomicU64,
    /// The newest batch on disk, with every one before it.
    on_disk: AtomicU64,
    changed: tokio::sync::watch::Sender<u64>,
    /// Tests hold the syncs back while this is set.
    #[cfg(test)]
    pub(super) hold: AtomicBool,
    /// Batches the writer handed to the syncer (tests count them).
    #[cfg(test)]
    pub(super) handed_off: AtomicU64,
}

impl Durable {
    pub(super) fn new() -> Arc<Durable> {
        Arc::new(Durable {
            published: AtomicU64::new(0),
            on_disk: AtomicU64::new(0),
            changed: tokio::sync::watch::Sender::new(0),
            #[cfg(test)]
            hold: AtomicBool::new(false),
            #[cfg(test)]
            handed_off: AtomicU64::new(0),
        })
    }

    fn publishing(&self, batch: u64) {
        self.published.store(batch, Ordering::SeqCst);
    }

    fn synced(&self, batch: u64) {
        self.on_disk.store(batch, Ordering::SeqCst);
        self.changed.send_replace(batch);
    }

    /// Returns once every commit a read that has just ended could have seen is on disk:
    /// what a client is told was stored must survive a crash, or a client could hold a
    /// message (and a seq) that the store, restarted, never had.
    pub(super) async fn settled(&self) {
        // A read's snapshot is taken after its commits were published, so after
        // `published` was raised for them (SQLite's publishing is a full barrier).
        let published = self.published.load(Ordering::SeqCst);
        if self.on_disk.load(Ordering::SeqCst) >= published {
            return;
        }
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|&d| d >= published).await;
    }

    /// Syncs the WAL for an owed sync; a failed sync stops the process.
    fn sync(&self, owed: walbuf::OwedSync, seconds: &metrics::Histogram) {
        #[cfg(test)]
        while self.hold.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let started = std::time::Instant::now();
        if let Err(rc) = owed.sync() {
            // The commits are published and cannot be taken back; what the disk holds of
            // them is unknown (a failed fsync may have dropped the pages). Nothing of them
            // was acknowledged or answered to a reader: stop, and the next start recovers
            // what is on disk (PostgreSQL does the same).
            tracing::error!(code = rc, "store: syncing the WAL failed; stopping");
            std::process::abort();
        }
        seconds.record(started.elapsed().as_secs_f64());
    }

    /// Finishes one batch in place: its owed sync, then its replies.
    fn finish(
        &self,
        batch: u64,
        owed: Option<walbuf::OwedSync>,
        outcome: &std::result::Result<(), BatchError>,
        finished: impl Iterator<Item = Finish>,
        seconds: &metrics::Histogram,
    ) {
        if let Some(owed) = owed {
            self.sync(owed, seconds);
        }
        self.synced(batch);
        for f in finished {
            (f.reply)(outcome.clone());
        }
    }
}

/// The syncer thread and the writer's end of its queue: dropping it lets the syncer finish
/// what it was handed and waits for it.
struct SyncerThread {
    tx: Option<std::sync::mpsc::Sender<Unsynced>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SyncerThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Lets reads go on once the writer is gone ([`writer`]).
struct Released(Arc<Durable>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.synced(u64::MAX);
    }
}

/// A committed batch whose replies wait for its WAL sync, in the syncer's queue.
struct Unsynced {
    batch: u64,
    owed: Option<walbuf::OwedSync>,
    outcome: std::result::Result<(), BatchError>,
    finished: Vec<Finish>,
}

/// The syncer thread: syncs the WAL for the batches the writer committed while the last
/// sync was under way — one sync for all of them — and then replies to their writes, in
/// commit order.
fn syncer(
    rx: std::sync::mpsc::Receiver<Unsynced>,
    durable: &Durable,
    waiting: &AtomicU64,
    seconds: &metrics::Histogram,
) {
    let mut all = Vec::new();
    while let Ok(first) = rx.recv() {
        all.push(first);
        all.extend(rx.try_iter());
        // The newest owed sync covers every frame written before it.
        if let Some(owed) = all.iter().rev().find_map(|u| u.owed) {
            durable.sync(owed, seconds);
        }
        let last = all.last().map_or(0, |u| u.batch);
        durable.synced(last);
        for u in all.drain(..) {
            for f in u.finished {
                (f.reply)(u.outcome.clone());
            }
            waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

pub(super) fn writer(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    wal: &WalState,
    durable: Arc<Durable>,
    defer_syncs: bool,
) {
    let mut state = WriterState::default();
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut finished: Vec<Finish> = Vec::with_capacity(MAX_BATCH);
    let sync_seconds = metrics::histogram!("ferry_store_sync_seconds");
    // Batches handed to the syncer and not yet replied to.
    let waiting = Arc::new(AtomicU64::new(0));
    // Dropped before the connection (a parameter) however this function ends: every
    // owed sync is done before the connection's WAL file closes. Only where syncs are
    // left owed (`Durability::Fsync`).
    let to_syncer = if defer_syncs {
        let (tx, syncer_rx) = std::sync::mpsc::channel::<Unsynced>();
        let (durable, waiting, seconds) = (durable.clone(), waiting.clone(), sync_seconds.clone());
        match std::thread::Builder::new()
            .name("ferry-store-sync".into())
            .spawn(move || syncer(syncer_rx, &durable, &waiting, &seconds))
        {
            Ok(handle) => Some(SyncerThread {
                tx: Some(tx),
                handle: Some(handle),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "store: no syncer thread; every commit syncs in place");
                None
            }
        }
    } else {
        None
    };
    let defer_syncs = defer_syncs && to_syncer.is_some();
    let mut batch_no: u64 = 0;
    // However the writer ends (a panic too), reads stop waiting for it: they would
    // otherwise wait for ever.
    let _released = Released(durable.clone());
    // Registered once: a lookup by name at every batch costs the one serial thread.
    let batch_size = metrics::histogram!("ferry_store_batch_size");
    let batch_seconds = metrics::histogram!("ferry_store_batch_seconds");
    let commit_seconds = metrics::histogram!("ferry_store_commit_seconds");
    let queue = metrics::gauge!("ferry_store_write_queue");
    let merge_seconds = metrics::histogram!("ferry_store_key_merge_seconds");
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
        // Merge the keys held in memory in the batches that find nothing else waiting (a
        // slice each at low rates), or once they are many.
        let merge = state.merge_due(rx.is_empty());
        batch_no += 1;
        let outcome = run_batch(
            &mut conn,
            &mut state,
            &mut batch,
            &mut finished,
            merge.map(|m| (m, &merge_seconds)),
            &commit_seconds,
            (&durable, batch_no, defer_syncs),
        );
        let owed = walbuf::take_owed();
        batch_size.record(size as f64);
        batch_seconds.record(started.elapsed().as_secs_f64());
        queue.set(rx.len() as f64);
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
        // Sync here when nothing waits behind this batch (an idle writer loses nothing
        // by waiting for the disk, and spares the syncer's wake-up), else hand the sync
        // and the replies to the syncer and go on with the next batch while the disk
        // works. Once anything is with the syncer, later batches follow it there, so
        // replies keep their commit order.
        let in_place = waiting.load(Ordering::SeqCst) == 0 && (owed.is_none() || rx.is_empty());
        match (to_syncer.as_ref().and_then(|t| t.tx.as_ref()), in_place) {
            (Some(tx), false) => {
                waiting.fetch_add(1, Ordering::SeqCst);
                #[cfg(test)]
                durable.handed_off.fetch_add(1, Ordering::SeqCst);
                let unsynced = Unsynced {
                    batch: batch_no,
                    owed,
                    outcome,
                    finished: std::mem::replace(&mut finished, Vec::with_capacity(MAX_BATCH)),
                };
                if let Err(std::sync::mpsc::SendError(u)) = tx.send(unsynced) {
                    // The syncer is gone (it only ends when this sender is dropped).
                    waiting.fetch_sub(1, Ordering::SeqCst);
                    let finished = u.finished.into_iter();
                    durable.finish(u.batch, u.owed, &u.outcome, finished, &sync_seconds);
                }
            }
            _ => durable.finish(batch_no, owed, &outcome, finished.drain(..), &sync_seconds),
        }
        // The WAL's length for the checkpointer: where this batch's frames ended, or
        // nothing once the writer has just restarted it (no frame written since).
        let length = if restart_wal(&conn, wal) {
            0
        } else {
            walbuf::wal_end()
        };
        wal.length.store(length, Ordering::Relaxed);
    }
    drop(to_syncer);
    drop(conn);
    tracing::debug!("store writer stopped");
}

/// What a batch merges of the keys held in memory.
#[derive(Clone, Copy)]
enum Merge {
    All,
    Slice,
}

fn run_batch(
    conn: &mut Connection,
    state: &mut WriterState,
    batch: &mut Vec<Job>,
    finished: &mut Vec<Finish>,
    merge: Option<(Merge, &metrics::Histogram)>,
    commit_seconds: &metrics::Histogram,
    (durable, batch_no, defer_syncs): (&Durable, u64, bool),
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
    if let Some((merge, merge_seconds)) = merge {
        let merging = std::time::Instant::now();
        let merged = match merge {
            Merge::All => state.merge_keys(&txn),
            Merge::Slice => state.merge_slice(&txn),
        };
        if let Err(e) = merged {
            tracing::error!(error = %e, "store: merging message keys failed");
            return Err(if store_full(&e) {
                BatchError::Full
            } else {
                BatchError::Failed(e.to_string())
            });
        }
        merge_seconds.record(merging.elapsed().as_secs_f64());
    }
    let committing = std::time::Instant::now();
    // Raised just before the commit, not before the batch: a read that ends while the
    // batch runs has not seen it and need not wait for it.
    durable.publishing(batch_no);
    let committed = if defer_syncs {
        walbuf::deferring_syncs(|| txn.commit())
    } else {
        txn.commit()
    };
    let committed = committed.map_err(|e| {
        if !is_full(&e) {
            tracing::error!(error = %e, "store commit failed");
        }
        BatchError::of(&e)
    });
    // The commit writes the WAL (and syncs it, unless the sync is left owed: then
    // `ferry_store_sync_seconds` has it).
    commit_seconds.record(committing.elapsed().as_secs_f64());
    committed
}
