//! Conformance: [`OpsStore`](crate::OpsStore) — groups listed, searched and dissolved,
//! users paged, system messages, limit overrides.

use std::sync::Arc;

use ferry_proto::v1;

use super::group_event;
use crate::prelude::*;
use crate::{GroupRow, StoreError, SystemMessage};

fn group(id: u64, name: &str, owner: u64) -> GroupRow {
    GroupRow {
        id,
        name: name.into(),
        announcement: String::new(),
        owner_id: owner,
        share_history: false,
        latest_gseq: 0,
        created_ms: 1,
    }
}

pub async fn groups_are_listed_searched_and_dissolved(store: Arc<dyn Store>) {
    use v1::group_event::Kind as K;
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let create = |id: u64, name: &'static str, members: Vec<(u64, i32)>| {
        let store = store.clone();
        async move {
            store
                .create_group(
                    group(id, name, a),
                    members,
                    group_event(K::Created, id, 1),
                    vec![],
                )
                .await
                .unwrap()
        }
    };
    create(10, "Rust Team", vec![(a, 2), (b, 0), (c, 0)]).await;
    create(20, "cooking", vec![(a, 2)]).await;
    create(30, "rusty bikes", vec![(a, 2), (b, 0)]).await;

    let all = store.list_groups("", 0, 10).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|g| (g.group.id, g.members, g.dissolved_ms))
            .collect::<Vec<_>>(),
        [(10, 3, 0), (20, 1, 0), (30, 2, 0)]
    );
    assert_eq!(all[0].group.name, "Rust Team");
    // Paging by id, and a search ignoring case.
    let page = store.list_groups("", 10, 1).await.unwrap();
    assert_eq!(page.iter().map(|g| g.group.id).collect::<Vec<_>>(), [20]);
    let rust = store.list_groups("RUST", 0, 10).await.unwrap();
    assert_eq!(
        rust.iter().map(|g| g.group.id).collect::<Vec<_>>(),
        [10, 30]
    );
    let rust = store.list_groups("rust", 10, 10).await.unwrap();
    assert_eq!(rust.iter().map(|g| g.group.id).collect::<Vec<_>>(), [30]);
    assert!(store.list_groups("%", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.group_summary(20).await.unwrap().unwrap().members, 1);
    assert!(store.group_summary(99).await.unwrap().is_none());

    // Dissolving: every member goes, each one's inbox learns it, the log ends with it.
    let (seq_a, seq_b, seq_c) = (
        store.latest_seq(a).await.unwrap(),
        store.latest_seq(b).await.unwrap(),
        store.latest_seq(c).await.unwrap(),
    );
    let ev = v1::GroupEvent {
        kind: K::Dissolved as i32,
        group_id: 10,
        by: "admin".into(),
        ..Default::default()
    };
    let entry = v1::Entry {
        kind: Some(v1::entry::Kind::Group(ev.clone())),
        time_ms: 50,
        ..Default::default()
    };
    let log_entry = v1::GroupEntry {
        kind: Some(v1::group_entry::Kind::Event(ev.clone())),
        time_ms: 50,
        ..Default::default()
    };
    let done = store
        .dissolve_group(10, log_entry.clone(), entry.clone())
        .await
        .unwrap();
    assert_eq!(done.gseq, 2);
    assert_eq!(
        done.members,
        [(a, seq_a + 1), (b, seq_b + 1), (c, seq_c + 1)]
    );
    assert!(store.group_members(10).await.unwrap().is_empty());
    assert!(store.group_member(10, b).await.unwrap().is_none());
    assert_eq!(
        store
            .user_groups(b)
            .await
            .unwrap()
            .iter()
            .map(|(g, _)| g.id)
            .collect::<Vec<_>>(),
        [30]
    );
    let page = store.inbox(c, seq_c, 10).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].kind, entry.kind);
    assert_eq!(
        (page.entries[0].seq, page.entries[0].time_ms),
        (seq_c + 1, 50)
    );
    let (log, latest, _) = store.group_log(10, 1, 10).await.unwrap();
    assert_eq!(latest, 2);
    assert_eq!(log[0].kind, log_entry.kind);
    let gone = store.group_summary(10).await.unwrap().unwrap();
    assert_eq!((gone.members, gone.dissolved_ms), (0, 50));
    // Once is all: again, or a group that never was, is not found.
    assert!(matches!(
        store
            .dissolve_group(10, log_entry.clone(), entry.clone())
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.dissolve_group(99, log_entry, entry).await,
        Err(StoreError::NotFound)
    ));
    // The other groups are untouched.
    assert_eq!(store.group_members(30).await.unwrap().len(), 2);
}

pub async fn users_page_by_id(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for n in ["u1", "u2", "u3", "u4", "u5"] {
        ids.push(store.create_user(n, "h").await.unwrap());
    }
    let first = store.users_after(0, 2).await.unwrap();
    assert_eq!(
        first,
        [(ids[0], "u1".to_string()), (ids[1], "u2".to_string())]
    );
    let mut seen = first.clone();
    let mut after = first.last().unwrap().0;
    for _ in 0..10 {
        let page = store.users_after(after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.0;
        seen.extend(page);
    }
    assert_eq!(seen.iter().map(|u| u.0).collect::<Vec<_>>(), ids);
}

pub async fn system_messages_land_in_their_recipients_inbox_only(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let msg = |to: &str| v1::Message {
        from: "system".into(),
        to: to.into(),
        r#type: v1::MsgType::System as i32,
        text: "maintenance at noon".into(),
        ..Default::default()
    };
    let before_b = store.latest_seq(b).await.unwrap();
    let done = store
        .append_system_messages(
            vec![
                SystemMessage {
                    user_id: a,
                    message: msg("alice"),
                },
                SystemMessage {
                    user_id: 987_654,
                    message: msg("ghost"),
                },
                SystemMessage {
                    user_id: b,
                    message: msg("bob"),
                },
            ],
            5_000,
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 3);
    assert!(done[1].is_none(), "an unknown user is skipped");
    let (ma, sa) = done[0].unwrap();
    let (mb, sb) = done[2].unwrap();
    assert_ne!(ma, mb, "one message each");
    assert_eq!(sb, before_b + 1);
    for (user, id, seq, to) in [(a, ma, sa, "alice"), (b, mb, sb, "bob")] {
        let page = store.inbox(user, seq - 1, 10).await.unwrap();
        assert_eq!(page.entries.len(), 1, "exactly one entry for {to}");
        let Some(v1::entry::Kind::Message(m)) = &page.entries[0].kind else {
            panic!("not a message: {:?}", page.entries[0]);
        };
        assert_eq!(
            (m.msg_id, m.from.as_str(), m.to.as_str(), m.time_ms),
            (id, "system", to, 5_000)
        );
        assert_eq!(m.r#type, v1::MsgType::System as i32);
        assert_eq!(page.entries[0].seq, seq);
        // No sender: the message is nobody's but the store's.
        let info = store.message_info(id).await.unwrap().unwrap();
        assert_eq!((info.sender_id, info.time_ms), (0, 5_000));
        assert_eq!(info.body.unwrap().to, to);
    }
    // A user's own messages still get their seqs after it, and recall works on it.
    let next = store
        .append_message(super::new_msg((a, "alice"), (b, "bob"), 1, "hi"))
        .await
        .unwrap();
    assert_eq!(next.recipient_seq, sb + 1);
    store.recall_message(mb, None, vec![]).await.unwrap();
    assert!(store
        .message_info(mb)
        .await
        .unwrap()
        .unwrap()
        .body
        .is_none());
    // A second broadcast stores new rows (no idempotency key clash on the null sender).
    let again = store
        .append_system_messages(
            vec![SystemMessage {
                user_id: a,
                message: msg("alice"),
            }],
            6_000,
        )
        .await
        .unwrap();
    assert!(again[0].is_some_and(|(id, _)| id != ma));
}

pub async fn limit_overrides_are_set_replaced_and_cleared(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    assert_eq!(store.limit_override(a).await.unwrap(), None);
    assert!(store.limit_overrides().await.unwrap().is_empty());
    store.set_limit_override(a, r#"{"x":1}"#).await.unwrap();
    store.set_limit_override(b, r#"{"y":2}"#).await.unwrap();
    store.set_limit_override(a, r#"{"x":3}"#).await.unwrap();
    assert_eq!(
        store.limit_override(a).await.unwrap().as_deref(),
        Some(r#"{"x":3}"#)
    );
    let mut all = store.limit_overrides().await.unwrap();
    all.sort();
    assert_eq!(
        all,
        [(a, r#"{"x":3}"#.to_string()), (b, r#"{"y":2}"#.to_string())]
    );
    assert!(store.delete_limit_override(a).await.unwrap());
    assert!(!store.delete_limit_override(a).await.unwrap());
    assert_eq!(store.limit_override(a).await.unwrap(), None);
    assert_eq!(store.limit_overrides().await.unwrap().len(), 1);
}
