//! Heartbeats, dead links, reconnects, the login deadline and graceful shutdown.

use std::time::{Duration, Instant};

use ferry_client::{Client, Event};
use ferry_proto::{cmd, v1};
use ferry_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_within_the_heartbeat_timeout() {
    let srv = TestServer::with(|c| c.gateway.heartbeat_timeout_ms = 800).await;
    srv.register(&["alice"]).await;
    let tok = token(&srv.addr(), "alice", "d").await;
    let mut link = RawLink::connect(&srv.addr()).await;
    assert_eq!(link.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    let started = Instant::now();
    assert!(link.closed_within(5).await, "a silent link must be dropped");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "dropped too early: {took:?}"
    );

    // A link that heartbeats stays up past the timeout.
    let mut link = RawLink::connect(&srv.addr()).await;
    assert_eq!(link.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        link.send(cmd::HEARTBEAT, 10 + i, &v1::Heartbeat { synckey: 0 })
            .await;
        let f = link.recv(2).await.expect("heartbeat answer");
        assert_eq!((f.cmd, f.req_id), (cmd::response(cmd::HEARTBEAT), 10 + i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_before_the_deadline_closes_the_connection() {
    let srv = TestServer::with(|c| c.gateway.login_timeout_ms = 500).await;
    let mut link = RawLink::connect(&srv.addr()).await;
    assert!(link.closed_within(3).await);
    // Half a frame is not a login either.
    let mut link = RawLink::connect(&srv.addr()).await;
    link.send_bytes(&[0, 0, 10, cmd::LOGIN]).await;
    assert!(link.closed_within(3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_link_dies_reconnects_and_gets_what_it_missed() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let proxy = Proxy::start(srv.server.addr()).await;
    let (alice, _a) = connect(&srv.addr(), "alice").await;
    let (bob, mut bob_ev) = connect(&proxy.addr.to_string(), "bob").await;

    alice.send_text("bob", "before").await.unwrap();
    assert_eq!(
        recv_messages(&mut bob_ev, "bob", 1, 10).await[0].1.text,
        "before"
    );

    // The network cuts Bob's link; Alice sends while he is away.
    proxy.cut();
    for i in 0..20 {
        alice
            .send_text("bob", &format!("while away {i}"))
            .await
            .unwrap();
    }
    let got = recv_messages(&mut bob_ev, "bob", 20, 20).await;
    let texts: Vec<_> = got.iter().map(|(_, m)| m.text.clone()).collect();
    assert_eq!(
        texts,
        (0..20)
            .map(|i| format!("while away {i}"))
            .collect::<Vec<_>>()
    );
    assert_quiet(&mut bob_ev, "bob", 300).await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_link_is_detected_by_the_client_heartbeat() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let proxy = Proxy::start(srv.server.addr()).await;
    let (alice, _a) = connect(&srv.addr(), "alice").await;
    let (bob, mut bob_ev) = connect(&proxy.addr.to_string(), "bob").await;

    // Packets vanish but neither side sees a close: the half-open case.
    proxy.blackhole(true);
    alice.send_text("bob", "into the void").await.unwrap();
    // Bob's heartbeat (500 ms) gets no answer: the SDK declares the link dead.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, bob_ev.recv()).await {
            Ok(Some(Event::Disconnected { .. })) => break,
            Ok(Some(_)) => {}
            other => panic!("no disconnect noticed: {other:?}"),
        }
    }
    proxy.blackhole(false);
    let got = recv_messages(&mut bob_ev, "bob", 1, 20).await;
    assert_eq!(got[0].1.text, "into the void");
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_survive_a_server_restart_on_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let server = ferry::Server::bind(cfg.clone()).await.unwrap();
    let addr = server.addr();
    let short = ferry_client::ShortLink::new(&addr.to_string());
    short.register("alice", PASSWORD).await.unwrap();
    short.register("bob", PASSWORD).await.unwrap();
    let (alice, _a) = connect(&addr.to_string(), "alice").await;
    let (bob, mut bob_ev) = connect(&addr.to_string(), "bob").await;
    alice.send_text("bob", "one").await.unwrap();
    recv_messages(&mut bob_ev, "bob", 1, 10).await;

    // Graceful shutdown kicks every link; then the server comes back on the same port.
    server.shutdown().await;
    let mut cfg2 = cfg.clone();
    cfg2.listen = vec![addr.to_string()];
    let server = ferry::Server::bind(cfg2).await.unwrap();

    // Alice's send retries until the new server acknowledges it.
    alice.send_text("bob", "two").await.unwrap();
    let got = recv_messages(&mut bob_ev, "bob", 1, 20).await;
    assert_eq!(got[0].1.text, "two");
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_connect_at_once() {
    let srv = TestServer::start().await;
    srv.register(&["alice"]).await;
    let mut cfg = client_config(&srv.addr(), "alice");
    cfg.password = "not-the-password".into();
    let err = Client::connect(cfg).await.err().expect("must fail");
    assert_eq!(err.code(), Some(v1::ErrorCode::BadCredentials));
}
