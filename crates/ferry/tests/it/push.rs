//! Platform push end to end: a real server whose senders talk to `ferry_push::sim` (which
//! checks every request against APNs' and Web Push's contracts), devices registered
//! over the short link, messages sent by a real client.

use std::time::{Duration, Instant};

use ferry_client::ShortLink;
use ferry_proto::v1;
use ferry_push::sim::{Reply, Sim};
use ferry_push::Provider;
use ferry_testkit::*;

const APNS_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// A server pushing through `sim` (its keys in `keys`).
async fn server(sim: &Sim, keys: &std::path::Path, gather_ms: u64) -> TestServer {
    let push = sim.config(keys).unwrap();
    TestServer::with(|cfg| {
        cfg.push = push;
        cfg.logic.push.gather_ms = gather_ms;
        cfg.logic.push.quiet_ms = 60_000;
    })
    .await
}

async fn register(addr: &str, token: &str, target: v1::PushTarget) -> v1::PushListResp {
    ShortLink::new(addr)
        .call(
            "push/register",
            Some(token),
            &v1::PushRegisterReq {
                target: Some(target),
            },
        )
        .await
        .unwrap()
}

fn apns(preview: v1::PushPreview) -> v1::PushTarget {
    v1::PushTarget {
        provider: v1::PushProvider::Apns as i32,
        token: APNS_TOKEN.into(),
        app_id: "com.example.ferry".into(),
        locale: "en".into(),
        preview: preview as i32,
        ..Default::default()
    }
}

fn web(sim: &Sim, id: &str) -> v1::PushTarget {
    let (p256dh, auth) = ferry_push::sim::throwaway_subscription();
    v1::PushTarget {
        provider: v1::PushProvider::Webpush as i32,
        endpoint: sim.web_push_endpoint(id),
        p256dh,
        auth,
        ..Default::default()
    }
}

/// Waits (up to 10 s) until the sim has `n` requests of `provider`.
async fn wait_for(sim: &Sim, provider: Provider, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while sim.requests_of(provider).len() < n {
        assert!(
            Instant::now() < until,
            "{provider:?}: {} of {n} pushes; violations {:?}",
            sim.requests_of(provider).len(),
            sim.violations()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_gets_one_push_for_a_burst_through_apns_and_web_push() {
    let sim = Sim::start().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let srv = server(&sim, keys.path(), 300).await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let phone = token(&addr, "bob", "phone").await;
    let laptop = token(&addr, "bob", "laptop").await;
    let listed = register(&addr, &phone, apns(v1::PushPreview::PreviewFull)).await;
    assert_eq!(listed.targets[0].device_id, "phone");
    register(&addr, &laptop, web(&sim, "laptop")).await;

    // Neither device has a long link: a burst of three becomes one push each.
    let (alice, _ev) = connect(&addr, "alice").await;
    for i in 0..3 {
        alice.send_text("bob", &format!("m{i}")).await.unwrap();
    }
    wait_for(&sim, Provider::Apns, 1).await;
    wait_for(&sim, Provider::WebPush, 1).await;
    // One more inside the quiet window: held, not pushed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.send_text("bob", "m3").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(sim.violations(), vec![], "the providers' contracts hold");

    let sent = sim.requests_of(Provider::Apns);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let r = &sent[0];
    assert_eq!(r.key, APNS_TOKEN);
    assert_eq!(r.header("apns-topic"), Some("com.example.ferry"));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    let collapse = r.header("apns-collapse-id").unwrap();
    assert!(
        collapse.starts_with("ferry-") && collapse.len() <= 32,
        "{collapse}"
    );
    let body = r.json();
    assert_eq!(body["aps"]["alert"]["title"], "alice");
    assert_eq!(body["aps"]["alert"]["body"], "m2");
    assert_eq!(body["aps"]["badge"], 3);
    let f = &body["ferry"];
    assert_eq!(
        (f["v"].as_u64(), f["seq"].as_u64(), f["count"].as_u64()),
        (Some(1), Some(3), Some(3))
    );
    assert_eq!(
        (f["kind"].as_str(), f["from"].as_str(), f["text"].as_str()),
        (Some("message"), Some("alice"), Some("m2"))
    );
    let id = ferry_push::PushId::new(bob_id(&addr).await, "phone", 3).to_string();
    assert_eq!(r.header("apns-id"), Some(id.as_str()));

    let sent = sim.requests_of(Provider::WebPush);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let r = &sent[0];
    assert_eq!(r.key, "laptop");
    assert_eq!(r.header("urgency"), Some("high"));
    assert!(r.header("topic").unwrap().starts_with("ferry-"));
    assert_ne!(
        r.header("topic"),
        Some(collapse),
        "one collapse id per device"
    );
    alice.close().await;
}

/// Bob's user id.
async fn bob_id(addr: &str) -> u64 {
    ShortLink::new(addr)
        .auth("bob", PASSWORD, "probe")
        .await
        .unwrap()
        .user_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_the_provider_calls_gone_is_removed_and_logout_ends_the_other() {
    let sim = Sim::start().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let srv = server(&sim, keys.path(), 0).await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let phone = token(&addr, "bob", "phone").await;
    let laptop = token(&addr, "bob", "laptop").await;
    register(&addr, &phone, apns(v1::PushPreview::PreviewNone)).await;
    register(&addr, &laptop, web(&sim, "laptop")).await;
    sim.script(APNS_TOKEN, Reply::Gone);

    let (alice, _ev) = connect(&addr, "alice").await;
    alice.send_text("bob", "hello").await.unwrap();
    wait_for(&sim, Provider::Apns, 1).await;
    wait_for(&sim, Provider::WebPush, 1).await;
    let list = |token: String| {
        let addr = addr.clone();
        async move {
            ShortLink::new(&addr)
                .call::<_, v1::PushListResp>("push/list", Some(&token), &v1::Empty {})
                .await
                .unwrap()
                .targets
                .into_iter()
                .map(|t| t.device_id)
                .collect::<Vec<_>>()
        }
    };
    let until = Instant::now() + Duration::from_secs(5);
    while list(laptop.clone()).await != ["laptop"] {
        assert!(Instant::now() < until, "the gone APNs target stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The laptop logs out: its target goes with its session.
    ShortLink::new(&addr)
        .call::<_, v1::LogoutResp>(
            "logout",
            Some(&laptop),
            &v1::LogoutReq { all_devices: false },
        )
        .await
        .unwrap();
    let probe = token(&addr, "bob", "probe").await;
    assert!(list(probe).await.is_empty());
    assert_eq!(sim.violations(), vec![]);
    alice.close().await;
}
