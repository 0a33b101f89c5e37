//! Runs the store conformance suite against the cluster's stores — PostgreSQL, and media
//! with its metadata in PostgreSQL — plus PostgreSQL-only checks (reconnecting, two nodes
//! writing at once), against PostgreSQL on 127.0.0.1:5432 (trust auth, user
//! `postgres` or `root`, database `test` present; `FERRY_TEST_PG` overrides the admin
//! connection string). Each test gets a throw-away database `ferry_t_<random>`, dropped
//! at the end even when the test fails.

use std::sync::Arc;

use ferry_store::prelude::*;
use ferry_store::{NewMessage, PgConfig, PgMediaStore, PgStore};
use futures_util::FutureExt;
use tokio_postgres::NoTls;

/// Connection strings to try for the admin connection, in order.
fn admin_urls() -> Vec<String> {
    if let Ok(url) = std::env::var("FERRY_TEST_PG") {
        return vec![url];
    }
    ["postgres", "root"]
        .iter()
        .map(|u| format!("host=127.0.0.1 port=5432 user={u} dbname=test connect_timeout=5"))
        .collect()
}

async fn admin() -> (tokio_postgres::Client, String) {
    let mut errors = Vec::new();
    for url in admin_urls() {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return (client, url);
            }
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    panic!("no PostgreSQL for the store tests: {errors:?}");
}

/// Runs `test` on a store in a fresh database, then drops the database.
async fn with_db<F, Fut>(test: F)
where
    F: FnOnce(Arc<dyn Store>, PgConfig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (admin, url) = admin().await;
    let name = format!("ferry_t_{:016x}", rand::random::<u64>());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = url.replace("dbname=test", &format!("dbname={name}"));
    let cfg = PgConfig::new(url);
    let outcome = std::panic::AssertUnwindSafe(async {
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&cfg).await.unwrap());
        test(store, cfg.clone()).await;
    })
    .catch_unwind()
    .await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
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
