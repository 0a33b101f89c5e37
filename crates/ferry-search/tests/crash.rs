//! Crash safety: a child process (this test binary again) indexes batches in a loop and
//! is SIGKILLed at a random moment; the parent reopens the index, resumes from the
//! cursor (replaying the last committed batch once more), and checks that every message
//! is there exactly once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_search::{Change, Conv, Doc, Index, Kind, Options, Query, Scope};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "SEARCH_CRASH_CHILD_DIR";
const BATCHES: u64 = 60;
const PER_BATCH: u64 = 100;
const TOTAL: u64 = BATCHES * PER_BATCH;

fn batch(k: u64) -> Vec<Change> {
    (0..PER_BATCH)
        .map(|i| {
            let msg_id = k * PER_BATCH + i;
            Change::Upsert(Doc {
                msg_id,
                conv: Conv::Direct { a: 1, b: 2 },
                sender: 1,
                time_ms: msg_id as i64,
                kind: Kind::Text,
                text: format!("crash test message u{msg_id} of batch {k}"),
            })
        })
        .collect()
}

fn cursor_batch(index: &Index) -> Option<u64> {
    index.cursor().map(|c| {
        c.strip_prefix("batch-")
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("unexpected cursor {c:?}"))
    })
}

/// The child: applies batches from after its cursor to the end, saying after each commit.
fn child(dir: &Path) {
    let index = Index::open(dir, Options::default()).expect("child open");
    let start = cursor_batch(&index).map_or(0, |k| k + 1);
    for k in start..BATCHES {
        index.apply(batch(k), &format!("batch-{k}")).expect("apply");
        println!("committed {k}");
    }
    println!("done");
}

#[test]
fn killed_mid_batch_then_resumed_without_loss_or_doubles() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();

    // Kill after a random number of commits, a random moment into the next batch.
    let kill_after: u64 = rng.random_range(1..BATCHES / 2);
    let delay = Duration::from_micros(rng.random_range(0..20_000));
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_mid_batch_then_resumed_without_loss_or_doubles",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut committed = None;
    while committed != Some(kill_after) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(k) = line.strip_prefix("committed ") {
                    committed = Some(k.parse::<u64>().unwrap());
                }
                assert_ne!(line, "done", "the child finished before it was killed");
            }
            Err(e) => {
                let _ = proc.kill();
                panic!("child said nothing in time ({e}); last commit {committed:?}");
            }
        }
    }
    std::thread::sleep(delay);
    proc.kill().unwrap();
    let status = proc.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    // What the child said after the moment we stopped listening.
    let reported = rx
        .try_iter()
        .filter_map(|l| l.strip_prefix("committed ").and_then(|k| k.parse().ok()))
        .max()
        .unwrap_or(kill_after);
    println!(
        "killed after {kill_after} ({delay:?} into batch {}), reported {reported}",
        kill_after + 1
    );

    // Reopen: the cursor is at least what the child reported committed.
    let index = Index::open(dir.path(), Options::default()).unwrap();
    let last = cursor_batch(&index).expect("a cursor after commits");
    assert!(
        last >= reported,
        "cursor batch {last} < reported {reported}"
    );
    assert!(
        last < BATCHES - 1,
        "the child got to the end: kill came too late"
    );
    let docs_then = index.stats().docs;
    assert_eq!(
        docs_then,
        (last + 1) * PER_BATCH,
        "exactly the committed batches"
    );

    // Replay the last committed batch, then the rest.
    for k in last..BATCHES {
        index.apply(batch(k), &format!("batch-{k}")).unwrap();
    }
    assert_eq!(
        index.cursor().as_deref(),
        Some(&*format!("batch-{}", BATCHES - 1))
    );
    assert_eq!(index.stats().docs, TOTAL);

    // Every message exactly once: list them all, page by page.
    let mut query = Query {
        scope: Scope {
            user: 1,
            groups: vec![],
        },
        limit: 100,
        ..Query::default()
    };
    let mut seen = vec![0u32; TOTAL as usize];
    for _ in 0..=TOTAL / 100 + 1 {
        assert!(Instant::now() < deadline + Duration::from_secs(30));
        let hits = index.search(&query).unwrap();
        assert_eq!(hits.total as u64, TOTAL);
        for h in &hits.hits {
            seen[h.msg_id as usize] += 1;
        }
        match hits.next {
            Some(n) => query.page = Some(n),
            None => break,
        }
    }
    let wrong: Vec<_> = seen
        .iter()
        .enumerate()
        .filter(|(_, &n)| n != 1)
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "messages not seen exactly once: {wrong:?}"
    );
    // And by their own token, around the crash point and at the ends.
    let around = (last * PER_BATCH).saturating_sub(150)..((last + 2) * PER_BATCH + 150).min(TOTAL);
    for id in around.chain([0, TOTAL - 1]) {
        query.page = None;
        query.text = format!("u{id}");
        let hits = index.search(&query).unwrap();
        assert_eq!(hits.total, 1, "u{id}");
        assert_eq!(hits.hits[0].msg_id, id);
    }
}
