//! Conformance: [`SearchStore`](crate::SearchStore) — the change feed of messages.

use std::sync::Arc;

use ferry_proto::v1;

use super::{group_event, new_msg};
use crate::prelude::*;
use crate::{GroupRow, NewMessage};

pub async fn search_feed_follows_every_change_of_a_message(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    assert_eq!(store.search_feed_bounds().await.unwrap(), (0, 0));
    assert_eq!(store.newest_message_id().await.unwrap(), 0);
    let m1 = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "first"))
        .await
        .unwrap();
    let m2 = store
        .append_message(new_msg((b, "bob"), (a, "alice"), 2, "second"))
        .await
        .unwrap();
    // A retried send stores nothing, so it feeds nothing.
    store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "first"))
        .await
        .unwrap();
    let g = GroupRow {
        id: 77,
        name: "team".into(),
        owner_id: a,
        created_ms: 1,
        ..Default::default()
    };
    store
        .create_group(
            g,
            vec![(a, 2), (b, 0)],
            group_event(v1::group_event::Kind::Created, 77, 1),
            vec![],
        )
        .await
        .unwrap();
    let in_group = store
        .append_group_message(
            77,
            NewMessage {
                sender_id: b,
                recipient_id: 0,
                client_msg_id: 3,
                time_ms: 5_000,
                message: v1::Message {
                    text: "to the team".into(),
                    client_msg_id: 3,
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    store.recall_message(m1.msg_id, None, vec![]).await.unwrap();
    assert_eq!(store.newest_message_id().await.unwrap(), in_group.msg_id);

    let inserts = store.feed_names_inserts();
    let feed = store.search_feed(0, 100).await.unwrap();
    let ids: Vec<u64> = feed.iter().map(|r| r.msg_id).collect();
    if inserts {
        assert_eq!(
            ids,
            [m1.msg_id, m2.msg_id, in_group.msg_id, m1.msg_id],
            "stored, stored, stored, recalled: {feed:?}"
        );
        assert_eq!(feed[0].at_ms, m1.time_ms);
    } else {
        // New messages are followed by id: the ids are in commit order.
        assert_eq!(ids, [m1.msg_id], "recalled: {feed:?}");
        assert!(m1.msg_id < m2.msg_id && m2.msg_id < in_group.msg_id);
    }
    let last = feed.len() - 1;
    assert!(feed.windows(2).all(|w| w[0].id < w[1].id), "{feed:?}");
    assert!(feed[last].at_ms >= in_group.time_ms, "{feed:?}");
    assert_eq!(
        store.search_feed_bounds().await.unwrap(),
        (feed[0].id, feed[last].id)
    );
    // Paging by the cursor.
    let rest = store.search_feed(feed[0].id, 100).await.unwrap();
    assert_eq!(rest, feed[1..]);
    assert_eq!(store.search_feed(0, 1).await.unwrap(), feed[..1]);

    // The messages as they are now.
    let got = store
        .messages_by_id(&[in_group.msg_id, m1.msg_id, m2.msg_id, m1.msg_id, 999_999])
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|m| m.msg_id).collect::<Vec<_>>(),
        [m1.msg_id, m2.msg_id, in_group.msg_id],
        "in id order, once each, the unknown one left out"
    );
    assert!(got[0].body.is_none(), "recalled");
    assert_eq!(got[1].body.as_ref().unwrap().text, "second");
    assert_eq!((got[1].sender_id, got[1].time_ms), (b, m2.time_ms));
    let g_msg = &got[2];
    assert_eq!(g_msg.recipient_seq, in_group.recipient_seq, "the gseq");
    assert_eq!(g_msg.body.as_ref().unwrap().group_id, 77);
    let after = store.messages_after(0, 2).await.unwrap();
    assert_eq!(after, got[..2]);
    let after = store.messages_after(m2.msg_id, 10).await.unwrap();
    assert_eq!(after, got[2..]);

    // Pruned by age: the rows stored at their (old) send time go, the recall stays.
    let stored_rows = if inserts { 3 } else { 0 };
    assert_eq!(store.prune_search_feed(5_001).await.unwrap(), stored_rows);
    let left = store.search_feed(0, 100).await.unwrap();
    assert_eq!(left, feed[last..]);
    assert_eq!(
        store.prune_search_feed(i64::MAX).await.unwrap(),
        0,
        "the newest row stays, even before a time past them all"
    );
    assert_eq!(
        store.search_feed_bounds().await.unwrap(),
        (feed[last].id, feed[last].id)
    );
    // It holds the feed's position: what comes next is after every row ever handed out.
    store.recall_message(m2.msg_id, None, vec![]).await.unwrap();
    let next = store.search_feed(feed[last].id, 100).await.unwrap();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].msg_id, m2.msg_id);
    assert!(next[0].id > feed[last].id);
    assert_eq!(store.prune_search_feed(i64::MAX).await.unwrap(), 1);
    assert_eq!(
        store.search_feed_bounds().await.unwrap(),
        (next[0].id, next[0].id)
    );
}
