//! Conformance: [`MsgOpsStore`](crate::MsgOpsStore) — edits with their history,
//! reactions (idempotent, counted, limited), hidden messages, pins, and a recall
//! emptying the quotes of its replies and forgetting the message's edits, reactions
//! and pins.

use std::sync::Arc;

use ferry_proto::v1;

use super::{group_event, new_msg};
use crate::prelude::*;
use crate::{
    GroupRow, Logged, MessageEdit, NewEvent, NewMessage, PinChange, Pinned, Reacted,
    ReactionChange, ReactionCount, StoreError,
};

fn edit_entry(msg_id: u64, text: &str, t: i64) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Edit(v1::Edit {
            msg_id,
            text: text.into(),
            edited_ms: t,
            by: "alice".into(),
            ..Default::default()
        })),
        time_ms: t,
        ..Default::default()
    }
}

fn reaction_entry(msg_id: u64, emoji: &str, add: bool) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Reaction(v1::Reaction {
            msg_id,
            emoji: emoji.into(),
            add,
            by: "x".into(),
            count: 999,
            ..Default::default()
        })),
        time_ms: 5,
        ..Default::default()
    }
}

fn message_text(page: &crate::InboxPage, msg_id: u64) -> Option<v1::Message> {
    page.entries.iter().find_map(|e| match &e.kind {
        Some(v1::entry::Kind::Message(m)) if m.msg_id == msg_id => Some(m.clone()),
        _ => None,
    })
}

pub async fn edits_replace_the_text_keep_the_history_and_log_once(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let m = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "first"))
        .await
        .unwrap();
    let edit = |text: &str, t: i64| MessageEdit {
        msg_id: m.msg_id,
        text: text.into(),
        edited_ms: t,
        group: None,
        inbox: vec![
            NewEvent {
                user_id: a,
                entry: edit_entry(m.msg_id, text, t),
            },
            NewEvent {
                user_id: b,
                entry: edit_entry(m.msg_id, text, t),
            },
        ],
    };
    let logged = store.edit_message(edit("second", 50)).await.unwrap();
    assert_eq!(
        logged,
        Some(Logged {
            gseq: None,
            seqs: vec![2, 2]
        })
    );
    // The same text again: nothing written.
    assert_eq!(store.edit_message(edit("second", 60)).await.unwrap(), None);
    assert_eq!(store.latest_seq(b).await.unwrap(), 2);
    store
        .edit_message(edit("third", 70))
        .await
        .unwrap()
        .unwrap();
    let info = store.message_info(m.msg_id).await.unwrap().unwrap();
    let body = info.body.unwrap();
    assert_eq!((body.text.as_str(), body.edited_ms), ("third", 70));
    assert_eq!(
        store.message_edits(m.msg_id).await.unwrap(),
        [("first".to_string(), 50), ("second".to_string(), 70)]
    );
    // A device syncing now sees the edited message and both edit entries.
    let page = store.inbox(b, 0, 10).await.unwrap();
    assert_eq!(message_text(&page, m.msg_id).unwrap().text, "third");
    assert_eq!(page.entries.len(), 3);
    assert!(matches!(
        &page.entries[1].kind,
        Some(v1::entry::Kind::Edit(e)) if e.text == "second"
    ));
    // Unknown: NotFound. Recalled: NotFound, and the history goes with the content.
    let mut unknown = edit("x", 80);
    unknown.msg_id = 999_999;
    assert!(matches!(
        store.edit_message(unknown).await,
        Err(StoreError::NotFound)
    ));
    store.recall_message(m.msg_id, None, vec![]).await.unwrap();
    assert!(matches!(
        store.edit_message(edit("fourth", 90)).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.message_edits(m.msg_id).await.unwrap().is_empty());
}

pub async fn reactions_are_idempotent_counted_limited_and_paged(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let m = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "hi"))
        .await
        .unwrap();
    let react = |user: u64, emoji: &str, add: bool| ReactionChange {
        msg_id: m.msg_id,
        user_id: user,
        emoji: emoji.into(),
        add,
        time_ms: 5,
        max_per_user: 3,
        group: None,
        inbox: vec![
            NewEvent {
                user_id: a,
                entry: reaction_entry(m.msg_id, emoji, add),
            },
            NewEvent {
                user_id: b,
                entry: reaction_entry(m.msg_id, emoji, add),
            },
        ],
    };
    let r = store.react(react(a, "👍", true)).await.unwrap();
    assert!(matches!(r, Reacted::Changed { count: 1, .. }), "{r:?}");
    assert_eq!(
        store.react(react(a, "👍", true)).await.unwrap(),
        Reacted::Unchanged { count: 1 }
    );
    let Reacted::Changed { count, logged } = store.react(react(b, "👍", true)).await.unwrap()
    else {
        panic!("bob's reaction changes the count");
    };
    assert_eq!(count, 2);
    // The logged entry carries the count after the change.
    let page = store.inbox(a, logged.seqs[0] - 1, 1).await.unwrap();
    assert!(
        matches!(&page.entries[0].kind, Some(v1::entry::Kind::Reaction(r)) if r.count == 2 && r.emoji == "👍"),
        "{:?}",
        page.entries
    );
    store.react(react(c, "🎉", true)).await.unwrap();
    // At most 3 distinct per user: a 4th is refused, the ones held are not.
    for e in ["a", "b"] {
        store.react(react(a, e, true)).await.unwrap();
    }
    assert_eq!(
        store.react(react(a, "c", true)).await.unwrap(),
        Reacted::TooMany
    );
    assert_eq!(
        store.react(react(a, "👍", true)).await.unwrap(),
        Reacted::Unchanged { count: 2 }
    );
    let counts = store.reaction_counts(m.msg_id, a, 10).await.unwrap();
    let rc = |e: &str, n: u32, mine: bool| ReactionCount {
        emoji: e.into(),
        count: n,
        mine,
    };
    assert_eq!(
        counts,
        [
            rc("👍", 2, true),
            rc("a", 1, true),
            rc("b", 1, true),
            rc("🎉", 1, false)
        ]
    );
    assert_eq!(
        store.reaction_counts(m.msg_id, c, 1).await.unwrap().len(),
        1
    );
    // Who reacted, paged by user id.
    let page1 = store.reactors(m.msg_id, "👍", 0, 1).await.unwrap();
    assert_eq!(page1.iter().map(|r| r.0).collect::<Vec<_>>(), [a.min(b)]);
    let page2 = store.reactors(m.msg_id, "👍", page1[0].0, 5).await.unwrap();
    assert_eq!(page2.iter().map(|r| r.0).collect::<Vec<_>>(), [a.max(b)]);
    // Taking back: once counted, twice a no-op.
    let r = store.react(react(b, "👍", false)).await.unwrap();
    assert!(matches!(r, Reacted::Changed { count: 1, .. }), "{r:?}");
    assert_eq!(
        store.react(react(b, "👍", false)).await.unwrap(),
        Reacted::Unchanged { count: 1 }
    );
    // A recall forgets the reactions; a recalled message takes no more.
    store.recall_message(m.msg_id, None, vec![]).await.unwrap();
    assert!(store
        .reaction_counts(m.msg_id, a, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.react(react(c, "x", true)).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn hidden_messages_are_logged_once_per_message(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let m1 = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "one"))
        .await
        .unwrap();
    let m2 = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 2, "two"))
        .await
        .unwrap();
    let entry = v1::Entry {
        kind: Some(v1::entry::Kind::Hide(v1::Hide::default())),
        time_ms: 9,
        ..Default::default()
    };
    let (seq, new) = store
        .hide_messages(b, vec![m1.msg_id], entry.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seq, new), (3, vec![m1.msg_id]));
    let (seq, new) = store
        .hide_messages(b, vec![m1.msg_id, m2.msg_id], entry.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seq, new), (4, vec![m2.msg_id]));
    assert_eq!(
        store
            .hide_messages(b, vec![m2.msg_id, m1.msg_id], entry)
            .await
            .unwrap(),
        None
    );
    let page = store.inbox(b, 3, 10).await.unwrap();
    assert!(matches!(
        &page.entries[..],
        [v1::Entry { kind: Some(v1::entry::Kind::Hide(h)), .. }] if h.msg_ids == [m2.msg_id]
    ));
    // Only bob's: alice's inbox and view are untouched.
    assert_eq!(store.latest_seq(a).await.unwrap(), 2);
    assert_eq!(
        store
            .hidden_among(b, vec![m2.msg_id, 12345, m1.msg_id])
            .await
            .unwrap(),
        [m2.msg_id, m1.msg_id]
    );
    assert!(store
        .hidden_among(a, vec![m1.msg_id])
        .await
        .unwrap()
        .is_empty());
}

pub async fn pins_are_limited_listed_newest_first_and_logged_in_the_group(store: Arc<dyn Store>) {
    use v1::group_event::Kind as K;
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let g = GroupRow {
        id: 5,
        name: "g".into(),
        owner_id: a,
        ..Default::default()
    };
    store
        .create_group(
            g,
            vec![(a, 2), (b, 0)],
            group_event(K::Created, 5, 1),
            vec![],
        )
        .await
        .unwrap();
    let gm = |cmid: u64| NewMessage {
        sender_id: b,
        recipient_id: 0,
        client_msg_id: cmid,
        time_ms: 10,
        message: v1::Message {
            text: format!("m{cmid}"),
            ..Default::default()
        },
    };
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(store.append_group_message(5, gm(i)).await.unwrap().msg_id);
    }
    let pin = |msg_id: u64, on: bool, t: i64| PinChange {
        conv: "g5".into(),
        msg_id,
        by_user_id: a,
        pin: on,
        time_ms: t,
        max_pins: 2,
        group: Some((
            5,
            v1::GroupEntry {
                kind: Some(v1::group_entry::Kind::Pin(v1::Pin {
                    msg_id,
                    group_id: 5,
                    by: "alice".into(),
                    pinned: on,
                    ..Default::default()
                })),
                time_ms: t,
                ..Default::default()
            },
        )),
        inbox: vec![],
    };
    let r = store.pin_message(pin(ids[0], true, 100)).await.unwrap();
    assert_eq!(
        r,
        Pinned::Changed(Logged {
            gseq: Some(5),
            seqs: vec![]
        })
    );
    assert_eq!(
        store.pin_message(pin(ids[0], true, 101)).await.unwrap(),
        Pinned::Unchanged
    );
    store.pin_message(pin(ids[1], true, 200)).await.unwrap();
    assert_eq!(
        store.pin_message(pin(ids[2], true, 300)).await.unwrap(),
        Pinned::TooMany
    );
    let pins = store.pins("g5").await.unwrap();
    assert_eq!(
        pins.iter()
            .map(|p| (p.msg_id, p.by_user_id, p.time_ms))
            .collect::<Vec<_>>(),
        [(ids[1], a, 200), (ids[0], a, 100)]
    );
    assert!(store.pins("g6").await.unwrap().is_empty());
    // The log holds the pin entries.
    let (log, latest, _) = store.group_log(5, 4, 10).await.unwrap();
    assert_eq!(latest, 6);
    assert!(matches!(
        &log[0].kind,
        Some(v1::group_entry::Kind::Pin(p)) if p.msg_id == ids[0] && p.pinned
    ));
    // Unpinning twice: once logged.
    assert!(matches!(
        store.pin_message(pin(ids[0], false, 400)).await.unwrap(),
        Pinned::Changed(_)
    ));
    assert_eq!(
        store.pin_message(pin(ids[0], false, 401)).await.unwrap(),
        Pinned::Unchanged
    );
    // A recall unpins; a recalled message cannot be pinned.
    store
        .recall_message(ids[1], Some((5, group_event(K::Renamed, 5, 2))), vec![])
        .await
        .unwrap();
    assert!(store.pins("g5").await.unwrap().is_empty());
    assert!(matches!(
        store.pin_message(pin(ids[1], true, 500)).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn a_recall_empties_the_quotes_of_its_replies(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let orig = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "secret"))
        .await
        .unwrap();
    let quote = v1::Quote {
        msg_id: orig.msg_id,
        from: "alice".into(),
        text: "secret".into(),
        ..Default::default()
    };
    // The reply is noted before it is stored (twice: a retried send).
    for _ in 0..2 {
        store.note_reply(orig.msg_id, b, 7).await.unwrap();
    }
    let mut reply = new_msg((b, "bob"), (a, "alice"), 7, "what secret?");
    reply.message.quote = Some(Box::new(quote.clone()));
    let reply = store.append_message(reply).await.unwrap();
    // An unrelated message with a quote of another message stays as it is.
    store.note_reply(424_242, b, 8).await.unwrap();
    let mut other = new_msg((b, "bob"), (a, "alice"), 8, "other");
    other.message.quote = Some(Box::new(v1::Quote {
        msg_id: 424_242,
        text: "kept".into(),
        ..Default::default()
    }));
    let other = store.append_message(other).await.unwrap();

    store
        .recall_message(orig.msg_id, None, vec![])
        .await
        .unwrap();
    let got = store.message_info(reply.msg_id).await.unwrap().unwrap();
    let q = got.body.unwrap().quote.unwrap();
    assert_eq!(
        (q.msg_id, q.from.as_str(), q.text.as_str(), q.recalled),
        (orig.msg_id, "alice", "", true)
    );
    let page = store.inbox(a, 0, 10).await.unwrap();
    let synced = message_text(&page, reply.msg_id).unwrap();
    assert_eq!(synced.text, "what secret?");
    assert!(synced.quote.unwrap().recalled);
    let kept = store.message_info(other.msg_id).await.unwrap().unwrap();
    assert_eq!(kept.body.unwrap().quote.unwrap().text, "kept");
    // Scrubbing again changes nothing; a reply stored after the recall is scrubbed by
    // a second call.
    assert_eq!(store.scrub_quotes(orig.msg_id).await.unwrap(), 0);
    store.note_reply(orig.msg_id, b, 9).await.unwrap();
    let mut late = new_msg((b, "bob"), (a, "alice"), 9, "late");
    late.message.quote = Some(Box::new(quote));
    let late = store.append_message(late).await.unwrap();
    assert_eq!(store.scrub_quotes(orig.msg_id).await.unwrap(), 1);
    let got = store.message_info(late.msg_id).await.unwrap().unwrap();
    assert!(got.body.unwrap().quote.unwrap().text.is_empty());
    // message_info tells a group message's gseq and a 1:1 message's recipient seq.
    assert_eq!(got.seq, late.recipient_seq);
}
