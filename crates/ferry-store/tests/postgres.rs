//! Runs the store conformance suite against the cluster's stores — PostgreSQL, and media
//! with its metadata in PostgreSQL — plus PostgreSQL-only checks (reconnecting, two nodes
//! writing at once, two nodes sharing the push queue), against the test process's own
//! throw-away PostgreSQL server (ferry-testkit starts it from the installed server
//! binaries). Each test gets a database `ferry_t_<random>`, dropped at the end even when
//! the test fails.

use std::sync::Arc;

use ferry_store::prelude::*;
use ferry_store::{NewMessage, PgConfig, PgMediaStore, PgStore};
use ferry_testkit::Db;

/// Runs `test` on a store in a fresh database, then drops the database.
async fn with_db<F, Fut>(test: F)
where
    F: FnOnce(Arc<dyn Store>, PgConfig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Dropped at the end, also when the test panics.
    let db = Db::create();
    let cfg = PgConfig::new(db.url());
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&cfg).await.unwrap());
    test(store, cfg.clone()).await;
}

/// Runs one conformance case on a store in a fresh database.
async fn with_store<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_db(|store, _| case(store)).await;
}

/// Runs one media conformance case on a PostgreSQL media store in a fresh database, its
/// bytes in a fresh folder.
async fn with_media<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn MediaStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_db(|_, cfg| async move {
        let dir = tempfile::tempdir().unwrap();
        let media = PgMediaStore::connect(&cfg, dir.path()).await.unwrap();
        case(Arc::new(media)).await;
    })
    .await;
}

ferry_store::conformance_tests!(with_store, with_media);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reconnect_and_migrations_are_idempotent() {
    with_db(|store, cfg| async move {
        let a = store.create_user("alice", "h").await.unwrap();
        let b = store.create_user("bob", "h").await.unwrap();
        for i in 1..=3 {
            store
                .append_message(NewMessage {
                    sender_id: a,
                    recipient_id: b,
                    client_msg_id: i,
                    time_ms: 1,
                    message: Default::default(),
                })
                .await
                .unwrap();
        }
        drop(store);
        // A second process (logic node) opening the same database: no migration runs
        // twice, the seqs go on.
        let (s1, s2) = tokio::join!(PgStore::connect(&cfg), PgStore::connect(&cfg));
        let (s1, s2) = (s1.unwrap(), s2.unwrap());
        assert_eq!(s2.latest_seq(b).await.unwrap(), 3);
        let next = s1
            .append_message(NewMessage {
                sender_id: a,
                recipient_id: b,
                client_msg_id: 99,
                time_ms: 1,
                message: Default::default(),
            })
            .await
            .unwrap();
        assert_eq!(next.recipient_seq, 4);
    })
    .await;
}

/// Two stores (two logic nodes) writing the same pair in both directions at once: seqs
/// stay gapless, no deadlock, retries of one message stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_write_concurrently() {
    with_db(|store, cfg| async move {
        let other: Arc<dyn Store> = Arc::new(PgStore::connect(&cfg).await.unwrap());
        let a = store.create_user("alice", "h").await.unwrap();
        let b = store.create_user("bob", "h").await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            for s in [store.clone(), other.clone()] {
                let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
                tasks.push(tokio::spawn(async move {
                    // Both nodes store the same (sender, client_msg_id): a retry that
                    // reached two logic nodes.
                    s.append_message(NewMessage {
                        sender_id: from,
                        recipient_id: to,
                        client_msg_id: i + 1,
                        time_ms: 1,
                        message: Default::default(),
                    })
                    .await
                    .unwrap()
                }));
            }
        }
        let mut originals = 0;
        for t in tasks {
            if !t.await.unwrap().duplicate {
                originals += 1;
            }
        }
        assert_eq!(originals, 200, "each message stored once");
        for user in [a, b] {
            let page = store.inbox(user, 0, 1000).await.unwrap();
            let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        }
    })
    .await;
}

fn msg(from: u64, to: u64, cmid: u64) -> NewMessage {
    NewMessage {
        sender_id: from,
        recipient_id: to,
        client_msg_id: cmid,
        time_ms: 1,
        message: Default::default(),
    }
}

/// Synckeys are written behind: within about a second on their own, at once on
/// `flush_synckeys`, and when the store is dropped — seen by another node's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synckeys_are_written_behind_and_flushed() {
    use std::time::{Duration, Instant};
    with_db(|store, cfg| async move {
        let other = PgStore::connect(&cfg).await.unwrap();
        let a = store.create_user("alice", "h").await.unwrap();
        // Many reports of one device: the last one is what gets written.
        for k in 1..=50 {
            store.set_synckey(a, "phone", k).await.unwrap();
        }
        assert_eq!(store.synckey(a, "phone").await.unwrap(), Some(50));
        let deadline = Instant::now() + Duration::from_secs(5);
        while other.synckey(a, "phone").await.unwrap() != Some(50) {
            assert!(Instant::now() < deadline, "synckey never written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // On request, at once.
        store.set_synckey(a, "laptop", 7).await.unwrap();
        store.flush_synckeys().await.unwrap();
        assert_eq!(other.synckey(a, "laptop").await.unwrap(), Some(7));
        // When the store goes away: a fresh store (its first periodic write is a whole
        // second away) dropped at once must have written it well before that.
        drop(store);
        let fresh = PgStore::connect(&cfg).await.unwrap();
        fresh.set_synckey(a, "tablet", 9).await.unwrap();
        drop(fresh);
        let deadline = Instant::now() + Duration::from_millis(500);
        while other.synckey(a, "tablet").await.unwrap() != Some(9) {
            assert!(
                Instant::now() < deadline,
                "synckey lost when the store was dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A database that cannot be reached answers `Unavailable` (retryable), quickly —
/// opening the store, and writes and reads on a store whose database went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable_fast() {
    use ferry_store::StoreError;
    use std::time::{Duration, Instant};
    let db = Db::create();
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let started = Instant::now();
    let err = PgStore::connect(&PgConfig::new(db.url_via(port))).await;
    assert!(
        matches!(err, Err(StoreError::Unavailable(_))),
        "{:?}",
        err.err()
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Through a proxy that then refuses everything and cuts what is open.
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", db.port()).parse().unwrap();
    let proxy = ferry_testkit::Proxy::start(upstream).await;
    let store = PgStore::connect(&PgConfig::new(db.url_via(proxy.addr.port())))
        .await
        .unwrap();
    let a = store.create_user("alice", "h").await.unwrap();
    store.append_message(msg(a, a, 1)).await.unwrap();
    proxy.refuse(true);
    proxy.cut();
    for cmid in 2..5 {
        let started = Instant::now();
        let sent = store.append_message(msg(a, a, cmid)).await;
        assert!(matches!(sent, Err(StoreError::Unavailable(_))), "{sent:?}");
        let read = store.latest_seq(a).await;
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    proxy.refuse(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.append_message(msg(a, a, 9)).await {
            Ok(r) => {
                assert_eq!(r.sender_seq, 2, "nothing of the refused writes was stored");
                break;
            }
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("not back: {e}"),
        }
    }
}

/// PostgreSQL restarting under traffic — every session terminated by the server (what a
/// restart does: SQLSTATE 57P01) and new connections refused for a while: writes fail
/// only as `Unavailable`, the writers get through again soon after, and nothing
/// acknowledged is lost or stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_traffic_is_retryable_and_loses_nothing() {
    use ferry_store::StoreError;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let db = Db::create();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", db.port()).parse().unwrap();
    let proxy = ferry_testkit::Proxy::start(upstream).await;
    let store: Arc<dyn Store> = Arc::new(
        PgStore::connect(&PgConfig::new(db.url_via(proxy.addr.port())))
            .await
            .unwrap(),
    );
    let to = store.create_user("inbox", "h").await.unwrap();
    let probe = store.create_user("probe", "h").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..8u64 {
        let from = store.create_user(&format!("s{s}"), "h").await.unwrap();
        let (store, stop) = (store.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // (acknowledged, refused); each message retried until stored, as a client does.
            let (mut acked, mut refused) = (0u64, 0u64);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut cmid = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                cmid += 1;
                loop {
                    match store.append_message(msg(from, to, cmid)).await {
                        Ok(_) => break,
                        Err(StoreError::Unavailable(_)) => {
                            refused += 1;
                            assert!(Instant::now() < deadline, "never back");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("not retryable: {e:?}"),
                    }
                }
                acked += 1;
            }
            (acked, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The restart: the server ends every session of the database, and refuses new ones
    // for a second and a half.
    proxy.refuse(true);
    ferry_testkit::pg::postgres()
        .execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            db.name()
        ))
        .unwrap();
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxy.refuse(false);
    let back = Instant::now();
    // Writes flow again within seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut probe_cmid = 0;
    loop {
        probe_cmid += 1;
        match store.append_message(msg(probe, probe, probe_cmid)).await {
            Ok(_) => break,
            Err(StoreError::Unavailable(_)) => {
                assert!(Instant::now() < deadline, "writes not back within 5 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("not retryable: {e:?}"),
        }
    }
    let recovered = back.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused) = (0, 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked += a;
        refused += r;
    }
    assert!(
        refused > 0,
        "the restart refused nothing: the test tested nothing"
    );
    // Every acknowledged message stored once, seqs gapless.
    let page = store.inbox(to, 0, acked as u32 + 100).await.unwrap();
    assert_eq!(page.entries.len() as u64, acked);
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=acked).collect::<Vec<_>>()
    );
    eprintln!("acked {acked}, refused {refused}, back {recovered:?} after the restart");
}

/// Two nodes share the push queue: a row whose lease ran out on one node is taken by the
/// other, never before. A queue row left without its target — a target deleted while an
/// enqueue that had read it was committing, which only PostgreSQL's concurrency allows —
/// is dropped by the next claim that meets it instead of staying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queue_is_shared_by_nodes_and_orphans_are_dropped() {
    use ferry_store::{PushEnqueue, PushTargetRow};

    with_db(|store, cfg| async move {
        let other = PgStore::connect(&cfg).await.unwrap();
        let a = store.create_user("alice", "h").await.unwrap();
        store
            .put_push_target(PushTargetRow {
                user_id: a,
                device_id: "d".into(),
                provider: "fcm".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let entry = PushEnqueue {
            user_id: a,
            device_id: "d".into(),
            seq: 1,
            summary: b"x".to_vec(),
            due_ms: 10,
            created_ms: 1,
        };
        assert_eq!(store.enqueue_pushes(vec![entry]).await.unwrap(), 1);
        let first = store.claim_pushes("A", 10, 100, 10).await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(other
            .claim_pushes("B", 109, 100, 10)
            .await
            .unwrap()
            .is_empty());
        let taken = other.claim_pushes("B", 110, 100, 10).await.unwrap();
        assert_eq!(taken.len(), 1);

        // An orphan, written behind the store's back.
        let (client, conn) = tokio_postgres::connect(&cfg.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .execute(
                "INSERT INTO push_queue (user_id, device_id, seq, count, summary, due_ms,
                   created_ms, attempts, version, lease_owner, lease_until)
                 VALUES ($1, 'gone', 1, 1, '\\x00', 0, 0, 0, 1, NULL, 0)",
                &[&(a as i64)],
            )
            .await
            .unwrap();
        assert_eq!(store.push_queue_stats(150).await.unwrap(), (2, 1, 1));
        assert!(store
            .claim_pushes("A", 150, 100, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.push_queue_stats(150).await.unwrap(), (1, 0, 1));
    })
    .await;
}
