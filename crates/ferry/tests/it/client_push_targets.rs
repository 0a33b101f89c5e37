//! Push targets and settings through the SDK and the CLI against a server whose `[push]`
//! points at the push simulator: register / list / unregister round trips on the long
//! link and the short link (in the background), per-conversation settings, the server's
//! refusals, and the whole path — an app in the background is pushed through the
//! provider, and syncs the message when it comes back.

use std::process::Command;
use std::time::Duration;

use ferry_client::{push, Account, Client, Event, Status};
use ferry_proto::v1;
use ferry_push::sim::Sim;
use ferry_push::Provider;
use ferry_testkit::*;
use tokio::time::Instant;

/// A test server pushing through the sim (every provider but APNs, so that refusing an
/// unconfigured provider can be seen), and the folder holding the sim's keys.
async fn push_server(sim: &Sim) -> (TestServer, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let mut push = sim.config(keys.path()).expect("the sim's keys and config");
    push.apns = None;
    let ts = TestServer::with(|c| {
        c.push = push;
        c.logic.push.quiet_ms = 200;
    })
    .await;
    (ts, keys)
}

fn web_target(sim: &Sim, id: &str) -> v1::PushTarget {
    let (p256dh, auth) = ferry_push::sim::throwaway_subscription();
    push::web_push(&sim.web_push_endpoint(id), &p256dh, &auth)
}

fn devices(targets: &[v1::PushTarget]) -> Vec<String> {
    targets.iter().map(|t| t.device_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_register_list_replace_and_unregister() {
    let sim = Sim::start().await.unwrap();
    let (ts, _keys) = push_server(&sim).await;
    ts.register(&["bob"]).await;
    let addr = ts.addr();
    // The phone on the long link, the tablet on the short link only.
    let (phone, _ev) = connect(&addr, "bob").await;
    let tablet = Account::open(client_config(&addr, "bob")).await.unwrap();

    let t = web_target(&sim, "phone-1");
    let stored = phone.register_push(t.clone()).await.unwrap();
    assert_eq!(stored.device_id, phone.device_id());
    assert!(stored.created_ms > 0);
    assert_eq!(stored.provider(), v1::PushProvider::Webpush);
    assert_eq!(
        (stored.endpoint.as_str(), stored.p256dh.as_str()),
        (t.endpoint.as_str(), t.p256dh.as_str())
    );
    let fcm = tablet
        .register_push(push::fcm("tablet-token-1", ""))
        .await
        .unwrap();
    assert_ne!(fcm.device_id, phone.device_id());

    let mut want = vec![phone.device_id(), fcm.device_id.clone()];
    want.sort();
    assert_eq!(devices(&phone.push_targets().await.unwrap()), want);
    assert_eq!(devices(&tablet.push_targets().await.unwrap()), want);

    // Registering again replaces the device's target: still one per device.
    let again = phone
        .register_push(push::fcm("phone-token-2", ""))
        .await
        .unwrap();
    assert_eq!(again.device_id, phone.device_id());
    let list = phone.push_targets().await.unwrap();
    assert_eq!(list.len(), 2);
    let mine = list
        .iter()
        .find(|t| t.device_id == phone.device_id())
        .unwrap();
    assert_eq!(
        (mine.provider(), mine.token.as_str()),
        (v1::PushProvider::Fcm, "phone-token-2")
    );

    // Refusals: a malformed target names its field; a provider the server does not
    // push through (no [push.apns]) is INVALID_ARGUMENT; nothing is stored.
    let mut bad = web_target(&sim, "x");
    bad.endpoint = "http://insecure.example/wp".into();
    let e = phone.register_push(bad).await.unwrap_err();
    assert_eq!(e.code(), Some(v1::ErrorCode::BadRequest), "{e}");
    assert!(e.to_string().contains("endpoint"), "{e}");
    let e = phone
        .register_push(push::apns(&"ab".repeat(32), "org.ferry.app", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(v1::ErrorCode::InvalidArgument), "{e}");
    assert_eq!(phone.push_targets().await.unwrap().len(), 2);

    // The phone removes the tablet's target, then its own; removing again is no error.
    phone.unregister_push(Some(&fcm.device_id)).await.unwrap();
    assert_eq!(
        devices(&tablet.push_targets().await.unwrap()),
        [phone.device_id()]
    );
    phone.unregister_push(None).await.unwrap();
    phone.unregister_push(None).await.unwrap();
    assert!(phone.push_targets().await.unwrap().is_empty());
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_requests_go_over_the_short_link_in_the_background() {
    let sim = Sim::start().await.unwrap();
    let (ts, _keys) = push_server(&sim).await;
    ts.register(&["ann", "bob"]).await;
    let mut cfg = client_config(&ts.addr(), "bob");
    cfg.background_grace = Duration::ZERO;
    let (bob, _ev) = Client::connect(cfg).await.unwrap();
    bob.app_backgrounded();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bob.status() != Status::Background {
        assert!(Instant::now() < deadline, "not in the background");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = bob.register_push(web_target(&sim, "bg")).await.unwrap();
    assert_eq!(stored.device_id, bob.device_id());
    assert_eq!(
        devices(&bob.push_targets().await.unwrap()),
        [bob.device_id()]
    );
    let prefs = bob
        .set_push_prefs(vec![v1::ConversationPush {
            group_id: 0,
            peer: "ann".into(),
            mode: v1::PushMode::Muted as i32,
            until_ms: 0,
        }])
        .await
        .unwrap();
    assert_eq!(prefs.len(), 1);
    // Still in the background: none of that needed the long link.
    assert_eq!(bob.status(), Status::Background);
    assert_eq!(ts.server.gateway.links(), 0);
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_settings_round_trip() {
    let sim = Sim::start().await.unwrap();
    let (ts, _keys) = push_server(&sim).await;
    ts.register(&["ann", "bob", "cat"]).await;
    let addr = ts.addr();
    let (bob, _ev) = connect(&addr, "bob").await;
    let group = bob
        .account()
        .create_group("g", &["cat"], false)
        .await
        .unwrap()
        .group_id;
    let until = now_ms() as i64 + 3_600_000;
    let set = vec![
        v1::ConversationPush {
            peer: "ann".into(),
            mode: v1::PushMode::Muted as i32,
            until_ms: until,
            ..Default::default()
        },
        v1::ConversationPush {
            group_id: group,
            mode: v1::PushMode::Mentions as i32,
            ..Default::default()
        },
    ];
    let mut got = bob.set_push_prefs(set.clone()).await.unwrap();
    got.sort_by_key(|c| c.group_id);
    assert_eq!(got, set);
    let mut read = bob.account().push_prefs().await.unwrap();
    read.sort_by_key(|c| c.group_id);
    assert_eq!(read, set);

    // DEFAULT removes one; the other stays.
    let left = bob
        .set_push_prefs(vec![v1::ConversationPush {
            peer: "ann".into(),
            mode: v1::PushMode::Default as i32,
            ..Default::default()
        }])
        .await
        .unwrap();
    assert_eq!(left, set[1..]);

    // Refusals.
    let e = bob
        .set_push_prefs(vec![v1::ConversationPush {
            peer: "nobody".into(),
            mode: v1::PushMode::Muted as i32,
            ..Default::default()
        }])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(v1::ErrorCode::UnknownUser), "{e}");
    let e = bob
        .set_push_prefs(vec![v1::ConversationPush {
            peer: "ann".into(),
            group_id: group,
            mode: v1::PushMode::Muted as i32,
            ..Default::default()
        }])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(v1::ErrorCode::BadRequest), "{e}");
    let e = bob
        .set_push_prefs(vec![v1::ConversationPush {
            group_id: group + 1000,
            mode: v1::PushMode::Muted as i32,
            ..Default::default()
        }])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(v1::ErrorCode::NotFound), "{e}");
    assert_eq!(bob.push_prefs().await.unwrap(), set[1..]);
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_in_the_background_is_pushed_and_syncs_when_it_comes_back() {
    let sim = Sim::start().await.unwrap();
    let (ts, _keys) = push_server(&sim).await;
    ts.register(&["ann", "bob"]).await;
    let addr = ts.addr();
    let (ann, _ann_ev) = connect(&addr, "ann").await;
    let mut cfg = client_config(&addr, "bob");
    cfg.background_grace = Duration::from_millis(200);
    let (bob, mut bob_ev) = Client::connect(cfg).await.unwrap();
    bob.register_push(web_target(&sim, "bob-phone"))
        .await
        .unwrap();

    // Online: no push.
    ann.send_text("bob", "while online").await.unwrap();
    assert_eq!(
        recv_messages(&mut bob_ev, "bob", 1, 10).await[0].1.text,
        "while online"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sim.requests_of(Provider::WebPush).is_empty(),
        "pushed while online"
    );

    bob.app_backgrounded();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ts.server.logic.users_online() != 1 {
        assert!(Instant::now() < deadline, "bob still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ack = ann.send_text("bob", "while away").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pushed = loop {
        if let Some(r) = sim.requests_of(Provider::WebPush).into_iter().next() {
            break r;
        }
        assert!(Instant::now() < deadline, "no push reached the provider");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(pushed.key, "bob-phone");
    assert_eq!(pushed.status, 201);
    assert_eq!(pushed.header("urgency"), Some("high"));
    assert!(pushed
        .header("topic")
        .is_some_and(|t| t.starts_with("ferry-")));
    assert_eq!(sim.violations(), vec![]);
    assert_eq!(bob.status(), Status::Background);

    // Back: the message comes by sync, the one the push stood for.
    bob.app_foregrounded();
    let got = recv_messages(&mut bob_ev, "bob", 1, 10).await;
    assert_eq!(
        (got[0].1.msg_id, got[0].1.text.as_str()),
        (ack.msg_id, "while away")
    );
    assert!(
        !matches!(bob_ev.try_recv(), Ok(Event::Entry(_))),
        "more than the one entry"
    );
    bob.close().await;
    ann.close().await;
}

/// `ferry <args> --server … --user bob --password … --state DIR` as a process.
fn ferry_as(addr: &str, state: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(crate::FERRY)
        .args(args)
        .args([
            "--server",
            addr,
            "--user",
            "bob",
            "--password",
            PASSWORD,
            "--state",
        ])
        .arg(state)
        .env_remove("FERRY_SERVER_KEY")
        .output()
        .expect("running ferry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_lists_mutes_and_removes() {
    let sim = Sim::start().await.unwrap();
    let (ts, _keys) = push_server(&sim).await;
    ts.register(&["ann", "bob"]).await;
    let addr = ts.addr();
    let state = tempfile::tempdir().unwrap();
    let (p256dh, auth) = ferry_push::sim::throwaway_subscription();
    let endpoint = sim.web_push_endpoint("cli-1");
    let (ok, out, err) = ferry_as(
        &addr,
        state.path(),
        &[
            "push",
            "register",
            "--provider",
            "webpush",
            "--endpoint",
            &endpoint,
            "--p256dh",
            &p256dh,
            "--auth",
            &auth,
            "--preview",
            "sender",
            "--dnd",
            "22:00-07:00",
            "--utc-offset",
            "+01:00",
            "--locale",
            "de",
        ],
    );
    assert!(ok, "{out}{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["provider"], "webpush");
    assert_eq!(line["this_device"], true);
    assert_eq!(line["preview"], "sender");
    assert_eq!(line["dnd"], "22:00-07:00");
    assert_eq!(line["utc_offset_min"], 60);
    assert_eq!(line["locale"], "de");

    let (ok, out, err) = ferry_as(&addr, state.path(), &["push", "list"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["endpoint"],
        endpoint.as_str()
    );

    let (ok, out, err) = ferry_as(
        &addr,
        state.path(),
        &["push", "mute", "ann", "--until", "8h"],
    );
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (m["peer"].as_str(), m["mode"].as_str()),
        (Some("ann"), Some("muted"))
    );
    let until = m["until_ms"].as_i64().unwrap();
    let eight_h = now_ms() as i64 + 8 * 3_600_000;
    assert!((eight_h - 60_000..=eight_h).contains(&until), "{until}");
    let (ok, out, _) = ferry_as(&addr, state.path(), &["push", "prefs"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    let (ok, out, _) = ferry_as(&addr, state.path(), &["push", "unmute", "ann"]);
    assert!(ok);
    assert_eq!(out.trim(), "", "nothing left after unmute");

    // Refused by the server: the error reaches the user.
    let (ok, _, err) = ferry_as(&addr, state.path(), &["push", "mute", "nobody"]);
    assert!(!ok);
    assert!(
        err.contains("nobody") || err.to_lowercase().contains("unknown"),
        "{err}"
    );

    let (ok, out, err) = ferry_as(&addr, state.path(), &["push", "remove"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "removed this device's push target");
    let (ok, out, _) = ferry_as(&addr, state.path(), &["push", "list"]);
    assert!(ok);
    assert_eq!(out.trim(), "");
}
