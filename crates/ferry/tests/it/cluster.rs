//! The cluster: real `ferry gateway` and `ferry logic` processes on a real NATS server
//! (started per test on a free port, as async-nats' own tests do) and a throw-away
//! PostgreSQL database (on the test process's own server, see ferry-testkit). Gateways
//! and logic nodes are SIGKILLed and SIGTERMed under load; nothing acknowledged may be
//! lost or duplicated.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_client::{Client, Event, ShortLink};
use ferry_proto::v1;
use ferry_testkit::*;
use tokio::sync::mpsc;

/// NATS + PostgreSQL + gateways + logic nodes.
struct Cluster {
    gateways: Vec<Node>,
    logics: Vec<Node>,
    config: PathBuf,
    _dir: tempfile::TempDir,
    _db: Db,
    nats: Nats,
}

impl Cluster {
    fn start(gateways: usize, logics: usize) -> Cluster {
        Self::start_with(gateways, logics, Db::url)
    }

    /// `pg` gives the nodes' PostgreSQL connection string (to go through a [`Proxy`]).
    fn start_with(gateways: usize, logics: usize, pg: impl FnOnce(&Db) -> String) -> Cluster {
        let nats = Nats::start();
        let db = Db::create();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = ["127.0.0.1:0"]
# Every gateway loads the one key the cluster shares.
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
max_connections_per_ip = 0
login_timeout_ms = 2000
heartbeat_timeout_ms = 5000
shutdown_grace_ms = 1000
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
                pg(&db)
            ),
        )
        .unwrap();
        let mut c = Cluster {
            gateways: Vec::new(),
            logics: Vec::new(),
            config,
            _dir: dir,
            _db: db,
            nats,
        };
        for _ in 0..logics {
            c.add_logic();
        }
        for i in 0..gateways {
            c.add_gateway(&format!("gw-{i}"));
        }
        c
    }

    fn add_logic(&mut self) {
        let node = crate::node(&["logic"], &self.config, "ferry logic ready");
        self.logics.push(node);
    }

    fn add_gateway(&mut self, id: &str) {
        let node = crate::node(&["gateway", "--id", id], &self.config, "ferry gateway");
        self.gateways.push(node);
    }

    fn addrs(&self) -> Vec<String> {
        self.gateways.iter().map(|g| g.addr.clone()).collect()
    }
}

/// A client that starts on gateway `first` and knows every gateway.
async fn client(c: &Cluster, first: usize, user: &str) -> (Client, mpsc::Receiver<Event>) {
    let addrs = c.addrs();
    let mut cfg = client_config(&addrs[first], user);
    cfg.servers = addrs;
    Client::connect(cfg).await.unwrap()
}

async fn register(c: &Cluster, users: &[&str]) {
    // Through different gateways: any gateway serves any request.
    for (i, u) in users.iter().enumerate() {
        let addrs = c.addrs();
        let addr = &addrs[i % addrs.len()];
        let key = ferry_client::fetch_server_key(addr).await.unwrap();
        ShortLink::sealed(addr, Some(key))
            .register(u, PASSWORD)
            .await
            .unwrap();
    }
}

/// Receives `n` messages and checks there is no duplicate and nothing more.
async fn recv_exactly(
    ev: &mut mpsc::Receiver<Event>,
    me: &str,
    n: usize,
    secs: u64,
) -> Vec<v1::Message> {
    let mut got = Vec::new();
    let mut last_seq = 0;
    // Entries that are not messages from someone else, for the failure message.
    let mut other = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while got.len() < n {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Err(_) => panic!(
                "{me}: timed out with {} of {n} messages (last entry seq {last_seq}; other entries {other:?})",
                got.len()
            ),
            Ok(None) => panic!("{me}: event stream ended"),
            Ok(Some(Event::Entry(e))) => {
                last_seq = e.seq;
                match e.kind {
                    Some(v1::entry::Kind::Message(m)) if m.from != me => got.push(m),
                    kind => other.push((e.seq, kind)),
                }
            }
            Ok(Some(_)) => {}
        }
    }
    let ids: HashSet<u64> = got.iter().map(|m| m.msg_id).collect();
    assert_eq!(ids.len(), n, "a message delivered twice");
    let texts: HashSet<&str> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts.len(), n, "a message stored twice");
    assert_quiet(ev, me, 500).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_two_logic_nodes() {
    let mut c = Cluster::start(3, 2);
    register(&c, &["alice", "bob", "carol"]).await;
    let (alice, mut alice_ev) = client(&c, 0, "alice").await;
    let (bob, mut bob_ev) = client(&c, 1, "bob").await;
    let (carol, mut carol_ev) = client(&c, 2, "carol").await;

    // Around the ring, each pair on different gateways, answered by either logic node.
    const N: usize = 30;
    for i in 0..N {
        alice.send_text("bob", &format!("a->b {i}")).await.unwrap();
        bob.send_text("carol", &format!("b->c {i}")).await.unwrap();
        carol
            .send_text("alice", &format!("c->a {i}"))
            .await
            .unwrap();
    }
    for (ev, me, from) in [
        (&mut bob_ev, "bob", "a->b"),
        (&mut carol_ev, "carol", "b->c"),
        (&mut alice_ev, "alice", "c->a"),
    ] {
        let got = recv_exactly(ev, me, N, 30).await;
        let texts: Vec<String> = got.iter().map(|m| m.text.clone()).collect();
        let want: Vec<String> = (0..N).map(|i| format!("{from} {i}")).collect();
        assert_eq!(texts, want, "in order");
    }

    // A gateway stopped gracefully: carol is kicked with UNAVAILABLE, moves on, and
    // messages keep reaching her.
    c.gateways[2].terminate();
    let reconnected = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match carol_ev.recv().await {
                Some(Event::Connected { .. }) => break,
                Some(Event::Entry(e)) => panic!("unexpected entry {e:?}"),
                Some(_) => {}
                None => panic!("carol's client stopped"),
            }
        }
    })
    .await;
    assert!(reconnected.is_ok(), "carol did not reconnect elsewhere");
    for i in 0..5 {
        bob.send_text("carol", &format!("after {i}")).await.unwrap();
    }
    let got = recv_exactly(&mut carol_ev, "carol", 5, 20).await;
    assert_eq!(got[4].text, "after 4");
    for cl in [alice, bob, carol] {
        cl.close().await;
    }
}

/// Fires `n` sends from `from` to `to` at once; returns the acknowledged msg ids.
fn send_all(
    from: &Client,
    to: &str,
    n: usize,
    acked: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..n)
        .map(|i| {
            let (from, to, acked) = (from.clone(), to.to_owned(), acked.clone());
            tokio::spawn(async move {
                let ack = from.send_text(&to, &format!("m{i}")).await.unwrap();
                acked.fetch_add(1, Ordering::Relaxed);
                ack.msg_id
            })
        })
        .collect()
}

async fn wait_for(count: &AtomicUsize, at_least: usize, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while count.load(Ordering::Relaxed) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigkilled_with_1000_messages_in_flight() {
    let mut c = Cluster::start(3, 2);
    register(&c, &["alice", "bob"]).await;
    // Both on the gateway that dies.
    let (alice, _alice_ev) = client(&c, 0, "alice").await;
    let (bob, mut bob_ev) = client(&c, 0, "bob").await;

    const N: usize = 1000;
    let acked = Arc::new(AtomicUsize::new(0));
    let sends = send_all(&alice, "bob", N, acked.clone());
    wait_for(&acked, 50, 60).await;
    c.gateways[0].kill();
    let in_flight = N - acked.load(Ordering::Relaxed);
    assert!(in_flight > 0, "everything was acknowledged before the kill");

    let mut ids = Vec::new();
    for s in sends {
        ids.push(s.await.unwrap());
    }
    let got = recv_exactly(&mut bob_ev, "bob", N, 60).await;
    let mut got_ids: Vec<u64> = got.iter().map(|m| m.msg_id).collect();
    ids.sort_unstable();
    got_ids.sort_unstable();
    assert_eq!(
        got_ids, ids,
        "every acknowledged message, once ({in_flight} were in flight)"
    );
    for cl in [alice, bob] {
        cl.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logic_node_sigkilled_under_load() {
    let mut c = Cluster::start(2, 2);
    register(&c, &["alice", "bob"]).await;
    let (alice, _alice_ev) = client(&c, 0, "alice").await;
    let (bob, mut bob_ev) = client(&c, 1, "bob").await;

    const N: usize = 600;
    let acked = Arc::new(AtomicUsize::new(0));
    // 6 senders, each sending in order: a steady load, not one burst.
    let mut senders = Vec::new();
    for s in 0..6 {
        let (alice, acked) = (alice.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..N / 6 {
                let ack = alice.send_text("bob", &format!("s{s} m{i}")).await.unwrap();
                acked.fetch_add(1, Ordering::Relaxed);
                ids.push(ack.msg_id);
            }
            ids
        }));
    }
    wait_for(&acked, 100, 60).await;
    c.logics[0].kill();
    let at_kill = acked.load(Ordering::Relaxed);
    assert!(at_kill < N, "the load was over before the kill");

    let mut ids = Vec::new();
    for s in senders {
        ids.extend(s.await.unwrap());
    }
    let got = recv_exactly(&mut bob_ev, "bob", N, 60).await;
    // Per sender, in order.
    let mut per_sender: HashMap<String, Vec<usize>> = HashMap::new();
    for m in &got {
        let (s, i) = m.text.split_once(" m").unwrap();
        per_sender
            .entry(s.to_owned())
            .or_default()
            .push(i.parse().unwrap());
    }
    for (s, seq) in per_sender {
        assert_eq!(
            seq,
            (0..N / 6).collect::<Vec<_>>(),
            "sender {s} out of order"
        );
    }
    let mut got_ids: Vec<u64> = got.iter().map(|m| m.msg_id).collect();
    ids.sort_unstable();
    got_ids.sort_unstable();
    assert_eq!(got_ids, ids);

    // A new logic node joins and learns the routes (snapshots): with the survivor gone
    // too, it alone delivers the next messages.
    c.add_logic();
    c.logics[1].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5 {
        alice.send_text("bob", &format!("late m{i}")).await.unwrap();
    }
    let got = recv_exactly(&mut bob_ev, "bob", 5, 20).await;
    assert_eq!(got[4].text, "late m4");
    for cl in [alice, bob] {
        cl.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_system_recovers() {
    let mut c = Cluster::start(2, 2);
    register(&c, &["alice", "bob"]).await;
    let (alice, _alice_ev) = client(&c, 0, "alice").await;
    let (bob, mut bob_ev) = client(&c, 1, "bob").await;
    for i in 0..10 {
        alice
            .send_text("bob", &format!("before {i}"))
            .await
            .unwrap();
    }
    recv_exactly(&mut bob_ev, "bob", 10, 20).await;

    // NATS goes away with sends in flight and comes back a second later.
    let acked = Arc::new(AtomicUsize::new(0));
    c.nats.stop();
    let sends = send_all(&alice, "bob", 20, acked.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.nats.restart();
    for s in sends {
        s.await.unwrap();
    }
    // Routes are rebuilt from the gateways' snapshots: pushes flow again.
    for i in 0..5 {
        alice.send_text("bob", &format!("after {i}")).await.unwrap();
    }
    let got = recv_exactly(&mut bob_ev, "bob", 25, 30).await;
    assert!(got.iter().any(|m| m.text == "after 4"));
    for cl in [alice, bob] {
        cl.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_sends_fail_retryably_and_resume() {
    // A gate in front of PostgreSQL: open, or closed (every connection through it is
    // cut, new ones are closed at once) — PostgreSQL unreachable.
    let pg = ferry_testkit::pg::postgres().port;
    let gate = Proxy::start(([127, 0, 0, 1], pg).into()).await;
    let port = gate.addr.port();
    let c = Cluster::start_with(1, 1, |db| db.url_via(port));
    register(&c, &["alice", "bob"]).await;
    let (alice, _alice_ev) = client(&c, 0, "alice").await;
    let (bob, mut bob_ev) = client(&c, 0, "bob").await;
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(
            alice
                .send_text("bob", &format!("before {i}"))
                .await
                .unwrap()
                .msg_id,
        );
    }

    gate.refuse(true);
    gate.cut();
    // One attempt, not retried: the error must say "try again".
    let msg = v1::SendMsg {
        client_msg_id: ferry_client::new_client_msg_id(),
        to: "bob".into(),
        text: "during".into(),
        r#type: v1::MsgType::Text as i32,
        ..Default::default()
    };
    let body = bytes::Bytes::from(ferry_proto::ProtoMessage::encode_to_vec(&msg));
    let err = alice
        .request(ferry_proto::cmd::SEND, body)
        .await
        .expect_err("a send acknowledged with PostgreSQL unreachable");
    assert!(err.is_retryable(), "not retryable: {err}");
    // The SDK keeps retrying the same message (same client_msg_id) until it is back.
    let during = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.send_msg(&msg).await.unwrap().msg_id })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !during.is_finished(),
        "acknowledged while PostgreSQL was unreachable"
    );
    gate.refuse(false);
    acked.push(
        tokio::time::timeout(Duration::from_secs(30), during)
            .await
            .expect("no ack after PostgreSQL came back")
            .unwrap(),
    );
    for i in 0..5 {
        acked.push(
            alice
                .send_text("bob", &format!("after {i}"))
                .await
                .unwrap()
                .msg_id,
        );
    }
    let got = recv_exactly(&mut bob_ev, "bob", 16, 30).await;
    let mut got_ids: Vec<u64> = got.iter().map(|m| m.msg_id).collect();
    got_ids.sort_unstable();
    acked.sort_unstable();
    assert_eq!(got_ids, acked, "every acknowledged message, once");
    for cl in [alice, bob] {
        cl.close().await;
    }
}

/// A device that logs in on a second gateway replaces its link on the first: the old
/// link gets `KICK{KICKED}` and is closed, the new one serves, and another device of the
/// same user on the first gateway is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_logging_in_on_another_gateway_replaces_its_old_link() {
    let c = Cluster::start(2, 1);
    register(&c, &["roam"]).await;
    let addrs = c.addrs();
    let key = ferry_client::fetch_server_key(&addrs[0]).await.unwrap();
    let short = ShortLink::sealed(&addrs[0], Some(key));
    let phone = short.auth("roam", PASSWORD, "phone").await.unwrap().token;
    let laptop = short.auth("roam", PASSWORD, "laptop").await.unwrap().token;
    let logged_in = |f: ferry_proto::Frame| {
        assert_eq!(
            f.cmd,
            ferry_proto::cmd::response(ferry_proto::cmd::LOGIN),
            "{f:?}"
        );
    };
    let mut old = SecureRaw::connect(&addrs[0]).await;
    logged_in(old.login(&key, &phone).await.unwrap());
    let mut other = SecureRaw::connect(&addrs[0]).await;
    logged_in(other.login(&key, &laptop).await.unwrap());
    // The logic node learns of both links (link events over NATS) before the new login.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut new = SecureRaw::connect(&addrs[1]).await;
    logged_in(new.login(&key, &phone).await.unwrap());
    let kick = old.recv().await.expect("the old link is told");
    assert_eq!(kick.cmd, ferry_proto::cmd::KICK);
    let k = <v1::Kick as ferry_proto::ProtoMessage>::decode(kick.body).unwrap();
    assert_eq!(k.code, v1::ErrorCode::Kicked as i32, "{k:?}");
    assert!(old.recv().await.is_none(), "and closed");

    for (link, id) in [(&mut new, 2), (&mut other, 3)] {
        link.send(ferry_proto::cmd::SYNC, id, &v1::SyncReq::default())
            .await;
        let f = loop {
            let f = link.recv().await.expect("the link serves");
            if f.req_id == id {
                break f;
            }
            assert_ne!(f.cmd, ferry_proto::cmd::KICK, "kicked: {f:?}");
        };
        assert_eq!(f.cmd, ferry_proto::cmd::response(ferry_proto::cmd::SYNC));
    }
}

/// A LOGIN the client gave up on (timed out: the network held it) that still reaches a
/// gateway later is applied there, and replaces the link the client made meanwhile on
/// another gateway (`KICK{KICKED}`). That kick is the client's own doing: it logs in
/// again and goes on, rather than stopping as when another copy of the device takes
/// over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_given_up_on_that_lands_later_does_not_stop_its_client() {
    let c = Cluster::start(2, 1);
    register(&c, &["slowpoke", "friend"]).await;
    let addrs = c.addrs();
    let key = ferry_client::fetch_server_key(&addrs[0]).await.unwrap();
    // In front of gw-1, a middlebox that holds what the client sends until a second
    // after the client gave up (closed), then delivers it on a connection of its own.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let gw1: std::net::SocketAddr = addrs[1].parse().unwrap();
    let delivered = Arc::new(AtomicUsize::new(0));
    let holder = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut down, _) = front.accept().await.unwrap();
            let mut held = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), down.read_to_end(&mut held)).await;
            drop(down);
            // Well after the client logged in on gw-0.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut up = tokio::net::TcpStream::connect(gw1).await.unwrap();
            up.write_all(&held).await.unwrap();
            delivered.store(held.len(), Ordering::SeqCst);
            let mut answer = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(5), up.read(&mut answer)).await;
        })
    };
    // Signed in beforehand, so the first thing the client sends is its LOGIN.
    let state = tempfile::tempdir().unwrap();
    let mut st = ferry_client::DeviceState::fresh();
    let a = ShortLink::sealed(&addrs[0], Some(key))
        .auth("slowpoke", PASSWORD, &st.device_id)
        .await
        .unwrap();
    st.token = a.token;
    st.user_id = a.user_id;
    st.save(state.path()).unwrap();
    let mut cfg = client_config(&front_addr.to_string(), "slowpoke");
    cfg.servers = vec![front_addr.to_string(), addrs[0].clone()];
    cfg.state_dir = Some(state.path().to_path_buf());
    cfg.security = ferry_client::Security::Pinned(key);
    // One attempt at a time: the held one fails (times out, and is closed) before gw-0
    // is tried.
    cfg.smart.race_parallel = 1;
    cfg.smart.attempt_timeout = Duration::from_secs(1);
    cfg.smart.long_poll = false;
    let (me, mut ev) = Client::connect(cfg).await.unwrap();
    let first = me.endpoint().expect("logged in");
    assert_eq!(first.addr.to_string(), addrs[0], "through gw-0");

    // The held LOGIN lands on gw-1 and kicks the link on gw-0: lost, then back.
    let reason = event_where(&mut ev, 10, |e| match e {
        Event::Disconnected { reason } => Some(reason),
        Event::Stopped { error } => panic!("the client stopped: {error}"),
        _ => None,
    })
    .await;
    assert!(reason.contains("own late login"), "{reason}");
    assert!(
        delivered.load(Ordering::SeqCst) > 0,
        "the held LOGIN was delivered"
    );
    event_where(&mut ev, 10, |e| match e {
        Event::Connected { .. } => Some(()),
        Event::Stopped { error } => panic!("the client stopped: {error}"),
        _ => None,
    })
    .await;
    // And it is served.
    let (friend, _fev) = client(&c, 0, "friend").await;
    friend.send_text("slowpoke", "still here?").await.unwrap();
    let got = recv_messages(&mut ev, "slowpoke", 1, 10).await;
    assert_eq!(got[0].1.text, "still here?");
    me.close().await;
    friend.close().await;
    holder.await.unwrap();
}
