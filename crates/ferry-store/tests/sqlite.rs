//! Runs the store conformance suite against the embedded deployment's stores — SQLite,
//! and media in a local folder — plus SQLite-only checks (reopening the file, the WAL
//! starting over).
use std::future::Future;
use std::sync::Arc;

use ferry_proto::v1;
use ferry_store::prelude::*;
use ferry_store::{Durability, LocalMediaStore, NewMessage, SqliteStore};

fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(dir.path(), Durability::Fsync).unwrap())
}

/// Runs one conformance case on a store in a fresh folder (deleted afterwards).
async fn with_store<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    case(store(&dir)).await;
}

/// Runs one media conformance case on the embedded deployment's media store (a local
/// folder, deleted afterwards).
async fn with_media<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn MediaStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    case(Arc::new(LocalMediaStore::open(dir.path()).unwrap())).await;
}

ferry_store::conformance_tests!(with_store, with_media);

/// A 1:1 message with `text`, stored at time 1.
fn message(sender_id: u64, recipient_id: u64, client_msg_id: u64, text: String) -> NewMessage {
    NewMessage {
        sender_id,
        recipient_id,
        client_msg_id,
        time_ms: 1,
        message: v1::Message {
            text,
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let s = store(&dir);
        a = s.create_user("alice", "h").await.unwrap();
        b = s.create_user("bob", "h").await.unwrap();
        for i in 0..3 {
            s.append_message(message(a, b, i, String::new()))
                .await
                .unwrap();
        }
    }
    let s = store(&dir);
    assert_eq!(s.latest_seq(b).await.unwrap(), 3);
    let next = s
        .append_message(message(a, b, 99, String::new()))
        .await
        .unwrap();
    assert_eq!(next.recipient_seq, 4);
    assert_eq!(next.msg_id, 4);
}

/// Seqs come from the inbox's last row; a user whose every entry was pruned starts the
/// next store from the floor the prune kept, not from 1.
#[tokio::test]
async fn seqs_go_on_after_everything_was_pruned_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let msg = |a, b, i| message(a, b, i, String::new());
    let (a, b);
    {
        let s = store(&dir);
        a = s.create_user("alice", "h").await.unwrap();
        b = s.create_user("bob", "h").await.unwrap();
        for i in 0..3 {
            s.append_message(msg(a, b, i)).await.unwrap();
        }
        assert_eq!(s.prune(i64::MAX).await.unwrap(), 6);
    }
    let s = store(&dir);
    assert_eq!(s.latest_seq(b).await.unwrap(), 3);
    assert_eq!(s.inbox(a, 0, 10).await.unwrap().latest_seq, 3);
    let next = s.append_message(msg(a, b, 99)).await.unwrap();
    assert_eq!((next.sender_seq, next.recipient_seq), (4, 4));
}

/// Under a steady stream of commits the WAL must still start over now and then (the
/// writer restarts it once the checkpointer saw it long); before, it only grew — by ~1 GB
/// in a 10 s `ferry bench p2p` — because a passive checkpoint never catches up with a
/// writer that never pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_starts_over_while_writes_keep_coming() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStore::open(dir.path(), Durability::Os).unwrap());
    let mut users = Vec::new();
    for i in 0..400 {
        users.push(s.create_user(&format!("u{i}"), "h").await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..64u64 {
        let (s, stop, users) = (s.clone(), stop.clone(), users.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded: the test stops them, and 200 000 messages is far past the need.
            while !stop.load(Ordering::Relaxed) && n < 3_200 {
                n += 1;
                let k = (w * 7 + n * 13) as usize;
                let (from, to) = (users[k % users.len()], users[(k * 31 + 1) % users.len()]);
                s.append_message(message(from, to, w << 32 | n, String::new()))
                    .await
                    .unwrap();
            }
        }));
    }
    // Readers too, as a server has (syncs, friendship checks): a reader inside the WAL
    // is what keeps a passive checkpoint from ever letting it start over.
    let mut readers = Vec::new();
    for r in 0..4usize {
        let (s, stop, users) = (s.clone(), stop.clone(), users.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) && n < 2_000_000 {
                n += 1;
                s.inbox(users[(r * 101 + n) % users.len()], 0, 10)
                    .await
                    .unwrap();
                if n.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // Watch the WAL's length while the writes go on — mxFrame, the last valid frame,
    // from the wal-index header in `ferry.db-shm` (sqlite.org/walformat.html: a u32 in
    // native byte order at offset 16), read without taking part (a checkpoint from here
    // would itself let the WAL start over): it must fall back at least once.
    let shm = dir.path().join("ferry.db-shm");
    let wal_frames = || {
        let b = std::fs::read(&shm).unwrap_or_default();
        b.get(16..20)
            .map_or(0, |x| u32::from_ne_bytes(x.try_into().unwrap()))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut longest, mut restarted) = (0u32, false);
    while Instant::now() < deadline && !writers.iter().all(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let frames = wal_frames();
        if frames < longest / 2 && longest > 4_096 {
            restarted = true;
            break;
        }
        longest = longest.max(frames);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers.into_iter().chain(readers) {
        w.await.unwrap();
    }
    assert!(
        restarted,
        "the WAL never started over under steady writes (longest: {longest} frames)"
    );
}

/// The page size of `path`'s database, read from its header (bytes 16–17, big-endian;
/// 1 means 65 536: sqlite.org/fileformat.html).
fn page_size_of(path: &std::path::Path) -> u32 {
    let b = std::fs::read(path).unwrap();
    match u16::from_be_bytes([b[16], b[17]]) {
        1 => 65_536,
        n => u32::from(n),
    }
}

/// A new database is made with 1 KiB pages (a commit writes each page it changed whole);
/// one made before with SQLite's default 4 KiB keeps them and goes on working. A message
/// longer than a page (overflow pages) comes back whole from both, also after reopening.
#[tokio::test]
async fn new_databases_have_small_pages_and_older_ones_keep_theirs() {
    let long: String = (0..3_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let round_trip = |dir: std::path::PathBuf, long: String| async move {
        let b;
        {
            let s = SqliteStore::open(&dir, Durability::Fsync).unwrap();
            let a = s.create_user("alice", "h").await.unwrap();
            b = s.create_user("bob", "h").await.unwrap();
            for i in 0..50 {
                let text = if i == 25 {
                    long.clone()
                } else {
                    format!("m{i}")
                };
                s.append_message(message(a, b, i, text)).await.unwrap();
            }
        }
        let s = SqliteStore::open(&dir, Durability::Fsync).unwrap();
        let page = s.inbox(b, 0, 100).await.unwrap();
        let texts: Vec<String> = page
            .entries
            .iter()
            .map(|e| match &e.kind {
                Some(v1::entry::Kind::Message(m)) => m.text.clone(),
                other => panic!("not a message: {other:?}"),
            })
            .collect();
        assert_eq!(texts.len(), 50);
        assert_eq!(texts[25], long);
        assert_eq!(texts[49], "m49");
    };

    let new = tempfile::tempdir().unwrap();
    round_trip(new.path().to_path_buf(), long.clone()).await;
    assert_eq!(page_size_of(&new.path().join("ferry.db")), 1024);

    // A database as an earlier Ferry made it: 4 KiB pages, WAL mode.
    let old = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(old.path().join("ferry.db")).unwrap();
        c.pragma_update(None, "page_size", 4096).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
    }
    assert_eq!(page_size_of(&old.path().join("ferry.db")), 4096);
    round_trip(old.path().to_path_buf(), long).await;
    assert_eq!(page_size_of(&old.path().join("ferry.db")), 4096);
}

/// The bundled SQLite is built as .cargo/config.toml says: without
/// `SQLITE_ENABLE_MEMORY_MANAGEMENT`, which the `libsqlite3-sys` crate turns on and which
/// puts the page caches of all connections in one group under one process-wide mutex —
/// the writer and every reader then take the same lock at each page they touch
/// (docs/benchmarks.md, *One page-cache lock per connection*).
#[test]
fn sqlite_gives_each_connection_its_own_page_cache_lock() {
    // The store sets SQLite up (its page cache, `pcache.rs`) before the process's first
    // connection: open one before this test's own.
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path(), Durability::Os).unwrap());
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let options: Vec<String> = conn
        .prepare("PRAGMA compile_options")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        options.iter().any(|o| o.starts_with("THREADSAFE=")),
        "{options:?}"
    );
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "SQLite built with ENABLE_MEMORY_MANAGEMENT (LIBSQLITE3_FLAGS set outside \
         .cargo/config.toml?): {options:?}"
    );
}
