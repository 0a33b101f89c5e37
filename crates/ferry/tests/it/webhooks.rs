//! Webhooks (issue 23, docs/webhooks.md) end to end: a real server, real clients, and a
//! local HTTP receiver on 127.0.0.1 that checks every signature with an HMAC-SHA256 of
//! its own (written here from SHA-256, independent of the server's), records each
//! delivery, can answer with any status, and can go down (its port refuses
//! connections) and come back.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ferry_store::HookEndpoint;
use ferry_testkit::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// HMAC-SHA256 (RFC 2104) from SHA-256 alone.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[test]
fn the_test_hmac_matches_rfc_4231() {
    // RFC 4231, test case 2.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Got {
    /// The URL path: which endpoint it was for.
    path: String,
    id: String,
    body: Value,
    /// Which of the receiver's secrets for that path matched, by index.
    matched: Vec<usize>,
    /// How many `v1=` signatures it carried.
    signatures: usize,
}

#[derive(Default)]
struct Inner {
    got: Vec<Got>,
    /// Deliveries whose signature, timestamp or id failed the checks.
    bad: Vec<String>,
    /// Per path: the secrets the receiver accepts.
    secrets: HashMap<String, Vec<String>>,
    /// Per path: the status answered (200 if none).
    status: HashMap<String, u16>,
}

#[derive(Clone, Default)]
struct Receiver {
    inner: Arc<Mutex<Inner>>,
}

async fn receive(
    State(r): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("ferry-webhook-id"),
        h("ferry-webhook-timestamp"),
        h("ferry-webhook-signature"),
    );
    let mut inner = r.inner.lock().unwrap();
    let secrets = inner.secrets.get(&path).cloned().unwrap_or_default();
    let mut signed = ts.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&body);
    let sigs: Vec<&str> = sig.split(' ').filter(|s| !s.is_empty()).collect();
    let matched: Vec<usize> = secrets
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            let want = format!("v1={}", hex::encode(hmac_sha256(s.as_bytes(), &signed)));
            sigs.contains(&want.as_str())
        })
        .map(|(i, _)| i)
        .collect();
    let now = (now_ms() / 1000) as i64;
    let fresh = ts.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let json_ok = headers
        .get("content-type")
        .is_some_and(|v| v == "application/json");
    if matched.is_empty() || !fresh || parsed["id"] != id.as_str() || !json_ok {
        inner.bad.push(format!("{path} {id} ts={ts} sig={sig}"));
        return StatusCode::UNAUTHORIZED;
    }
    let status = inner.status.get(&path).copied().unwrap_or(200);
    if status == 200 {
        inner.got.push(Got {
            path,
            id,
            body: parsed,
            matched,
            signatures: sigs.len(),
        });
    }
    StatusCode::from_u16(status).unwrap()
}

/// The receiver's HTTP server on a fixed port; stopping it closes the listener, so
/// connections are refused until it starts again.
struct Listening {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(&self, addr: SocketAddr) -> Listening {
        let listener = TcpListener::bind(addr).await.unwrap();
        let app = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(self.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Listening { stop, task }
    }

    fn accept(&self, path: &str, secrets: &[&str]) {
        self.inner.lock().unwrap().secrets.insert(
            path.to_owned(),
            secrets.iter().map(|s| s.to_string()).collect(),
        );
    }

    fn got(&self) -> Vec<Got> {
        self.inner.lock().unwrap().got.clone()
    }

    fn bad(&self) -> Vec<String> {
        self.inner.lock().unwrap().bad.clone()
    }

    /// Waits (up to `secs`) until `path` received every id of `ids` at least once.
    async fn wait_for(&self, path: &str, ids: &[String], secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let seen: HashSet<String> = self
                .got()
                .into_iter()
                .filter(|g| g.path == path)
                .map(|g| g.id)
                .collect();
            let missing = ids.iter().filter(|i| !seen.contains(*i)).count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {missing} of {} events not delivered within {secs} s",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Listening {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// A server with quick retries (base 100 ms, at most 1 s apart).
async fn server(max_age_secs: u64) -> TestServer {
    TestServer::with(|c| {
        c.logic.webhooks.base_backoff_ms = 100;
        c.logic.webhooks.max_backoff_ms = 1_000;
        c.logic.webhooks.timeout_ms = 2_000;
        c.logic.webhooks.max_age_secs = max_age_secs;
    })
    .await
}

/// Registers an endpoint through the admin API: its id and secret.
async fn add_endpoint(ts: &TestServer, url: &str, events: &[&str]) -> (u64, String) {
    let (status, v) = api_call(
        &ts.addr(),
        "POST",
        "admin/webhooks",
        Some(&admin_token(ts)),
        Some(&serde_json::json!({"url": url, "events": events, "description": "test"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_u64().unwrap(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// An admin API call that must succeed: its JSON.
async fn admin(ts: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = api_call(
        &ts.addr(),
        method,
        path,
        Some(&admin_token(ts)),
        body.as_ref(),
    )
    .await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// The ids of `message.sent` events as first delivered to `path`, in order, and how
/// many repeats there were.
fn first_deliveries(got: &[Got], path: &str) -> (Vec<String>, usize) {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut repeats = 0;
    for g in got
        .iter()
        .filter(|g| g.path == path && g.body["type"] == "message.sent")
    {
        if seen.insert(g.id.clone()) {
            order.push(g.id.clone());
        } else {
            repeats += 1;
        }
    }
    (order, repeats)
}

/// The receiver is down (refusing connections) for 30 s while messages keep being
/// sent: nothing reaches it meanwhile, and once it is back every message arrives — at
/// each of two endpoints, none lost, in the order sent, a repeat only ever of an id
/// already delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_30_s_loses_nothing_and_keeps_order() {
    let ts = server(3_600).await;
    ts.register(&["alice", "bob", "carol"]).await;
    let rx = Receiver::default();
    let addr = free_addr();
    let up = rx.start(addr).await;
    let (one, s1) = add_endpoint(&ts, &format!("http://{addr}/one"), &["message.sent"]).await;
    let (_, s2) = add_endpoint(&ts, &format!("http://{addr}/two"), &["*"]).await;
    rx.accept("/one", &[&s1]);
    rx.accept("/two", &[&s2]);
    let (alice, _ae) = connect(&ts.addr(), "alice").await;
    let (carol, _ce) = connect(&ts.addr(), "carol").await;

    // Every send is awaited before the next: the order sent is one total order.
    let mut sent: Vec<String> = Vec::new();
    let send = async |i: usize| {
        let (c, who) = if i.is_multiple_of(2) {
            (&alice, "a")
        } else {
            (&carol, "c")
        };
        let ack = c.send_text("bob", &format!("{who}{i}")).await.unwrap();
        format!("msg-{}", ack.msg_id)
    };
    for i in 0..20 {
        sent.push(send(i).await);
    }
    rx.wait_for("/one", &sent, 20).await;

    up.stop().await;
    let down_at = Instant::now();
    let before = rx.got().len();
    let mut i = 20;
    while down_at.elapsed() < Duration::from_secs(30) {
        sent.push(send(i).await);
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        rx.got().len(),
        before,
        "nothing can arrive while it is down"
    );
    let stats = admin(&ts, "GET", "admin/webhooks/stats", None).await;
    let st = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == one)
        .unwrap()
        .clone();
    assert!(st["pending"].as_u64().unwrap() > 0, "{st}");
    assert!(
        st["failed"].as_u64().unwrap() > 0,
        "attempts failed while it was down: {st}"
    );
    assert_eq!(st["dead"], 0);

    let up = rx.start(addr).await;
    for j in 0..20 {
        sent.push(send(i + j).await);
    }
    for path in ["/one", "/two"] {
        rx.wait_for(path, &sent, 30).await;
    }
    let got = rx.got();
    assert!(rx.bad().is_empty(), "bad deliveries: {:?}", rx.bad());
    for path in ["/one", "/two"] {
        let (order, repeats) = first_deliveries(&got, path);
        assert_eq!(order, sent, "{path}: lost, extra or out of order");
        eprintln!("{path}: {} events, {repeats} repeats", order.len());
        for g in got.iter().filter(|g| g.path == path) {
            assert_eq!(g.body["v"], 1);
            assert_eq!(g.signatures, 1);
        }
    }
    // "/one" hears messages only; "/two" everything, e.g. the senders coming online.
    assert!(got
        .iter()
        .filter(|g| g.path == "/one")
        .all(|g| g.body["type"] == "message.sent"));
    assert!(got
        .iter()
        .any(|g| g.path == "/two" && g.body["type"] == "user.online"));
    let texts: Vec<&str> = got
        .iter()
        .filter(|g| g.path == "/one")
        .map(|g| g.body["data"]["message"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts[0], "a0");
    assert_eq!(texts[1], "c1");
    up.stop().await;
}

/// Rotation: during the grace period every delivery carries two signatures, each valid
/// (a receiver that knows only the old secret, or only the new one, accepts it); after
/// it, only the new secret signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_grace_ends() {
    let ts = server(3_600).await;
    ts.register(&["alice", "bob"]).await;
    let rx = Receiver::default();
    let addr = free_addr();
    let up = rx.start(addr).await;
    let url = |p: &str| format!("http://{addr}{p}");
    let (a, old_a) = add_endpoint(&ts, &url("/old"), &["message.sent"]).await;
    let (b, _) = add_endpoint(&ts, &url("/new"), &["message.sent"]).await;
    let (alice, _ev) = connect(&ts.addr(), "alice").await;
    // "/old" rotates: its receiver keeps only the old secret. "/new" rotates too: its
    // receiver knows only the new one. The old secrets stay valid for 3 s.
    let rot = |id: u64| format!("admin/webhooks/{id}/rotate");
    let ra = admin(
        &ts,
        "POST",
        &rot(a),
        Some(serde_json::json!({"grace_secs": 3})),
    )
    .await;
    let rb = admin(
        &ts,
        "POST",
        &rot(b),
        Some(serde_json::json!({"grace_secs": 3})),
    )
    .await;
    assert_ne!(ra["secret"].as_str().unwrap(), old_a);
    rx.accept("/old", &[&old_a]);
    rx.accept("/new", &[rb["secret"].as_str().unwrap()]);
    let until = rb["previous_secret_valid_until_ms"].as_i64().unwrap();
    let shown = admin(&ts, "GET", &format!("admin/webhooks/{b}"), None).await;
    assert_eq!(shown["previous_secret_valid_until_ms"], until);
    assert!(
        shown.get("secret").is_none(),
        "a secret is shown only once: {shown}"
    );
    let first = format!(
        "msg-{}",
        alice.send_text("bob", "during").await.unwrap().msg_id
    );
    rx.wait_for("/old", std::slice::from_ref(&first), 10).await;
    rx.wait_for("/new", std::slice::from_ref(&first), 10).await;
    for g in rx.got().iter().filter(|g| g.id == first) {
        assert_eq!(g.signatures, 2, "{g:?}");
    }
    // After the grace: the old secret no longer signs, a receiver that knows only it
    // refuses, the one that knows the new secret accepts.
    while (now_ms() as i64) < until + 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = format!(
        "msg-{}",
        alice.send_text("bob", "after").await.unwrap().msg_id
    );
    rx.wait_for("/new", std::slice::from_ref(&second), 10).await;
    let g = rx.got().into_iter().find(|g| g.id == second).unwrap();
    assert_eq!((g.signatures, g.matched.clone()), (1, vec![0]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.bad().iter().all(|b| !b.contains(&second)) {
        assert!(Instant::now() < deadline, "the old secret still signed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rx.bad().iter().all(|b| b.starts_with("/old")),
        "{:?}",
        rx.bad()
    );
    up.stop().await;
}

/// An endpoint that keeps failing: its event becomes a dead letter at its max age (the
/// next event is delivered only after it), and a redrive delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_after_max_age_is_redriven() {
    let ts = server(3).await;
    ts.register(&["alice", "bob"]).await;
    let rx = Receiver::default();
    let addr = free_addr();
    let up = rx.start(addr).await;
    rx.inner.lock().unwrap().status.insert("/h".into(), 503);
    let (ep, secret) = add_endpoint(&ts, &format!("http://{addr}/h"), &["message.sent"]).await;
    rx.accept("/h", &[&secret]);
    // The admin routes want the admin token: none is 401, a user's token 403.
    let user_token = token(&ts.addr(), "alice", "phone").await;
    for (t, want) in [(None, 401), (Some(user_token.as_str()), 403)] {
        let (status, _) = api_call(&ts.addr(), "GET", "admin/webhooks", t, None).await;
        assert_eq!(status, want);
    }
    let (alice, _ev) = connect(&ts.addr(), "alice").await;
    let m1 = format!(
        "msg-{}",
        alice.send_text("bob", "one").await.unwrap().msg_id
    );
    let dead_path = format!("admin/webhooks/dead?endpoint={ep}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let dead = loop {
        let d = admin(&ts, "GET", &dead_path, None).await["dead"].clone();
        if !d.as_array().unwrap().is_empty() {
            break d;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    let d = &dead[0];
    assert_eq!(d["event_id"], m1.as_str());
    assert_eq!(d["event"]["id"], m1.as_str());
    assert_eq!(d["event"]["data"]["message"]["text"], "one");
    assert!(d["attempts"].as_u64().unwrap() >= 2, "{d}");
    assert_eq!(d["last_error"], "HTTP 503");
    assert!(
        d["dead_ms"].as_i64().unwrap() - d["created_ms"].as_i64().unwrap() >= 3_000,
        "{d}"
    );
    assert!(rx.got().is_empty());
    let stats = admin(&ts, "GET", "admin/webhooks/stats", None).await;
    assert_eq!(stats["endpoints"][0]["dead"], 1, "{stats}");
    // Fixed: the next event goes through; the dead one only when redriven.
    rx.inner.lock().unwrap().status.clear();
    let m2 = format!(
        "msg-{}",
        alice.send_text("bob", "two").await.unwrap().msg_id
    );
    rx.wait_for("/h", std::slice::from_ref(&m2), 10).await;
    let r = admin(
        &ts,
        "POST",
        &format!("admin/webhooks/dead/{}/redrive", d["id"]),
        None,
    )
    .await;
    assert_eq!(r["redriven"], 1);
    rx.wait_for("/h", std::slice::from_ref(&m1), 10).await;
    let (order, _) = first_deliveries(&rx.got(), "/h");
    assert_eq!(order, [m2, m1]);
    let left = admin(&ts, "GET", &dead_path, None).await;
    assert!(left["dead"].as_array().unwrap().is_empty(), "{left}");
    // The redrive was audited (every non-GET admin call is).
    let audit = admin(&ts, "GET", "admin/audit?limit=10", None).await;
    assert!(
        audit.to_string().contains("webhooks.redrive_dead"),
        "{audit}"
    );
    up.stop().await;
}

/// The lease owner of every endpoint, read from the cluster's PostgreSQL.
fn lease_owners(db: &Db) -> Vec<String> {
    let out = std::process::Command::new("psql")
        .arg(db.url())
        .args([
            "-Atc",
            "SELECT coalesce(lease_owner, '') FROM hook_endpoints ORDER BY id",
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A cluster (NATS, PostgreSQL, a gateway, two logic nodes); the logic node that is
/// delivering to the endpoint is SIGKILLed while a delivery is in flight (the receiver
/// holds its answer): the other node takes the endpoint over when the lease runs out,
/// and every event arrives at least once and in order — the one in flight twice, with
/// the same id, which the receiver drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logic_node_killed_mid_delivery_loses_nothing() {
    let nats = Nats::start();
    let db = Db::create();
    let dir = tempfile::tempdir().unwrap();
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
[logic.webhooks]
lease_ms = 3000
base_backoff_ms = 100
max_backoff_ms = 1000
timeout_ms = 10000
[gateway]
max_connections_per_ip = 0
[cluster]
nats = "{}"
postgres = "{}"
postgres_pool = 8
request_timeout_ms = 2000
gateway_heartbeat_ms = 300
gateway_expiry_ms = 1500
"#,
            dir.path().join("server-key").display(),
            nats.url(),
            db.url()
        ),
    )
    .unwrap();
    let mut logics = vec![
        crate::node(&["logic"], &config, "ferry logic ready"),
        crate::node(&["logic"], &config, "ferry logic ready"),
    ];
    let gw = crate::node(&["gateway", "--id", "gw-0"], &config, "ferry gateway");
    let addr = gw.addr.clone();
    let key = ferry_client::fetch_server_key(&addr).await.unwrap();
    for u in ["alice", "bob"] {
        ferry_client::ShortLink::sealed(&addr, Some(key))
            .register(u, PASSWORD)
            .await
            .unwrap();
    }

    // The receiver records each delivery as it arrives and answers 50 ms later — the
    // 9th only after 8 s: the node delivering it is killed meanwhile.
    let rx = Receiver::default();
    rx.accept("/c", &["cluster-secret"]);
    let raddr = free_addr();
    let slow = axum::Router::new()
        .fallback(axum::routing::post(
            |state: State<Receiver>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| async move {
                let r = state.0.clone();
                let status = receive(state, uri, headers, body).await;
                let n = r.inner.lock().unwrap().got.len();
                let hold = if n == 9 { 8_000 } else { 50 };
                tokio::time::sleep(Duration::from_millis(hold)).await;
                status
            },
        ))
        .with_state(rx.clone());
    let listener = TcpListener::bind(raddr).await.unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, slow).await });

    use ferry_store::HookStore;
    let store = ferry_store::PgStore::connect(&ferry_store::PgConfig::new(db.url()))
        .await
        .unwrap();
    store
        .create_hook_endpoint(HookEndpoint {
            url: format!("http://{raddr}/c"),
            events: vec!["message.sent".into()],
            secret: "cluster-secret".into(),
            enabled: true,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut cfg = client_config(&addr, "alice");
    cfg.servers = vec![addr.clone()];
    let (alice, _ev) = ferry_client::Client::connect(cfg).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..40 {
        let ack = alice.send_text("bob", &format!("m{i}")).await.unwrap();
        sent.push(format!("msg-{}", ack.msg_id));
    }
    // Eight delivered, the ninth in flight (held): the delivering node dies.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.got().len() < 9 {
        assert!(Instant::now() < deadline, "deliveries never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let owner = lease_owners(&db).remove(0);
    let pid: u32 = owner
        .strip_prefix("logic-")
        .and_then(|s| s.split('-').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("lease owner {owner:?}"));
    let at = logics
        .iter()
        .position(|n| n.child.id() == pid)
        .unwrap_or_else(|| panic!("no logic node with pid {pid}"));
    let delivered_before = rx.got().len();
    logics[at].kill();
    logics.remove(at);

    rx.wait_for("/c", &sent, 60).await;
    let got = rx.got();
    assert!(rx.bad().is_empty(), "{:?}", rx.bad());
    let (order, repeats) = first_deliveries(&got, "/c");
    assert_eq!(order, sent, "lost, extra or out of order");
    assert!(
        delivered_before < sent.len(),
        "everything was delivered before the kill: the test tested nothing"
    );
    // The ninth was received but never answered to the node that sent it: the
    // survivor delivers it again, same id.
    assert!(
        repeats >= 1 && got.iter().filter(|g| g.id == sent[8]).count() >= 2,
        "the delivery in flight at the kill was not repeated ({} deliveries)",
        got.len()
    );
    // The survivor holds (or held) the endpoint now.
    let survivor = logics[0].child.id();
    let owner = lease_owners(&db).remove(0);
    assert!(
        owner.is_empty() || owner.starts_with(&format!("logic-{survivor}-")),
        "{owner}"
    );
    eprintln!(
        "{} deliveries of {} events, {repeats} repeats",
        got.len(),
        sent.len()
    );
    server.abort();
}

/// A bot with a webhook of its own (`PUT /v1/bot/webhook`) gets each update POSTed as a
/// signed `bot.update` event; `GET` shows it, `DELETE` removes it, and without the `read`
/// scope the route is refused.
#[tokio::test]
async fn a_bots_own_webhook_gets_its_updates() {
    let ts = server(3_600).await;
    ts.register(&["hookfan"]).await;
    let rx = Receiver::default();
    let addr = free_addr();
    let _up = rx.start(addr).await;
    let made = admin(
        &ts,
        "POST",
        "admin/bots",
        Some(serde_json::json!({"name": "hookbot"})),
    )
    .await;
    let bot = made["token"].as_str().unwrap().to_owned();
    let url = format!("http://{addr}/bot");
    let (status, set) = api_call(
        &ts.addr(),
        "PUT",
        "bot/webhook",
        Some(&bot),
        Some(&serde_json::json!({"url": url})),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    rx.accept("/bot", &[set["secret"].as_str().unwrap()]);

    let (fan, _events) = connect(&ts.addr(), "hookfan").await;
    fan.send_text("hookbot", "hello bot").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let update = loop {
        if let Some(g) = rx.got().into_iter().find(|g| g.path == "/bot") {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "no bot.update within 20 s: bad {:?}",
            rx.bad()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(rx.bad().is_empty(), "{:?}", rx.bad());
    assert_eq!(update.body["type"], "bot.update", "{}", update.body);
    assert_eq!(update.body["data"]["type"], "message", "{}", update.body);
    assert_eq!(update.body["data"]["message"]["text"], "hello bot");
    assert_eq!(update.body["data"]["message"]["from"], "hookfan");

    // A group the bot is in: its messages come too, each under the group's own id; the
    // change that made the bot a member comes once (from its inbox), the bot's own
    // message not at all.
    let g = fan
        .account()
        .create_group("with a bot", &["hookbot"], false)
        .await
        .unwrap()
        .group_id;
    let (status, v) = api_call(
        &ts.addr(),
        "POST",
        "bot/send",
        Some(&bot),
        Some(&serde_json::json!({"group_id": g.to_string(), "text": "bot here"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let sent = fan.send_group(g, "hello group", &[]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let in_group = loop {
        let got = rx.got();
        if let Some(u) = got
            .iter()
            .find(|u| u.path == "/bot" && u.body["data"]["message"]["text"] == "hello group")
        {
            break (u.clone(), got);
        }
        assert!(Instant::now() < deadline, "no group bot.update within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (u, all) = in_group;
    let bot_id = made["bot"]["id"].as_str().unwrap();
    assert_eq!(u.body["data"]["group_id"], g.to_string(), "{}", u.body);
    assert_eq!(u.body["data"]["gseq"], sent.seq, "{}", u.body);
    assert_eq!(
        u.body["id"],
        format!("bot-{bot_id}-g{g}-{}", sent.seq).as_str(),
        "{}",
        u.body
    );
    let texts: Vec<String> = all
        .iter()
        .filter(|u| u.path == "/bot")
        .map(|u| format!("{}/{}", u.body["data"]["type"], u.body["data"]["kind"]))
        .collect();
    assert_eq!(
        texts,
        [
            r#""message"/null"#,
            r#""group"/"created""#,
            r#""message"/null"#
        ],
        "{all:?}"
    );
    assert!(rx.bad().is_empty(), "{:?}", rx.bad());

    let (status, got) = api_call(&ts.addr(), "GET", "bot/webhook", Some(&bot), None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["url"], url.as_str());

    // A token without `read` may not touch it; a user's session token is no bot's.
    let send_only = admin(
        &ts,
        "POST",
        "admin/bots/hookbot/tokens",
        Some(serde_json::json!({"scopes": ["send"]})),
    )
    .await;
    let (status, _) = api_call(
        &ts.addr(),
        "GET",
        "bot/webhook",
        Some(send_only["token"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let user = token(&ts.addr(), "hookfan", "d9").await;
    let (status, _) = api_call(&ts.addr(), "GET", "bot/webhook", Some(&user), None).await;
    assert_eq!(status, 401);

    let (status, _) = api_call(&ts.addr(), "DELETE", "bot/webhook", Some(&bot), None).await;
    assert_eq!(status, 204);
    let (status, _) = api_call(&ts.addr(), "GET", "bot/webhook", Some(&bot), None).await;
    assert_eq!(status, 404);
}
