//! The store test suite: every [`Store`] implementation must pass these. Each function
//! takes a fresh, empty store.

use std::sync::Arc;

use ferry_proto::v1;

use crate::{
    Avatar, FriendChange, FriendRow, GroupChange, GroupRow, MomentRow, NewEvent, NewMessage,
    ReportInfo, Store, StoreError,
};

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
            _ => String::new(),
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
    // A password change replaces the hash and ends every session of the user only.
    store.put_session([4; 32], a, "laptop").await.unwrap();
    store.put_session([5; 32], b, "phone").await.unwrap();
    let mut ended = store.set_password(a, "hash-a2").await.unwrap();
    ended.sort();
    assert_eq!(ended, ["laptop", "phone"]);
    assert!(store.session([3; 32]).await.unwrap().is_none());
    assert!(store.session([4; 32]).await.unwrap().is_none());
    assert!(store.session([5; 32]).await.unwrap().is_some());
    let u = store.user_by_id(a).await.unwrap().unwrap();
    assert_eq!(u.password_hash, "hash-a2");
    assert!(matches!(
        store.set_password(999_999, "x").await,
        Err(StoreError::NotFound)
    ));
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

fn friend_event(peer: &str, time_ms: i64) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Friend(v1::FriendEvent {
            kind: v1::friend_event::Kind::RequestReceived as i32,
            peer: peer.into(),
            greeting: "hi".into(),
        })),
        time_ms,
        ..Default::default()
    }
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

pub async fn friendships_are_conditional_and_versioned(store: Arc<dyn Store>) {
    use v1::FriendState as S;
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let row = |user, peer, state: S| FriendRow {
        user_id: user,
        peer_id: peer,
        state: state as i32,
        greeting: "hello".into(),
        version: 0,
        updated_ms: 0,
    };
    assert!(store.friendship(a, b).await.unwrap().is_none());
    // a asks b: both rows and b's inbox event in one step.
    let seqs = store
        .change_friends(FriendChange {
            expect: vec![(a, b, S::None as i32), (b, a, S::None as i32)],
            rows: vec![row(a, b, S::RequestOut), row(b, a, S::RequestIn)],
            events: vec![NewEvent {
                user_id: b,
                entry: friend_event("alice", 7),
            }],
            time_ms: 7,
        })
        .await
        .unwrap();
    assert_eq!(seqs, [1]);
    let r = store.friendship(b, a).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.greeting.as_str(), r.updated_ms),
        (S::RequestIn as i32, "hello", 7)
    );
    // The same request again fails its expectation and writes nothing.
    let again = store
        .change_friends(FriendChange {
            expect: vec![(a, b, S::None as i32)],
            rows: vec![row(a, b, S::RequestOut)],
            events: vec![NewEvent {
                user_id: b,
                entry: friend_event("alice", 8),
            }],
            time_ms: 8,
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)));
    assert_eq!(store.latest_seq(b).await.unwrap(), 1);

    let full = store.friends(a, 0).await.unwrap();
    assert_eq!(full.rows.len(), 1);
    let v1_ = full.version;
    assert!(v1_ > 0);
    // b accepts: both become friends.
    store
        .change_friends(FriendChange {
            expect: vec![(b, a, S::RequestIn as i32)],
            rows: vec![row(a, b, S::Friend), row(b, a, S::Friend)],
            events: vec![],
            time_ms: 9,
        })
        .await
        .unwrap();
    let delta = store.friends(a, v1_).await.unwrap();
    assert_eq!(delta.rows.len(), 1);
    assert_eq!(delta.rows[0].state, S::Friend as i32);
    assert!(delta.version > v1_);
    assert!(store
        .friends(a, delta.version)
        .await
        .unwrap()
        .rows
        .is_empty());
    // Removal: delta lists show the tombstone, full lists do not.
    store
        .change_friends(FriendChange {
            expect: vec![],
            rows: vec![row(a, b, S::Removed), row(b, a, S::Removed)],
            events: vec![],
            time_ms: 10,
        })
        .await
        .unwrap();
    assert!(store.friends(a, 0).await.unwrap().rows.is_empty());
    let delta2 = store.friends(a, delta.version).await.unwrap();
    assert_eq!(delta2.rows[0].state, S::Removed as i32);
}

pub async fn avatars_and_reports(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    assert!(store.avatar(a).await.unwrap().is_none());
    let av = Avatar {
        etag: "\"e1\"".into(),
        content_type: "image/jpeg".into(),
        image: vec![1, 2, 3],
        thumb: vec![4],
        updated_ms: 5,
    };
    store.set_avatar(a, av.clone()).await.unwrap();
    assert_eq!(store.avatar(a).await.unwrap(), Some(av.clone()));
    let av2 = Avatar {
        etag: "\"e2\"".into(),
        ..av
    };
    store.set_avatar(a, av2.clone()).await.unwrap();
    assert_eq!(store.avatar(a).await.unwrap(), Some(av2));

    let info = |t: i64| ReportInfo {
        id: 0,
        user_id: a,
        device_id: "d".into(),
        client_version: "1.0".into(),
        kind: "crash".into(),
        file_name: "crash.txt".into(),
        length: 3,
        md5: "abc".into(),
        created_ms: t,
    };
    let r1 = store.add_report(info(100), b"one".to_vec()).await.unwrap();
    let r2 = store.add_report(info(200), b"two".to_vec()).await.unwrap();
    let list = store.reports(0, 10).await.unwrap();
    assert_eq!(list.iter().map(|r| r.id).collect::<Vec<_>>(), [r2, r1]);
    assert_eq!(store.reports(r2, 10).await.unwrap().len(), 1);
    let (got, data) = store.report(r1).await.unwrap().unwrap();
    assert_eq!((got.kind.as_str(), data.as_slice()), ("crash", &b"one"[..]));
    assert_eq!(store.prune_reports(150).await.unwrap(), 1);
    assert!(store.report(r1).await.unwrap().is_none());
    assert!(store.report(r2).await.unwrap().is_some());
}

pub async fn moments_likes_and_comments(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let m = |id: u64, author: u64| MomentRow {
        id,
        author_id: author,
        text: format!("moment {id}"),
        media_ids: vec!["m1".into(), "m2".into()],
        time_ms: id as i64,
    };
    let ev = |user| NewEvent {
        user_id: user,
        entry: friend_event("x", 1),
    };
    let seqs = store
        .add_moment(m(10, a), vec![ev(b), ev(c)])
        .await
        .unwrap();
    assert_eq!(seqs, [1, 1]);
    store.add_moment(m(20, b), vec![]).await.unwrap();
    store.add_moment(m(30, a), vec![]).await.unwrap();
    store.add_moment(m(40, c), vec![]).await.unwrap();
    assert_eq!(store.moment(10).await.unwrap(), Some(m(10, a)));

    let page = store.timeline(&[a, b], 0, 2).await.unwrap();
    assert_eq!(page.iter().map(|x| x.id).collect::<Vec<_>>(), [30, 20]);
    let page = store.timeline(&[a, b], 20, 2).await.unwrap();
    assert_eq!(page.iter().map(|x| x.id).collect::<Vec<_>>(), [10]);
    assert!(store.timeline(&[], 0, 10).await.unwrap().is_empty());

    assert!(store.set_like(10, b, true, 50, Some(ev(a))).await.unwrap());
    assert!(
        !store.set_like(10, b, true, 51, Some(ev(a))).await.unwrap(),
        "a like is once"
    );
    assert_eq!(
        store.latest_seq(a).await.unwrap(),
        1,
        "no event for a repeated like"
    );
    assert!(store.set_like(10, c, true, 52, None).await.unwrap());
    let cid = store
        .add_comment(10, c, "nice", 60, Some(ev(a)))
        .await
        .unwrap();
    assert!(cid > 0);
    assert!(matches!(
        store.add_comment(99, c, "x", 1, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_like(99, c, true, 1, None).await,
        Err(StoreError::NotFound)
    ));
    let r = store.reactions(&[10, 20]).await.unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].user_id, r[0].comment_id), (b, 0));
    assert_eq!(
        (r[2].user_id, r[2].comment_id, r[2].text.as_str()),
        (c, cid, "nice")
    );
    assert!(store.set_like(10, b, false, 70, None).await.unwrap());
    assert_eq!(store.reactions(&[10]).await.unwrap().len(), 2);

    assert!(store.delete_moment(10).await.unwrap());
    assert!(!store.delete_moment(10).await.unwrap());
    assert!(store.moment(10).await.unwrap().is_none());
    assert!(store.reactions(&[10]).await.unwrap().is_empty());
}

fn group_event(kind: v1::group_event::Kind, group: u64, time_ms: i64) -> v1::GroupEntry {
    v1::GroupEntry {
        kind: Some(v1::group_entry::Kind::Event(v1::GroupEvent {
            kind: kind as i32,
            group_id: group,
            users: vec!["x".into()],
            by: "alice".into(),
            text: String::new(),
        })),
        time_ms,
        ..Default::default()
    }
}

pub async fn groups_logs_members_and_recall(store: Arc<dyn Store>) {
    use v1::group_event::Kind as K;
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let g = GroupRow {
        id: 77,
        name: "team".into(),
        announcement: String::new(),
        owner_id: a,
        share_history: false,
        latest_gseq: 0,
        created_ms: 1,
    };
    let inbox_ev = |user| NewEvent {
        user_id: user,
        entry: friend_event("x", 1),
    };
    store
        .create_group(
            g.clone(),
            vec![(a, 2), (b, 0)],
            group_event(K::Created, 77, 1),
            vec![inbox_ev(b)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.latest_seq(b).await.unwrap(),
        1,
        "bob's inbox learned of the group"
    );
    let got = store.group(77).await.unwrap().unwrap();
    assert_eq!(
        (got.name.as_str(), got.latest_gseq, got.owner_id),
        ("team", 1, a)
    );
    let members = store.group_members(77).await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| (m.user_id, m.role))
            .collect::<Vec<_>>(),
        [(a, 2), (b, 0)]
    );
    assert!(store.group_member(77, c).await.unwrap().is_none());

    let gm = |sender: u64, cmid: u64, text: &str| NewMessage {
        sender_id: sender,
        recipient_id: 0,
        client_msg_id: cmid,
        time_ms: 10 + cmid as i64,
        message: v1::Message {
            text: text.into(),
            client_msg_id: cmid,
            ..Default::default()
        },
    };
    let m1 = store
        .append_group_message(77, gm(a, 1, "one"))
        .await
        .unwrap();
    assert_eq!(m1.recipient_seq, 2);
    let dup = store
        .append_group_message(77, gm(a, 1, "one"))
        .await
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!((dup.msg_id, dup.recipient_seq), (m1.msg_id, 2));
    let m2 = store
        .append_group_message(77, gm(b, 1, "two"))
        .await
        .unwrap();
    assert_eq!(m2.recipient_seq, 3);
    assert!(matches!(
        store.append_group_message(999, gm(a, 5, "x")).await,
        Err(StoreError::NotFound)
    ));

    // Carol joins later: she may read from the join event on.
    let joined = store
        .change_group(GroupChange {
            group_id: 77,
            add: vec![(c, 0)],
            name: Some("team 2".into()),
            event: group_event(K::Joined, 77, 20),
            inbox: vec![inbox_ev(c)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(joined, 4);
    assert_eq!(
        store
            .group_member(77, c)
            .await
            .unwrap()
            .unwrap()
            .joined_gseq,
        4
    );
    assert_eq!(store.group(77).await.unwrap().unwrap().name, "team 2");
    let groups = store.user_groups(c).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].0.id, groups[0].1.joined_gseq), (77, 4));

    let (log, latest, more) = store.group_log(77, 0, 10).await.unwrap();
    assert_eq!((latest, more, log.len()), (4, false, 4));
    assert_eq!(log.iter().map(|e| e.gseq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    match &log[1].kind {
        Some(v1::group_entry::Kind::Message(m)) => {
            assert_eq!(
                (m.text.as_str(), m.msg_id, m.group_id),
                ("one", m1.msg_id, 77)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(log[1].time_ms, 11);
    let (page, _, more) = store.group_log(77, 1, 2).await.unwrap();
    assert_eq!((page.len(), more), (2, true));

    // Recall: the content goes, the recall is logged.
    let info = store.message_info(m1.msg_id).await.unwrap().unwrap();
    assert_eq!(
        (info.sender_id, info.body.unwrap().text.as_str()),
        (a, "one")
    );
    let recall = v1::GroupEntry {
        kind: Some(v1::group_entry::Kind::Recall(v1::Recall {
            msg_id: m1.msg_id,
            group_id: 77,
            by: "alice".into(),
        })),
        time_ms: 30,
        ..Default::default()
    };
    let (gseq, seqs) = store
        .recall_message(m1.msg_id, Some((77, recall)), vec![])
        .await
        .unwrap();
    assert_eq!((gseq, seqs.len()), (Some(5), 0));
    assert!(store
        .message_info(m1.msg_id)
        .await
        .unwrap()
        .unwrap()
        .body
        .is_none());
    let (log, _, _) = store.group_log(77, 1, 10).await.unwrap();
    assert_eq!(
        log[0].kind, None,
        "the recalled message keeps its place, empty"
    );
    assert!(matches!(
        log[3].kind,
        Some(v1::group_entry::Kind::Recall(_))
    ));
    assert!(matches!(
        store.recall_message(m1.msg_id, None, vec![]).await,
        Err(StoreError::NotFound)
    ));

    // Removal and read cursors.
    store.set_group_read(77, b, 3).await.unwrap();
    store.set_group_read(77, b, 2).await.unwrap();
    assert_eq!(
        store.group_member(77, b).await.unwrap().unwrap().read_gseq,
        3
    );
    store
        .change_group(GroupChange {
            group_id: 77,
            remove: vec![b],
            roles: vec![(c, 1)],
            event: group_event(K::Removed, 77, 40),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.group_member(77, b).await.unwrap().is_none());
    assert_eq!(store.group_member(77, c).await.unwrap().unwrap().role, 1);
    assert!(store.user_groups(b).await.unwrap().is_empty());
}
