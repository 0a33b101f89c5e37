//! `ferry admin push test` through the built binary, against the push simulator
//! (`ferry_push::sim`, which checks every request against the provider's contract): one
//! line per target with the provider's answer, a target the provider calls gone removed,
//! and clear failures without providers or targets.

use std::path::Path;
use std::process::{Command, Output};

use ferry_push::sim::{Reply, Sim};
use ferry_push::Provider;
use ferry_store::PushTargetRow;
use ferry_testkit::*;

fn ferry(args: &[&str]) -> Output {
    Command::new(crate::FERRY)
        .args(args)
        .env_remove("FERRY_POSTGRES")
        .output()
        .expect("running ferry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A configuration file holding `push` as its `[push]` section.
fn config_file(dir: &Path, push: Option<&ferry_push::PushConfig>) -> String {
    let mut table = toml::Table::new();
    if let Some(p) = push {
        table.insert("push".into(), toml::Value::try_from(p).unwrap());
    }
    let path = dir.join("ferry.toml");
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

fn row(user: u64, device: &str, provider: Provider) -> PushTargetRow {
    PushTargetRow {
        user_id: user,
        device_id: device.into(),
        provider: provider.name().into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_push_test_sends_to_every_target_and_removes_the_gone() {
    let sim = Sim::start().await.expect("the push simulator");
    let keys = tempfile::tempdir().unwrap();
    let push = sim.config(keys.path()).expect("the sim's keys and config");
    let ts = TestServer::start().await;
    ts.register(&["ann", "bob"]).await;
    let store = ts.server.store.clone();
    let ann = store.user_by_name("ann").await.unwrap().unwrap().id;

    let apns_token = "ab".repeat(32);
    store
        .put_push_target(PushTargetRow {
            token: apns_token.clone(),
            app_id: "org.ferry.app".into(),
            ..row(ann, "a-phone", Provider::Apns)
        })
        .await
        .unwrap();
    store
        .put_push_target(PushTargetRow {
            token: "fcm-token-gone".into(),
            ..row(ann, "b-android", Provider::Fcm)
        })
        .await
        .unwrap();
    let (p256dh, auth) = ferry_push::sim::throwaway_subscription();
    store
        .put_push_target(PushTargetRow {
            endpoint: sim.web_push_endpoint("browser-1"),
            p256dh,
            auth,
            ..row(ann, "c-browser", Provider::WebPush)
        })
        .await
        .unwrap();
    // The browser's device had synced up to 7: the test push stands for nothing newer.
    store.set_synckey(ann, "c-browser", 7).await.unwrap();
    sim.script("fcm-token-gone", Reply::Gone);

    let config = config_file(keys.path(), Some(&push));
    let data = ts.dir.path().to_string_lossy().into_owned();
    let out = ferry(&[
        "admin", "push", "test", "ann", "--data", &data, "--config", &config,
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], "device a-phone  apns  accepted");
    assert!(
        lines[1].starts_with("device b-android  fcm  gone: ")
            && lines[1].ends_with("(target removed)"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], "device c-browser  webpush  accepted");

    // What the providers got keeps their contracts, and is a test push.
    assert_eq!(sim.violations(), vec![], "contract violations");
    let apns = sim.requests_of(Provider::Apns);
    assert_eq!(apns.len(), 1);
    assert_eq!(apns[0].key, apns_token);
    assert_eq!(apns[0].header("apns-topic"), Some("org.ferry.app"));
    assert_eq!(apns[0].header("apns-push-type"), Some("alert"));
    assert_eq!(apns[0].header("apns-collapse-id"), Some("ferry-test"));
    let body = apns[0].json();
    assert_eq!(body["ferry"]["kind"], "test");
    assert_eq!(body["ferry"]["count"], 0);
    assert!(
        body["aps"].get("badge").is_none(),
        "a test leaves the badge: {body}"
    );
    let fcm_sends: Vec<_> = sim
        .requests_of(Provider::Fcm)
        .into_iter()
        .filter(|r| r.key == "fcm-token-gone")
        .collect();
    assert_eq!(fcm_sends.len(), 1);
    let fcm_data: serde_json::Value = serde_json::from_str(
        fcm_sends[0].json()["message"]["data"]["ferry"]
            .as_str()
            .expect("data.ferry is a JSON string"),
    )
    .unwrap();
    assert_eq!(fcm_data["kind"], "test");
    let web = sim.requests_of(Provider::WebPush);
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].key, "browser-1");
    assert_eq!(web[0].header("topic"), Some("ferry-test"));

    // The gone target went; the others stay.
    let left: Vec<String> = store
        .push_targets(ann)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.device_id)
        .collect();
    assert_eq!(left, ["a-phone", "c-browser"]);

    // A user without targets, an unknown user, a file without [push]: clear failures.
    let out = ferry(&[
        "admin", "push", "test", "bob", "--data", &data, "--config", &config,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bob has no push targets"),
        "{}",
        text(&out.stderr)
    );
    let out = ferry(&[
        "admin", "push", "test", "nobody", "--data", &data, "--config", &config,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no user \"nobody\""),
        "{}",
        text(&out.stderr)
    );
    let bare = tempfile::tempdir().unwrap();
    let empty = config_file(bare.path(), None);
    let out = ferry(&[
        "admin", "push", "test", "ann", "--data", &data, "--config", &empty,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no push provider is configured"),
        "{}",
        text(&out.stderr)
    );
    // Nothing more reached the providers.
    assert_eq!(sim.requests_of(Provider::Apns).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_push_test_fails_when_no_provider_accepts() {
    let sim = Sim::start().await.expect("the push simulator");
    let keys = tempfile::tempdir().unwrap();
    let push = sim.config(keys.path()).unwrap();
    let ts = TestServer::start().await;
    ts.register(&["cat"]).await;
    let store = ts.server.store.clone();
    let cat = store.user_by_name("cat").await.unwrap().unwrap().id;
    store
        .put_push_target(PushTargetRow {
            token: "cd".repeat(32),
            app_id: "org.ferry.app".into(),
            ..row(cat, "phone", Provider::Apns)
        })
        .await
        .unwrap();
    sim.script(
        &"cd".repeat(32),
        Reply::TooMany {
            retry_after_secs: 30,
        },
    );
    let config = config_file(keys.path(), Some(&push));
    let data = ts.dir.path().to_string_lossy().into_owned();
    let out = ferry(&[
        "admin", "push", "test", "cat", "--data", &data, "--config", &config,
    ]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("device phone  apns  retry: ") && stdout.contains("retry after 30 s"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("no test push was accepted"));
    // A busy provider is no reason to drop the target.
    assert_eq!(store.push_targets(cat).await.unwrap().len(), 1);
}
