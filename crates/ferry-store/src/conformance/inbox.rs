//! Conformance: [`InboxStore`](crate::InboxStore) — messages and events in inboxes,
//! paging, synckeys, pruning.

use std::sync::Arc;

use ferry_proto::v1;

use super::{friend_event, new_msg, texts};
use crate::prelude::*;
use crate::{Appended, NewEvent, StoreError};

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

/// Prune takes every user's old entries (more users than one of the SQLite store's
/// prune jobs walks) and never a newer one, also when the times of a user's entries
/// cross (concurrent writes): an old entry behind a newer one may wait.
pub async fn prune_takes_only_old_entries_of_every_user(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    // Bob's inbox: seq 1 at 1 000, 2 at 1 003, 3 at 1 001 (crossed), 4 at 1 005.
    for (cmid, t) in [(1u64, 1_000i64), (2, 1_003), (3, 1_001), (4, 1_005)] {
        let mut m = new_msg((a, "alice"), (b, "bob"), cmid, "m");
        m.time_ms = t;
        store.append_message(m).await.unwrap();
    }
    // Many users, each with one old and one new event.
    let mut many = Vec::new();
    for i in 0..600 {
        many.push(store.create_user(&format!("u{i}"), "h").await.unwrap());
    }
    let events = |t: i64| {
        many.iter()
            .map(|&u| NewEvent {
                user_id: u,
                entry: friend_event("alice", t),
            })
            .collect::<Vec<_>>()
    };
    store.append_events(events(900)).await.unwrap();
    store.append_events(events(2_000)).await.unwrap();

    let gone = store.prune(1_002).await.unwrap();
    let seqs = |page: crate::InboxPage| page.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    let left = seqs(store.inbox(b, 0, 100).await.unwrap());
    assert!(!left.contains(&1), "seq 1 (1 000) is old: {left:?}");
    assert!(
        left.contains(&2) && left.contains(&4),
        "newer ones stay: {left:?}"
    );
    for &u in &many {
        let page = store.inbox(u, 0, 10).await.unwrap();
        assert_eq!(
            seqs(page),
            [2],
            "user {u}: the old event went, the new one stayed"
        );
    }
    // Alice's and Bob's seq 1 (and maybe both their seq 3), and each user's old event.
    let counted = 2 + many.len() as u64;
    assert!(
        gone == counted || gone == counted + 2,
        "{gone} entries went"
    );

    store.prune(1_004).await.unwrap();
    let left = seqs(store.inbox(b, 0, 100).await.unwrap());
    assert_eq!(left, [4], "1 to 3 went, 4 (1 005) stays");
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

/// Several messages in one call: stored in the order given (per user, the earlier gets
/// the lower seq), one answer each in that order — a duplicate of a stored message and
/// of an earlier one in the same batch answered with the original, an unknown user
/// refusing its message only.
pub async fn append_messages_keeps_order_and_answers_each(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let (al, bo, ca) = ((a, "alice"), (b, "bob"), (c, "carol"));
    let first = store
        .append_message(new_msg(al, bo, 1, "one"))
        .await
        .unwrap();
    assert!(store.append_messages(Vec::new()).await.unwrap().is_empty());

    let out = store
        .append_messages(vec![
            new_msg(al, bo, 2, "two"),
            new_msg(bo, al, 1, "three"),
            new_msg(al, bo, 1, "one again"),
            new_msg(al, bo, 2, "two again"),
            new_msg(al, (999, "nobody"), 3, "lost"),
            new_msg(al, ca, 4, "four"),
            new_msg(al, al, 5, "note"),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 7);
    // Each message comes back with its answer, in the order given.
    let given: Vec<(u64, u64, &str)> = out
        .iter()
        .map(|(m, _)| (m.sender_id, m.client_msg_id, m.message.text.as_str()))
        .collect();
    assert_eq!(
        given,
        [
            (a, 2, "two"),
            (b, 1, "three"),
            (a, 1, "one again"),
            (a, 2, "two again"),
            (a, 3, "lost"),
            (a, 4, "four"),
            (a, 5, "note"),
        ]
    );
    let out: Vec<_> = out.into_iter().map(|(_, r)| r).collect();
    let ok = |i: usize| out[i].as_ref().unwrap().clone();
    let seqs = |i: usize| (ok(i).sender_seq, ok(i).recipient_seq);
    assert_eq!(seqs(0), (2, 2));
    assert_eq!(seqs(1), (3, 3));
    assert!(!ok(0).duplicate && !ok(1).duplicate);
    // A duplicate of a stored message: the original.
    assert_eq!(
        ok(2),
        Appended {
            duplicate: true,
            ..first.clone()
        }
    );
    // A duplicate of one earlier in the batch: that one's ids.
    assert!(ok(3).duplicate);
    assert_eq!(
        (ok(3).msg_id, seqs(3), ok(3).time_ms),
        (ok(0).msg_id, seqs(0), ok(0).time_ms)
    );
    assert!(matches!(out[4], Err(StoreError::UnknownUser(999))));
    assert_eq!(seqs(5), (4, 1));
    assert_eq!(seqs(6), (5, 5));
    // Ids follow the order given.
    let ids: Vec<u64> = [0, 1, 5, 6].iter().map(|&i| ok(i).msg_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(ids[0] > first.msg_id);

    let page = store.inbox(b, 0, 100).await.unwrap();
    assert_eq!(texts(&page), ["one", "two", "three"]);
    let page = store.inbox(a, 0, 100).await.unwrap();
    assert_eq!(texts(&page), ["one", "two", "three", "four", "note"]);
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    match &page.entries[1].kind {
        Some(v1::entry::Kind::Message(m)) => assert_eq!(m.msg_id, ok(0).msg_id),
        other => panic!("unexpected entry {other:?}"),
    }
    assert_eq!(texts(&store.inbox(c, 0, 100).await.unwrap()), ["four"]);
    // Retrying the whole batch changes nothing and answers the same ids.
    let again = store
        .append_messages(vec![new_msg(al, bo, 2, "two"), new_msg(al, ca, 4, "four")])
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>();
    assert_eq!(again[0].as_ref().unwrap().msg_id, ok(0).msg_id);
    assert_eq!(again[1].as_ref().unwrap().msg_id, ok(5).msg_id);
    assert!(again.iter().all(|r| r.as_ref().unwrap().duplicate));
    assert_eq!(store.latest_seq(a).await.unwrap(), 5);
}

/// Batches from many senders at once, to one recipient: every message stored once,
/// the recipient's seqs gapless, each sender's messages in the order it sent them.
pub async fn concurrent_batches_keep_each_senders_order(store: Arc<dyn Store>) {
    const SENDERS: u64 = 8;
    const BATCHES: u64 = 10;
    const PER_BATCH: u64 = 5;
    let to = store.create_user("inbox", "h").await.unwrap();
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let name = format!("s{s}");
        let from = store.create_user(&name, "h").await.unwrap();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let msgs = (0..PER_BATCH)
                    .map(|i| {
                        let n = b * PER_BATCH + i;
                        new_msg((from, &name), (to, "inbox"), n + 1, &format!("{s}:{n}"))
                    })
                    .collect();
                for (i, r) in store
                    .append_messages(msgs)
                    .await
                    .unwrap()
                    .iter()
                    .enumerate()
                {
                    let r = r.1.as_ref().unwrap();
                    assert!(!r.duplicate);
                    assert_eq!(r.sender_seq, b * PER_BATCH + i as u64 + 1);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = SENDERS * BATCHES * PER_BATCH;
    let page = store.inbox(to, 0, total as u32 + 10).await.unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let mut next = vec![0u64; SENDERS as usize];
    for t in texts(&page) {
        let (s, n) = t.split_once(':').unwrap();
        let (s, n): (usize, u64) = (s.parse().unwrap(), n.parse().unwrap());
        assert_eq!(n, next[s], "sender {s}'s messages out of order");
        next[s] += 1;
    }
}
