//! Limits: password attempts per user and per IP, sends per user, connections per IP and
//! body sizes per method. Every refusal carries RATE_LIMITED (or TOO_LARGE) and a
//! retry-after.

use ferry_client::ShortLink;
use ferry_logic::Rate;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, ProtoMessage};
use ferry_testkit::*;

/// One raw HTTP/1.1 POST of a protobuf body; returns the head (as sent) and the body.
async fn raw_post(addr: &str, path: &str, body: &[u8]) -> (String, Vec<u8>) {
    let a = http_post(addr, path, "Content-Type: application/x-protobuf\r\n", body).await;
    (a.head, a.body)
}

/// The answer to request `id`, skipping pushes.
async fn answer(raw: &mut RawLink, id: u32) -> ferry_proto::Frame {
    loop {
        let f = raw.recv(5).await.expect("an answer");
        if f.req_id == id {
            return f;
        }
    }
}

fn retry_after(e: &ferry_client::ClientError) -> u32 {
    match e.refusal() {
        Some(r) => r.retry_after_ms,
        None => panic!("not a refusal: {e:?}"),
    }
}

#[tokio::test]
async fn password_attempts_are_limited_per_user_and_per_ip() {
    let ts = TestServer::with(|c| {
        c.logic.limits.auth_per_user = Rate::new(0.2, 3.0);
        c.logic.limits.auth_per_ip = Rate::new(0.2, 6.0);
    })
    .await;
    ts.register(&["alice", "bob", "carol"]).await;
    let short = ShortLink::new(&ts.addr());
    for _ in 0..3 {
        let e = short.auth("alice", "wrong-guess", "d").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadCredentials));
    }
    // The fourth guess on alice is refused before the password is even checked …
    let e = short.auth("alice", PASSWORD, "d").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RateLimited));
    assert!(retry_after(&e) > 1000, "{e:?}");
    // … on HTTP as 429 with Retry-After.
    let req = v1::AuthReq {
        username: "alice".into(),
        password: PASSWORD.into(),
        device_id: "d".into(),
    };
    let (head, body) = raw_post(&ts.addr(), "/v1/auth", &req.encode_to_vec()).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    let err = v1::Error::decode(&body[..]).unwrap();
    assert_eq!(err.code, ErrorCode::RateLimited as i32);

    // Bob still signs in: the per-user limit is per user. That was the address's sixth
    // attempt (two more than alice's own four, one of them raw); the seventh is refused
    // whatever the user.
    short.auth("bob", PASSWORD, "d").await.unwrap();
    let e = short.auth("carol", PASSWORD, "d").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RateLimited));
}

#[tokio::test]
async fn sends_are_limited_per_user_and_the_link_stays_up() {
    let ts = TestServer::with(|c| c.logic.limits.sends_per_user = Rate::new(2.0, 3.0)).await;
    ts.register(&["alice", "bob"]).await;
    let t = token(&ts.addr(), "alice", "d").await;
    let mut raw = RawLink::connect(&ts.addr()).await;
    assert_eq!(raw.login(&t).await.cmd, cmd::response(cmd::LOGIN));
    let mut refused = None;
    for i in 0..5u32 {
        let m = v1::SendMsg {
            client_msg_id: u64::from(i) + 1,
            to: "bob".into(),
            text: "hi".into(),
            ..Default::default()
        };
        raw.send(cmd::SEND, 10 + i, &m).await;
        let f = answer(&mut raw, 10 + i).await;
        if f.cmd == cmd::ERROR {
            refused = Some((i, v1::Error::decode(f.body).unwrap()));
            break;
        }
        assert_eq!(f.cmd, cmd::response(cmd::SEND));
    }
    let (i, e) = refused.expect("the fourth send is refused");
    assert_eq!(i, 3);
    assert_eq!(e.code, ErrorCode::RateLimited as i32);
    assert!((1..=500).contains(&e.retry_after_ms), "{e:?}");
    // Until the refused send comes back, the device's later sends wait behind it …
    let later = v1::SendMsg {
        client_msg_id: 99,
        to: "bob".into(),
        text: "later".into(),
        ..Default::default()
    };
    raw.send(cmd::SEND, 40, &later).await;
    let held = error_of(&answer(&mut raw, 40).await);
    assert_eq!(held.code, ErrorCode::RateLimited as i32, "{held:?}");
    assert!(held.retry_after_ms <= e.retry_after_ms, "{held:?}");
    // … and after the wait, the same link sends it again: stored.
    tokio::time::sleep(std::time::Duration::from_millis(u64::from(
        e.retry_after_ms,
    )))
    .await;
    let m = v1::SendMsg {
        client_msg_id: 4,
        to: "bob".into(),
        text: "hi".into(),
        ..Default::default()
    };
    raw.send(cmd::SEND, 50, &m).await;
    assert_eq!(answer(&mut raw, 50).await.cmd, cmd::response(cmd::SEND));

    // The SDK waits out the refusals by itself: every message gets through.
    let (alice, _ev) = connect(&ts.addr(), "alice").await;
    for i in 0..6 {
        alice.send_text("bob", &format!("m{i}")).await.unwrap();
    }
}

/// A client that pipelines its sends across the limit and resends what was refused, in
/// its order, gets every message stored in that order: a send refused holds the device's
/// later ones back until it comes again (docs/protocol.md §2, *Sending*), so no later
/// send overtakes it on a token that refilled in between.
#[tokio::test]
async fn a_pipelining_sender_keeps_its_order_across_the_limit() {
    // 2 at once, then one every 50 ms; the sends go out every 20 ms, so tokens refill
    // in the middle of the pipeline.
    let ts = TestServer::with(|c| c.logic.limits.sends_per_user = Rate::new(20.0, 2.0)).await;
    ts.register(&["pia", "bo"]).await;
    let t = token(&ts.addr(), "pia", "d").await;
    let mut raw = RawLink::connect(&ts.addr()).await;
    assert_eq!(raw.login(&t).await.cmd, cmd::response(cmd::LOGIN));
    const N: usize = 16;
    let msg = |i: usize| v1::SendMsg {
        client_msg_id: 1000 + i as u64,
        to: "bo".into(),
        text: format!("m{i:02}"),
        ..Default::default()
    };
    // What is not acknowledged yet, in sending order; request ids are unique per round.
    let mut unacked: Vec<usize> = (0..N).collect();
    let mut req_id = 100u32;
    let mut refusals = 0;
    for round in 0..40 {
        if unacked.is_empty() {
            break;
        }
        let first_id = req_id;
        for &i in &unacked {
            raw.send(cmd::SEND, req_id, &msg(i)).await;
            req_id += 1;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Answers come as they are ready (a refusal before an earlier send's ack).
        let mut answers = std::collections::HashMap::new();
        while answers.len() < unacked.len() {
            let f = raw.recv(5).await.expect("an answer");
            if f.req_id >= first_id {
                answers.insert(f.req_id, f);
            }
        }
        let mut wait = 0;
        let mut still = Vec::new();
        for (k, &i) in unacked.iter().enumerate() {
            let f = answers.remove(&(first_id + k as u32)).unwrap();
            if f.cmd == cmd::ERROR {
                let e = error_of(&f);
                assert_eq!(
                    e.code,
                    ErrorCode::RateLimited as i32,
                    "round {round}: {e:?}"
                );
                wait = wait.max(e.retry_after_ms);
                still.push(i);
            } else {
                assert_eq!(f.cmd, cmd::response(cmd::SEND));
            }
        }
        refusals += still.len();
        unacked = still;
        tokio::time::sleep(std::time::Duration::from_millis(u64::from(wait))).await;
    }
    assert!(unacked.is_empty(), "still refused: {unacked:?}");
    assert!(refusals > 0, "the limit was never reached");
    // Stored in sending order (the sender's own inbox holds its sent messages too).
    raw.send(cmd::SYNC, 9, &v1::SyncReq::default()).await;
    let page = v1::SyncResp::decode(answer(&mut raw, 9).await.body).unwrap();
    let texts: Vec<String> = page
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::entry::Kind::Message(m)) => Some(m.text.clone()),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("m{i:02}")).collect();
    assert_eq!(texts, want, "stored out of sending order");
}

#[tokio::test]
async fn connections_are_limited_per_ip() {
    let ts = TestServer::with(|c| c.gateway.max_connections_per_ip = 2).await;
    ts.register(&["alice"]).await;
    let t = token(&ts.addr(), "alice", "d").await;
    let mut a = RawLink::connect(&ts.addr()).await;
    assert_eq!(a.login(&t).await.cmd, cmd::response(cmd::LOGIN));
    // Another device: a second login of one device would replace the first link.
    let t2 = token(&ts.addr(), "alice", "d2").await;
    let mut b = RawLink::connect(&ts.addr()).await;
    assert_eq!(b.login(&t2).await.cmd, cmd::response(cmd::LOGIN));

    // A third long link is told why and closed.
    let mut c = RawLink::connect(&ts.addr()).await;
    let f = c.login(&t).await;
    assert_eq!(f.cmd, cmd::ERROR);
    let e = v1::Error::decode(f.body).unwrap();
    assert_eq!(e.code, ErrorCode::RateLimited as i32);
    assert!(e.retry_after_ms > 0);
    assert!(c.closed_within(2).await);
    // So is an HTTP request, in HTTP.
    let (head, _) = raw_post(&ts.addr(), "/v1/newsync", &[]).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(head.contains("Retry-After: "), "{head}");

    // A closed link gives its place back.
    drop(a);
    let mut ok = false;
    for _ in 0..50 {
        let mut d = RawLink::connect(&ts.addr()).await;
        if d.login(&t).await.cmd == cmd::response(cmd::LOGIN) {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "a place was freed");
    drop(b);
}

#[tokio::test]
async fn body_sizes_are_limited_per_method() {
    let ts = TestServer::with(|c| {
        c.gateway.body_limits.insert("auth".into(), 200);
    })
    .await;
    ts.register(&["alice"]).await;
    let short = ShortLink::new(&ts.addr());
    let e = short
        .auth("alice", &"x".repeat(300), "d")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TooLarge));
    // Other methods keep the general limit (a 300-byte sync body is fine).
    short.auth("alice", PASSWORD, "d").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_new_sign_ins_and_keeps_connected_users_served() {
    let ts = TestServer::with(|c| {
        c.logic.admission.max_in_flight = 4;
        // Sign-ins cost real work (argon2 with 8 MiB), so a storm of them fills logic.
        c.logic.password.memory_kib = 8 * 1024;
        c.logic.password.iterations = 2;
    })
    .await;
    ts.register(&["alice", "bob"]).await;
    let (alice, _a) = connect(&ts.addr(), "alice").await;
    let (_bob, mut bob_ev) = connect(&ts.addr(), "bob").await;

    // 60 sign-ins at once, each on its own connection.
    let storm: Vec<_> = (0..60)
        .map(|i| {
            let addr = ts.addr();
            tokio::spawn(async move {
                ShortLink::new(&addr)
                    .auth("bob", PASSWORD, &format!("storm-{i}"))
                    .await
            })
        })
        .collect();
    // Meanwhile alice keeps sending: every message is acknowledged.
    for i in 0..20 {
        alice.send_text("bob", &format!("m{i}")).await.unwrap();
    }
    let mut shed = 0;
    for s in storm {
        match s.await.unwrap() {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e:?}");
                assert!(retry_after(&e) > 0);
                shed += 1;
            }
        }
    }
    assert!(shed > 0, "some sign-ins were shed");
    let got = recv_messages(&mut bob_ev, "bob", 20, 10).await;
    assert_eq!(got.len(), 20);
    let logic = &ts.server.logic;
    assert!(
        logic.admission.shed[ferry_logic::admission::Class::NewSession as usize]
            .load(std::sync::atomic::Ordering::Relaxed)
            >= shed as u64
    );
    assert_eq!(
        logic.admission.shed[ferry_logic::admission::Class::Realtime as usize]
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no send was shed"
    );
}
