//! The admin API's operations end to end (docs/admin-api.md, Operations): every route
//! refused without the admin token and with a user's; a dissolved group gone from its
//! members' devices; any message recalled by the admin gone from every device, also one
//! offline during the recall; broadcasts reaching each recipient once; a per-user send
//! rate applied and cleared.

use std::time::Duration;

use ferry_client::{Client, ClientConfig, Event};
use ferry_proto::v1::{self, group_entry, ErrorCode};
use ferry_proto::{cmd, ProtoMessage};
use ferry_testkit::*;
use serde_json::json;
use tokio::sync::mpsc::Receiver;

/// A client of `user` whose device (id, synckey, group cursors) lives in `dir`: closing
/// it and connecting again is the same device coming back.
async fn device(addr: &str, user: &str, dir: &std::path::Path) -> (Client, Receiver<Event>) {
    let cfg = ClientConfig {
        state_dir: Some(dir.to_owned()),
        ..client_config(addr, user)
    };
    Client::connect(cfg).await.unwrap()
}

/// Waits for an inbox entry matching `pick`.
async fn entry_where<T>(events: &mut Receiver<Event>, pick: impl Fn(&v1::Entry) -> Option<T>) -> T {
    event_where(events, 10, |ev| match ev {
        Event::Entry(e) => pick(&e),
        _ => None,
    })
    .await
}

async fn admin(
    addr: &str,
    ts: &TestServer,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let (status, answer) =
        api_call(addr, method, path, Some(&admin_token(ts)), body.as_ref()).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {answer}"
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ops_route_wants_the_admin_token() {
    let ts = TestServer::start().await;
    ts.register(&["opsuser"]).await;
    let addr = ts.addr();
    let user = token(&addr, "opsuser", "d1").await;
    let body = json!({"text": "hi"});
    let routes: &[(&str, &str, Option<&serde_json::Value>)] = &[
        ("GET", "admin/groups", None),
        ("GET", "admin/groups/1", None),
        ("DELETE", "admin/groups/1", None),
        ("POST", "admin/messages/1/recall", None),
        ("POST", "admin/broadcast", Some(&body)),
        ("GET", "admin/users/opsuser/limits", None),
        ("PUT", "admin/users/opsuser/limits", Some(&body)),
        ("DELETE", "admin/users/opsuser/limits", None),
    ];
    for (method, path, body) in routes {
        let (status, answer) = api_call(&addr, method, path, None, *body).await;
        assert_eq!(status, 401, "{method} {path} without a token: {answer}");
        let (status, answer) = api_call(&addr, method, path, Some(&user), *body).await;
        assert_eq!(status, 403, "{method} {path} with a user's token: {answer}");
        assert_eq!(answer["error"]["code"], "PERMISSION_DENIED");
    }
    // Nothing was sent or changed: the user's inbox is empty, no override is set.
    let (_, limits) = api_call(
        &addr,
        "GET",
        "admin/users/opsuser/limits",
        Some(&admin_token(&ts)),
        None,
    )
    .await;
    assert_eq!(limits["override"], serde_json::Value::Null, "{limits}");
    let (ann, mut ev) = connect(&addr, "opsuser").await;
    assert_quiet(&mut ev, "opsuser", 300).await;
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dissolved_group_is_gone_from_its_members_devices() {
    let ts = TestServer::start().await;
    ts.register(&["downer", "dann", "dbob"]).await;
    let addr = ts.addr();
    let (owner, _owner_ev) = connect(&addr, "downer").await;
    let (ann, mut ann_ev) = connect(&addr, "dann").await;
    let g = owner
        .account()
        .create_group("doomed", &["dann", "dbob"], false)
        .await
        .unwrap()
        .group_id;
    owner.send_group(g, "before", &[]).await.unwrap();
    event_where(&mut ann_ev, 10, |ev| match ev {
        Event::Group { group_id, entry } if group_id == g => match entry.kind {
            Some(group_entry::Kind::Message(m)) if m.text == "before" => Some(()),
            _ => None,
        },
        _ => None,
    })
    .await;

    let list = admin(&addr, &ts, "GET", "admin/groups?q=DOOM", None).await;
    assert_eq!(list["groups"][0]["id"], g.to_string(), "{list}");
    assert_eq!(list["groups"][0]["member_count"], 3);
    let shown = admin(&addr, &ts, "GET", &format!("admin/groups/{g}"), None).await;
    assert_eq!(shown["owner"], "downer");
    assert_eq!(shown["members"].as_array().unwrap().len(), 3);

    let done = admin(&addr, &ts, "DELETE", &format!("admin/groups/{g}"), None).await;
    assert_eq!(done["members_removed"], 3, "{done}");
    // The connected member's device is told in its inbox.
    let ev = entry_where(&mut ann_ev, |e| match &e.kind {
        Some(v1::entry::Kind::Group(ev)) if ev.group_id == g => Some(ev.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ev.kind(), v1::group_event::Kind::Dissolved);
    assert_eq!(ev.by, "admin");
    // The group is gone for every member: not listed, no info, no sends.
    for c in [&owner, &ann] {
        assert!(c.account().groups().await.unwrap().is_empty());
        assert_eq!(code(c.account().group_info(g).await), ErrorCode::NotFound);
    }
    assert_eq!(
        code(ann.send_group(g, "after", &[]).await),
        ErrorCode::NotFound
    );
    // The offline member learns it at their next sync.
    let (bob, mut bob_ev) = connect(&addr, "dbob").await;
    let ev = entry_where(&mut bob_ev, |e| match &e.kind {
        Some(v1::entry::Kind::Group(ev))
            if ev.group_id == g && ev.kind() == v1::group_event::Kind::Dissolved =>
        {
            Some(ev.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(ev.by, "admin");
    // The admin still sees it, dissolved; a second dissolution is a 404.
    let shown = admin(&addr, &ts, "GET", &format!("admin/groups/{g}"), None).await;
    assert_eq!(
        (shown["dissolved"].as_bool(), shown["member_count"].as_u64()),
        (Some(true), Some(0))
    );
    let (status, _) = api_call(
        &addr,
        "DELETE",
        &format!("admin/groups/{g}"),
        Some(&admin_token(&ts)),
        None,
    )
    .await;
    assert_eq!(status, 404);
    for c in [owner, ann, bob] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_recalls_any_message_from_every_device() {
    let ts = TestServer::with(|c| c.logic.recall_window_secs = 1).await;
    ts.register(&["rann", "rbob", "rcat"]).await;
    let addr = ts.addr();
    let tablet_dir = tempfile::tempdir().unwrap();
    let (ann, mut ann_ev) = connect(&addr, "rann").await;
    let (phone, mut phone_ev) = connect(&addr, "rbob").await;
    let (tablet, mut tablet_ev) = device(&addr, "rbob", tablet_dir.path()).await;
    let g = ann
        .account()
        .create_group("recalls", &["rbob", "rcat"], false)
        .await
        .unwrap()
        .group_id;
    let direct = ann.send_text("rbob", "1:1 oops").await.unwrap().msg_id;
    let in_group = ann.send_group(g, "group oops", &[]).await.unwrap().msg_id;
    // Both of bob's devices have both messages; then the tablet goes offline.
    for ev in [&mut phone_ev, &mut tablet_ev] {
        entry_where(ev, |e| match &e.kind {
            Some(v1::entry::Kind::Message(m)) if m.msg_id == direct => Some(()),
            _ => None,
        })
        .await;
        event_where(ev, 10, |e| match e {
            Event::Group { entry, .. } => match entry.kind {
                Some(group_entry::Kind::Message(m)) if m.msg_id == in_group => Some(()),
                _ => None,
            },
            _ => None,
        })
        .await;
    }
    tablet.close().await;
    drop(tablet_ev);
    // Past the sender's window: ann may no longer recall them herself.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(code(ann.recall(direct).await), ErrorCode::PermissionDenied);

    let r = admin(
        &addr,
        &ts,
        "POST",
        &format!("admin/messages/{direct}/recall"),
        None,
    )
    .await;
    assert_eq!(
        (r["msg_id"].as_str(), r["group_id"].is_null()),
        (Some(direct.to_string().as_str()), true),
        "{r}"
    );
    let r = admin(
        &addr,
        &ts,
        "POST",
        &format!("admin/messages/{in_group}/recall"),
        None,
    )
    .await;
    assert_eq!(r["group_id"], g.to_string(), "{r}");
    // Again: the content is gone already.
    let (status, _) = api_call(
        &addr,
        "POST",
        &format!("admin/messages/{direct}/recall"),
        Some(&admin_token(&ts)),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Online devices: both sides of the 1:1, and the group's members.
    for ev in [&mut ann_ev, &mut phone_ev] {
        let by = entry_where(ev, |e| match &e.kind {
            Some(v1::entry::Kind::Recall(r)) if r.msg_id == direct => Some(r.by.clone()),
            _ => None,
        })
        .await;
        assert_eq!(by, "admin");
    }
    let recalled_in_group = |e: Event| match e {
        Event::Group { entry, .. } => match entry.kind {
            Some(group_entry::Kind::Recall(r)) if r.msg_id == in_group => Some(()),
            _ => None,
        },
        _ => None,
    };
    event_where(&mut phone_ev, 10, recalled_in_group).await;
    // The device that was offline gets both recalls when it comes back.
    let (tablet, mut tablet_ev) = device(&addr, "rbob", tablet_dir.path()).await;
    entry_where(&mut tablet_ev, |e| match &e.kind {
        Some(v1::entry::Kind::Recall(r)) if r.msg_id == direct => Some(()),
        _ => None,
    })
    .await;
    event_where(&mut tablet_ev, 10, recalled_in_group).await;
    // A device new to the user finds neither message's content anywhere.
    let (fresh, mut fresh_ev) = connect(&addr, "rcat").await;
    event_where(&mut fresh_ev, 10, recalled_in_group).await;
    let (fresh_bob, mut fresh_bob_ev) = connect(&addr, "rbob").await;
    entry_where(&mut fresh_bob_ev, |e| match &e.kind {
        Some(v1::entry::Kind::Recall(r)) if r.msg_id == direct => Some(()),
        Some(v1::entry::Kind::Message(m)) if m.msg_id == direct => {
            panic!("the recalled message is still on the server: {m:?}")
        }
        _ => None,
    })
    .await;
    for c in [ann, phone, tablet, fresh, fresh_bob] {
        c.close().await;
    }
}

/// System messages that reach `events` within `ms`.
async fn system_texts(events: &mut Receiver<Event>, ms: u64) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let Event::Entry(e) = ev {
            if let Some(v1::entry::Kind::Message(m)) = e.kind {
                if m.r#type == v1::MsgType::System as i32 {
                    assert_eq!(m.from, "system");
                    got.push(m.text);
                }
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_each_recipient_exactly_once() {
    let ts = TestServer::start().await;
    let names = ["bc0", "bc1", "bc2", "bc3"];
    ts.register(&names).await;
    let addr = ts.addr();
    let mut clients = Vec::new();
    for n in names {
        clients.push(connect(&addr, n).await);
    }
    let r = admin(
        &addr,
        &ts,
        "POST",
        "admin/broadcast",
        Some(json!({"text": "to two", "to": ["bc1", "bc3", "bc1"]})),
    )
    .await;
    assert_eq!(r["recipients"], 2, "{r}");
    let r = admin(
        &addr,
        &ts,
        "POST",
        "admin/broadcast",
        Some(json!({"text": "to all"})),
    )
    .await;
    assert_eq!(r["recipients"], names.len(), "{r}");
    let (status, r) = api_call(
        &addr,
        "POST",
        "admin/broadcast",
        Some(&admin_token(&ts)),
        Some(&json!({"text": "x", "to": ["bc0", "nobody"]})),
    )
    .await;
    assert_eq!(status, 404, "{r}");
    for (i, (_, ev)) in clients.iter_mut().enumerate() {
        let got = system_texts(ev, 1_500).await;
        let want: &[&str] = if i == 1 || i == 3 {
            &["to two", "to all"]
        } else {
            &["to all"]
        };
        assert_eq!(got, want, "{}", names[i]);
    }
    // A user may not send one.
    let spoof = v1::SendMsg {
        client_msg_id: 77,
        to: "bc1".into(),
        text: "from the system, honest".into(),
        r#type: v1::MsgType::System as i32,
        ..Default::default()
    };
    assert_eq!(
        code(clients[0].0.send_msg(&spoof).await),
        ErrorCode::InvalidArgument
    );
    for (c, _) in clients {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_send_rate_override_applies_to_them_only_until_cleared() {
    let ts = TestServer::start().await;
    ts.register(&["lslow", "lfast", "lpeer"]).await;
    let addr = ts.addr();
    let set = admin(
        &addr,
        &ts,
        "PUT",
        "admin/users/lslow/limits",
        Some(json!({"sends_per_user": {"per_sec": 0.01, "burst": 3}})),
    )
    .await;
    assert_eq!(set["effective"]["sends_per_user"]["burst"], 3.0, "{set}");
    let got = admin(&addr, &ts, "GET", "admin/users/lslow/limits", None).await;
    assert_eq!(got["override"]["sends_per_user"]["per_sec"], 0.01, "{got}");
    let (status, _) = api_call(
        &addr,
        "PUT",
        "admin/users/lslow/limits",
        Some(&admin_token(&ts)),
        Some(&json!({"sends_per_second": 1})),
    )
    .await;
    assert_eq!(status, 400, "unknown fields are refused");

    // Sends on raw links, so each refusal is seen (a client would wait and retry).
    async fn link(addr: &str, user: &str) -> RawLink {
        let t = token(addr, user, "d1").await;
        let mut raw = RawLink::connect(addr).await;
        assert_eq!(raw.login(&t).await.cmd, cmd::response(cmd::LOGIN));
        raw
    }
    async fn send(raw: &mut RawLink, i: u32) -> Result<(), v1::Error> {
        let m = v1::SendMsg {
            client_msg_id: 1_000 + u64::from(i),
            to: "lpeer".into(),
            text: format!("m{i}"),
            ..Default::default()
        };
        raw.send(cmd::SEND, i, &m).await;
        loop {
            let f = raw.recv(5).await.expect("an answer");
            if f.req_id != i {
                continue;
            }
            if f.cmd == cmd::ERROR {
                return Err(v1::Error::decode(f.body).unwrap());
            }
            assert_eq!(f.cmd, cmd::response(cmd::SEND));
            return Ok(());
        }
    }
    let mut slow = link(&addr, "lslow").await;
    let mut fast = link(&addr, "lfast").await;
    for i in 1..=3 {
        send(&mut slow, i).await.unwrap();
    }
    let refused = send(&mut slow, 4).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::RateLimited as i32, "{refused:?}");
    for i in 1..=20 {
        send(&mut fast, i).await.unwrap();
    }
    // Cleared: the test server's limits (none) apply again.
    let (status, _) = api_call(
        &addr,
        "DELETE",
        "admin/users/lslow/limits",
        Some(&admin_token(&ts)),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let got = admin(&addr, &ts, "GET", "admin/users/lslow/limits", None).await;
    assert!(got["override"].is_null(), "{got}");
    // The refused send goes first (the device's order), then the rest.
    for i in 4..=14 {
        send(&mut slow, i).await.unwrap();
    }
}
