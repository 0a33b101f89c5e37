//! Push in a cluster: two `ferry logic` processes on NATS and PostgreSQL share one push
//! queue; one is SIGKILLed while its pushes are in flight at a slow provider
//! (`ferry_push::sim` with a delay). The other sends what the dead one had claimed once
//! the lease runs out: every device gets its push, each (device, push id) once — the
//! only copies are of requests that were at the provider when the node died, and they
//! carry the same id (so APNs and the OS replace rather than show twice).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_client::ShortLink;
use ferry_proto::v1;
use ferry_push::sim::{Reply, Script, Sim};
use ferry_push::Provider;
use ferry_testkit::*;

const DEVICES: usize = 40;

fn apns_token(i: usize) -> String {
    format!("{:064x}", i + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logic_node_killed_mid_send_leaves_its_pushes_to_the_other_sent_once_each() {
    let sim = Sim::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let push = sim.config(dir.path()).unwrap();
    // Slow enough that the kill finds requests in flight and rows claimed.
    sim.script_default(Script {
        reply: Reply::Accept,
        delay: Duration::from_millis(1_500),
    });
    let nats = Nats::start();
    let db = Db::create();
    let mut push_table = toml::Table::new();
    push_table.insert("push".into(), toml::Value::try_from(&push).unwrap());
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = ["127.0.0.1:0"]
server_key_file = "{}"
[logic]
open_messaging = true
[logic.limits]
sends_per_user = {{ per_sec = 0.0, burst = 0.0 }}
login_per_ip = {{ per_sec = 0.0, burst = 0.0 }}
auth_per_ip = {{ per_sec = 0.0, burst = 0.0 }}
register_per_ip = {{ per_sec = 0.0, burst = 0.0 }}
[logic.password]
memory_kib = 64
iterations = 1
[logic.push]
quiet_ms = 0
lease_ms = 3000
batch = 8
[gateway]
max_connections_per_ip = 0
[cluster]
nats = "{}"
postgres = "{}"
postgres_pool = 8
request_timeout_ms = 2000
gateway_heartbeat_ms = 300
gateway_expiry_ms = 1500

{}"#,
            dir.path().join("server-key").display(),
            nats.url(),
            db.url(),
            toml::to_string(&push_table).unwrap(),
        ),
    )
    .unwrap();
    let mut logics = vec![
        crate::node(&["logic"], &config, "ferry logic ready"),
        crate::node(&["logic"], &config, "ferry logic ready"),
    ];
    let gateway = crate::node(&["gateway", "--id", "gw-0"], &config, "ferry gateway");
    let addr = gateway.addr.clone();
    let key = ferry_client::fetch_server_key(&addr).await.unwrap();
    let link = ShortLink::sealed(&addr, Some(key));

    link.register("alice", PASSWORD).await.unwrap();
    for i in 0..DEVICES {
        let user = format!("u{i}");
        link.register(&user, PASSWORD).await.unwrap();
        let token = link.auth(&user, PASSWORD, "phone").await.unwrap().token;
        let target = v1::PushTarget {
            provider: v1::PushProvider::Apns as i32,
            token: apns_token(i),
            app_id: "com.example.ferry".into(),
            ..Default::default()
        };
        link.call::<_, v1::PushListResp>(
            "push/register",
            Some(&token),
            &v1::PushRegisterReq {
                target: Some(target),
            },
        )
        .await
        .unwrap();
    }
    // Both nodes' indexes learn of the targets (refreshed every second).
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let cfg = client_config(&addr, "alice");
    let (alice, _ev) = ferry_client::Client::connect(cfg).await.unwrap();
    for i in 0..DEVICES {
        alice.send_text(&format!("u{i}"), "wake up").await.unwrap();
    }
    // Pushes are at the provider (each node sends 8 at a time, 1.5 s each): kill one.
    let until = Instant::now() + Duration::from_secs(20);
    while sim.requests_of(Provider::Apns).len() < 8 {
        assert!(Instant::now() < until, "no pushes: {:?}", sim.violations());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    logics[0].kill();
    let killed_at = Instant::now();

    // Every device hears, from the survivor once the dead node's lease ran out.
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let sent = sim.requests_of(Provider::Apns);
        let mut keys: Vec<&str> = sent.iter().map(|r| r.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() == DEVICES {
            break;
        }
        assert!(
            Instant::now() < until,
            "{} of {DEVICES} devices got their push",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more comes (a push sent twice would show up within a lease).
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    assert_eq!(sim.violations(), vec![]);
    let sent = sim.requests_of(Provider::Apns);
    let mut copies: HashMap<(String, String), Vec<Instant>> = HashMap::new();
    for r in &sent {
        let id = r.header("apns-id").unwrap_or_default().to_owned();
        copies.entry((r.key.clone(), id)).or_default().push(r.at);
    }
    let mut ids_per_device: HashMap<&str, usize> = HashMap::new();
    for ((device, _), at) in &copies {
        *ids_per_device.entry(device.as_str()).or_default() += 1;
        assert!(at.len() <= 2, "{device}: sent {} times", at.len());
        if at.len() == 2 {
            // The first copy was at the provider when its node died.
            assert!(
                at.iter().min().unwrap() < &killed_at,
                "{device}: a second copy"
            );
        }
    }
    assert!(
        ids_per_device.values().all(|n| *n == 1),
        "one push id per device: {ids_per_device:?}"
    );
    let resent = copies.values().filter(|a| a.len() == 2).count();
    eprintln!(
        "{} requests for {DEVICES} devices; {resent} re-sent after the kill",
        sent.len()
    );
    alice.close().await;
    drop(logics);
    drop(gateway);
}
