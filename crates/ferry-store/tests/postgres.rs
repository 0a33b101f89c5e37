//! Runs the store conformance suite against the cluster's stores — PostgreSQL, and media
//! with its metadata in PostgreSQL — plus PostgreSQL-only checks (reconnecting, two nodes
//! writing at once), against the test process's own throw-away PostgreSQL server
//! (ferry-testkit starts it from the installed server binaries). Each test gets a
//! database `ferry_t_<random>`, dropped at the end even when the test fails.

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
