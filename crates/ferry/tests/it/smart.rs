//! Smart connection over real sockets on 127.0.0.0/8: racing bad endpoints, the long
//! link over HTTP long-poll when TCP is blocked (and back), endpoint lists re-ranked by
//! reports, the smart heartbeat under a middlebox that drops idle flows, and bad input
//! on the new HTTP paths.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_client::{
    Client, ClientConfig, DeviceState, Endpoint, Event, Events, ShortLink, Transport,
};
use ferry_proto::frame::encode_msg;
use ferry_proto::{cmd, v1, Frame, ProtoMessage, MAX_BODY_LEN};
use ferry_testkit::*;
use tokio::net::TcpListener;

/// A listener on `ip`, port chosen by the kernel.
async fn bind(ip: &str) -> TcpListener {
    TcpListener::bind(format!("{ip}:0")).await.unwrap()
}

/// An address on `ip` where nothing listens: connects are refused.
async fn refusing(ip: &str) -> SocketAddr {
    let l = bind(ip).await;
    l.local_addr().unwrap()
}

/// A client config with time scaled down: races 0.5 s apart, attempts cut at 4 s.
fn fast(server: &str, user: &str) -> ClientConfig {
    let mut cfg = client_config(server, user);
    cfg.smart.race_stagger = Duration::from_millis(500);
    cfg.smart.attempt_timeout = Duration::from_secs(4);
    cfg.smart.report_idle = Duration::from_millis(300);
    cfg
}

/// A device state holding a token, so a test measures the long link alone.
async fn signed_in_state(server: &str, user: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut st = DeviceState::fresh();
    let a = ShortLink::new(server)
        .auth(user, PASSWORD, &st.device_id)
        .await
        .unwrap();
    st.token = a.token;
    st.user_id = a.user_id;
    st.save(dir.path()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_past_black_holed_refusing_and_slow_endpoints_to_the_good_one() {
    let srv = TestServer::with(|c| c.listen = vec!["127.0.0.4:0".into()]).await;
    srv.register(&["alice", "bob"]).await;
    let good = srv.server.addr();
    // Bound, never accepting: connects complete in the kernel, nothing ever answers.
    let hole = bind("127.0.0.2").await;
    let black = hole.local_addr().unwrap();
    let refused = refusing("127.0.0.5").await;
    let slow_l = bind("127.0.0.3").await;
    let slow = slow_l.local_addr().unwrap();
    let options = ProxyOptions {
        delay: Duration::from_millis(1_500),
        ..Default::default()
    };
    let _slow = Proxy::on(slow_l, good, options);

    // A device that has a token: the good endpoint, listed last, wins the race.
    let state = signed_in_state(&good.to_string(), "alice").await;
    let mut cfg = fast(&black.to_string(), "alice");
    cfg.servers = vec![refused.to_string(), slow.to_string(), good.to_string()];
    cfg.state_dir = Some(state.path().to_path_buf());
    let started = Instant::now();
    let (alice, mut events) = Client::connect(cfg.clone()).await.unwrap();
    let took = started.elapsed();
    let tcp_good = Endpoint::new(good, Transport::Tcp);
    assert_eq!(alice.endpoint(), Some(tcp_good));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let ep = event_where(&mut events, 5, |e| match e {
        Event::Connected { endpoint, .. } => Some(endpoint),
        _ => None,
    })
    .await;
    assert_eq!(ep, tcp_good);
    // It works, and the server's list (its own port) has arrived.
    let (bob, mut bob_ev) = connect(&good.to_string(), "bob").await;
    alice.send_text("bob", "through the race").await.unwrap();
    assert_eq!(
        recv_messages(&mut bob_ev, "bob", 1, 10).await[0].1.text,
        "through the race"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alice.endpoint_list().contains(&tcp_good) {
        assert!(Instant::now() < deadline, "no endpoint list");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.close().await;

    // The next start tries the last good endpoint first: connected at once.
    let started = Instant::now();
    let (again, _ev) = Client::connect(cfg).await.unwrap();
    assert_eq!(again.endpoint(), Some(tcp_good));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    again.close().await;

    // A fresh device (no token yet) races its sign-in the same way and ends there too.
    let mut cfg = fast(&black.to_string(), "bob");
    cfg.servers = vec![refused.to_string(), slow.to_string(), good.to_string()];
    let started = Instant::now();
    let (fresh, _ev) = Client::connect(cfg).await.unwrap();
    assert_eq!(fresh.endpoint(), Some(tcp_good));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    fresh.close().await;
    bob.close().await;
    drop(hole);
}

/// A server with `users` whose endpoint list names only a proxy in front of it (its
/// address the third), so a client cannot go around the proxy.
async fn behind_a_proxy(users: &[&str]) -> (TestServer, Proxy, SocketAddr) {
    let front = bind("127.0.0.6").await;
    let front_addr = front.local_addr().unwrap();
    let srv = TestServer::with(|c| {
        c.gateway.lp_poll_hold_ms = 2_000;
        c.logic.endpoints.gateways = vec![ferry_logic::GatewayEndpoints {
            id: c.gateway.id.clone(),
            addrs: vec![front_addr.to_string()],
            ..Default::default()
        }];
    })
    .await;
    srv.register(users).await;
    let proxy = Proxy::on(front, srv.server.addr(), ProxyOptions::default());
    (srv, proxy, front_addr)
}

/// A TCP link that worked until just now, lost with TCP failing after it (a server
/// restarting, overloaded), is not moved onto long-poll at once: the client keeps
/// trying TCP with back-off for `long_poll_after`, and falls back only when TCP fails
/// longer than that (a network that began to block it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tcp_link_tries_tcp_again_before_long_poll() {
    let (srv, proxy, front_addr) = behind_a_proxy(&["bob"]).await;
    let mut cfg = fast(&front_addr.to_string(), "bob");
    cfg.smart.long_poll_after = Duration::from_secs(4);
    let (bob, _bob_ev) = Client::connect(cfg).await.unwrap();
    let on = |t| Some(Endpoint::new(front_addr, t));
    assert_eq!(bob.endpoint(), on(Transport::Tcp));

    proxy.http_only(true);
    proxy.cut_long_links();
    let lost = Instant::now();
    // Within `long_poll_after`: TCP again and again, never long-poll.
    while lost.elapsed() < Duration::from_millis(3_000) {
        assert_ne!(
            bob.endpoint(),
            on(Transport::Http),
            "moved to long-poll {:?} after a TCP link was lost",
            lost.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(srv.server.gateway.long_poll_sessions(), 0);
    // TCP keeps failing past it: long-poll.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bob.endpoint() != on(Transport::Http) {
        assert!(Instant::now() < deadline, "never fell back to long-poll");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lost.elapsed() >= Duration::from_secs(4),
        "{:?}",
        lost.elapsed()
    );
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_blocked_falls_back_to_long_poll_and_moves_back_when_tcp_returns() {
    let (srv, proxy, front_addr) = behind_a_proxy(&["alice", "bob"]).await;
    proxy.http_only(true);

    let (alice, mut alice_ev) = connect(&srv.addr(), "alice").await;
    let (bob, mut bob_ev) = Client::connect(fast(&front_addr.to_string(), "bob"))
        .await
        .unwrap();
    let on = |t| Some(Endpoint::new(front_addr, t));
    assert_eq!(
        bob.endpoint(),
        on(Transport::Http),
        "long-poll when TCP is blocked"
    );
    assert_eq!(srv.server.gateway.long_poll_sessions(), 1);

    // Both ways, nothing lost, in order.
    for i in 0..15 {
        alice.send_text("bob", &format!("a{i}")).await.unwrap();
        bob.send_text("alice", &format!("b{i}")).await.unwrap();
    }
    let to_bob: Vec<_> = recv_messages(&mut bob_ev, "bob", 15, 20)
        .await
        .into_iter()
        .map(|(_, m)| m.text)
        .collect();
    let to_alice: Vec<_> = recv_messages(&mut alice_ev, "alice", 15, 20)
        .await
        .into_iter()
        .map(|(_, m)| m.text)
        .collect();
    assert_eq!(to_bob, (0..15).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(
        to_alice,
        (0..15).map(|i| format!("b{i}")).collect::<Vec<_>>()
    );
    // Still on long-poll (the TCP probes keep failing).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(bob.endpoint(), on(Transport::Http));

    // TCP passes again: the client moves back, and the long-poll session ends.
    proxy.http_only(false);
    let ep = event_where(&mut bob_ev, 15, |e| match e {
        Event::Connected { endpoint, .. } if endpoint.transport == Transport::Tcp => Some(endpoint),
        _ => None,
    })
    .await;
    assert_eq!(Some(ep), on(Transport::Tcp));
    assert_eq!(bob.endpoint(), on(Transport::Tcp));
    for i in 15..20 {
        alice.send_text("bob", &format!("a{i}")).await.unwrap();
        bob.send_text("alice", &format!("b{i}")).await.unwrap();
    }
    let more: Vec<_> = recv_messages(&mut bob_ev, "bob", 5, 20)
        .await
        .into_iter()
        .map(|(_, m)| m.text)
        .collect();
    assert_eq!(more, (15..20).map(|i| format!("a{i}")).collect::<Vec<_>>());
    recv_messages(&mut alice_ev, "alice", 5, 20).await;
    assert_quiet(&mut bob_ev, "bob", 300).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.server.gateway.long_poll_sessions() > 0 {
        assert!(
            Instant::now() < deadline,
            "the long-poll session was not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_clients_sink_a_failing_endpoint_for_others_and_it_comes_back() {
    let dead = refusing("127.0.0.8").await;
    // Two ports, both protocols on each.
    let (l1, l2) = (bind("127.0.0.1").await, bind("127.0.0.7").await);
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.logic.endpoints.report_window_secs = 4;
    // The endpoint list: the dead address and both live ports.
    cfg.logic.endpoints.gateways = vec![ferry_logic::GatewayEndpoints {
        id: cfg.gateway.id.clone(),
        addrs: vec![dead.to_string(), a1.to_string(), a2.to_string()],
        transports: vec!["tcp".into()],
        ..Default::default()
    }];
    let server = ferry::Server::start(cfg, vec![l1, l2]).await.unwrap();
    let short = ShortLink::new(&a1.to_string());
    for u in ["alice", "bob", "carol"] {
        short.register(u, PASSWORD).await.unwrap();
    }
    // Every port speaks both protocols.
    for a in [a1, a2] {
        let tok = token(&a.to_string(), "carol", "raw").await;
        let mut raw = RawLink::connect(&a.to_string()).await;
        assert_eq!(raw.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    }

    let weight_of_dead = |list: &v1::EndpointsResp| {
        list.endpoints
            .iter()
            .find(|e| e.ip == dead.ip().to_string() && e.port == u32::from(dead.port()))
            .map(|e| e.weight)
    };
    let before = short.endpoints(0).await.unwrap();
    assert_eq!(before.endpoints.len(), 3);
    assert_eq!(weight_of_dead(&before), Some(100));

    // Two users' clients meet the dead endpoint first and report it when idle.
    let mut clients = Vec::new();
    for u in ["alice", "bob"] {
        let mut cfg = fast(&dead.to_string(), u);
        cfg.servers = vec![a1.to_string()];
        let (c, _ev) = Client::connect(cfg).await.unwrap();
        assert_eq!(c.endpoint().unwrap().addr, a1);
        clients.push((c, _ev));
    }
    // Carol (another client of the region) now gets it last, with the lowest weight.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sunk = loop {
        let list = short.endpoints(0).await.unwrap();
        if weight_of_dead(&list) == Some(1) {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "the reports did not re-rank: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let last = sunk.endpoints.last().unwrap();
    assert_eq!(
        (last.ip.clone(), last.port),
        (dead.ip().to_string(), u32::from(dead.port()))
    );
    assert_ne!(sunk.version, before.version);
    // Asking with the current version: unchanged, no list.
    let same = short.endpoints(sunk.version).await.unwrap();
    assert!(same.unchanged && same.endpoints.is_empty());

    // No new failures: once they leave the window it is back to full weight.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = short.endpoints(0).await.unwrap();
        if weight_of_dead(&list) == Some(100) {
            break;
        }
        assert!(Instant::now() < deadline, "never came back: {list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (c, _) in clients {
        c.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_heartbeat_converges_under_a_middlebox_that_drops_idle_flows() {
    let srv = TestServer::with(|c| c.gateway.heartbeat_timeout_ms = 20_000).await;
    srv.register(&["alice"]).await;
    let nat_l = bind("127.0.0.9").await;
    let nat = nat_l.local_addr().unwrap();
    // The middlebox forgets flows idle for more than 1.5 s, silently.
    let t = Duration::from_millis(1_500);
    let options = ProxyOptions {
        idle_drop: Some(t),
        ..Default::default()
    };
    let _nat = Proxy::on(nat_l, srv.server.addr(), options);
    let mut cfg = fast(&nat.to_string(), "alice");
    cfg.smart.long_poll = false;
    cfg.network = "cell".into();
    cfg.heartbeat = Duration::from_millis(400);
    cfg.smart.heartbeat_max = Duration::from_secs(3);
    cfg.smart.heartbeat_step = Duration::from_millis(400);
    cfg.smart.heartbeat_successes = 2;
    cfg.smart.heartbeat_back = Duration::from_millis(500);
    cfg.smart.heartbeat_failures = 2;
    cfg.smart.answer_timeout = Duration::from_secs(1);
    let (alice, mut events) = Client::connect(cfg).await.unwrap();
    // Probes 0.4 → 0.8 → 1.2 → 1.6 s; 1.6 s loses the flow twice; back to 1.1 s.
    let deadline = Instant::now() + Duration::from_secs(25);
    let settled = loop {
        if let Some(hb) = alice.heartbeat_state("cell").filter(|h| h.stable) {
            break hb;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}",
            alice.heartbeat_state("cell")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(settled.interval_ms, 1_100, "{settled:?}");
    assert_eq!(settled.ceiling_ms, 1_600);
    assert!(Duration::from_millis(settled.interval_ms) < t);
    // Converged: the link now stays up with the fewest heartbeats that keep it.
    alice.wait_connected().await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), events.recv()).await {}
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(ev) = tokio::time::timeout_at(quiet_until, events.recv()).await {
        if let Some(Event::Disconnected { reason }) = ev {
            panic!("link lost after converging: {reason}");
        }
    }
    assert_eq!(alice.heartbeat_interval(), Duration::from_millis(1_100));

    // Another network starts safe, at once (no back-off), and keeps what each learnt.
    alice.network_changed("wifi");
    lost_and_back(&mut events, 5).await;
    assert_eq!(alice.heartbeat_interval(), Duration::from_millis(400));
    assert_eq!(alice.heartbeat_state("cell").unwrap().interval_ms, 1_100);
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_by_hand_and_bad_input_on_the_new_paths() {
    let srv = TestServer::with(|c| {
        c.gateway.lp_poll_hold_ms = 500;
        c.gateway.lp_idle_ms = 1_500;
    })
    .await;
    srv.register(&["alice"]).await;
    let addr = srv.addr();
    let tok = token(&addr, "alice", "lp").await;
    let err = |body: &[u8]| v1::Error::decode(body).expect("an Error body");

    // The protocol by hand: open with LOGIN, send a heartbeat, poll its answer.
    let mut login = BytesMut::new();
    encode_msg(
        cmd::LOGIN,
        1,
        &v1::LoginReq {
            token: tok.clone(),
            synckey: 0,
            client_version: "raw-lp".into(),
            ..Default::default()
        },
        &mut login,
    );
    let open = http_post(&addr, "/v1/lp/open", "", &login).await;
    assert!(open.head.starts_with("HTTP/1.1 200"), "{}", open.head);
    let sid = open.header("ferry-session").expect("a session id");
    let mut frames = BytesMut::from(&open.body[..]);
    let f = Frame::parse(&mut frames, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!(f.cmd, cmd::response(cmd::LOGIN));
    let lr = v1::LoginResp::decode(f.body).unwrap();
    assert_eq!(
        lr.idle_timeout_ms, 5_000,
        "the gateway's idle timeout is told"
    );
    let mut hb = BytesMut::new();
    encode_msg(cmd::HEARTBEAT, 7, &v1::Heartbeat { synckey: 0 }, &mut hb);
    let HttpAnswer { status: st, .. } =
        http_post(&addr, &format!("/v1/lp/send?sid={sid}"), "", &hb).await;
    assert_eq!(st, 204);
    let HttpAnswer {
        status: st, body, ..
    } = http_post(&addr, &format!("/v1/lp/poll?sid={sid}"), "", &[]).await;
    assert_eq!(st, 200);
    let mut got = BytesMut::from(&body[..]);
    let mut seen = Vec::new();
    while let Some(f) = Frame::parse(&mut got, MAX_BODY_LEN).unwrap() {
        seen.push((f.cmd, f.req_id));
    }
    assert!(
        seen.contains(&(cmd::response(cmd::HEARTBEAT), 7)),
        "{seen:?}"
    );
    // An empty poll returns after the hold.
    let started = Instant::now();
    let HttpAnswer {
        status: st, body, ..
    } = http_post(&addr, &format!("/v1/lp/poll?sid={sid}"), "", &[]).await;
    assert_eq!((st, body.len()), (200, 0));
    assert!(started.elapsed() >= Duration::from_millis(400));

    // Garbage frames on the session: ERROR, then the link (and session) ends.
    let HttpAnswer { status: st, .. } = http_post(
        &addr,
        &format!("/v1/lp/send?sid={sid}"),
        "",
        &[0, 0, 3, 0x83, 0, 0, 0, 9, 1, 2, 3],
    )
    .await;
    assert_eq!(st, 204);
    let HttpAnswer {
        status: st, body, ..
    } = http_post(&addr, &format!("/v1/lp/poll?sid={sid}"), "", &[]).await;
    assert_eq!(st, 200);
    let mut got = BytesMut::from(&body[..]);
    let f = Frame::parse(&mut got, MAX_BODY_LEN)
        .unwrap()
        .expect("an ERROR frame");
    assert_eq!(f.cmd, cmd::ERROR);
    let HttpAnswer { status: st, .. } =
        http_post(&addr, &format!("/v1/lp/poll?sid={sid}"), "", &[]).await;
    assert!(st == 410 || st == 404, "{st}");

    // A session nobody polls or sends to expires, and is forgotten.
    let HttpAnswer { status: st, .. } = http_post(&addr, "/v1/lp/open", "", &login).await;
    assert_eq!(st, 200);
    assert_eq!(srv.server.gateway.long_poll_sessions(), 1);
    let deadline = Instant::now() + Duration::from_secs(6);
    while srv.server.gateway.long_poll_sessions() > 0 {
        assert!(Instant::now() < deadline, "an abandoned session was kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Open: garbage, a frame that is not LOGIN, a bad token, too large.
    let HttpAnswer {
        status: st, body, ..
    } = http_post(&addr, "/v1/lp/open", "", b"hello, is this ferry?").await;
    assert_eq!(st, 400);
    assert_eq!(err(&body).code, v1::ErrorCode::BadRequest as i32);
    // A first frame that is not LOGIN: refused by the link, as on TCP (plaintext is
    // allowed here, so NOT_LOGGED_IN).
    let HttpAnswer {
        status: st, body, ..
    } = http_post(&addr, "/v1/lp/open", "", &hb).await;
    assert_eq!(st, 401);
    assert_eq!(err(&body).code, v1::ErrorCode::NotLoggedIn as i32);
    let mut bad_login = BytesMut::new();
    encode_msg(
        cmd::LOGIN,
        1,
        &v1::LoginReq {
            token: "not-a-token".into(),
            ..Default::default()
        },
        &mut bad_login,
    );
    let HttpAnswer {
        status: st, body, ..
    } = http_post(&addr, "/v1/lp/open", "", &bad_login).await;
    assert_eq!(st, 401);
    assert_eq!(err(&body).code, v1::ErrorCode::Unauthorized as i32);
    let big = vec![b'x'; 70 * 1024];
    let HttpAnswer { status: st, .. } = http_post(&addr, "/v1/lp/open", "", &big).await;
    assert_eq!(st, 413);
    // Unknown or missing session ids.
    for path in [
        "/v1/lp/send?sid=0123456789abcdef",
        "/v1/lp/poll?sid=nope",
        "/v1/lp/close?sid=",
        "/v1/lp/poll",
    ] {
        let HttpAnswer {
            status: st, body, ..
        } = http_post(&addr, path, "", &hb).await;
        assert_eq!(st, 404, "{path}");
        assert_eq!(err(&body).code, v1::ErrorCode::NotFound as i32, "{path}");
    }

    // Endpoint list and reports: garbage, no token, too many samples.
    let HttpAnswer { status: st, .. } =
        http_post(&addr, "/v1/endpoints", "", &[0xff, 0xff, 0xff]).await;
    assert_eq!(st, 400);
    let one = v1::EndpointReportReq {
        samples: vec![v1::ConnectSample {
            ip: "127.0.0.1".into(),
            port: 1,
            transport: v1::Transport::Tcp as i32,
            ..Default::default()
        }],
    };
    let HttpAnswer { status: st, .. } =
        http_post(&addr, "/v1/endpoints/report", "", &one.encode_to_vec()).await;
    assert_eq!(st, 401);
    let many = v1::EndpointReportReq {
        samples: vec![one.samples[0].clone(); 33],
    };
    let auth = format!("Authorization: Bearer {tok}\r\n");
    let HttpAnswer {
        status: st, body, ..
    } = http_post(&addr, "/v1/endpoints/report", &auth, &many.encode_to_vec()).await;
    assert_eq!(st, 413);
    assert_eq!(err(&body).code, v1::ErrorCode::TooLarge as i32);
    let HttpAnswer {
        status: st, body, ..
    } = http_post(&addr, "/v1/endpoints/report", &auth, &one.encode_to_vec()).await;
    assert_eq!(st, 200);
    assert_eq!(
        v1::EndpointReportResp::decode(&body[..]).unwrap().accepted,
        0,
        "not an endpoint of this server"
    );
}

/// `ENDPOINTS` over a logged-in long link answers the same default list as the short
/// link: the gateway's own port (it answered an empty list: the link did not tell logic
/// the address the client reached nor the gateway's listeners).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_over_the_long_link_list_the_gateway_as_the_short_link_does() {
    let srv = TestServer::with(|_| {}).await;
    srv.register(&["alice"]).await;
    let addr = srv.addr();
    let tok = token(&addr, "alice", "ep").await;
    let mut raw = RawLink::connect(&addr).await;
    assert_eq!(raw.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    raw.send(cmd::ENDPOINTS, 7, &v1::EndpointsReq { version: 0 })
        .await;
    let f = raw.recv(10).await.expect("an answer");
    assert_eq!(f.cmd, cmd::response(cmd::ENDPOINTS), "{f:?}");
    let over_link = v1::EndpointsResp::decode(&f.body[..]).unwrap();
    let over_http = ShortLink::new(&addr).endpoints(0).await.unwrap();
    let port: u32 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        over_link
            .endpoints
            .iter()
            .any(|e| e.ip == "127.0.0.1" && e.port == port),
        "{over_link:?}"
    );
    assert_eq!(over_link.version, over_http.version);
    assert_eq!(over_link.endpoints, over_http.endpoints);
}

/// A server with alice registered whose endpoint list names only a recording proxy in
/// front of it (on 127.0.0.7, another network as the server sees it), whose HTTP flows
/// are held `http_delay` per chunk.
async fn listed_behind_a_proxy(http_delay: Duration) -> (TestServer, Proxy) {
    let front = bind("127.0.0.7").await;
    let front_addr = front.local_addr().unwrap();
    let srv = TestServer::with(|c| {
        c.logic.endpoints.gateways = vec![ferry_logic::GatewayEndpoints {
            id: c.gateway.id.clone(),
            addrs: vec![front_addr.to_string()],
            ..Default::default()
        }];
    })
    .await;
    srv.register(&["alice"]).await;
    let proxy = Proxy::on(
        front,
        srv.server.addr(),
        ProxyOptions {
            record: true,
            http_delay,
            ..Default::default()
        },
    );
    (srv, proxy)
}

/// How many endpoint-list requests went through `proxy`.
fn endpoint_asks(proxy: &Proxy) -> usize {
    let sent = proxy.sent();
    let ask = b"POST /v1/endpoints HTTP";
    sent.windows(ask.len()).filter(|w| w == ask).count()
}

/// Whether the device state in `dir` holds an endpoint list the SDK received and kept.
fn list_kept(dir: &std::path::Path) -> bool {
    DeviceState::load(dir).is_ok_and(|s| s.endpoints_version != 0)
}

/// Waits (up to `secs` each) for the client's link to go and then to be back.
async fn lost_and_back(events: &mut Events, secs: u64) {
    event_where(events, secs, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    event_where(events, secs, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
}

/// The endpoint list is asked for at the first login and then when `refresh_secs` is
/// due, not at every login: after a crash every device logs in again at once, and a
/// sealed request each (a connection and a key agreement on both sides) would double the
/// storm. Counted in the bytes the client sends through a proxy the server hands out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_lost_and_logged_in_again_do_not_ask_for_the_endpoint_list_again() {
    // The server lives as long as the test (a named binding, not `_`).
    let (_srv, proxy) = listed_behind_a_proxy(Duration::ZERO).await;
    let state = tempfile::tempdir().unwrap();
    let mut cfg = fast(&proxy.addr.to_string(), "alice");
    cfg.state_dir = Some(state.path().to_path_buf());
    // No connect reports meanwhile (they would not be counted, but keep the flows few).
    cfg.smart.report_idle = Duration::from_secs(3600);
    let (alice, mut ev) = Client::connect(cfg).await.unwrap();
    // The first login asks for the list; its answer is kept (the device state holds the
    // list's version) before the links are cut. Any other answer through the proxy (the
    // sign-in's) is not enough: a refresh cut off on its way is rightly asked again.
    eventually(
        10,
        "the first login asks for the list, and keeps the answer",
        || list_kept(state.path()),
    )
    .await;
    assert_eq!(endpoint_asks(&proxy), 1, "the first login asks once");
    for _ in 0..3 {
        proxy.cut();
        lost_and_back(&mut ev, 15).await;
    }
    // A refresh spawned at a login would have gone out by now: four logins would ask
    // four times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        endpoint_asks(&proxy),
        1,
        "asked again in four logins; once at the first is the rule"
    );
    alice.close().await;
}

/// A link lost and logged in again while the endpoint list is still on its way does not
/// ask for it again (the SDK's one-refresh-at-a-time guard): the short link is slow here
/// (the proxy holds each HTTP chunk 1 s), the long link is cut twice meanwhile, and the
/// one request in flight is what brings the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_while_the_endpoint_list_is_on_its_way_do_not_ask_for_it_again() {
    let (srv, proxy) = listed_behind_a_proxy(Duration::from_secs(1)).await;
    // Signed in and the server's key known beforehand (not through the slow proxy): the
    // long link alone is quick.
    let state = signed_in_state(&srv.addr(), "alice").await;
    let mut cfg = fast(&proxy.addr.to_string(), "alice");
    cfg.state_dir = Some(state.path().to_path_buf());
    cfg.security =
        ferry_client::Security::Pinned(ferry_client::fetch_server_key(&srv.addr()).await.unwrap());
    cfg.smart.report_idle = Duration::from_secs(3600);
    let (alice, mut ev) = Client::connect(cfg).await.unwrap();
    eventually(10, "the first login asks for the list", || {
        endpoint_asks(&proxy) > 0
    })
    .await;
    for _ in 0..2 {
        proxy.cut_long_links();
        lost_and_back(&mut ev, 15).await;
    }
    // A second request would be on the wire at once (the proxy records a chunk before
    // holding it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !list_kept(state.path()),
        "the list came before the logins: the proxy's delay is too short for this test"
    );
    assert_eq!(
        endpoint_asks(&proxy),
        1,
        "logins while the list was on its way asked again"
    );
    eventually(30, "the one request on its way brings the list", || {
        list_kept(state.path())
    })
    .await;
    assert_eq!(endpoint_asks(&proxy), 1);
    alice.close().await;
}
