//! The encrypted path end to end, against servers that refuse plaintext: the Noise IK
//! login in one round trip, sealed frames both ways (SDK over TCP and long-poll, and by
//! hand), a wrong pinned key, tampered and garbage records, plaintext refused, sealed
//! short-link requests and their replay, trust on first use.

use std::time::Duration;

use bytes::BytesMut;
use ferry_client::{Client, Security, ShortLink};
use ferry_proto::frame::encode_msg;
use ferry_proto::secure;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, sealed, Frame, ProtoMessage, MAX_BODY_LEN};
use ferry_testkit::*;

async fn sealed_token(ts: &TestServer, user: &str) -> String {
    ShortLink::sealed(&ts.addr(), Some(key_of(ts)))
        .auth(user, PASSWORD, "raw")
        .await
        .unwrap()
        .token
}

/// `from` sends `text` to `to_name` (whose link is `to`): a sealed record of the
/// plain frame plus 24 bytes, acknowledged, delivered inline in a sealed NOTIFY.
async fn exchange(from: &mut SecureRaw, to: &mut SecureRaw, to_name: &str, text: &str) {
    let out0 = from.bytes_out;
    let msg = v1::SendMsg {
        client_msg_id: ferry_client::new_client_msg_id(),
        to: to_name.into(),
        text: text.into(),
        ..Default::default()
    };
    from.send(cmd::SEND, 7, &msg).await;
    let mut plain = BytesMut::new();
    encode_msg(cmd::SEND, 7, &msg, &mut plain);
    assert_eq!(from.bytes_out - out0, plain.len() + secure::RECORD_OVERHEAD);
    let ack = from.recv_cmd(cmd::response(cmd::SEND)).await;
    assert_eq!(ack.req_id, 7);
    // The recipient's NOTIFY carries it inline (skipping echoes of its own sends).
    loop {
        let n = to.recv_cmd(cmd::NOTIFY).await;
        let n = v1::Notify::decode(n.body).unwrap();
        let got = n.entries.iter().any(|e| {
            matches!(&e.kind, Some(v1::entry::Kind::Message(m)) if m.text == text && m.to == to_name)
        });
        if got {
            break;
        }
    }
}

#[tokio::test]
async fn encrypted_login_is_one_round_trip_and_frames_flow_sealed_both_ways() {
    let ts = strict_server().await;
    register_sealed(&ts, &["alice", "bob"]).await;
    let key = key_of(&ts);

    let mut a = SecureRaw::connect(&ts.addr()).await;
    let answer = a
        .login(&key, &sealed_token(&ts, "alice").await)
        .await
        .unwrap();
    assert_eq!(answer.cmd, cmd::response(cmd::LOGIN));
    v1::LoginResp::decode(answer.body).unwrap();
    // The handshake answer carries a session resumption ticket in front of the login
    // answer, in its own TICKET frame (docs/protocol.md 1.5): ~116 B with a
    // 5-character device id.
    let ticket = a.ticket.clone().expect("a resumption ticket");
    let ticket_bytes = ferry_proto::HEADER_LEN + ticket.encoded_len();
    // One write (the HELLO with the LOGIN inside) and the answer: one round trip.
    assert_eq!(a.writes, 1, "login took more than one client flight");
    let (login_out, login_in) = (a.bytes_out, a.bytes_in);
    assert!(
        login_out < 300 && login_in - ticket_bytes < 200,
        "{login_out} / {login_in} ({ticket_bytes} of it the ticket)"
    );

    let mut b = SecureRaw::connect(&ts.addr()).await;
    b.login(&key, &sealed_token(&ts, "bob").await)
        .await
        .unwrap();

    // alice → bob and back, sealed.
    exchange(&mut a, &mut b, "bob", "hello").await;
    exchange(&mut b, &mut a, "alice", "hi").await;
    // Heartbeats are sealed too.
    a.send(cmd::HEARTBEAT, 9, &v1::Heartbeat::default()).await;
    assert_eq!(a.recv_cmd(cmd::response(cmd::HEARTBEAT)).await.req_id, 9);
}

#[tokio::test]
async fn sdk_clients_talk_encrypted_and_the_short_link_is_sealed() {
    let ts = strict_server().await;
    register_sealed(&ts, &["carol", "dave"]).await;
    let (carol, mut carol_ev) = Client::connect(pinned(&ts, "carol")).await.unwrap();
    let (dave, mut dave_ev) = Client::connect(pinned(&ts, "dave")).await.unwrap();
    carol.send_text("dave", "to dave").await.unwrap();
    let got = recv_messages(&mut dave_ev, "dave", 1, 10).await;
    assert_eq!(got[0].1.text, "to dave");
    dave.send_text("carol", "to carol").await.unwrap();
    let got = recv_messages(&mut carol_ev, "carol", 1, 10).await;
    assert_eq!(got[0].1.text, "to carol");
    // The short link with the token inside the seal.
    carol.account().request_friend("dave", "hi").await.unwrap();
}

#[tokio::test]
async fn the_long_link_over_long_poll_is_encrypted_too() {
    let ts = strict_server().await;
    register_sealed(&ts, &["kim"]).await;
    let key = key_of(&ts);
    let addr = ts.addr();
    let mut login = BytesMut::new();
    let req = v1::LoginReq {
        token: sealed_token(&ts, "kim").await,
        synckey: 0,
        client_version: "lp".into(),
        ..Default::default()
    };
    encode_msg(cmd::LOGIN, 1, &req, &mut login);
    let mut hello = BytesMut::new();
    let hs = secure::client_hello(&key, &login, &mut hello).unwrap();
    let (status, _, body) = post_sid(&addr, "/v1/lp/open", &hello).await;
    assert_eq!(status.0, 200);
    let sid = status.1.expect("a session id");
    let mut wire = BytesMut::from(&body[..]);
    let answer = secure::parse_handshake(&mut wire).unwrap().unwrap();
    let (mut ch, mut payload) = hs.finish(&answer).unwrap();
    let ticket = ferry_proto::resume::take_ticket(&mut payload)
        .unwrap()
        .expect("a resumption ticket in front of the login answer");
    let mut plain = BytesMut::from(&payload[..]);
    let f = Frame::parse(&mut plain, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!(f.cmd, cmd::response(cmd::LOGIN));
    // A sealed heartbeat through /send, its sealed answer through /poll.
    let mut hb = BytesMut::new();
    encode_msg(cmd::HEARTBEAT, 5, &v1::Heartbeat::default(), &mut hb);
    let mut sealed_hb = BytesMut::new();
    ch.seal(&hb, &mut sealed_hb).unwrap();
    let ((status, _), _, _) = post_sid(&addr, &format!("/v1/lp/send?sid={sid}"), &sealed_hb).await;
    assert_eq!(status, 204);
    let mut got = BytesMut::new();
    let frame = loop {
        let ((status, _), _, body) = post_sid(&addr, &format!("/v1/lp/poll?sid={sid}"), b"").await;
        assert_eq!(status, 200);
        wire.extend_from_slice(&body);
        ch.open(&mut wire, &mut got).unwrap();
        if let Some(f) = Frame::parse(&mut got, MAX_BODY_LEN).unwrap() {
            break f;
        }
    };
    assert_eq!(
        (frame.cmd, frame.req_id),
        (cmd::response(cmd::HEARTBEAT), 5)
    );
    // A long-poll session resumes from the ticket of the first login (protocol.md 1.5).
    let secret: [u8; 32] = ticket.secret[..].try_into().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut hello = BytesMut::new();
    let hs = ferry_proto::resume::client_resume(&ticket.ticket, &secret, &login, now, &mut hello)
        .unwrap();
    let (status, _, body) = post_sid(&addr, "/v1/lp/open", &hello).await;
    assert_eq!(status.0, 200);
    assert!(status.1.is_some(), "a session id");
    let mut wire = BytesMut::from(&body[..]);
    let answer = secure::parse_handshake(&mut wire).unwrap().unwrap();
    let (_, mut payload) = hs.finish(&answer).unwrap();
    assert_eq!(
        ferry_proto::resume::take_ticket(&mut payload),
        Ok(None),
        "resumed from the same address: no new ticket"
    );
    let mut plain = BytesMut::from(&payload[..]);
    let f = Frame::parse(&mut plain, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!(f.cmd, cmd::response(cmd::LOGIN));
    let full = &ts.server.gateway.stats;
    assert_eq!(
        full.resumed_handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The same RESUME again: 409 RESUME_REFUSED.
    let (status, _, body) = post_sid(&addr, "/v1/lp/open", &hello).await;
    assert_eq!(status.0, 409);
    let e = v1::Error::decode(&body[..]).unwrap();
    assert_eq!(e.code, ErrorCode::ResumeRefused as i32, "{}", e.message);
    // A plaintext LOGIN on long-poll is refused like on TCP.
    let (status, _, body) = post_sid(&addr, "/v1/lp/open", &login).await;
    assert_ne!(status.0, 200);
    let e = v1::Error::decode(&body[..]).unwrap();
    assert_eq!(e.code, ErrorCode::PermissionDenied as i32, "{}", e.message);
}

/// A long-poll POST: ((status, session id header), content type, body).
async fn post_sid(addr: &str, path: &str, body: &[u8]) -> ((u16, Option<String>), String, Vec<u8>) {
    let a = post(addr, path, "application/x-ferry-frames", body).await;
    (
        (a.status, a.header("ferry-session")),
        a.header("content-type").unwrap_or_default(),
        a.body,
    )
}

/// One HTTP/1.1 POST of `content_type` by hand.
async fn post(addr: &str, path: &str, content_type: &str, body: &[u8]) -> HttpAnswer {
    http_post(
        addr,
        path,
        &format!("content-type: {content_type}\r\n"),
        body,
    )
    .await
}

#[tokio::test]
async fn a_wrong_pinned_key_is_a_clear_error_and_no_login() {
    let ts = strict_server().await;
    register_sealed(&ts, &["erin"]).await;
    let wrong = ferry_proto::secure::StaticKey::generate().unwrap().public;

    let mut raw = SecureRaw::connect(&ts.addr()).await;
    let refused = raw
        .login(&wrong, &sealed_token(&ts, "erin").await)
        .await
        .unwrap_err();
    let e = error_of(&refused);
    assert_eq!(e.code, ErrorCode::BadRequest as i32);
    assert!(e.message.contains("server key"), "{}", e.message);
    assert!(raw.recv().await.is_none(), "the link must close");

    let mut cfg = client_config(&ts.addr(), "erin");
    cfg.security = Security::Pinned(wrong);
    let err = tokio::time::timeout(Duration::from_secs(10), Client::connect(cfg))
        .await
        .expect("a wrong key must fail fast, not retry forever")
        .err()
        .expect("no login with a wrong key");
    assert!(err.to_string().contains("server key"), "{err}");
    assert_eq!(ts.server.gateway.links(), 0);
}

#[tokio::test]
async fn tampered_and_garbage_records_close_the_link_and_others_carry_on() {
    let ts = strict_server().await;
    register_sealed(&ts, &["fay", "gus"]).await;
    let key = key_of(&ts);
    let (gus, mut gus_ev) = Client::connect(pinned(&ts, "gus")).await.unwrap();

    // A record with one bit flipped.
    let mut a = SecureRaw::connect(&ts.addr()).await;
    a.login(&key, &sealed_token(&ts, "fay").await)
        .await
        .unwrap();
    let mut plain = BytesMut::new();
    encode_msg(cmd::HEARTBEAT, 3, &v1::Heartbeat::default(), &mut plain);
    let mut sealed = BytesMut::new();
    a.channel
        .as_mut()
        .unwrap()
        .seal(&plain, &mut sealed)
        .unwrap();
    let last = sealed.len() - 1;
    sealed[last] ^= 0x01;
    a.write(&sealed).await;
    let f = a.recv().await.expect("an error before the close");
    assert_eq!(error_of(&f).code, ErrorCode::BadRequest as i32);
    assert!(a.recv().await.is_none(), "the link must close");

    // A replayed record (the same bytes twice).
    let mut r = SecureRaw::connect(&ts.addr()).await;
    r.login(&key, &sealed_token(&ts, "fay").await)
        .await
        .unwrap();
    let mut once = BytesMut::new();
    r.channel.as_mut().unwrap().seal(&plain, &mut once).unwrap();
    r.write(&once).await;
    assert_eq!(r.recv_cmd(cmd::response(cmd::HEARTBEAT)).await.req_id, 3);
    r.write(&once).await;
    let f = r.recv().await.expect("an error before the close");
    assert_eq!(error_of(&f).code, ErrorCode::BadRequest as i32);
    assert!(r.recv().await.is_none());

    // Garbage after the handshake, and garbage instead of a HELLO.
    let mut g = SecureRaw::connect(&ts.addr()).await;
    g.login(&key, &sealed_token(&ts, "fay").await)
        .await
        .unwrap();
    g.write(&[0xff; 64]).await;
    let f = g.recv().await.expect("an error before the close");
    assert_eq!(error_of(&f).code, ErrorCode::TooLarge as i32);
    assert!(g.recv().await.is_none());
    let mut h = RawLink::connect(&ts.addr()).await;
    let mut junk = BytesMut::new();
    ferry_proto::frame::encode_raw(cmd::HELLO, 0, &[7u8; 120], &mut junk);
    h.send_bytes(&junk).await;
    let f = h.recv(5).await.expect("a plain error");
    assert_eq!(error_of(&f).code, ErrorCode::BadRequest as i32);
    assert!(h.closed_within(5).await);

    // The server is fine for everybody else.
    let (fay, _fay_ev) = Client::connect(pinned(&ts, "fay")).await.unwrap();
    fay.send_text("gus", "still here").await.unwrap();
    let got = recv_messages(&mut gus_ev, "gus", 1, 10).await;
    assert_eq!(got[0].1.text, "still here");
    drop(gus);
}

#[tokio::test]
async fn plaintext_is_refused_when_not_allowed() {
    let ts = strict_server().await;
    register_sealed(&ts, &["hal"]).await;
    let token = sealed_token(&ts, "hal").await;

    let mut raw = RawLink::connect(&ts.addr()).await;
    let f = raw.login(&token).await;
    let e = error_of(&f);
    assert_eq!(e.code, ErrorCode::PermissionDenied as i32);
    assert!(e.message.contains("plaintext"), "{}", e.message);
    assert!(raw.closed_within(5).await);

    // The password never goes in plain: the short link refuses before reading it.
    let err = ShortLink::new(&ts.addr())
        .auth("hal", PASSWORD, "d")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    // A plaintext SDK client gets the same answer, and gives up.
    let mut cfg = client_config(&ts.addr(), "hal");
    cfg.security = Security::Plaintext;
    let err = tokio::time::timeout(Duration::from_secs(10), Client::connect(cfg))
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    assert_eq!(ts.server.gateway.links(), 0);
}

#[tokio::test]
async fn sealed_short_link_requests_work_and_a_replay_is_refused() {
    let ts = strict_server().await;
    let key = key_of(&ts);
    let addr = ts.addr();
    let req = v1::RegisterReq {
        username: "ivy".into(),
        password: PASSWORD.into(),
    };
    let (wire, reply) = sealed::seal_request(&key, "", &req.encode_to_vec(), now_ms()).unwrap();
    // The password is not on the wire in the clear.
    assert!(!wire
        .windows(PASSWORD.len())
        .any(|w| w == PASSWORD.as_bytes()));
    let a = post(&addr, "/v1/register", sealed::CONTENT_TYPE, &wire).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some(sealed::CONTENT_TYPE)
    );
    let resp =
        v1::RegisterResp::decode(&sealed::open_response(&reply, &a.body).unwrap()[..]).unwrap();
    assert!(resp.user_id > 0);

    // The same bytes again: refused, and nothing done twice.
    let HttpAnswer { status, body, .. } =
        post(&addr, "/v1/register", sealed::CONTENT_TYPE, &wire).await;
    assert_eq!(status, 400);
    let e = v1::Error::decode(&body[..]).unwrap();
    assert!(e.message.contains("replayed"), "{}", e.message);

    // A request sealed ten minutes ago is refused by the clock check.
    let (old, _) =
        sealed::seal_request(&key, "", &req.encode_to_vec(), now_ms() - 600_000).unwrap();
    let HttpAnswer { status, body, .. } =
        post(&addr, "/v1/register", sealed::CONTENT_TYPE, &old).await;
    assert_eq!(status, 400);
    assert!(v1::Error::decode(&body[..])
        .unwrap()
        .message
        .contains("clock"));

    // Sealed to another key, or tampered: refused, never a panic.
    let other = ferry_proto::secure::StaticKey::generate().unwrap().public;
    let (wrong, _) = sealed::seal_request(&other, "", b"", now_ms()).unwrap();
    let HttpAnswer { status, .. } = post(&addr, "/v1/register", sealed::CONTENT_TYPE, &wrong).await;
    assert_eq!(status, 400);
    let HttpAnswer { status, .. } =
        post(&addr, "/v1/register", sealed::CONTENT_TYPE, b"garbage").await;
    assert_eq!(status, 400);

    // An error from logic comes back sealed too (the user exists now).
    let (fresh, reply) = sealed::seal_request(&key, "", &req.encode_to_vec(), now_ms()).unwrap();
    let a = post(&addr, "/v1/register", sealed::CONTENT_TYPE, &fresh).await;
    assert_eq!(
        (a.status, a.header("content-type").as_deref()),
        (409, Some(sealed::CONTENT_TYPE))
    );
    let e = v1::Error::decode(&sealed::open_response(&reply, &a.body).unwrap()[..]).unwrap();
    assert_eq!(e.code, ErrorCode::UserExists as i32);

    // The SDK's sealed short link: auth, then a call with the token inside the seal.
    let short = ShortLink::sealed(&addr, Some(key));
    let auth = short.auth("ivy", PASSWORD, "d1").await.unwrap();
    let page = short.newsync(&auth.token, 0, 10).await.unwrap();
    assert_eq!(page.entries.len(), 0);
    let wrong_token = short.newsync("00", 0, 10).await.unwrap_err();
    assert_eq!(wrong_token.code(), Some(ErrorCode::Unauthorized));
}

#[tokio::test]
async fn trust_on_first_use_pins_the_first_key_and_refuses_another() {
    let state = tempfile::tempdir().unwrap();
    let first = strict_server().await;
    register_sealed(&first, &["jo"]).await;
    let key = ferry_client::fetch_server_key(&first.addr()).await.unwrap();
    assert_eq!(key, key_of(&first));

    let mut cfg = client_config(&first.addr(), "jo");
    cfg.state_dir = Some(state.path().to_path_buf());
    assert_eq!(cfg.security, Security::TrustOnFirstUse);
    let (c, _ev) = Client::connect(cfg.clone()).await.unwrap();
    c.close().await;
    let stored = std::fs::read_to_string(state.path().join("server-key")).unwrap();
    assert_eq!(stored.trim(), first.server.gateway.public_key_hex());

    // The first server goes away (the device remembers it as its last good endpoint);
    // another server, with another key, is all there is: refused.
    let TestServer { server, dir: _dir } = first;
    server.shutdown().await;
    let second = strict_server().await;
    register_sealed(&second, &["jo"]).await;
    cfg.server = second.addr();
    let err = Client::connect(cfg)
        .await
        .err()
        .expect("a different key is refused");
    assert!(err.to_string().contains("pinned"), "{err}");
}

#[tokio::test]
async fn the_server_key_is_made_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.gateway.allow_plaintext = false;
    let a = ferry::Server::bind(cfg.clone()).await.unwrap();
    let first = a.gateway.public_key_hex();
    a.shutdown().await;
    let b = ferry::Server::bind(cfg).await.unwrap();
    assert_eq!(b.gateway.public_key_hex(), first, "a restart keeps the key");
    b.shutdown().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("server-key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
