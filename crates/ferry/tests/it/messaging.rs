//! The sync model end to end: order, exactly once, offline delivery, multiple devices,
//! idempotent retries, and sync over the short link.

use std::time::Duration;

use ferry_client::{Client, Event, ShortLink};
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_each_way_arrive_once_in_order() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let (alice, mut alice_ev) = connect(&srv.addr(), "alice").await;
    let (bob, mut bob_ev) = connect(&srv.addr(), "bob").await;

    const N: usize = 1000;
    let a = alice.clone();
    let b = bob.clone();
    let send_a = tokio::spawn(async move {
        for i in 0..N {
            a.send_text("bob", &format!("a{i}")).await.unwrap();
        }
    });
    let send_b = tokio::spawn(async move {
        for i in 0..N {
            b.send_text("alice", &format!("b{i}")).await.unwrap();
        }
    });
    let at_bob = recv_messages(&mut bob_ev, "bob", N, 60).await;
    let at_alice = recv_messages(&mut alice_ev, "alice", N, 60).await;
    send_a.await.unwrap();
    send_b.await.unwrap();

    let texts: Vec<_> = at_bob.iter().map(|(_, m)| m.text.clone()).collect();
    assert_eq!(texts, (0..N).map(|i| format!("a{i}")).collect::<Vec<_>>());
    let texts: Vec<_> = at_alice.iter().map(|(_, m)| m.text.clone()).collect();
    assert_eq!(texts, (0..N).map(|i| format!("b{i}")).collect::<Vec<_>>());
    // Inbox seqs strictly increase, and message ids are distinct.
    assert!(at_bob.windows(2).all(|w| w[0].0 < w[1].0));
    let mut ids: Vec<_> = at_bob.iter().map(|(_, m)| m.msg_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N);
    assert_quiet(&mut bob_ev, "bob", 300).await;
    // Each side's inbox holds its 1000 sent and 1000 received.
    assert_eq!(bob.synckey(), 2 * N as u64);
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_everything_at_login() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let (alice, _ev) = connect(&srv.addr(), "alice").await;
    for i in 0..250 {
        alice.send_text("bob", &format!("m{i}")).await.unwrap();
    }
    // Bob's device has never been online: it starts from the oldest entry kept, and
    // syncs in pages (the page size is 200).
    let (bob, mut bob_ev) = connect(&srv.addr(), "bob").await;
    let got = recv_messages(&mut bob_ev, "bob", 250, 20).await;
    let texts: Vec<_> = got.iter().map(|(_, m)| m.text.as_str()).collect();
    assert_eq!(texts, (0..250).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(got.first().unwrap().0, 1);
    assert_quiet(&mut bob_ev, "bob", 300).await;
    bob.close().await;
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_resumes_from_its_stored_synckey() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let state = tempfile::tempdir().unwrap();
    let mut bob_cfg = client_config(&srv.addr(), "bob");
    bob_cfg.state_dir = Some(state.path().to_path_buf());

    let (alice, _ev) = connect(&srv.addr(), "alice").await;
    alice.send_text("bob", "first").await.unwrap();
    let (bob, mut ev) = Client::connect(bob_cfg.clone()).await.unwrap();
    assert_eq!(
        recv_messages(&mut ev, "bob", 1, 10).await[0].1.text,
        "first"
    );
    bob.close().await;

    alice.send_text("bob", "second").await.unwrap();
    alice.send_text("bob", "third").await.unwrap();
    // The same device again: only what it has not seen.
    let (bob, mut ev) = Client::connect(bob_cfg).await.unwrap();
    let got = recv_messages(&mut ev, "bob", 2, 10).await;
    assert_eq!(got[0].1.text, "second");
    assert_eq!(got[1].1.text, "third");
    assert_quiet(&mut ev, "bob", 300).await;
    bob.close().await;
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_gets_everything_including_own_sends() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let (phone, mut phone_ev) = connect(&srv.addr(), "alice").await;
    let (laptop, mut laptop_ev) = connect(&srv.addr(), "alice").await;
    assert_ne!(phone.device_id(), laptop.device_id());
    let (bob, _bob_ev) = connect(&srv.addr(), "bob").await;

    phone.send_text("bob", "from phone").await.unwrap();
    bob.send_text("alice", "to alice").await.unwrap();

    for ev in [&mut phone_ev, &mut laptop_ev] {
        let mut texts = Vec::new();
        while texts.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), ev.recv())
                .await
                .unwrap()
            {
                Some(Event::Entry(e)) => match e.kind {
                    Some(v1::entry::Kind::Message(m)) => texts.push((m.from, m.text)),
                    other => panic!("unexpected entry {other:?}"),
                },
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
        assert_eq!(
            texts,
            [
                ("alice".to_owned(), "from phone".to_owned()),
                ("bob".to_owned(), "to alice".to_owned())
            ]
        );
    }
    phone.close().await;
    laptop.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_ack_stores_one_message() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let tok = token(&addr, "alice", "dev-a").await;
    let msg = v1::SendMsg {
        client_msg_id: 777,
        to: "bob".into(),
        text: "only once".into(),
        r#type: 0,
        ..Default::default()
    };

    // Send, then cut the link before reading the ack.
    let mut link = RawLink::connect(&addr).await;
    assert_eq!(link.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    link.send(cmd::SEND, 2, &msg).await;
    // Give the server time to store it, then drop the link unread.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(link);

    // Retry on a new link with the same client_msg_id.
    let mut link = RawLink::connect(&addr).await;
    assert_eq!(link.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    link.send(cmd::SEND, 2, &msg).await;
    let ack = loop {
        let f = link.recv(5).await.expect("ack");
        if f.req_id == 2 {
            break f;
        }
    };
    assert_eq!(ack.cmd, cmd::response(cmd::SEND));
    let ack: v1::SendAck = ack.decode().unwrap();
    assert_eq!(ack.seq, 1, "the retry is answered with the original");

    let bob_tok = token(&addr, "bob", "dev-b").await;
    let page = ShortLink::new(&addr)
        .newsync(&bob_tok, 0, 100)
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.latest_seq, 1);
    match &page.entries[0].kind {
        Some(v1::entry::Kind::Message(m)) => {
            assert_eq!((m.text.as_str(), m.msg_id), ("only once", ack.msg_id))
        }
        other => panic!("unexpected entry {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_link_register_auth_and_newsync() {
    let srv = TestServer::start().await;
    let addr = srv.addr();
    let short = ShortLink::new(&addr);
    short.register("alice", PASSWORD).await.unwrap();
    short.register("bob", PASSWORD).await.unwrap();
    let dup = short.register("alice", PASSWORD).await.unwrap_err();
    assert_eq!(dup.code(), Some(v1::ErrorCode::UserExists));
    let bad = short.register("bad name!", PASSWORD).await.unwrap_err();
    assert_eq!(bad.code(), Some(v1::ErrorCode::InvalidArgument));
    let wrong = short
        .auth("alice", "wrong-password", "d1")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some(v1::ErrorCode::BadCredentials));
    let nobody = short.auth("carol", PASSWORD, "d1").await.unwrap_err();
    assert_eq!(nobody.code(), Some(v1::ErrorCode::BadCredentials));

    let (alice, _ev) = connect(&addr, "alice").await;
    for i in 0..5 {
        alice.send_text("bob", &format!("n{i}")).await.unwrap();
    }
    let unknown = alice.send_text("carol", "hi").await.unwrap_err();
    assert_eq!(unknown.code(), Some(v1::ErrorCode::UnknownUser));

    let auth = short.auth("bob", PASSWORD, "web").await.unwrap();
    assert_eq!(auth.latest_seq, 5);
    let page = short.newsync(&auth.token, 0, 3).await.unwrap();
    assert_eq!(page.entries.len(), 3);
    assert!(page.more);
    assert_eq!(page.synckey, 3);
    let page = short.newsync(&auth.token, page.synckey, 3).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    assert!(!page.more);
    assert_eq!(page.synckey, 5);

    let err = short.newsync("not-a-token", 0, 3).await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::Unauthorized));
    // A new token for the same device revokes the old one.
    let again = short.auth("bob", PASSWORD, "web").await.unwrap();
    let err = short.newsync(&auth.token, 0, 3).await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::Unauthorized));
    assert!(short.newsync(&again.token, 0, 3).await.is_ok());
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_protobuf_with_the_right_status() {
    let srv = TestServer::start().await;
    let addr = srv.addr();
    let http = |path: &str, body: Vec<u8>| {
        let addr = addr.clone();
        let path = path.to_owned();
        async move {
            let a = http_post(
                &addr,
                &path,
                "Content-Type: application/x-protobuf\r\n",
                &body,
            )
            .await;
            (a.status, a.body)
        }
    };
    let (status, body) = http("/v1/register", vec![0xff, 0xff, 0xff]).await;
    assert_eq!(status, 400);
    let e = v1::Error::decode(&body[..]).unwrap();
    assert_eq!(e.code, v1::ErrorCode::BadRequest as i32);
    let (status, _) = http("/v1/nothing", vec![]).await;
    assert_eq!(status, 404);
    let (status, body) = http("/v1/auth", vec![0u8; 100 * 1024]).await;
    assert_eq!(status, 413);
    assert_eq!(
        v1::Error::decode(&body[..]).unwrap().code,
        v1::ErrorCode::TooLarge as i32
    );
}

/// The event channel is bounded: an app that does not drain stalls the SDK, which keeps
/// the link alive and, once the app drains, syncs what it could not hand over — every
/// message arrives, once, in order, and the synckey never passes what the app got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_app_loses_nothing_when_its_event_channel_fills() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let (alice, _alice_ev) = connect(&srv.addr(), "alice").await;
    let mut cfg = client_config(&srv.addr(), "bob");
    cfg.event_capacity = 16;
    let (bob, mut bob_ev) = Client::connect(cfg).await.unwrap();

    const N: usize = 200;
    for i in 0..N {
        alice.send_text("bob", &format!("m{i}")).await.unwrap();
    }
    // Bob's app has not read anything: the channel is full, and the synckey stops at
    // what is in it (the Connected event takes a slot too).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        bob.synckey() < 16,
        "the synckey ran ahead of the app: {}",
        bob.synckey()
    );
    // The link stayed up and still answers requests while stalled.
    bob.typing("alice").await.unwrap();
    let got = recv_messages(&mut bob_ev, "bob", N, 60).await;
    let texts: Vec<_> = got.iter().map(|(_, m)| m.text.clone()).collect();
    assert_eq!(texts, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    assert_quiet(&mut bob_ev, "bob", 300).await;
    assert_eq!(bob.synckey(), N as u64);
    alice.close().await;
    bob.close().await;
}

/// A link that logs in with `echo_in_ack` gets its own message's entry in the SendAck
/// and no NOTIFY of it; the same user's other link still gets the NOTIFY, and a link
/// that did not ask gets it too (docs/protocol.md §2, *Your own entry in the ack*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_asks_gets_its_own_entry_in_the_ack_and_no_notify() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let link = |device: &'static str, echo: bool| {
        let addr = addr.clone();
        async move {
            let t = token(&addr, "alice", device).await;
            let mut raw = RawLink::connect(&addr).await;
            let req = v1::LoginReq {
                token: t,
                echo_in_ack: echo,
                ..Default::default()
            };
            raw.send(cmd::LOGIN, 1, &req).await;
            let f = raw.recv(5).await.expect("login answer");
            assert_eq!(f.cmd, cmd::response(cmd::LOGIN));
            raw
        }
    };
    let mut phone = link("phone", true).await;
    let mut laptop = link("laptop", false).await;
    // Both links' routes reach logic before the send.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hello = v1::SendMsg {
        client_msg_id: 77,
        to: "bob".into(),
        text: "hello".into(),
        ..Default::default()
    };
    phone.send(cmd::SEND, 2, &hello).await;
    let f = phone.recv(5).await.expect("the ack");
    assert_eq!((f.cmd, f.req_id), (cmd::response(cmd::SEND), 2));
    let ack = v1::SendAck::decode(f.body).unwrap();
    let entry = ack.entry.expect("the entry in the ack");
    assert_eq!(entry.seq, ack.seq);
    match entry.kind {
        Some(v1::entry::Kind::Message(m)) => {
            assert_eq!((m.text.as_str(), m.msg_id), ("hello", ack.msg_id))
        }
        other => panic!("not the message: {other:?}"),
    }
    // The laptop hears of it; the phone does not (its next frame is its heartbeat's
    // answer, sent after the laptop's notify arrived).
    let f = laptop.recv(5).await.expect("the laptop's notify");
    assert_eq!(f.cmd, cmd::NOTIFY);
    assert_eq!(v1::Notify::decode(f.body).unwrap().latest_seq, ack.seq);
    phone
        .send(cmd::HEARTBEAT, 3, &v1::Heartbeat::default())
        .await;
    let f = phone.recv(5).await.expect("the heartbeat's answer");
    assert_eq!(
        (f.cmd, f.req_id),
        (cmd::response(cmd::HEARTBEAT), 3),
        "no NOTIFY of its own entry on the sending link"
    );
}
