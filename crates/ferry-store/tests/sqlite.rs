//! Runs the store conformance suite against the embedded deployment's stores — SQLite,
//! and media in a local folder — plus SQLite-only checks (reopening the file, the WAL
//! starting over).
use std::future::Future;
use std::sync::Arc;

use ferry_proto::v1;
use ferry_store::prelude::*;
use ferry_store::{Durability, LocalMediaStore, NewMessage, SqliteStore, UserDeletion};

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
            // Bounded: the test stops them once the WAL started over (the checkpointer's
            // first pass comes after 1 s), and 512 000 messages is far past the need.
            while !stop.load(Ordering::Relaxed) && n < 8_000 {
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

/// A pause after which the keys the writer holds count as gathered slowly, whatever
/// follows: 2 048 of them are merged in slices by the batches that find the writer idle
/// (writer.rs, `merge_due`), where keys gathered faster than 20 000 a second wait for 8 192.
async fn slowly() {
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
}

/// Keys merged, in `message_keys` and in the runs of `key_runs`.
const MERGED_KEYS: &str = "SELECT (SELECT count(*) FROM message_keys)
                                + (SELECT coalesce(sum(n), 0) FROM key_runs)";

/// The idempotency check holds wherever a message's key is: in the writer's memory,
/// merged (into a run, or into `message_keys` when below the sender's highest), or read
/// back from `messages` after a restart; and a deleted message's key no longer answers
/// (the same client id is then a new message), and goes when its messages are pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_answered_with_the_original_wherever_its_key_is() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Arc::new(SqliteStore::open(dir.path(), Durability::Os).unwrap());
    let msg = |a, b, i: u64| message(a, b, i, format!("m{i}"));
    // Even client ids: an odd one below the highest is new, and must still be looked up.
    let id = |i: u64| 10 + 2 * i;
    // (keys merged, the newest id merged), read from the file.
    let merged = || -> (i64, i64) {
        let c = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
        (
            c.query_row(MERGED_KEYS, [], |r| r.get(0)).unwrap(),
            c.query_row("SELECT upto FROM message_keys_merged", [], |r| r.get(0))
                .unwrap(),
        )
    };
    const SENT: u64 = 3000;
    let (a, b, first, last);
    {
        let s = open();
        a = s.create_user("alice", "h").await.unwrap();
        b = s.create_user("bob", "h").await.unwrap();
        // A client id of 2^63 or more (SQLite keeps it negative), merged with the rest:
        // still found when the sender's later ids are all below it as SQLite orders them.
        let huge = u64::MAX - 1;
        let big = s.append_message(msg(a, b, huge)).await.unwrap();
        let mut stored = Vec::new();
        // One at a time: every batch finds the writer idle, so the keys are merged once
        // 2 048 wait, and the last ones stay in memory. The pause makes them gather
        // slowly, however fast this machine: merged in slices (fast, they would wait for
        // 8 192).
        slowly().await;
        for i in 0..SENT {
            stored.push(s.append_message(msg(a, b, id(i))).await.unwrap());
        }
        assert!(stored.iter().all(|m| !m.duplicate));
        (first, last) = (stored[0].clone(), stored[SENT as usize - 1].clone());
        let (keys, upto) = merged();
        assert!(keys >= 2048 && keys < SENT as i64, "{keys} keys merged");
        let again = s.append_message(msg(a, b, huge)).await.unwrap();
        assert!(again.duplicate && again.msg_id == big.msg_id, "{again:?}");
        assert_eq!(upto, keys, "every id up to the newest merged");
        // The highest client id merged is still found (not taken for a new one).
        let highest: i64 = rusqlite::Connection::open(dir.path().join("ferry.db"))
            .unwrap()
            .query_row(
                "SELECT max(x) FROM (
                   SELECT max(client_msg_id) AS x FROM message_keys WHERE sender_id = ?1
                   UNION ALL SELECT max(last_cmid) FROM key_runs WHERE sender_id = ?1)",
                [a as i64],
                |r| r.get(0),
            )
            .unwrap();
        let again = s.append_message(msg(a, b, highest as u64)).await.unwrap();
        assert!(again.duplicate, "the highest merged, {highest}");

        for (i, original) in [(id(0), &first), (id(SENT - 1), &last)] {
            let again = s.append_message(msg(a, b, i)).await.unwrap();
            assert!(again.duplicate, "{i}");
            assert_eq!(
                (again.msg_id, again.sender_seq, again.recipient_seq),
                (original.msg_id, original.sender_seq, original.recipient_seq),
                "{i}"
            );
            assert_eq!(
                s.sent_message_id(a, i).await.unwrap(),
                Some(original.msg_id)
            );
        }
        assert_eq!(s.sent_message_id(b, id(0)).await.unwrap(), None);
        assert_eq!(s.sent_message_id(a, id(SENT)).await.unwrap(), None);
        // A client id below the highest merged one, never sent (another device's).
        assert_eq!(s.sent_message_id(a, id(5) + 1).await.unwrap(), None);
        let odd = s.append_message(msg(a, b, id(5) + 1)).await.unwrap();
        assert!(!odd.duplicate);
        assert_eq!(
            s.append_message(msg(a, b, id(5) + 1)).await.unwrap().msg_id,
            odd.msg_id
        );
        // The same client id from another sender is another message.
        assert!(!s.append_message(msg(b, a, id(0))).await.unwrap().duplicate);
    }

    // Reopened: the keys in memory are read back from the messages above `upto`.
    let s = open();
    for (i, original) in [(id(0), &first), (id(SENT - 1), &last)] {
        let again = s.append_message(msg(a, b, i)).await.unwrap();
        assert!(again.duplicate, "{i} after the restart");
        assert_eq!(again.msg_id, original.msg_id);
    }
    let next = s.append_message(msg(a, b, id(SENT))).await.unwrap();
    assert!(!next.duplicate);
    assert_eq!(
        next.msg_id,
        SENT + 4,
        "after the huge one, the odd one and b's message"
    );

    // The odd one, below the highest merged, was merged one by one; the rest in runs.
    let single: i64 = rusqlite::Connection::open(dir.path().join("ferry.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM message_keys WHERE sender_id = ?1",
            [a as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert!(single <= 1, "{single} keys of alice one by one");

    // Every message pruned: their keys go with them, merged or not.
    s.prune(i64::MAX).await.unwrap();
    assert_eq!(merged().0, 0, "no key left of a deleted message");
    for i in [id(0), id(SENT - 1)] {
        let anew = s.append_message(msg(a, b, i)).await.unwrap();
        assert!(!anew.duplicate, "{i} was deleted: stored again");
        assert!(anew.msg_id > SENT + 4, "ids are not handed out twice");
        let again = s.append_message(msg(a, b, i)).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.msg_id, anew.msg_id);
        assert_eq!(s.sent_message_id(a, i).await.unwrap(), Some(anew.msg_id));
    }
}

/// Keys merged a slice per idle batch: a retry finds its original before, during and
/// after the merge, and a message deleted while its keys were being merged is stored
/// anew when sent again, and found again as the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_merged_in_slices_are_found_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStore::open(dir.path(), Durability::Os).unwrap());
    let file = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
    // (keys merged, the newest id merged, keys in `message_keys` naming no message: a
    // deletion takes those with it; a run keeps its keys until its messages are pruned)
    let merged = || -> (i64, i64, i64) {
        let q = |sql: &str| file.query_row(sql, [], |r| r.get(0)).unwrap();
        (
            q(MERGED_KEYS),
            q("SELECT upto FROM message_keys_merged"),
            q("SELECT count(*) FROM message_keys k
               WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = k.id)"),
        )
    };
    let to = s.create_user("to", "h").await.unwrap();
    let mut senders = Vec::new();
    for i in 0..10 {
        senders.push(s.create_user(&format!("s{i}"), "h").await.unwrap());
    }
    // Round robin over the senders, so every slice holds several senders' keys.
    let msg = |i: u64, time_ms: i64| {
        let mut m = message(senders[i as usize % 10], to, 1000 + i, format!("m{i}"));
        m.time_ms = time_ms;
        m
    };
    // The first message (the first key in key order, so in the first slice) replies to
    // a message `QUOTED`: its quote is scrubbed once while the merge is under way.
    const QUOTED: u64 = 999_999;
    s.note_reply(QUOTED, senders[0], 1000).await.unwrap();
    // One at a time: every batch finds the writer idle.
    let mut first = Vec::new();
    for i in 0..2048 {
        let mut m = msg(i, 1);
        if i == 0 {
            m.message.quote = Some(Box::new(v1::Quote {
                msg_id: QUOTED,
                text: "quoted".into(),
                ..Default::default()
            }));
        }
        first.push(s.append_message(m).await.unwrap().msg_id);
    }
    assert_eq!(merged(), (0, 0, 0), "2 048 keys wait; none merged yet");
    // Keys that gathered slowly are merged in slices (fast, whole: writer.rs).
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    s.append_message(msg(5000, 1)).await.unwrap();
    let (keys, upto, _) = merged();
    assert!(
        keys > 0 && keys < 2048 && upto == 0,
        "one slice: {keys}, {upto}"
    );
    // Merged in a slice and still above `upto`: found once, not twice.
    assert_eq!(s.scrub_quotes(QUOTED).await.unwrap(), 1);
    // Each retry is a batch of its own and merges the next slice: the retries meet
    // their keys merged in a slice, still only in memory, and merged whole.
    for (i, &id) in first.iter().enumerate() {
        let again = s.append_message(msg(i as u64, 1)).await.unwrap();
        assert!(again.duplicate && again.msg_id == id, "{i}: {again:?}");
        if i == 0 {
            let (more, upto, _) = merged();
            assert!(more > keys && upto == 0, "the next slice: {more}");
        }
    }
    // The merge began after the batch that found 2 048 keys waiting had stored its own.
    assert_eq!(merged(), (2049, 2049, 0), "the merge done");
    let again = s.append_message(msg(5000, 1)).await.unwrap();
    assert!(again.duplicate && again.msg_id == 2049, "{again:?}");

    // A merge under way when its messages are deleted.
    let mut second = Vec::new();
    for i in 6000..8048 {
        second.push(i);
        s.append_message(msg(i, 2)).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    s.append_message(msg(9000, 3)).await.unwrap();
    let (keys, upto, _) = merged();
    assert!(
        keys > 2049 && upto == 2049,
        "a slice of the second merge: {keys}"
    );
    s.prune(3).await.unwrap();
    assert_eq!(merged().2, 0, "no key of a deleted message");
    let mut anew_ids = Vec::new();
    for &i in &second {
        let anew = s.append_message(msg(i, 3)).await.unwrap();
        assert!(!anew.duplicate, "{i} was deleted: stored again");
        let again = s.append_message(msg(i, 3)).await.unwrap();
        assert!(again.duplicate && again.msg_id == anew.msg_id, "{i}");
        anew_ids.push(anew.msg_id);
    }
    let (keys, _, stale) = merged();
    assert!(
        keys > 0 && stale == 0,
        "{keys} keys, {stale} naming no message"
    );
    // The merge under way wrote the keys it held of the deleted messages into runs
    // (found, then stored anew, as above); a prune drops every run whose messages are
    // all gone, and the new keys still answer.
    s.prune(3).await.unwrap();
    let stale_runs: i64 = file
        .query_row(
            "SELECT count(*) FROM key_runs WHERE max_id < (SELECT min(id) FROM messages)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stale_runs, 0, "runs of pruned messages go with them");
    for (&i, &id) in second.iter().zip(&anew_ids) {
        assert_eq!(
            s.sent_message_id(senders[i as usize % 10], 1000 + i)
                .await
                .unwrap(),
            Some(id)
        );
    }
}

/// A recall empties the quotes of the replies found by their keys: one merged (into a
/// run), one still in the writer's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_scrubs_the_quotes_of_replies_merged_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStore::open(dir.path(), Durability::Os).unwrap());
    let a = s.create_user("alice", "h").await.unwrap();
    let b = s.create_user("bob", "h").await.unwrap();
    let orig = s
        .append_message(message(a, b, 1, "secret".into()))
        .await
        .unwrap();
    let reply = |cmid| {
        let mut m = message(b, a, cmid, "what secret?".into());
        m.message.quote = Some(Box::new(v1::Quote {
            msg_id: orig.msg_id,
            text: "secret".into(),
            ..Default::default()
        }));
        m
    };
    s.note_reply(orig.msg_id, b, 2).await.unwrap();
    let merged = s.append_message(reply(2)).await.unwrap();
    slowly().await;
    for i in 0..2100 {
        s.append_message(message(a, b, 100 + i, String::new()))
            .await
            .unwrap();
    }
    s.note_reply(orig.msg_id, b, 3).await.unwrap();
    let recent = s.append_message(reply(3)).await.unwrap();
    let c = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
    let key = |cmid: i64| -> i64 {
        c.query_row(
            "SELECT (SELECT count(*) FROM message_keys WHERE sender_id = ?1 AND client_msg_id = ?2)
                  + (SELECT count(*) FROM key_runs
                     WHERE sender_id = ?1 AND first_cmid <= ?2 AND last_cmid >= ?2)",
            [b as i64, cmid],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!((key(2), key(3)), (1, 0), "one merged, one in memory");

    assert_eq!(s.scrub_quotes(orig.msg_id).await.unwrap(), 2);
    for m in [merged, recent] {
        let body = s
            .message_info(m.msg_id)
            .await
            .unwrap()
            .unwrap()
            .body
            .unwrap();
        let q = body.quote.unwrap();
        assert!(q.text.is_empty() && q.recalled, "{}", m.msg_id);
    }
}

/// Erasing a user deletes every message they sent wherever its key is (in runs, one by
/// one in `message_keys`, in the writer's memory) and their keys with them; another
/// sender's messages and keys stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_users_messages_go_wherever_their_keys_are() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStore::open(dir.path(), Durability::Os).unwrap());
    let a = s.create_user("alice", "h").await.unwrap();
    let b = s.create_user("bob", "h").await.unwrap();
    let file = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
    let q =
        |sql: &str, user: u64| -> i64 { file.query_row(sql, [user as i64], |r| r.get(0)).unwrap() };
    // Alice and bob by turns, with even client ids: merged into runs once 2 048 wait.
    s.append_message(message(b, a, 1, String::new()))
        .await
        .unwrap();
    slowly().await;
    for i in 0..1100u64 {
        s.append_message(message(a, b, 10 + 2 * i, String::new()))
            .await
            .unwrap();
        s.append_message(message(b, a, 10 + 2 * i, String::new()))
            .await
            .unwrap();
    }
    // Below her highest merged: merged one by one (with the next merge).
    s.append_message(message(a, b, 11, String::new()))
        .await
        .unwrap();
    let runs = "SELECT count(*) FROM key_runs WHERE sender_id = ?1";
    assert!(q(runs, a) > 0 && q(runs, b) > 0, "keys in runs");
    slowly().await;
    for i in 0..2100u64 {
        s.append_message(message(b, a, 100_000 + i, String::new()))
            .await
            .unwrap();
    }
    assert_eq!(
        q("SELECT count(*) FROM message_keys WHERE sender_id = ?1", a),
        1,
        "the one below the highest, one by one"
    );
    // Still in memory.
    s.append_message(message(a, b, 1_000_000, String::new()))
        .await
        .unwrap();
    let sent = "SELECT count(*) FROM messages WHERE sender_id = ?1";
    assert_eq!(q(sent, a), 1102);

    let done = s
        .delete_user(UserDeletion {
            user_id: a,
            name: "alice".into(),
            time_ms: 99,
        })
        .await
        .unwrap();
    assert_eq!(done.rows["messages"], 1102, "{:?}", done.rows);
    assert_eq!(q(sent, a), 0);
    assert_eq!(q(runs, a), 0);
    assert!(s.leftover_rows(a).await.unwrap().is_empty());
    assert_eq!(s.sent_message_id(a, 1_000_000).await.unwrap(), None);
    assert_eq!(s.sent_message_id(a, 10).await.unwrap(), None);
    // Bob's keep answering, and the next merge holds none of hers.
    assert_eq!(q(sent, b), 3201);
    for i in [0u64, 1099] {
        assert!(
            s.sent_message_id(b, 10 + 2 * i).await.unwrap().is_some(),
            "{i}"
        );
    }
    let c = s.create_user("carol", "h").await.unwrap();
    slowly().await;
    for i in 0..2100u64 {
        s.append_message(message(b, c, 200_000 + i, String::new()))
            .await
            .unwrap();
    }
    assert_eq!(q(runs, a), 0, "nothing of hers merged after");
    assert_eq!(
        q("SELECT count(*) FROM message_keys WHERE sender_id = ?1", a),
        0
    );
}
