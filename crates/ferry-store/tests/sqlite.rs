//! Runs the store suite against the embedded SQLite store, plus SQLite-only checks.
use std::sync::Arc;

use ferry_store::{conformance, Durability, NewMessage, SqliteStore, Store};

fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(dir.path(), Durability::Fsync).unwrap())
}

#[tokio::test]
async fn users_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    conformance::users_and_sessions(store(&dir)).await;
}

#[tokio::test]
async fn messages_and_inbox() {
    let dir = tempfile::tempdir().unwrap();
    conformance::messages_and_inbox(store(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_and_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    conformance::paging_and_concurrency(store(&dir)).await;
}

#[tokio::test]
async fn synckeys_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    conformance::synckeys_and_prune(store(&dir)).await;
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
            s.append_message(NewMessage {
                sender_id: a,
                recipient_id: b,
                client_msg_id: i,
                time_ms: 1,
                message: Default::default(),
            })
            .await
            .unwrap();
        }
    }
    let s = store(&dir);
    assert_eq!(s.latest_seq(b).await.unwrap(), 3);
    let next = s
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
    assert_eq!(next.msg_id, 4);
}

#[tokio::test]
async fn events_share_the_inbox_with_messages() {
    let dir = tempfile::tempdir().unwrap();
    conformance::events_share_the_inbox_with_messages(store(&dir)).await;
}

#[tokio::test]
async fn friendships_are_conditional_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    conformance::friendships_are_conditional_and_versioned(store(&dir)).await;
}

#[tokio::test]
async fn avatars_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    conformance::avatars_and_reports(store(&dir)).await;
}

#[tokio::test]
async fn moments_likes_and_comments() {
    let dir = tempfile::tempdir().unwrap();
    conformance::moments_likes_and_comments(store(&dir)).await;
}

#[tokio::test]
async fn groups_logs_members_and_recall() {
    let dir = tempfile::tempdir().unwrap();
    conformance::groups_logs_members_and_recall(store(&dir)).await;
}
