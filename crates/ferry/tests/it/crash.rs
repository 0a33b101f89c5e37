//! The server process SIGKILLed after N acknowledged sends loses none of them, and its
//! search index, killed while following them, misses and doubles none.

use std::process::Command;

use ferry_testkit::*;

/// `ferry serve` on `data`, listening on `listen`, as a process of its own.
fn start(data: &std::path::Path, listen: &str) -> Node {
    let cfg = data.join("test.toml");
    std::fs::write(
        &cfg,
        "[logic]\nopen_messaging = true\n[logic.limits]\nsends_per_user = { per_sec = 0.0, burst = 0.0 }\n[logic.password]\nmemory_kib = 64\niterations = 1\n[gateway]\nshutdown_grace_ms = 500\n",
    )
    .unwrap();
    Node::spawn(
        Command::new(crate::FERRY)
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data")
            .arg(data.join("db"))
            .args(["--listen", listen]),
        "ferry listening on ",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "127.0.0.1:0");
    let addr = server.addr.clone();
    // Sealed, as every client must talk to a server that refuses plaintext.
    let key = ferry_client::fetch_server_key(&addr).await.unwrap();
    let short = ferry_client::ShortLink::sealed(&addr, Some(key));
    short.register("alice", PASSWORD).await.unwrap();
    short.register("bob", PASSWORD).await.unwrap();

    let (alice, _ev) = connect(&addr, "alice").await;
    const N: usize = 300;
    let mut acked = Vec::new();
    // Many sends in flight at once, so group commit batches them.
    let mut tasks = Vec::new();
    for i in 0..N {
        let a = alice.clone();
        tasks.push(tokio::spawn(async move {
            a.send_text("bob", &format!("durable {i}")).await.unwrap()
        }));
    }
    for t in tasks {
        acked.push(t.await.unwrap().msg_id);
    }
    // Every send above is acknowledged; now the process dies without warning (SIGKILL:
    // no shutdown code runs).
    server.kill();
    drop(alice);

    let mut server = start(dir.path(), &addr);
    let (bob, mut bob_ev) = connect(&server.addr, "bob").await;
    let got = recv_messages(&mut bob_ev, "bob", N, 30).await;
    let mut ids: Vec<_> = got.iter().map(|(_, m)| m.msg_id).collect();
    ids.sort();
    acked.sort();
    assert_eq!(ids, acked, "every acknowledged message, once");
    assert_quiet(&mut bob_ev, "bob", 300).await;
    // The search index, killed while it was following the sends, finds each of them
    // exactly once after the restart (it resumes from the cursor of its last commit).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let found = loop {
        let mut found = Vec::new();
        let mut page = String::new();
        for _ in 0..20 {
            let r = bob
                .account()
                .search(ferry_proto::v1::SearchReq {
                    text: "durable".into(),
                    limit: 100,
                    page: page.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            found.extend(r.hits.iter().map(|h| h.message.as_ref().unwrap().msg_id));
            if r.next.is_empty() {
                break;
            }
            page = r.next;
        }
        if found.len() >= N || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let mut found_sorted = found.clone();
    found_sorted.sort();
    assert_eq!(found_sorted, acked, "every message found once by search");
    bob.close().await;
    server.kill();
}
