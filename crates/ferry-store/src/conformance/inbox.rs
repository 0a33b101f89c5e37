//! Conformance: [`InboxStore`](crate::InboxStore) — messages and events in inboxes,
//! paging, synckeys, pruning.

use std::sync::Arc;

use ferry_proto::v1;

use super::{friend_event, new_msg, texts};
use crate::prelude::*;
use crate::{NewEvent, StoreError};

pub async fn messages_and_inbox(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let first = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "one"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!((first.sender_seq, first.recipient_seq), (1, 1));
    let second = store
        .append_message(new_msg((b, "bob"), (a, "alice"), 1, "two"))
        .await
        .unwrap();
    assert_eq!((second.sender_seq, second.recipient_seq), (2, 2));
    assert_ne!(first.msg_id, second.msg_id);

    // The same (sender, client_msg_id) again: nothing new, the original's ids.
    let again = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "one"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.msg_id, first.msg_id);
    assert_eq!(again.sender_seq, first.sender_seq);

    let page = store.inbox(b, 0, 100).await.unwrap();
    assert_eq!(texts(&page), ["one", "two"]);
    assert_eq!(page.latest_seq, 2);
    assert!(!page.more);
    match &page.entries[0].kind {
        Some(v1::entry::Kind::Message(m)) => {
            assert_eq!(m.msg_id, first.msg_id);
            assert_eq!(m.from, "alice");
        }
        other => panic!("unexpected entry {other:?}"),
    }
    let page = store.inbox(b, 1, 100).await.unwrap();
    assert_eq!(texts(&page), ["two"]);
    assert_eq!(store.latest_seq(a).await.unwrap(), 2);

    // Unknown recipient: an error and nothing written.
    let err = store
        .append_message(new_msg((a, "alice"), (999, "nobody"), 2, "x"))
        .await;
    assert!(matches!(err, Err(StoreError::UnknownUser(999))));
    assert_eq!(store.latest_seq(a).await.unwrap(), 2);

    // A message to oneself is one entry.
    let me = store
        .append_message(new_msg((a, "alice"), (a, "alice"), 3, "note"))
        .await
        .unwrap();
    assert_eq!(me.sender_seq, me.recipient_seq);
    assert_eq!(store.latest_seq(a).await.unwrap(), 3);

    // Retries take no ids: the next new message follows on directly.
    for cmid in [3, 1] {
        let dup = store
            .append_message(new_msg((a, "alice"), (a, "alice"), cmid, "again"))
            .await
            .unwrap();
        assert!(dup.duplicate);
    }
    let next = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 4, "four"))
        .await
        .unwrap();
    assert_eq!((next.sender_seq, next.recipient_seq), (4, 3));
    assert_eq!(next.msg_id, me.msg_id + 1);
    assert_eq!(store.latest_seq(a).await.unwrap(), 4);
    assert_eq!(store.latest_seq(b).await.unwrap(), 3);
}

pub async fn paging_and_concurrency(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..500u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_message(new_msg((a, "alice"), (b, "bob"), i, &i.to_string()))
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().recipient_seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());

    let mut after = 0;
    let mut seen = 0;
    loop {
        let page = store.inbox(b, after, 64).await.unwrap();
        for e in &page.entries {
            assert_eq!(e.seq, after + 1);
            after = e.seq;
            seen += 1;
        }
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, 500);
}

pub async fn synckeys_and_prune(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    assert_eq!(store.synckey(b, "phone").await.unwrap(), None);
    store.set_synckey(b, "phone", 5).await.unwrap();
    store.set_synckey(b, "phone", 7).await.unwrap();
    assert_eq!(store.synckey(b, "phone").await.unwrap(), Some(7));

    for i in 0..10u64 {
        store
            .append_message(new_msg((a, "alice"), (b, "bob"), i, "m"))
            .await
            .unwrap();
    }
    // time_ms is 1000 + i: prune the first four.
    let gone = store.prune(1_004).await.unwrap();
    assert_eq!(gone, 8, "four entries each in two inboxes");
    let page = store.inbox(b, 0, 100).await.unwrap();
    assert_eq!(page.entries.first().map(|e| e.seq), Some(5));
    assert_eq!(page.latest_seq, 10);
    assert_eq!(page.entries.len(), 6);

    // Pruning every entry keeps the seq: the next one is 11, never 1 again.
    store.prune(i64::MAX).await.unwrap();
    let page = store.inbox(b, 0, 100).await.unwrap();
    assert!(page.entries.is_empty());
    assert_eq!(page.latest_seq, 10);
    assert_eq!(store.latest_seq(b).await.unwrap(), 10);
    let next = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 10, "after"))
        .await
        .unwrap();
    assert_eq!(next.recipient_seq, 11);
}

pub async fn events_share_the_inbox_with_messages(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "one"))
        .await
        .unwrap();
    let seqs = store
        .append_events(vec![
            NewEvent {
                user_id: b,
                entry: friend_event("alice", 5_000),
            },
            NewEvent {
                user_id: a,
                entry: friend_event("bob", 5_001),
            },
        ])
        .await
        .unwrap();
    assert_eq!(seqs, [2, 2]);
    let page = store.inbox(b, 0, 10).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.latest_seq, 2);
    match &page.entries[1] {
        v1::Entry {
            seq: 2,
            kind: Some(v1::entry::Kind::Friend(f)),
            time_ms: 5_000,
        } => {
            assert_eq!((f.peer.as_str(), f.greeting.as_str()), ("alice", "hi"))
        }
        other => panic!("unexpected {other:?}"),
    }
    // An unknown user fails the whole append.
    let err = store
        .append_events(vec![
            NewEvent {
                user_id: b,
                entry: friend_event("x", 1),
            },
            NewEvent {
                user_id: 999,
                entry: friend_event("x", 1),
            },
        ])
        .await;
    assert!(matches!(err, Err(StoreError::UnknownUser(999))));
    assert_eq!(store.latest_seq(b).await.unwrap(), 2);

    // Ending all sessions of a user.
    store.put_session([1; 32], a, "p").await.unwrap();
    store.put_session([2; 32], a, "l").await.unwrap();
    store.put_session([3; 32], b, "p").await.unwrap();
    let mut gone = store.delete_user_sessions(a).await.unwrap();
    gone.sort();
    assert_eq!(gone, ["l", "p"]);
    assert!(store.session([1; 32]).await.unwrap().is_none());
    assert!(store.session([3; 32]).await.unwrap().is_some());
}
