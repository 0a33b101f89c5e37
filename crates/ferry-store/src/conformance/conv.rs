//! Conformance: [`ConvStore`](crate::ConvStore) — per-user conversation state (only
//! what a change names, logged once, the mute shared with the push settings), clearing
//! history at the conversation's newest message, conversations' retention (logged,
//! listed) and pruning by it, and the server-wide prune forgetting the message
//! operations of what it deletes.

use std::sync::Arc;

use ferry_proto::v1;

use super::{group_event, new_msg};
use crate::prelude::*;
use crate::{
    ConvChange, ConvDone, ConvKey, GroupRow, MessageEdit, NewEvent, NewMessage, PinChange,
    PushPrefRow, ReactionChange, RetentionChange, SharedConv,
};

fn conv_entry(peer: &str, group_id: u64, t: i64) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Conv(v1::ConvState {
            peer: peer.into(),
            group_id,
            ..Default::default()
        })),
        time_ms: t,
        ..Default::default()
    }
}

fn change(user: u64, key: ConvKey, peer: &str, t: i64) -> ConvChange {
    ConvChange {
        user_id: user,
        key,
        time_ms: t,
        entry: conv_entry(peer, key.group_id, t),
        ..Default::default()
    }
}

fn logged_state(page: &crate::InboxPage) -> Vec<v1::ConvState> {
    page.entries
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::entry::Kind::Conv(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

pub async fn conv_state_changes_only_what_is_named_and_shares_the_mute(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let key = ConvKey::direct(b);
    let done = store
        .set_conv(ConvChange {
            archived: Some(true),
            draft: Some("half a thought".into()),
            ..change(a, key, "bob", 100)
        })
        .await
        .unwrap();
    let ConvDone::Changed { row, seq, entry } = done else {
        panic!("{done:?}")
    };
    assert!(row.archived && !row.unread);
    assert_eq!((row.draft.as_str(), row.draft_ms), ("half a thought", 100));
    let Some(v1::entry::Kind::Conv(c)) = &entry.kind else {
        panic!("{entry:?}")
    };
    assert_eq!(
        (c.peer.as_str(), c.archived, c.draft.as_str(), c.updated_ms),
        ("bob", true, "half a thought", 100)
    );
    let page = store.inbox(a, 0, 10).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].seq, seq);
    assert_eq!(logged_state(&page), std::slice::from_ref(c));
    // Only what is named changes; the same values again log nothing.
    let done = store
        .set_conv(ConvChange {
            unread: Some(true),
            ..change(a, key, "bob", 200)
        })
        .await
        .unwrap();
    let ConvDone::Changed { row, .. } = done else {
        panic!("{done:?}")
    };
    assert!(row.archived && row.unread && row.draft == "half a thought");
    let again = store
        .set_conv(ConvChange {
            unread: Some(true),
            archived: Some(true),
            ..change(a, key, "bob", 300)
        })
        .await
        .unwrap();
    assert!(
        matches!(again, ConvDone::Unchanged(ref r) if r.updated_ms == 200),
        "{again:?}"
    );
    // An older draft than the one stored loses.
    let stale = store
        .set_conv(ConvChange {
            draft: Some("older".into()),
            ..change(a, key, "bob", 50)
        })
        .await
        .unwrap();
    assert!(matches!(stale, ConvDone::Unchanged(_)), "{stale:?}");
    // Nobody else's inbox got anything.
    assert!(store.inbox(b, 0, 10).await.unwrap().entries.is_empty());

    // A mute is the push setting: set here, seen there …
    store
        .set_conv(ConvChange {
            muted_until_ms: Some(-1),
            ..change(a, key, "bob", 400)
        })
        .await
        .unwrap();
    let prefs = store.push_prefs(a, 400).await.unwrap();
    assert_eq!(
        prefs
            .iter()
            .map(|p| (p.peer, p.group_id, p.mode, p.until_ms))
            .collect::<Vec<_>>(),
        [(b, 0, 1, 0)]
    );
    // … and set there, seen here (a timed mute, then past its end).
    store
        .set_push_prefs(
            a,
            vec![PushPrefRow {
                user_id: a,
                peer: 0,
                group_id: 9,
                mode: 1,
                until_ms: 5_000,
            }],
        )
        .await
        .unwrap();
    let g9 = ConvKey::group(9);
    assert_eq!(
        store.conv_state(a, g9, 1_000).await.unwrap().muted_until_ms,
        5_000
    );
    assert_eq!(
        store.conv_state(a, g9, 6_000).await.unwrap().muted_until_ms,
        0
    );
    // Unmuting removes a MUTED setting, never another mode.
    store
        .set_conv(ConvChange {
            muted_until_ms: Some(0),
            ..change(a, key, "bob", 500)
        })
        .await
        .unwrap();
    assert!(store
        .push_prefs(a, 500)
        .await
        .unwrap()
        .iter()
        .all(|p| p.peer != b));
    store
        .set_push_prefs(
            a,
            vec![PushPrefRow {
                user_id: a,
                peer: b,
                group_id: 0,
                mode: 2,
                until_ms: 0,
            }],
        )
        .await
        .unwrap();
    let unchanged = store
        .set_conv(ConvChange {
            muted_until_ms: Some(0),
            ..change(a, key, "bob", 600)
        })
        .await
        .unwrap();
    assert!(matches!(unchanged, ConvDone::Unchanged(_)), "{unchanged:?}");
    assert!(store
        .push_prefs(a, 600)
        .await
        .unwrap()
        .iter()
        .any(|p| p.peer == b && p.mode == 2));
    // Every conversation with a state or a live mute, in key order.
    let all = store.conv_states(a, 1_000).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.key).collect::<Vec<_>>(),
        [g9, key],
        "{all:?}"
    );
    assert!(store.conv_states(a, 6_000).await.unwrap().len() == 1);
}

pub async fn clearing_history_marks_the_conversations_newest_message(store: Arc<dyn Store>) {
    use v1::group_event::Kind as K;
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let ab1 = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "1"))
        .await
        .unwrap();
    let ba = store
        .append_message(new_msg((b, "bob"), (a, "alice"), 2, "2"))
        .await
        .unwrap();
    // Later messages of other conversations do not count.
    store
        .append_message(new_msg((a, "alice"), (c, "carol"), 3, "3"))
        .await
        .unwrap();
    store
        .append_message(new_msg((c, "carol"), (a, "alice"), 4, "4"))
        .await
        .unwrap();
    let clear = |user, key: ConvKey, peer: &str| ConvChange {
        clear: true,
        ..change(user, key, peer, 100)
    };
    let done = store
        .set_conv(clear(a, ConvKey::direct(b), "bob"))
        .await
        .unwrap();
    let ConvDone::Changed { row, .. } = done else {
        panic!("{done:?}")
    };
    assert_eq!(row.cleared_before_msg_id, ba.msg_id);
    assert!(ab1.msg_id < ba.msg_id);
    // Nothing newer since: clearing again changes nothing.
    assert!(matches!(
        store
            .set_conv(clear(a, ConvKey::direct(b), "bob"))
            .await
            .unwrap(),
        ConvDone::Unchanged(_)
    ));
    // A message of alice's to bob, newest: bob's clear of alice ends there.
    let ab2 = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 5, "5"))
        .await
        .unwrap();
    let ConvDone::Changed { row, .. } = store
        .set_conv(clear(b, ConvKey::direct(a), "alice"))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(row.cleared_before_msg_id, ab2.msg_id);
    // A group: its newest logged message.
    let g = GroupRow {
        id: 7,
        name: "g".into(),
        owner_id: a,
        ..Default::default()
    };
    store
        .create_group(
            g,
            vec![(a, 2), (c, 0)],
            group_event(K::Created, 7, 1),
            vec![],
        )
        .await
        .unwrap();
    let gm = store
        .append_group_message(
            7,
            NewMessage {
                sender_id: c,
                recipient_id: 0,
                client_msg_id: 9,
                time_ms: 50,
                message: v1::Message {
                    text: "g".into(),
                    group_id: 7,
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    store
        .set_conv(clear(a, ConvKey::group(7), ""))
        .await
        .unwrap();
    assert_eq!(
        store.cleared(a).await.unwrap(),
        [
            (ConvKey::group(7), gm.msg_id),
            (ConvKey::direct(b), ba.msg_id)
        ]
    );
    assert_eq!(store.cleared(c).await.unwrap(), []);
}

/// A 1:1 message of `from` to `to` at `t` (store time).
fn at(from: (u64, &str), to: (u64, &str), cmid: u64, t: i64, media: Option<&str>) -> NewMessage {
    let mut m = new_msg(from, to, cmid, &format!("m{cmid}"));
    m.time_ms = t;
    m.message.media = media.map(|id| {
        Box::new(v1::MediaRef {
            media_id: id.into(),
            kind: v1::MediaKind::MediaImage as i32,
            ..Default::default()
        })
    });
    m
}

pub async fn retention_is_logged_listed_and_prunes_only_its_conversation(store: Arc<dyn Store>) {
    use v1::group_event::Kind as K;
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let old = store
        .append_message(at(
            (a, "alice"),
            (b, "bob"),
            1,
            1_000,
            Some("media0000000000000000000001"),
        ))
        .await
        .unwrap();
    let old_back = store
        .append_message(at((b, "bob"), (a, "alice"), 2, 1_100, None))
        .await
        .unwrap();
    let other = store
        .append_message(at((a, "alice"), (c, "carol"), 3, 1_000, None))
        .await
        .unwrap();
    let young = store
        .append_message(at((b, "bob"), (a, "alice"), 4, 9_000, None))
        .await
        .unwrap();
    // Operations on the old message, to be forgotten with it.
    store
        .react(ReactionChange {
            msg_id: old.msg_id,
            user_id: b,
            emoji: "👍".into(),
            add: true,
            time_ms: 1_200,
            max_per_user: 20,
            group: None,
            inbox: vec![],
        })
        .await
        .unwrap();
    store
        .edit_message(MessageEdit {
            msg_id: old.msg_id,
            text: "edited".into(),
            edited_ms: 1_300,
            group: None,
            inbox: vec![],
        })
        .await
        .unwrap();
    store
        .pin_message(PinChange {
            conv: format!("u{a}-{b}"),
            msg_id: old.msg_id,
            by_user_id: a,
            pin: true,
            time_ms: 1_400,
            max_pins: 50,
            group: None,
            inbox: vec![],
        })
        .await
        .unwrap();
    store.note_reply(old.msg_id, b, 4).await.unwrap();
    // Set for the pair, logged to both with each one's whole state.
    let set = |secs: u32, t: i64| RetentionChange {
        conv: SharedConv::direct(b, a),
        retention_secs: secs,
        by_user_id: b,
        time_ms: t,
        group: None,
        inbox: vec![
            (
                ConvKey::direct(a),
                NewEvent {
                    user_id: b,
                    entry: conv_entry("alice", 0, t),
                },
            ),
            (
                ConvKey::direct(b),
                NewEvent {
                    user_id: a,
                    entry: conv_entry("bob", 0, t),
                },
            ),
        ],
    };
    let (logged, events) = store.set_retention(set(5, 2_000)).await.unwrap().unwrap();
    assert_eq!(logged.gseq, None);
    assert_eq!(logged.seqs.len(), 2);
    for ev in &events {
        let Some(v1::entry::Kind::Conv(s)) = &ev.entry.kind else {
            panic!("{ev:?}")
        };
        assert_eq!(s.retention_secs, 5);
    }
    assert_eq!(
        logged_state(&store.inbox(a, 0, 10).await.unwrap())[0].peer,
        "bob"
    );
    assert!(store.set_retention(set(5, 2_100)).await.unwrap().is_none());
    assert_eq!(
        store
            .conv_state(b, ConvKey::direct(a), 0)
            .await
            .unwrap()
            .retention_secs,
        5
    );
    // The conversation shows in both parties' lists, not in carol's.
    assert_eq!(store.conv_states(a, 0).await.unwrap().len(), 1);
    assert_eq!(store.conv_states(b, 0).await.unwrap().len(), 1);
    assert!(store.conv_states(c, 0).await.unwrap().is_empty());
    assert_eq!(
        store.retentions().await.unwrap(),
        [(SharedConv::Direct(a.min(b), a.max(b)), 5)]
    );

    // Prune what is older than 5 000: the old pair's two messages, not carol's, not the
    // young one.
    let pruned = store
        .prune_conversation(SharedConv::direct(a, b), 5_000)
        .await
        .unwrap();
    assert_eq!(pruned.messages, 2);
    assert_eq!(pruned.media, ["media0000000000000000000001"]);
    for gone in [old.msg_id, old_back.msg_id] {
        assert!(store.message_info(gone).await.unwrap().is_none());
    }
    assert!(store.message_info(other.msg_id).await.unwrap().is_some());
    assert!(store.message_info(young.msg_id).await.unwrap().is_some());
    let inbox_ids = |u: u64| {
        let store = store.clone();
        async move {
            store
                .inbox(u, 0, 100)
                .await
                .unwrap()
                .entries
                .iter()
                .filter_map(|e| match &e.kind {
                    Some(v1::entry::Kind::Message(m)) => Some(m.msg_id),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(inbox_ids(a).await, [other.msg_id, young.msg_id]);
    assert_eq!(inbox_ids(b).await, [young.msg_id]);
    assert!(store
        .reaction_counts(old.msg_id, a, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.message_edits(old.msg_id).await.unwrap().is_empty());
    assert!(store.pins(&format!("u{a}-{b}")).await.unwrap().is_empty());
    // The media is no longer referred to; a message that names it is found.
    assert!(!store
        .media_referenced("media0000000000000000000001", 0)
        .await
        .unwrap());
    store
        .append_message(at(
            (c, "carol"),
            (a, "alice"),
            5,
            9_500,
            Some("media0000000000000000000001"),
        ))
        .await
        .unwrap();
    assert!(store
        .media_referenced("media0000000000000000000001", 0)
        .await
        .unwrap());
    assert!(!store
        .media_referenced("media0000000000000000000001", 9_600)
        .await
        .unwrap());
    // A new entry after the prune still gets the next seq.
    let before = store.latest_seq(b).await.unwrap();
    let after = store
        .append_message(at((a, "alice"), (b, "bob"), 6, 9_700, None))
        .await
        .unwrap();
    assert_eq!(after.recipient_seq, before + 1);

    // Removed (0): listed no more.
    store.set_retention(set(0, 3_000)).await.unwrap().unwrap();
    assert!(store.retentions().await.unwrap().is_empty());

    // A group's: logged in its log; pruning deletes its old messages' content.
    let g = GroupRow {
        id: 8,
        name: "g".into(),
        owner_id: a,
        ..Default::default()
    };
    store
        .create_group(
            g,
            vec![(a, 2), (c, 0)],
            group_event(K::Created, 8, 1),
            vec![],
        )
        .await
        .unwrap();
    let gmsg = |cmid: u64, t: i64| NewMessage {
        sender_id: c,
        recipient_id: 0,
        client_msg_id: cmid,
        time_ms: t,
        message: v1::Message {
            text: format!("g{cmid}"),
            group_id: 8,
            ..Default::default()
        },
    };
    let g_old = store
        .append_group_message(8, gmsg(10, 1_000))
        .await
        .unwrap();
    let g_new = store
        .append_group_message(8, gmsg(11, 9_000))
        .await
        .unwrap();
    let entry = v1::GroupEntry {
        kind: Some(v1::group_entry::Kind::Retention(v1::ConvRetention {
            group_id: 8,
            retention_secs: 60,
            by: "alice".into(),
        })),
        time_ms: 3_000,
        ..Default::default()
    };
    let (logged, _) = store
        .set_retention(RetentionChange {
            conv: SharedConv::Group(8),
            retention_secs: 60,
            by_user_id: a,
            time_ms: 3_000,
            group: Some((8, entry)),
            inbox: vec![],
        })
        .await
        .unwrap()
        .unwrap();
    let (log, _, _) = store.group_log(8, 0, 100).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(Some(last.gseq), logged.gseq);
    assert!(matches!(
        &last.kind,
        Some(v1::group_entry::Kind::Retention(r)) if r.retention_secs == 60
    ));
    assert_eq!(
        store
            .conv_state(c, ConvKey::group(8), 0)
            .await
            .unwrap()
            .retention_secs,
        60
    );
    assert_eq!(store.conv_states(c, 0).await.unwrap().len(), 1);
    let pruned = store
        .prune_conversation(SharedConv::Group(8), 5_000)
        .await
        .unwrap();
    assert_eq!(pruned.messages, 1);
    assert!(store.message_info(g_old.msg_id).await.unwrap().is_none());
    assert!(store.message_info(g_new.msg_id).await.unwrap().is_some());
    let (log, _, _) = store.group_log(8, 0, 100).await.unwrap();
    let texts: Vec<String> = log
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::group_entry::Kind::Message(m)) => Some(m.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["g11"]);
}

pub async fn pruning_forgets_the_operations_on_pruned_messages(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let old = store
        .append_message(at((a, "alice"), (b, "bob"), 1, 1_000, None))
        .await
        .unwrap();
    let young = store
        .append_message(at((b, "bob"), (a, "alice"), 2, 9_000, None))
        .await
        .unwrap();
    for (m, t) in [(old.msg_id, 1_100), (young.msg_id, 9_100)] {
        store
            .react(ReactionChange {
                msg_id: m,
                user_id: a,
                emoji: "🎉".into(),
                add: true,
                time_ms: t,
                max_per_user: 20,
                group: None,
                inbox: vec![],
            })
            .await
            .unwrap();
        store
            .edit_message(MessageEdit {
                msg_id: m,
                text: "changed".into(),
                edited_ms: t,
                group: None,
                inbox: vec![],
            })
            .await
            .unwrap();
        store
            .pin_message(PinChange {
                conv: "pair".into(),
                msg_id: m,
                by_user_id: b,
                pin: true,
                time_ms: t,
                max_pins: 50,
                group: None,
                inbox: vec![],
            })
            .await
            .unwrap();
    }
    store.prune(5_000).await.unwrap();
    assert!(store
        .reaction_counts(old.msg_id, a, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.message_edits(old.msg_id).await.unwrap().is_empty());
    let pins: Vec<u64> = store
        .pins("pair")
        .await
        .unwrap()
        .iter()
        .map(|p| p.msg_id)
        .collect();
    assert_eq!(pins, [young.msg_id]);
    assert_eq!(
        store
            .reaction_counts(young.msg_id, a, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.message_edits(young.msg_id).await.unwrap().len(), 1);
}
