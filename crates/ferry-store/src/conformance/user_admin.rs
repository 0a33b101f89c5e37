//! Conformance: [`UserAdminStore`](crate::UserAdminStore) — listing, disabling,
//! devices, export reads, and deleting a user with all their data (checked over every
//! table of the database, through the catalog).

use std::sync::Arc;

use ferry_proto::v1;

use super::{group_event, new_msg};
use crate::prelude::*;
use crate::{
    Avatar, FriendChange, FriendRow, GroupRow, MomentRow, NewMessage, PushEnqueue, PushPrefRow,
    PushTargetRow, ReportInfo, StoreError, UserDeletion,
};

pub async fn users_are_listed_searched_and_disabled(store: Arc<dyn Store>) {
    let a = store.create_user("Alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("alicia_2", "h").await.unwrap();
    let names = |v: Vec<crate::UserInfo>| v.into_iter().map(|u| u.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_users("", 0, 10).await.unwrap()),
        ["Alice", "bob", "alicia_2"]
    );
    // Case-insensitive substring, paged by id.
    assert_eq!(
        names(store.list_users("ALI", 0, 10).await.unwrap()),
        ["Alice", "alicia_2"]
    );
    assert_eq!(
        names(store.list_users("ali", 0, 1).await.unwrap()),
        ["Alice"]
    );
    assert_eq!(
        names(store.list_users("ali", a, 10).await.unwrap()),
        ["alicia_2"]
    );
    // LIKE's wildcards are taken literally.
    assert_eq!(
        names(store.list_users("a_2", 0, 10).await.unwrap()),
        ["alicia_2"]
    );
    assert!(store.list_users("%", 0, 10).await.unwrap().is_empty());

    let info = store.user_info(b).await.unwrap().unwrap();
    assert_eq!(
        (info.name.as_str(), info.disabled, info.created_ms > 0),
        ("bob", false, true)
    );
    store.put_session([1; 32], b, "phone").await.unwrap();
    store.put_session([2; 32], b, "laptop").await.unwrap();
    store.put_session([3; 32], c, "phone").await.unwrap();
    store.set_synckey(b, "phone", 7).await.unwrap();
    store.set_synckey(b, "tablet", 3).await.unwrap();
    store.flush_synckeys().await.unwrap();
    let devices = store.user_devices(b).await.unwrap();
    assert_eq!(
        devices
            .iter()
            .map(|d| (d.device_id.as_str(), d.synckey, d.session_ms > 0))
            .collect::<Vec<_>>(),
        [
            ("laptop", 0, true),
            ("phone", 7, true),
            ("tablet", 3, false)
        ]
    );

    let mut revoked = store.set_disabled(b, Some("spam")).await.unwrap();
    revoked.sort();
    assert_eq!(revoked, ["laptop", "phone"]);
    assert!(store.session([1; 32]).await.unwrap().is_none());
    assert!(
        store.session([3; 32]).await.unwrap().is_some(),
        "others keep theirs"
    );
    assert_eq!(store.disabled(b).await.unwrap().as_deref(), Some("spam"));
    assert_eq!(store.disabled(c).await.unwrap(), None);
    let info = store.user_info(b).await.unwrap().unwrap();
    assert_eq!(
        (info.disabled, info.disabled_reason.as_str()),
        (true, "spam")
    );
    assert!(store.list_users("bob", 0, 10).await.unwrap()[0].disabled);
    assert!(store.set_disabled(b, None).await.unwrap().is_empty());
    assert_eq!(store.disabled(b).await.unwrap(), None);
    assert!(!store.user_info(b).await.unwrap().unwrap().disabled);
    assert!(matches!(
        store.set_disabled(9_999, Some("x")).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.user_info(9_999).await.unwrap().is_none());
}

pub async fn export_reads_page_through_messages_and_reports(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let mut mine = Vec::new();
    for (i, (from, to)) in [(a, b), (b, a), (b, c), (a, a), (c, b), (c, a)]
        .into_iter()
        .enumerate()
    {
        let name = |u| {
            if u == a {
                "alice"
            } else if u == b {
                "bob"
            } else {
                "carol"
            }
        };
        let m = store
            .append_message(new_msg(
                (from, name(from)),
                (to, name(to)),
                i as u64 + 1,
                "t",
            ))
            .await
            .unwrap();
        if from == a || to == a {
            mine.push(m.msg_id);
        }
    }
    // A group message alice sent is hers too; one she did not send is not.
    store
        .create_group(
            GroupRow {
                id: 5,
                name: "g".into(),
                owner_id: b,
                created_ms: 1,
                ..Default::default()
            },
            vec![(b, 2), (a, 0)],
            group_event(v1::group_event::Kind::Created, 5, 1),
            vec![],
        )
        .await
        .unwrap();
    let gm = store
        .append_group_message(5, new_msg((a, "alice"), (0, ""), 50, "in group"))
        .await
        .unwrap();
    mine.push(gm.msg_id);
    store
        .append_group_message(5, new_msg((b, "bob"), (0, ""), 51, "not hers"))
        .await
        .unwrap();
    // A recalled one is gone from the export.
    let recalled = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 60, "oops"))
        .await
        .unwrap();
    store
        .recall_message(recalled.msg_id, None, vec![])
        .await
        .unwrap();

    let mut got = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let page = store.user_messages(a, after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        for m in &page {
            let body = m.body.as_ref().unwrap();
            assert_eq!(body.msg_id, m.msg_id);
            assert!(body.from == "alice" || body.to == "alice" || body.group_id == 5);
        }
        after = page.last().unwrap().msg_id;
        got.extend(page.into_iter().map(|m| m.msg_id));
    }
    assert_eq!(got, mine);

    let info = |user: u64, t: i64| ReportInfo {
        id: 0,
        user_id: user,
        device_id: "d".into(),
        client_version: "1".into(),
        kind: "log".into(),
        file_name: "f".into(),
        length: 1,
        md5: "m".into(),
        created_ms: t,
    };
    let r1 = store.add_report(info(a, 1), b"1".to_vec()).await.unwrap();
    store.add_report(info(b, 2), b"2".to_vec()).await.unwrap();
    let r3 = store.add_report(info(a, 3), b"3".to_vec()).await.unwrap();
    let ids = |v: Vec<ReportInfo>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(store.user_reports(a, 0, 10).await.unwrap()), [r1, r3]);
    assert_eq!(ids(store.user_reports(a, r1, 10).await.unwrap()), [r3]);
}

/// Alice has something in every table; deleting her leaves no row naming her anywhere
/// (every user column of every table, from the catalog), her sent messages recalled in
/// the recipients' inboxes and the groups' logs, her groups handed on or dissolved, and
/// the others' own data in place.
pub async fn deleting_a_user_leaves_no_row_of_theirs(store: Arc<dyn Store>) {
    use v1::FriendState as S;
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let (al, bo, ca) = ((a, "alice"), (b, "bob"), (c, "carol"));

    store.put_session([1; 32], a, "phone").await.unwrap();
    store.put_session([2; 32], b, "phone").await.unwrap();
    store.set_synckey(a, "phone", 1).await.unwrap();
    store.set_synckey(b, "phone", 1).await.unwrap();
    store.flush_synckeys().await.unwrap();
    let to_b = store
        .append_message(new_msg(al, bo, 1, "hi bob"))
        .await
        .unwrap();
    let from_b = store
        .append_message(new_msg(bo, al, 2, "hi alice"))
        .await
        .unwrap();
    store
        .append_message(new_msg(al, al, 3, "note"))
        .await
        .unwrap();
    let b_to_c = store
        .append_message(new_msg(bo, ca, 4, "b to c"))
        .await
        .unwrap();
    let row = |user, peer, s: S| FriendRow {
        user_id: user,
        peer_id: peer,
        state: s as i32,
        greeting: String::new(),
        version: 0,
        updated_ms: 0,
    };
    store
        .change_friends(FriendChange {
            rows: vec![
                row(a, b, S::Friend),
                row(b, a, S::Friend),
                row(c, a, S::RequestOut),
                row(a, c, S::RequestIn),
                row(b, c, S::Friend),
                row(c, b, S::Friend),
            ],
            time_ms: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .set_avatar(
            a,
            Avatar {
                etag: "e".into(),
                content_type: "image/png".into(),
                image: vec![1],
                thumb: vec![2],
                updated_ms: 1,
            },
        )
        .await
        .unwrap();
    store
        .add_report(
            ReportInfo {
                id: 0,
                user_id: a,
                device_id: "phone".into(),
                client_version: "1".into(),
                kind: "log".into(),
                file_name: "f".into(),
                length: 1,
                md5: "m".into(),
                created_ms: 1,
            },
            vec![1],
        )
        .await
        .unwrap();
    let moment = |id: u64, author: u64| MomentRow {
        id,
        author_id: author,
        text: "m".into(),
        media_ids: vec![],
        time_ms: 1,
    };
    store.add_moment(moment(10, a), vec![]).await.unwrap();
    store.add_moment(moment(20, b), vec![]).await.unwrap();
    store.set_like(10, b, true, 2, None).await.unwrap();
    store.add_comment(10, b, "nice", 2, None).await.unwrap();
    store.set_like(20, a, true, 2, None).await.unwrap();
    store.set_like(20, c, true, 2, None).await.unwrap();
    store.add_comment(20, a, "yes", 2, None).await.unwrap();

    // g1: alice owns it with bob (member) and carol (admin): carol inherits it. g2: alice
    // alone: dissolved. g3: bob's, alice a member.
    let group = |id: u64, owner: u64| GroupRow {
        id,
        name: format!("g{id}"),
        owner_id: owner,
        created_ms: 1,
        ..Default::default()
    };
    let created = |g| group_event(v1::group_event::Kind::Created, g, 1);
    store
        .create_group(
            group(1, a),
            vec![(a, 2), (b, 0), (c, 1)],
            created(1),
            vec![],
        )
        .await
        .unwrap();
    store
        .create_group(group(2, a), vec![(a, 2)], created(2), vec![])
        .await
        .unwrap();
    store
        .create_group(group(3, b), vec![(b, 2), (a, 0)], created(3), vec![])
        .await
        .unwrap();
    let gmsg = |from: (u64, &str), cmid: u64| NewMessage {
        sender_id: from.0,
        recipient_id: 0,
        client_msg_id: cmid,
        time_ms: 1,
        message: super::text(from.1, "", "group", cmid),
    };
    let a_in_g1 = store.append_group_message(1, gmsg(al, 10)).await.unwrap();
    let b_in_g1 = store.append_group_message(1, gmsg(bo, 11)).await.unwrap();
    store.append_group_message(2, gmsg(al, 12)).await.unwrap();
    let a_in_g3 = store.append_group_message(3, gmsg(al, 13)).await.unwrap();

    let target = |user: u64| PushTargetRow {
        user_id: user,
        device_id: "phone".into(),
        provider: "fcm".into(),
        token: "t".into(),
        locale: "en".into(),
        ..Default::default()
    };
    store.put_push_target(target(a)).await.unwrap();
    store.put_push_target(target(b)).await.unwrap();
    let pref = |user, peer| PushPrefRow {
        user_id: user,
        peer,
        group_id: 0,
        mode: 1,
        until_ms: 0,
    };
    store.set_push_prefs(a, vec![pref(a, b)]).await.unwrap();
    store
        .set_push_prefs(b, vec![pref(b, a), pref(b, c)])
        .await
        .unwrap();
    store
        .enqueue_pushes(vec![PushEnqueue {
            user_id: a,
            device_id: "phone".into(),
            seq: 1,
            summary: vec![1],
            due_ms: 1,
            created_ms: 1,
        }])
        .await
        .unwrap();
    let before = store.leftover_rows(a).await.unwrap();
    let tables: Vec<&str> = before.iter().map(|l| l.table.as_str()).collect();
    for t in [
        "users",
        "sessions",
        "devices",
        "inbox",
        "messages",
        "friendships",
        "avatars",
        "reports",
        "moments",
        "moment_likes",
        "moment_comments",
        "groups",
        "group_members",
        "push_targets",
        "push_prefs",
        "push_queue",
    ] {
        assert!(
            tables.contains(&t),
            "alice has rows in {t} before: {before:?}"
        );
    }
    let b_seq = store.latest_seq(b).await.unwrap();
    let c_seq = store.latest_seq(c).await.unwrap();

    let done = store
        .delete_user(UserDeletion {
            user_id: a,
            name: "alice".into(),
            time_ms: 99,
        })
        .await
        .unwrap();
    let left = store.leftover_rows(a).await.unwrap();
    assert!(left.is_empty(), "rows of alice left: {left:?}");
    assert!(store.user_by_id(a).await.unwrap().is_none());
    assert!(store.user_by_name("alice").await.unwrap().is_none());
    assert!(store.session([1; 32]).await.unwrap().is_none());
    assert_eq!(done.dissolved, [2]);
    assert!(done.rows["messages"] >= 5, "{:?}", done.rows);
    assert!(done.rows.contains_key("users"));

    // Bob's inbox: the message from alice recalled (its entry empty, a recall entry
    // after it), his own message to her still there; carol heard the request is gone.
    let page = store.inbox(b, 0, 100).await.unwrap();
    let kinds: Vec<_> = page.entries.iter().map(|e| e.kind.clone()).collect();
    assert!(kinds.contains(&Some(v1::entry::Kind::Recall(v1::Recall {
        msg_id: to_b.msg_id,
        group_id: 0,
        by: "alice".into(),
    }))));
    assert!(
        !page
            .entries
            .iter()
            .any(|e| matches!(&e.kind, Some(v1::entry::Kind::Message(m)) if m.from == "alice")),
        "no message from alice is left in bob's inbox"
    );
    assert!(page.entries.iter().any(
        |e| matches!(&e.kind, Some(v1::entry::Kind::Message(m)) if m.msg_id == from_b.msg_id)
    ));
    assert!(page.entries.iter().any(|e| matches!(
        &e.kind,
        Some(v1::entry::Kind::Friend(f)) if f.peer == "alice"
            && f.kind == v1::friend_event::Kind::Removed as i32
    )));
    assert!(store.latest_seq(b).await.unwrap() > b_seq);
    assert!(store.latest_seq(c).await.unwrap() > c_seq);
    assert!(done
        .inboxes
        .iter()
        .any(|&(u, s)| u == b && s == page.latest_seq));
    assert!(store.message_info(to_b.msg_id).await.unwrap().is_none());
    assert!(store.message_info(b_to_c.msg_id).await.unwrap().is_some());
    // Carol's friendship with bob is untouched; nobody has alice as a friend.
    assert_eq!(store.friends(b, 0).await.unwrap().rows.len(), 1);
    assert!(store.friendship(c, a).await.unwrap().is_none());

    // g1 now carol's (the admin before the member), alice's message recalled in its log;
    // g2 dissolved; g3 still bob's without alice.
    let g1 = store.group(1).await.unwrap().unwrap();
    assert_eq!(g1.owner_id, c);
    let members = store.group_members(1).await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| (m.user_id, m.role))
            .collect::<Vec<_>>(),
        [(c, 2), (b, 0)]
    );
    let (log, _, _) = store.group_log(1, 0, 100).await.unwrap();
    assert!(log.iter().any(|e| matches!(
        &e.kind,
        Some(v1::group_entry::Kind::Recall(r)) if r.msg_id == a_in_g1.msg_id
    )));
    assert!(log.iter().any(|e| matches!(
        &e.kind,
        Some(v1::group_entry::Kind::Event(ev)) if ev.kind == v1::group_event::Kind::Left as i32
    )));
    assert!(!log
        .iter()
        .any(|e| matches!(&e.kind, Some(v1::group_entry::Kind::Message(m)) if m.from == "alice")));
    assert!(log.iter().any(
        |e| matches!(&e.kind, Some(v1::group_entry::Kind::Message(m)) if m.msg_id == b_in_g1.msg_id)
    ));
    assert!(store.group(2).await.unwrap().is_none());
    assert!(store.group_log(2, 0, 10).await.is_err());
    let (log3, _, _) = store.group_log(3, 0, 100).await.unwrap();
    assert!(log3.iter().any(|e| matches!(
        &e.kind,
        Some(v1::group_entry::Kind::Recall(r)) if r.msg_id == a_in_g3.msg_id
    )));
    assert_eq!(store.group(3).await.unwrap().unwrap().owner_id, b);
    assert!(done.groups.iter().any(|&(g, _)| g == 1));
    assert!(done.groups.iter().any(|&(g, _)| g == 3));

    // Moments: hers gone with their likes and comments; bob's stays without hers.
    assert!(store.moment(10).await.unwrap().is_none());
    let r = store.reactions(&[10, 20]).await.unwrap();
    assert_eq!(
        r.iter()
            .map(|x| (x.moment_id, x.user_id))
            .collect::<Vec<_>>(),
        [(20, c)]
    );
    // Push: bob's target and his setting for carol stay.
    assert_eq!(store.push_prefs(b, 0).await.unwrap(), [pref(b, c)]);
    assert!(store.avatar(a).await.unwrap().is_none());

    // The name is free again; a new user never gets a deleted one's id (not even the
    // highest, which SQLite would otherwise hand out again).
    let again = store.create_user("alice", "h").await.unwrap();
    assert!(again > c);
    assert!(matches!(
        store
            .delete_user(UserDeletion {
                user_id: a,
                name: "alice".into(),
                time_ms: 1,
            })
            .await,
        Err(StoreError::NotFound)
    ));
    // A user with nothing but the account, the newest one.
    let d = store.create_user("dave", "h").await.unwrap();
    store
        .delete_user(UserDeletion {
            user_id: d,
            name: "dave".into(),
            time_ms: 1,
        })
        .await
        .unwrap();
    assert!(store.leftover_rows(d).await.unwrap().is_empty());
    let e = store.create_user("erin", "h").await.unwrap();
    assert!(e > d, "a deleted user's id is given again: {e}");
}
