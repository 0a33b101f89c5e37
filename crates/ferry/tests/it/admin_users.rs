//! The admin API's users (docs/admin-api.md, Users) against a real server: every route
//! refused without the admin token and with a user's token; disable refuses sign-in with
//! the reason until enabled; delete kicks the live devices, recalls the messages on the
//! peers' devices and leaves no row naming the user in any table; export holds exactly
//! the user's data.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ferry_client::Event;
use ferry_proto::v1::{self, MediaKind};
use ferry_testkit::*;
use serde_json::{json, Value};

/// One admin API call: (status, body).
async fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Vec<u8>) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "{method} /v1/{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         X-Ferry-Actor: it-test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = http_request(addr, raw.as_bytes()).await;
    (a.status, a.body)
}

/// An admin call that must succeed; its JSON answer.
async fn admin(ts: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, body) = call(&ts.addr(), method, path, Some(&admin_token(ts)), body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    }
}

/// The token `ferry serve` generated in its data folder.
fn admin_token(ts: &TestServer) -> String {
    std::fs::read_to_string(ts.dir.path().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The users routes, with a user name where one goes.
fn routes(user: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", "admin/users".into(), None),
        ("GET", "admin/users?q=a&limit=5".into(), None),
        (
            "POST",
            "admin/users".into(),
            Some(json!({"name": "mallory", "password": "password-9"})),
        ),
        ("GET", format!("admin/users/{user}"), None),
        (
            "POST",
            format!("admin/users/{user}/disable"),
            Some(json!({"reason": "x"})),
        ),
        ("POST", format!("admin/users/{user}/enable"), None),
        ("POST", format!("admin/users/{user}/logout"), None),
        ("DELETE", format!("admin/users/{user}"), None),
        ("GET", format!("admin/users/{user}/export"), None),
    ]
}

#[tokio::test]
async fn every_users_route_needs_the_admin_token() {
    let ts = TestServer::start().await;
    ts.register(&["ursula"]).await;
    let user_token = token(&ts.addr(), "ursula", "phone").await;
    for (method, path, body) in routes("ursula") {
        let (status, answer) = call(&ts.addr(), method, &path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        let err: Value = serde_json::from_slice(&answer).unwrap();
        assert!(err["error"]["code"].is_string(), "{err}");
        let (status, _) = call(&ts.addr(), method, &path, Some(&user_token), body.clone()).await;
        assert_eq!(status, 403, "{method} {path} with a user's token");
        let (status, _) = call(&ts.addr(), method, &path, Some("not-a-token"), body).await;
        assert!(
            matches!(status, 401 | 403),
            "{method} {path} with a wrong token"
        );
    }
    // Nothing happened: ursula is there, enabled, signed in; no mallory.
    let u = admin(&ts, "GET", "admin/users/ursula", None).await;
    assert_eq!(u["disabled"], false);
    assert_eq!(u["devices"][0]["signed_in"], true);
    let (status, _) = call(
        &ts.addr(),
        "GET",
        "admin/users/mallory",
        Some(&admin_token(&ts)),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn create_list_disable_and_enable() {
    let ts = TestServer::start().await;
    let made = admin(
        &ts,
        "POST",
        "admin/users",
        Some(json!({"name": "vera", "password": PASSWORD})),
    )
    .await;
    assert_eq!(
        (made["name"].as_str(), made["bot"].as_bool()),
        (Some("vera"), Some(false))
    );
    let (status, _) = call(
        &ts.addr(),
        "POST",
        "admin/users",
        Some(&admin_token(&ts)),
        Some(json!({"name": "vera", "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 409, "the name is taken");
    let (status, _) = call(
        &ts.addr(),
        "POST",
        "admin/users",
        Some(&admin_token(&ts)),
        Some(json!({"name": "bad name", "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 400);
    ts.register(&["vernon", "walt"]).await;
    let page = admin(&ts, "GET", "admin/users?q=VER&limit=1", None).await;
    assert_eq!(page["users"][0]["name"], "vera");
    let next = page["next"].as_str().expect("a next page");
    let page = admin(&ts, "GET", &format!("admin/users?q=ver&after={next}"), None).await;
    assert_eq!(page["users"][0]["name"], "vernon");
    assert_eq!(page["users"].as_array().unwrap().len(), 1);

    // Vera signs in on a long link, then is disabled: the link is kicked, sign-in refused
    // with the reason, until enabled.
    let (client, mut events) = connect(&ts.addr(), "vera").await;
    client.wait_connected().await.unwrap();
    let shown = admin(&ts, "GET", "admin/users/vera", None).await;
    assert_eq!(shown["devices"][0]["online"], true, "{shown}");
    let u = admin(
        &ts,
        "POST",
        "admin/users/vera/disable",
        Some(json!({"reason": "spamming"})),
    )
    .await;
    assert_eq!(
        (u["disabled"].as_bool(), u["disabled_reason"].as_str()),
        (Some(true), Some("spamming"))
    );
    let stopped = event_where(&mut events, 10, |e| match e {
        Event::Stopped { error } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(
        stopped.to_string().contains("disabled"),
        "the client stopped for the ban: {stopped}"
    );
    let short = ferry_client::ShortLink::new(&ts.addr());
    let refused = short.auth("vera", PASSWORD, "phone").await.unwrap_err();
    assert_eq!(refused.code(), Some(v1::ErrorCode::PermissionDenied));
    assert!(
        refused
            .to_string()
            .contains("this account is disabled: spamming"),
        "{refused}"
    );
    // Signed out everywhere; offline once the gateway closed the link (bounded wait).
    let mut devices = Value::Null;
    for _ in 0..50 {
        devices = admin(&ts, "GET", "admin/users/vera", None).await["devices"].clone();
        if devices
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["signed_in"] == false && d["online"] == false)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["signed_in"] == false && d["online"] == false),
        "{devices}"
    );
    admin(&ts, "POST", "admin/users/vera/enable", None).await;
    short.auth("vera", PASSWORD, "phone").await.unwrap();

    // A force logout ends every session.
    token(&ts.addr(), "vera", "tablet").await;
    let out = admin(&ts, "POST", "admin/users/vera/logout", None).await;
    assert_eq!(out["sessions_revoked"], 2);
}

/// A tar archive's files, by name (ustar, as the export writes it).
fn untar(mut tar: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut blocks = 0;
    while tar.len() >= 512 && blocks < 100_000 {
        blocks += 1;
        let h = &tar[..512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let name = String::from_utf8(h[..100].split(|&b| b == 0).next().unwrap().to_vec()).unwrap();
        let size = usize::from_str_radix(
            std::str::from_utf8(&h[124..135])
                .unwrap()
                .trim_matches(char::from(0))
                .trim(),
            8,
        )
        .unwrap();
        let sum: u32 = h[..148]
            .iter()
            .chain(&[b' '; 8])
            .chain(&h[156..])
            .map(|&b| u32::from(b))
            .sum();
        let stored =
            u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap().trim(), 8).unwrap();
        assert_eq!(sum, stored, "header checksum of {name}");
        let body = &tar[512..512 + size];
        files.insert(name, body.to_vec());
        let padded = size.div_ceil(512) * 512;
        tar = &tar[512 + padded..];
    }
    files
}

async fn export(ts: &TestServer, user: &str) -> Vec<u8> {
    let (status, body) = call(
        &ts.addr(),
        "GET",
        &format!("admin/users/{user}/export"),
        Some(&admin_token(ts)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    body
}

#[tokio::test]
async fn export_holds_exactly_the_users_data() {
    let ts = TestServer::start().await;
    ts.register(&["xena", "yuri", "zoe"]).await;
    let (xena, _xe) = connect(&ts.addr(), "xena").await;
    let (yuri, _ye) = connect(&ts.addr(), "yuri").await;
    let (zoe, _ze) = connect(&ts.addr(), "zoe").await;
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(
            xena.send_text("yuri", &format!("x{i}"))
                .await
                .unwrap()
                .msg_id,
        );
    }
    mine.push(yuri.send_text("xena", "to xena").await.unwrap().msg_id);
    let not_mine = zoe.send_text("yuri", "zoe to yuri").await.unwrap().msg_id;
    // Media big enough to span parts (a part is at most 512 KiB).
    let big = noise(1_300_000, 7);
    let small = noise(1000, 8);
    let m1 = xena
        .account()
        .upload(Bytes::from(big.clone()), MediaKind::MediaFile, &|_, _| {})
        .await
        .unwrap();
    let m2 = xena
        .account()
        .upload(Bytes::from(small.clone()), MediaKind::MediaFile, &|_, _| {})
        .await
        .unwrap();
    let other = zoe
        .account()
        .upload(Bytes::from(noise(500, 9)), MediaKind::MediaFile, &|_, _| {})
        .await
        .unwrap();

    let files = untar(&export(&ts, "xena").await);
    let user: Value = serde_json::from_slice(&files["user.json"]).unwrap();
    assert_eq!(user["name"], "xena");
    for f in [
        "friends.json",
        "groups.json",
        "moments.json",
        "reports.json",
    ] {
        let _: Value = serde_json::from_slice(&files[f]).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let lines: Vec<Value> = String::from_utf8(files["messages.jsonl"].clone())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<u64> = lines
        .iter()
        .map(|m| m["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, mine, "exactly the messages xena sent or received");
    assert!(!ids.contains(&not_mine));
    assert!(lines
        .iter()
        .all(|m| m["from"] == "xena" || m["to"] == "xena"));
    assert_eq!(files[&format!("media/{}", m1.media_id)], big);
    assert_eq!(files[&format!("media/{}", m2.media_id)], small);
    assert!(!files.contains_key(&format!("media/{}", other.media_id)));
    let media: Vec<&String> = files.keys().filter(|k| k.starts_with("media/")).collect();
    assert_eq!(media.len(), 2, "{media:?}");
}

#[tokio::test]
async fn delete_kicks_recalls_and_leaves_no_row() {
    let ts = TestServer::start().await;
    ts.register(&["dora", "eli"]).await;
    let (dora, mut dora_events) = connect(&ts.addr(), "dora").await;
    dora.wait_connected().await.unwrap();
    let (eli, mut eli_events) = connect(&ts.addr(), "eli").await;
    eli.wait_connected().await.unwrap();
    let sent = dora.send_text("eli", "remember me").await.unwrap();
    let got = recv_messages(&mut eli_events, "eli", 1, 10).await;
    assert_eq!(got[0].1.msg_id, sent.msg_id);
    eli.send_text("dora", "sure").await.unwrap();
    dora.account()
        .upload(
            Bytes::from(noise(2000, 1)),
            MediaKind::MediaFile,
            &|_, _| {},
        )
        .await
        .unwrap();
    let dora_id = dora.user_id();

    let out = admin(&ts, "DELETE", "admin/users/dora", None).await;
    assert_eq!(out["deleted"]["users"], 1, "{out}");
    assert_eq!(out["deleted"]["messages"], 1, "{out}");
    assert_eq!(out["deleted"]["media"], 1, "{out}");
    // Her live link is kicked.
    event_where(&mut dora_events, 10, |e| match e {
        Event::Stopped { .. } => Some(()),
        _ => None,
    })
    .await;
    // Eli's device gets the recall of her message.
    let recalled = event_where(&mut eli_events, 10, |e| match e {
        Event::Entry(v1::Entry {
            kind: Some(v1::entry::Kind::Recall(r)),
            ..
        }) => Some(r.msg_id),
        _ => None,
    })
    .await;
    assert_eq!(recalled, sent.msg_id);
    // Nothing of hers is left in any table (every user column, from the catalog).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = ts.server.store.leftover_rows(dora_id).await.unwrap();
    assert!(left.is_empty(), "rows of dora left: {left:?}");
    let (status, _) = call(
        &ts.addr(),
        "GET",
        "admin/users/dora",
        Some(&admin_token(&ts)),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // A fresh sync of eli's shows no message from dora.
    let eli_token = token(&ts.addr(), "eli", "laptop").await;
    let page = ferry_client::ShortLink::new(&ts.addr())
        .newsync(&eli_token, 0, 100)
        .await
        .unwrap();
    assert!(!page
        .entries
        .iter()
        .any(|e| matches!(&e.kind, Some(v1::entry::Kind::Message(m)) if m.from == "dora")));
}
