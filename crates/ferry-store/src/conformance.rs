//! The store test suite: every [`Store`] implementation must pass these. Each function
//! takes a fresh, empty store.

use std::sync::Arc;

use ferry_proto::v1;

use crate::{NewMessage, Store, StoreError};

fn text(from: &str, to: &str, t: &str, cmid: u64) -> v1::Message {
    v1::Message {
        from: from.into(),
        to: to.into(),
        text: t.into(),
        client_msg_id: cmid,
        ..Default::default()
    }
}

fn new_msg(from: (u64, &str), to: (u64, &str), cmid: u64, t: &str) -> NewMessage {
    NewMessage {
        sender_id: from.0,
        recipient_id: to.0,
        client_msg_id: cmid,
        time_ms: 1_000 + cmid as i64,
        message: text(from.1, to.1, t, cmid),
    }
}

fn texts(page: &crate::InboxPage) -> Vec<String> {
    page.entries
        .iter()
        .map(|e| match &e.kind {
            Some(v1::entry::Kind::Message(m)) => m.text.clone(),
            None => String::new(),
        })
        .collect()
}

pub async fn users_and_sessions(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "hash-a").await.unwrap();
    let b = store.create_user("bob", "hash-b").await.unwrap();
    assert_ne!(a, b);
    assert!(matches!(
        store.create_user("alice", "x").await,
        Err(StoreError::UserExists)
    ));
    let u = store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!((u.id, u.password_hash.as_str()), (a, "hash-a"));
    assert_eq!(store.user_by_id(b).await.unwrap().unwrap().name, "bob");
    assert!(store.user_by_name("carol").await.unwrap().is_none());

    store.put_session([1; 32], a, "phone").await.unwrap();
    store.put_session([2; 32], a, "laptop").await.unwrap();
    let s = store.session([1; 32]).await.unwrap().unwrap();
    assert_eq!((s.user_id, s.device_id.as_str()), (a, "phone"));
    // A new token for the same device replaces the old one.
    store.put_session([3; 32], a, "phone").await.unwrap();
    assert!(store.session([1; 32]).await.unwrap().is_none());
    assert!(store.session([3; 32]).await.unwrap().is_some());
    assert!(store.delete_session([2; 32]).await.unwrap());
    assert!(!store.delete_session([2; 32]).await.unwrap());
    assert!(store.session([2; 32]).await.unwrap().is_none());
}

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
}
