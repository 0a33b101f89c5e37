//! Groups end to end: fan-out to every member once and in one order, membership rules,
//! recall, offline members, mentions, receipts and typing.

use std::collections::HashMap;
use std::time::Duration;

use ferry_client::{Account, Client, Event};
use ferry_proto::v1::{self, group_entry, ErrorCode};
use ferry_testkit::*;
use tokio::sync::mpsc::Receiver;
/// Collects group messages (text) from `events` until `n` arrived for `group`.
async fn group_texts(events: &mut Receiver<Event>, group: u64, n: usize, secs: u64) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while got.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Group { group_id, entry })) if group_id == group => {
                if let Some(group_entry::Kind::Message(m)) = entry.kind {
                    got.push(m.text);
                }
            }
            Ok(Some(_)) => {}
            other => panic!(
                "timed out with {} of {n} group messages: {other:?}",
                got.len()
            ),
        }
    }
    got
}

/// Waits for a group entry matching `pred`.
async fn group_entry_where(
    events: &mut Receiver<Event>,
    pred: impl Fn(&v1::GroupEntry) -> bool,
) -> v1::GroupEntry {
    event_where(events, 10, |ev| match ev {
        Event::Group { entry, .. } if pred(&entry) => Some(entry),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_members_get_every_message_once_in_one_order() {
    let srv = TestServer::start().await;
    let names: Vec<String> = (0..200).map(|i| format!("m{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    srv.register(&refs).await;
    let addr = srv.addr();
    let mut clients: Vec<(Client, Receiver<Event>)> = Vec::new();
    for n in &names {
        clients.push(connect(&addr, n).await);
    }
    let owner = clients[0].0.account();
    let group = owner.create_group("big", &refs[1..], false).await.unwrap();
    assert_eq!(group.member_count, 200);

    // One message reaches every member once.
    clients[0]
        .0
        .send_group(group.group_id, "first", &[])
        .await
        .unwrap();
    for (_, ev) in clients.iter_mut() {
        assert_eq!(group_texts(ev, group.group_id, 1, 30).await, ["first"]);
    }
    // 100 messages from several senders, concurrently: every member sees the same order.
    let mut sends = Vec::new();
    for s in 0..4 {
        let c = clients[s * 50].0.clone();
        let gid = group.group_id;
        sends.push(tokio::spawn(async move {
            for i in 0..25 {
                c.send_group(gid, &format!("s{s}-{i}"), &[]).await.unwrap();
            }
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    let mut orders: HashMap<Vec<String>, usize> = HashMap::new();
    for (_, ev) in clients.iter_mut() {
        let got = group_texts(ev, group.group_id, 100, 60).await;
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 100, "each message once");
        *orders.entry(got).or_default() += 1;
    }
    assert_eq!(orders.len(), 1, "every member saw the same order");
    // Each sender's own messages are in its sending order.
    let order = orders.into_keys().next().unwrap();
    for s in 0..4 {
        let mine: Vec<_> = order
            .iter()
            .filter(|t| t.starts_with(&format!("s{s}-")))
            .cloned()
            .collect();
        assert_eq!(
            mine,
            (0..25).map(|i| format!("s{s}-{i}")).collect::<Vec<_>>()
        );
    }
    for (c, _) in clients {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_rules_history_and_offline_members() {
    let srv = TestServer::start().await;
    srv.register(&["owner", "ann", "ben", "cat", "dan"]).await;
    let addr = srv.addr();
    let (owner, mut owner_ev) = connect(&addr, "owner").await;
    let (ann, mut ann_ev) = connect(&addr, "ann").await;
    let g = owner
        .account()
        .create_group("club", &["ann", "ben"], false)
        .await
        .unwrap();
    let gid = g.group_id;

    owner.send_group(gid, "before cat", &[]).await.unwrap();
    // Ben is offline the whole time; Cat joins later and sees nothing from before.
    owner
        .account()
        .group_members(gid, &["cat"], true)
        .await
        .unwrap();
    let (cat, mut cat_ev) = connect(&addr, "cat").await;
    owner.send_group(gid, "after cat", &[]).await.unwrap();
    assert_eq!(group_texts(&mut cat_ev, gid, 1, 10).await, ["after cat"]);
    let log = Account::open(client_config(&addr, "cat"))
        .await
        .unwrap()
        .group_sync(gid, 0, 100)
        .await
        .unwrap();
    assert!(log.entries.iter().all(
        |e| !matches!(&e.kind, Some(group_entry::Kind::Message(m)) if m.text == "before cat")
    ));

    // A non-member can neither send nor read.
    let (dan, _dan_ev) = connect(&addr, "dan").await;
    assert_eq!(
        code(dan.send_group(gid, "let me in", &[]).await),
        ErrorCode::NotFound
    );
    let dan_acc = dan.account();
    assert_eq!(
        code(dan_acc.group_sync(gid, 0, 10).await),
        ErrorCode::NotFound
    );
    assert_eq!(code(dan_acc.group_info(gid).await), ErrorCode::NotFound);
    // Members cannot add or remove; only admins and the owner.
    assert_eq!(
        code(ann.account().group_members(gid, &["dan"], true).await),
        ErrorCode::PermissionDenied
    );

    // Ann is removed: she learns it, and stops receiving.
    owner
        .account()
        .group_members(gid, &["ann"], false)
        .await
        .unwrap();
    group_entry_where(&mut ann_ev, |e| matches!(&e.kind, Some(group_entry::Kind::Event(ev)) if ev.kind() == v1::group_event::Kind::Removed)).await;
    owner.send_group(gid, "without ann", &[]).await.unwrap();
    assert_eq!(group_texts(&mut cat_ev, gid, 1, 10).await, ["without ann"]);
    assert_eq!(
        code(ann.send_group(gid, "still here?", &[]).await),
        ErrorCode::NotFound
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(ev) = ann_ev.try_recv() {
        if let Event::Group { entry, .. } = ev {
            assert!(
                !matches!(entry.kind, Some(group_entry::Kind::Message(_))),
                "ann got {entry:?}"
            );
        }
    }

    // Ben comes back: everything since the group started, in order.
    let (ben, mut ben_ev) = connect(&addr, "ben").await;
    assert_eq!(
        group_texts(&mut ben_ev, gid, 3, 10).await,
        ["before cat", "after cat", "without ann"]
    );
    // Renames are in the log for everyone; info shows the new name.
    owner
        .account()
        .update_group(gid, "club 2", "welcome")
        .await
        .unwrap();
    let e = group_entry_where(&mut ben_ev, |e| matches!(&e.kind, Some(group_entry::Kind::Event(ev)) if ev.kind() == v1::group_event::Kind::Renamed)).await;
    assert!(e.gseq > 0);
    let info = ben.account().group_info(gid).await.unwrap();
    assert_eq!(
        (
            info.name.as_str(),
            info.announcement.as_str(),
            info.members.len()
        ),
        ("club 2", "welcome", 3)
    );
    let _ = owner_ev.try_recv();
    for c in [owner, ann, cat, dan, ben] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_removes_for_everyone_and_respects_the_window() {
    let srv = TestServer::with(|c| c.logic.recall_window_secs = 1).await;
    srv.register(&["ann", "ben", "cat"]).await;
    let addr = srv.addr();
    let (ann, _a) = connect(&addr, "ann").await;
    let (ben, mut ben_ev) = connect(&addr, "ben").await;
    let (cat, mut cat_ev) = connect(&addr, "cat").await;
    let gid = ann
        .account()
        .create_group("g", &["ben", "cat"], false)
        .await
        .unwrap()
        .group_id;
    let ack = ben.send_group(gid, "oops", &[]).await.unwrap();
    group_texts(&mut cat_ev, gid, 1, 10).await;
    // Only the sender (or an admin) recalls.
    assert_eq!(
        code(cat.recall(ack.msg_id).await),
        ErrorCode::PermissionDenied
    );
    ben.recall(ack.msg_id).await.unwrap();
    for ev in [&mut ben_ev, &mut cat_ev] {
        let e = group_entry_where(ev, |e| {
            matches!(&e.kind, Some(group_entry::Kind::Recall(_)))
        })
        .await;
        match e.kind {
            Some(group_entry::Kind::Recall(r)) => {
                assert_eq!((r.msg_id, r.by.as_str()), (ack.msg_id, "ben"))
            }
            _ => unreachable!(),
        }
    }
    // Gone from the store.
    assert!(srv
        .server
        .store
        .message_info(ack.msg_id)
        .await
        .unwrap()
        .unwrap()
        .body
        .is_none());
    let log = ben.account().group_sync(gid, 0, 100).await.unwrap();
    assert!(log
        .entries
        .iter()
        .all(|e| !matches!(&e.kind, Some(group_entry::Kind::Message(m)) if m.text == "oops")));
    assert_eq!(code(ben.recall(ack.msg_id).await), ErrorCode::NotFound);

    // After the window: refused. A 1:1 message too.
    let late = ben.send_group(gid, "keep", &[]).await.unwrap();
    let direct = ben.send_text("cat", "direct").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        code(ben.recall(late.msg_id).await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(ben.recall(direct.msg_id).await),
        ErrorCode::PermissionDenied
    );
    // The owner (an admin) may still remove a group message.
    ann.recall(late.msg_id).await.unwrap();
    for c in [ann, ben, cat] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_recall_mentions_receipts_and_typing() {
    let srv = TestServer::start().await;
    srv.register(&["ann", "ben"]).await;
    let addr = srv.addr();
    let (ann, mut ann_ev) = connect(&addr, "ann").await;
    let (ben, mut ben_ev) = connect(&addr, "ben").await;

    // 1:1 recall: both inboxes get the recall, the content is gone.
    let ack = ann.send_text("ben", "take this back").await.unwrap();
    recv_messages(&mut ben_ev, "ben", 1, 10).await;
    ann.recall(ack.msg_id).await.unwrap();
    let recalled = event_where(&mut ben_ev, 10, |ev| match ev {
        Event::Entry(v1::Entry {
            kind: Some(v1::entry::Kind::Recall(r)),
            ..
        }) => Some(r.msg_id),
        _ => None,
    })
    .await;
    assert_eq!(recalled, ack.msg_id);
    assert!(srv
        .server
        .store
        .message_info(ack.msg_id)
        .await
        .unwrap()
        .unwrap()
        .body
        .is_none());

    // Read receipt for a 1:1 message lands in the sender's inbox.
    let m = ann.send_text("ben", "read me").await.unwrap();
    ben.read(v1::ReadReq {
        peer: "ann".into(),
        msg_id: m.msg_id,
        ..Default::default()
    })
    .await
    .unwrap();
    let r = event_where(&mut ann_ev, 10, |ev| match ev {
        Event::Entry(v1::Entry {
            kind: Some(v1::entry::Kind::Read(r)),
            ..
        }) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!((r.reader.as_str(), r.msg_id), ("ben", m.msg_id));
    // A receipt for a message the peer did not send is refused.
    assert_eq!(
        code(
            ben.read(v1::ReadReq {
                peer: "ann".into(),
                msg_id: 999_999,
                ..Default::default()
            })
            .await
        ),
        ErrorCode::NotFound
    );

    // Typing: pushed, never stored.
    let before = srv.server.store.latest_seq(ben.user_id()).await.unwrap();
    ann.typing("ben").await.unwrap();
    let from = event_where(&mut ben_ev, 10, |ev| match ev {
        Event::Typing { from } => Some(from),
        _ => None,
    })
    .await;
    assert_eq!(from, "ann");
    assert_eq!(
        srv.server.store.latest_seq(ben.user_id()).await.unwrap(),
        before
    );

    // Mentions ride on the message; group read receipts list readers.
    let gid = ann
        .account()
        .create_group("pair", &["ben"], false)
        .await
        .unwrap()
        .group_id;
    let sent = ann.send_group(gid, "@ben look", &["ben"]).await.unwrap();
    let e = group_entry_where(&mut ben_ev, |e| {
        matches!(&e.kind, Some(group_entry::Kind::Message(_)))
    })
    .await;
    match e.kind {
        Some(group_entry::Kind::Message(m)) => assert_eq!(m.mentions, ["ben"]),
        _ => unreachable!(),
    }
    ben.read(v1::ReadReq {
        group_id: gid,
        gseq: sent.seq,
        ..Default::default()
    })
    .await
    .unwrap();
    let reads = ann.account().group_reads(gid, sent.seq).await.unwrap();
    assert_eq!(
        (reads.readers.as_slice(), reads.member_count),
        (&["ben".to_string()][..], 2)
    );
    ann.close().await;
    ben.close().await;
}
