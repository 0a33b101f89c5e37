//! The server process SIGKILLed after N acknowledged sends loses none of them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    fn start(data: &std::path::Path, listen: &str) -> Self {
        let cfg = data.join("test.toml");
        std::fs::write(
            &cfg,
            "[logic]\nopen_messaging = true\n[logic.limits]\nsends_per_user = { per_sec = 0.0, burst = 0.0 }\n[logic.password]\nmemory_kib = 64\niterations = 1\n[gateway]\nshutdown_grace_ms = 500\n",
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data")
            .arg(data.join("db"))
            .args(["--listen", listen])
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep reading what the server prints, so it never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let addr = line
            .trim()
            .strip_prefix("ferry listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        ServerProcess { child, addr }
    }

    fn kill(mut self) {
        // SIGKILL: no shutdown code runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "127.0.0.1:0");
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
    // Every send above is acknowledged; now the process dies without warning.
    server.kill();
    drop(alice);

    let server = ServerProcess::start(dir.path(), &addr);
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
