//! Conformance: [`GroupStore`](crate::GroupStore) — groups, members, logs, recall in a
//! group, read marks.

use std::sync::Arc;

use ferry_proto::v1;

use super::{friend_event, group_event};
use crate::prelude::*;
use crate::{GroupChange, GroupRow, NewEvent, NewMessage, StoreError};

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

    // Bob's membership left its span (he joined at 1; the removal is gseq 6); carol,
    // still in, has none.
    assert_eq!(store.past_group_spans(b).await.unwrap(), [(77, 1, 6)]);
    assert!(store.past_group_spans(c).await.unwrap().is_empty());
    // He is added again and leaves again: a second span; the first is kept.
    let back = store
        .change_group(GroupChange {
            group_id: 77,
            add: vec![(b, 0)],
            event: group_event(K::Joined, 77, 50),
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .append_group_message(77, gm(c, 9, "while bob is back"))
        .await
        .unwrap();
    let left = store
        .change_group(GroupChange {
            group_id: 77,
            remove: vec![b],
            event: group_event(K::Left, 77, 60),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.past_group_spans(b).await.unwrap(),
        [(77, 1, 6), (77, back, left)]
    );
}
