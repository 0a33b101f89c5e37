//! Faults: a data folder that fills up under load, links cut at random and links that
//! go half-open while messages flow. Nothing acknowledged may be lost or delivered twice,
//! the server stays up and the clients recover. (`bench/faults.sh` runs the same faults
//! and more with a larger workload.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_bench::faultproxy::{FaultProxy, Faults};
use ferry_bench::fulldisk::SmallDisk;
use ferry_proto::v1::ErrorCode;
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_testkit::*;

/// The next answer to a request (pushes, request id 0, are skipped).
async fn answer(raw: &mut RawLink) -> Option<ferry_proto::Frame> {
    loop {
        let f = raw.recv(10).await?;
        if f.req_id != 0 {
            return Some(f);
        }
    }
}

/// 1 KiB texts: a few MiB of tmpfs fill up in a few thousand messages.
fn filler(i: u64) -> String {
    format!("{i:06} {}", "x".repeat(1017))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_retryably_and_loses_nothing() {
    let disk = match SmallDisk::mount(16 << 20) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "SKIPPED a_full_disk_refuses_sends_retryably_and_loses_nothing: cannot mount \
                 a tmpfs here ({e}); this test needs root"
            );
            return;
        }
    };
    let data = disk.path().join("data");
    let cfg = test_config(&data);
    let server = ferry::Server::bind(cfg.clone()).await.unwrap();
    let addr = server.addr().to_string();
    let short = ferry_client::ShortLink::new(&addr);
    short.register("alice", PASSWORD).await.unwrap();
    short.register("bob", PASSWORD).await.unwrap();
    let tok = token(&addr, "alice", "raw").await;
    let mut raw = RawLink::connect(&addr).await;
    assert_eq!(raw.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    let (bob, mut bob_ev) = connect(&addr, "bob").await;
    // Signed in before the disk fills (a sign-in writes too, and would wait for space).
    let (alice, _a) = connect(&addr, "alice").await;

    // Leave 512 KiB, then send 1 KiB messages, 32 in flight, until the store refuses.
    disk.fill(512 << 10).unwrap();
    eprintln!("filled; {} B free", disk.available());
    let base = rand::random::<u32>() as u64 * 1_000_000;
    let send = |i: u64| v1::SendMsg {
        client_msg_id: base + i,
        to: "bob".into(),
        text: filler(i),
        r#type: v1::MsgType::Text as i32,
        ..Default::default()
    };
    let mut acked = BTreeSet::new();
    let mut refused = BTreeMap::new();
    let (mut next, mut outstanding) = (1u64, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while refused.len() < 20 && next <= 20_000 {
        while outstanding < 32 && refused.is_empty() {
            raw.send(cmd::SEND, next as u32, &send(next)).await;
            next += 1;
            outstanding += 1;
        }
        if outstanding == 0 {
            // Refusals seen: keep offering a few more, one at a time.
            raw.send(cmd::SEND, next as u32, &send(next)).await;
            next += 1;
            outstanding += 1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the disk never filled"
        );
        if next % 256 == 0 {
            eprintln!(
                "sent {}, acked {}, refused {}, {outstanding} outstanding, {} B free",
                next - 1,
                acked.len(),
                refused.len(),
                disk.available()
            );
        }
        let f = answer(&mut raw)
            .await
            .expect("the server answers while the disk is full");
        outstanding -= 1;
        let i = u64::from(f.req_id);
        if f.cmd == cmd::response(cmd::SEND) {
            acked.insert(i);
        } else {
            assert_eq!(f.cmd, cmd::ERROR, "{f:?}");
            let e = v1::Error::decode(f.body).unwrap();
            assert_eq!(e.code, ErrorCode::Unavailable as i32, "{e:?}");
            assert!(e.retry_after_ms > 0, "a retry-after: {e:?}");
            assert!(!e.message.contains("sqlite"), "no internals leak: {e:?}");
            refused.insert(i, e.retry_after_ms);
        }
    }
    while outstanding > 0 {
        let f = answer(&mut raw).await.expect("an answer");
        outstanding -= 1;
        let i = u64::from(f.req_id);
        if f.cmd == cmd::response(cmd::SEND) {
            acked.insert(i);
        } else {
            refused.insert(i, 0);
        }
    }
    assert!(
        refused.len() >= 20,
        "{} acked, {} refused",
        acked.len(),
        refused.len()
    );
    assert!(!acked.is_empty());

    // Still full: the link is up, the server answers heartbeats and reads.
    raw.send(cmd::HEARTBEAT, 7, &v1::Heartbeat { synckey: 0 })
        .await;
    let f = answer(&mut raw).await.expect("heartbeat answer");
    assert_eq!(f.cmd, cmd::response(cmd::HEARTBEAT));

    // An SDK send meanwhile keeps retrying (it honours the retry-after) …
    let sdk_send = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.send_text("bob", "sent while full").await })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // … space is freed: the retries of every refused message succeed, once each.
    eprintln!(
        "{} acked, {} refused while full",
        acked.len(),
        refused.len()
    );
    disk.free().unwrap();
    let refused: Vec<u64> = refused.into_keys().collect();
    for &i in &refused {
        let mut tries = 0;
        loop {
            raw.send(cmd::SEND, i as u32, &send(i)).await;
            let f = answer(&mut raw).await.expect("an answer");
            if f.cmd == cmd::response(cmd::SEND) {
                acked.insert(i);
                break;
            }
            tries += 1;
            assert!(
                tries < 20,
                "message {i} still refused after space was freed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(15), sdk_send)
        .await
        .expect("the SDK's retry succeeds once there is space")
        .unwrap()
        .unwrap();
    let total = acked.len() + 1;
    assert_eq!(
        acked.len() as u64,
        next - 1,
        "every message offered is acked"
    );

    // Bob gets every message once.
    let got = recv_messages(&mut bob_ev, "bob", total, 30).await;
    let texts: BTreeSet<String> = got.iter().map(|(_, m)| m.text.clone()).collect();
    assert_eq!(texts.len(), total, "no duplicates");
    for i in &acked {
        assert!(texts.contains(&filler(*i)), "message {i} lost");
    }
    assert_quiet(&mut bob_ev, "bob", 300).await;
    eprintln!("all {total} delivered once");
    bob.close().await;
    alice.close().await;
    drop(raw);

    // And it is all on disk: a restart on the same data serves the whole inbox.
    server.shutdown().await;
    let server = ferry::Server::bind(cfg).await.unwrap();
    let addr = server.addr().to_string();
    eprintln!("restarted");
    let (bob2, mut ev2) = connect(&addr, "bob").await;
    let again = recv_messages(&mut ev2, "bob", total, 30).await;
    let again: BTreeSet<String> = again.into_iter().map(|(_, m)| m.text).collect();
    assert_eq!(again, texts);
    bob2.close().await;
    server.shutdown().await;
}

/// Pairs of SDK clients sending through the fault proxy for `secs`, then the faults
/// stop and everything settles: nothing acknowledged lost, nothing twice.
async fn through_the_proxy(faults: Faults, secs: u64) -> (ferry_bench::faults::Outcome, u64) {
    let srv = TestServer::start().await;
    let proxy = FaultProxy::start("127.0.0.1:0", srv.server.addr(), faults)
        .await
        .unwrap();
    let pairs = ferry_bench::faults::Pairs::start(
        &srv.addr(),
        &proxy.addr.to_string(),
        "f",
        PASSWORD,
        3,
        10.0,
        |server, user, _| client_config(server, user),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    proxy.set(Faults::default());
    let outcome = pairs.finish(Duration::from_secs(30)).await;
    let stats = proxy.stats.json();
    eprintln!("{outcome:?} {stats}");
    let n = stats["cuts"].as_u64().unwrap() + stats["half_opened"].as_u64().unwrap();
    assert_eq!(outcome.lost, 0, "{outcome:?}");
    assert_eq!(outcome.duplicated, 0, "{outcome:?}");
    assert_eq!(
        outcome.unacked, 0,
        "every send acknowledged in the end: {outcome:?}"
    );
    assert_eq!(outcome.received, outcome.acked, "{outcome:?}");
    assert!(outcome.acked > 0);
    srv.server.shutdown().await;
    (outcome, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cuts_while_messages_flow_lose_and_duplicate_nothing() {
    let faults = Faults {
        cut_min_ms: 300,
        cut_max_ms: 1_500,
        ..Default::default()
    };
    let (o, cuts) = through_the_proxy(faults, 5).await;
    assert!(cuts >= 3, "links were cut ({cuts})");
    assert!(o.disconnects >= 3, "the clients saw it: {o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_links_are_detected_and_lose_nothing() {
    let faults = Faults {
        half_open_min_ms: 500,
        half_open_max_ms: 1_500,
        ..Default::default()
    };
    let (o, half) = through_the_proxy(faults, 6).await;
    assert!(half >= 3, "links went half-open ({half})");
    assert!(o.disconnects >= 3, "the clients noticed dead links: {o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_jitter_stalls_and_byte_chunking_lose_nothing() {
    let faults = Faults {
        delay_ms: 30,
        jitter_ms: 40,
        stall_prob: 0.02,
        stall_ms: 300,
        chunk_bytes: 5,
        chunk_gap_ms: 0,
        ..Default::default()
    };
    through_the_proxy(faults, 3).await;
}
