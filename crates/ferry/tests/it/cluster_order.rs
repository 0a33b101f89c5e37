//! Order and liveness in the cluster (issue 19): pipelined SENDs on one link are stored
//! in the order sent on every topology (the gateway's send lane), and a logic node that
//! stops (SIGSTOP) is taken out of rotation — sends keep flowing through the other —
//! and on waking keeps the gateways' routes it merely failed to hear.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_client::ShortLink;
use ferry_proto::frame::encode_msg;
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_testkit::*;
use std::sync::Mutex;

/// NATS + PostgreSQL + gateways + logic nodes whose standard error goes to a file each
/// (what they log is part of what is tested).
struct Cluster {
    gateways: Vec<Node>,
    logics: Vec<Node>,
    logs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
    _db: Db,
    _nats: Nats,
}

impl Cluster {
    fn start(gateways: usize, logics: usize) -> Cluster {
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
[gateway]
allow_plaintext = true
max_connections_per_ip = 0
login_timeout_ms = 2000
heartbeat_timeout_ms = 15000
shutdown_grace_ms = 1000
[cluster]
nats = "{}"
postgres = "{}"
postgres_pool = 8
request_timeout_ms = 5000
gateway_heartbeat_ms = 300
gateway_expiry_ms = 1500
"#,
                dir.path().join("server-key").display(),
                nats.url(),
                db.url()
            ),
        )
        .unwrap();
        let mut logs = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..logics {
            let log = dir.path().join(format!("logic-{i}.log"));
            nodes.push(logic_logging_to(&config, &log));
            logs.push(log);
        }
        let gateways = (0..gateways)
            .map(|i| {
                crate::node(
                    &["gateway", "--id", &format!("gw-{i}")],
                    &config,
                    "ferry gateway",
                )
            })
            .collect();
        let c = Cluster {
            gateways,
            logics: nodes,
            logs,
            _dir: dir,
            _db: db,
            _nats: nats,
        };
        // Every gateway hears every logic node's heartbeat before the test starts.
        std::thread::sleep(Duration::from_millis(600));
        c
    }

    fn addr(&self, i: usize) -> String {
        self.gateways[i].addr.clone()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }
}

/// `ferry logic` with its standard error (FERRY_LOG=warn) in `log`.
fn logic_logging_to(config: &Path, log: &Path) -> Node {
    Node::spawn(
        Command::new("sh")
            .current_dir(crate::node_dir(config))
            .arg("-c")
            .arg(r#"exec "$0" logic --config "$1" 2>"$2""#)
            .arg(crate::FERRY)
            .arg(config)
            .arg(log),
        "ferry logic ready",
    )
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// SIGCONT when dropped: a failing test leaves no stopped process behind.
struct Stopped(u32);
impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn send(i: usize, to: &str) -> v1::SendMsg {
    v1::SendMsg {
        client_msg_id: 10_000 + i as u64,
        to: to.into(),
        text: format!("m{i:05}"),
        ..Default::default()
    }
}

/// The answer with request id `id`, skipping pushes.
async fn answer(raw: &mut RawLink, id: u32) -> v1::SendAck {
    loop {
        let f = raw.recv(10).await.expect("an answer");
        if f.req_id == id {
            assert_eq!(f.cmd, cmd::response(cmd::SEND), "{:?}", error_of(&f));
            return v1::SendAck::decode(f.body).unwrap();
        }
    }
}

/// `batches` batches of 5 SENDs, each batch written to the link at once (one TCP
/// write), the next after the 5 answers. Checks the SendAck seqs follow sending order;
/// returns the texts of the recipient's inbox, in seq order.
async fn pipelined(addr: &str, batches: usize) -> Vec<String> {
    let ann = token(addr, "ann", "d1").await;
    let bob = token(addr, "bob", "d1").await;
    let mut raw = RawLink::connect(addr).await;
    assert_eq!(raw.login(&ann).await.cmd, cmd::response(cmd::LOGIN));
    let mut last_seq = 0;
    for b in 0..batches {
        let mut buf = BytesMut::new();
        for k in 0..5 {
            let i = b * 5 + k;
            encode_msg(cmd::SEND, 1 + i as u32, &send(i, "bob"), &mut buf);
        }
        raw.send_bytes(&buf).await;
        for k in 0..5 {
            let i = b * 5 + k;
            let ack = answer(&mut raw, 1 + i as u32).await;
            assert!(
                ack.seq > last_seq,
                "batch {b}: send {i} acked at seq {} after seq {last_seq}",
                ack.seq
            );
            last_seq = ack.seq;
        }
    }
    // The recipient's inbox, page by page (bounded).
    let mut raw = RawLink::connect(addr).await;
    assert_eq!(raw.login(&bob).await.cmd, cmd::response(cmd::LOGIN));
    let mut texts = Vec::new();
    let mut synckey = 0;
    for page in 0..1000u32 {
        let id = 1_000_000 + page;
        raw.send(
            cmd::SYNC,
            id,
            &v1::SyncReq {
                synckey,
                ..Default::default()
            },
        )
        .await;
        let f = loop {
            let f = raw.recv(10).await.expect("a sync answer");
            if f.req_id == id {
                break f;
            }
        };
        let r = v1::SyncResp::decode(f.body).unwrap();
        texts.extend(r.entries.iter().filter_map(|e| match &e.kind {
            Some(v1::entry::Kind::Message(m)) => Some(m.text.clone()),
            _ => None,
        }));
        synckey = r.synckey;
        if !r.more {
            break;
        }
    }
    texts
}

fn in_sending_order(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i:05}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_are_stored_in_order_on_two_logic_nodes() {
    let c = Cluster::start(1, 2);
    ShortLink::new(&c.addr(0))
        .register("ann", PASSWORD)
        .await
        .unwrap();
    ShortLink::new(&c.addr(0))
        .register("bob", PASSWORD)
        .await
        .unwrap();
    const BATCHES: usize = 100;
    let texts = pipelined(&c.addr(0), BATCHES).await;
    assert_eq!(texts, in_sending_order(BATCHES * 5), "stored out of order");
}

#[tokio::test]
async fn pipelined_sends_are_stored_in_order_on_serve() {
    let ts = TestServer::start().await;
    ts.register(&["ann", "bob"]).await;
    const BATCHES: usize = 100;
    let texts = pipelined(&ts.addr(), BATCHES).await;
    assert_eq!(texts, in_sending_order(BATCHES * 5), "stored out of order");
}

/// Latencies of acknowledged sends, by phase.
#[derive(Default)]
struct Seen {
    before: Vec<Duration>,
    during: Vec<Duration>,
    after: Vec<Duration>,
    failed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_logic_node_leaves_rotation_and_keeps_routes_on_waking() {
    let c = Cluster::start(1, 2);
    const PAIRS: usize = 6;
    let short = ShortLink::new(&c.addr(0));
    for p in 0..PAIRS {
        short.register(&format!("s{p}"), PASSWORD).await.unwrap();
        short.register(&format!("r{p}"), PASSWORD).await.unwrap();
    }
    // 0 = before, 1 = the node is stopped, 2 = after it woke, 3 = stop sending.
    let phase = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for p in 0..PAIRS {
        let (rx, rx_ev) = connect(&c.addr(0), &format!("r{p}")).await;
        receivers.push((rx, rx_ev));
        let (tx, _tx_ev) = connect(&c.addr(0), &format!("s{p}")).await;
        let (phase, seen) = (phase.clone(), seen.clone());
        senders.push(tokio::spawn(async move {
            let _keep = _tx_ev;
            let mut acked = 0usize;
            // Bounded: at most 20 s of sending, one send every 20 ms at most.
            let until = Instant::now() + Duration::from_secs(20);
            while phase.load(Ordering::Relaxed) < 3 && Instant::now() < until {
                let at = phase.load(Ordering::Relaxed);
                let t = Instant::now();
                let r = tx
                    .send_text(&format!("r{p}"), &format!("{p}:{acked}"))
                    .await;
                let took = t.elapsed();
                {
                    let mut s = seen.lock().unwrap();
                    match r {
                        Ok(_) => {
                            acked += 1;
                            match at {
                                0 => s.before.push(took),
                                1 => s.during.push(took),
                                _ => s.after.push(took),
                            }
                        }
                        Err(_) => s.failed += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = c.logics[0].child.id();
    signal(pid, "STOP");
    let stopped = Stopped(pid);
    phase.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    phase.store(2, Ordering::Relaxed);
    drop(stopped);
    tokio::time::sleep(Duration::from_secs(3)).await;
    phase.store(3, Ordering::Relaxed);
    let mut acked = Vec::new();
    for s in senders {
        acked.push(
            tokio::time::timeout(Duration::from_secs(15), s)
                .await
                .unwrap()
                .unwrap(),
        );
    }

    // Every acknowledged message reaches its recipient, once.
    for (p, ((_rx, ev), n)) in receivers.iter_mut().zip(&acked).enumerate() {
        let got = recv_messages(ev, &format!("r{p}"), *n, 20).await;
        let mut count: HashMap<String, usize> = HashMap::new();
        for (_, m) in &got {
            *count.entry(m.text.clone()).or_default() += 1;
        }
        assert!(count.values().all(|&c| c == 1), "pair {p}: duplicates");
        assert_quiet(ev, &format!("r{p}"), 300).await;
    }

    let s = seen.lock().unwrap();
    let rate = |v: &Vec<Duration>, secs: f64| v.len() as f64 / secs;
    let (before, during) = (rate(&s.before, 3.0), rate(&s.during, 5.0));
    let mut during_lat = s.during.clone();
    during_lat.sort();
    let p99 = during_lat
        .get((during_lat.len() * 99 / 100).min(during_lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    eprintln!(
        "acks/s before {before:.0}, while stopped {during:.0}, p99 while stopped {p99:?}, failed {}, after {}",
        s.failed,
        s.after.len()
    );
    assert_eq!(s.failed, 0, "a send failed");
    assert!(
        during >= before * 0.5,
        "sends stalled while a node was stopped: {during:.0}/s against {before:.0}/s"
    );
    assert!(
        p99 <= Duration::from_millis(2500),
        "p99 {p99:?} while stopped"
    );
    assert!(
        !s.after.is_empty(),
        "nothing acknowledged after the node woke"
    );

    // The node that slept noticed it, and dropped no gateway's routes.
    let log = c.log(0);
    assert!(log.contains("was paused"), "no pause noticed: {log}");
    assert!(
        !log.contains("gateway silent"),
        "routes dropped on waking: {log}"
    );
}
