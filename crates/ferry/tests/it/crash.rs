//! The server process SIGKILLed after N acknowledged sends loses none of them.

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
    bob.close().await;
    server.kill();
}
