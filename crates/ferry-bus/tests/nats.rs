//! The NATS bus against a real `nats-server` started on a free port: queue-group
//! requests, pushes, presence fan-out, snapshots for late logic nodes, expiry of a
//! gateway that dies without a word.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_bus::{
    Bus, BusRequest, BusResponse, Handler, LinkEvent, NatsBus, NatsConfig, Push, PushSink,
};
use ferry_testkit::Nats;
use parking_lot::Mutex;

/// A bus config for `nats` with short timers.
fn config(nats: &Nats) -> NatsConfig {
    let mut c = NatsConfig::new(nats.url());
    c.heartbeat = Duration::from_millis(100);
    c.gateway_expiry = Duration::from_millis(500);
    c.request_timeout = Duration::from_secs(2);
    c
}

/// A logic node that tags its answers and records what it hears.
#[derive(Default)]
struct Recorder {
    tag: u8,
    requests: Mutex<u32>,
    /// (gateway, conn, online)
    events: Mutex<Vec<(String, u64, bool)>>,
    down: Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, req: BusRequest) -> BusResponse {
        *self.requests.lock() += 1;
        BusResponse {
            cmd: req.cmd | 0x80,
            body: vec![self.tag].into(),
            ..Default::default()
        }
    }
    async fn link_event(&self, ev: LinkEvent) {
        self.events
            .lock()
            .push((ev.gateway_id, ev.conn_id, ev.online));
    }
    async fn gateway_down(&self, gateway_id: &str) {
        self.down.lock().push(gateway_id.to_owned());
    }
}

#[derive(Default)]
struct Sink(Mutex<Vec<u64>>);
impl PushSink for Sink {
    fn push(&self, push: Push) {
        self.0.lock().push(push.user_id);
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn online(conn: u64) -> LinkEvent {
    LinkEvent {
        gateway_id: "gw-a".into(),
        conn_id: conn,
        user_id: 100 + conn,
        online: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pushes_presence_and_expiry() {
    let nats = Nats::start();
    let gw = NatsBus::connect(config(&nats)).await.unwrap();
    let sink = Arc::new(Sink::default());
    gw.attach_gateway("gw-a", sink.clone());
    gw.ready().await.unwrap();
    assert!(matches!(
        gw.request(BusRequest::default()).await,
        Err(ferry_bus::BusError::NoLogic)
    ));

    let (l1, l2, b1, _b2) = two_logic_nodes(&nats).await;

    // Requests spread over both nodes (the queue group until the gateway hears their
    // heartbeats, then by user); each answer comes back.
    for user_id in 0..40 {
        let r = gw
            .request(BusRequest {
                cmd: 3,
                user_id,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(r.cmd, 0x83);
        assert!(r.body[..] == [1] || r.body[..] == [2]);
    }
    assert_eq!(*l1.requests.lock() + *l2.requests.lock(), 40);
    assert!(
        *l1.requests.lock() > 0 && *l2.requests.lock() > 0,
        "one node got everything"
    );

    // Presence reaches every logic node, in order.
    gw.link_event(online(1)).await.unwrap();
    gw.link_event(online(2)).await.unwrap();
    gw.link_event(LinkEvent {
        online: false,
        ..online(1)
    })
    .await
    .unwrap();
    for l in [&l1, &l2] {
        eventually("presence on both nodes", || {
            l.events.lock().iter().filter(|e| e.1 != 0).count() >= 3
        })
        .await;
        let ev: Vec<_> = l
            .events
            .lock()
            .iter()
            .filter(|e| e.1 != 0)
            .cloned()
            .collect();
        assert_eq!(
            ev[ev.len() - 3..],
            [
                ("gw-a".into(), 1, true),
                ("gw-a".into(), 2, true),
                ("gw-a".into(), 1, false)
            ]
        );
    }

    // Pushes reach the gateway's sink.
    b1.push(
        "gw-a",
        Push {
            user_id: 7,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("the push", || sink.0.lock().contains(&7)).await;

    // A logic node started later learns the live links from a snapshot: conn 2 only.
    let l3 = Arc::new(Recorder {
        tag: 3,
        ..Default::default()
    });
    let b3 = NatsBus::connect(config(&nats)).await.unwrap();
    b3.serve_logic(l3.clone());
    b3.ready().await.unwrap();
    eventually("the snapshot", || !l3.events.lock().is_empty()).await;
    // (It may get more than one snapshot — it asks when it starts, and again when it
    // first hears the gateway mid-stream — each replacing the last.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut known: Vec<_> = l3.events.lock().clone();
    known.dedup();
    assert_eq!(known, [("gw-a".into(), 2, true)], "only the live link");
    assert!(l3.down.lock().iter().all(|g| g == "gw-a"));

    // The gateway dies without a word (no `leaving`): every node drops it on expiry.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before: Vec<usize> = [&l1, &l2, &l3]
        .iter()
        .map(|l| l.down.lock().len())
        .collect();
    drop(gw);
    for (l, n) in [&l1, &l2, &l3].into_iter().zip(before) {
        eventually("expiry", || l.down.lock().len() > n).await;
        assert_eq!(l.down.lock().last().map(String::as_str), Some("gw-a"));
    }
}

/// Logic nodes say they are alive; a gateway sends each user's requests to one of them,
/// and none to a node that announced it is leaving (SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_live_nodes_and_avoid_a_leaving_one() {
    let nats = Nats::start();
    let gw = NatsBus::connect(config(&nats)).await.unwrap();
    gw.ready().await.unwrap();
    let (l1, _l2, b1, _b2) = two_logic_nodes(&nats).await;
    eventually("both heartbeats", || gw.logic_nodes().0 == 2).await;
    let ask = |user_id: u64| {
        let gw = gw.clone();
        async move {
            gw.request(BusRequest {
                cmd: 3,
                user_id,
                ..Default::default()
            })
            .await
            .unwrap()
            .body[0]
        }
    };
    // One user, one node; users over both.
    let mut by_user = Vec::new();
    for u in 1..=20 {
        let first = ask(u).await;
        assert_eq!(ask(u).await, first, "user {u} moved between nodes");
        by_user.push(first);
    }
    assert!(by_user.contains(&1) && by_user.contains(&2), "{by_user:?}");

    // Node 1 leaves: every request goes to node 2 at once.
    b1.leave().await;
    eventually("node 1 out of rotation", || gw.logic_nodes().0 == 1).await;
    let before = *l1.requests.lock();
    for u in 1..=20 {
        assert_eq!(ask(u).await, 2);
    }
    assert_eq!(*l1.requests.lock(), before, "a leaving node got requests");
}

/// Two logic nodes on `nats`, recording what they are asked (tags 1 and 2), both serving.
async fn two_logic_nodes(
    nats: &Nats,
) -> (Arc<Recorder>, Arc<Recorder>, Arc<NatsBus>, Arc<NatsBus>) {
    let recorder = |tag| {
        Arc::new(Recorder {
            tag,
            ..Default::default()
        })
    };
    let (l1, l2) = (recorder(1), recorder(2));
    let b1 = NatsBus::connect(config(nats)).await.unwrap();
    let b2 = NatsBus::connect(config(nats)).await.unwrap();
    b1.serve_logic(l1.clone());
    b2.serve_logic(l2.clone());
    b1.ready().await.unwrap();
    b2.ready().await.unwrap();
    (l1, l2, b1, b2)
}
