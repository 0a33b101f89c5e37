//! The wire rules of docs/protocol.md §1.1, §1.3 and §3.1, byte by byte: which request
//! ids frames carry and what a wrong one gets, the request id every refusal answers
//! with, the first frame's refusals (policy vs. not logged in), which short-link
//! refusals are plain and which sealed, how garbage is closed, and what `ferry serve`
//! prints.

use std::time::Duration;

use bytes::BytesMut;
use ferry_client::ShortLink;
use ferry_proto::frame::{encode_msg, encode_raw};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, resume, sealed, secure, Frame, ProtoMessage, MAX_BODY_LEN};
use ferry_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An ERROR frame's (request id, code).
fn refusal(f: &Frame) -> (u32, ErrorCode) {
    let e = error_of(f);
    assert!(!e.message.is_empty(), "every refusal says why");
    (f.req_id, ErrorCode::try_from(e.code).unwrap())
}

async fn sealed_token(ts: &TestServer, user: &str) -> String {
    ShortLink::sealed(&ts.addr(), Some(key_of(ts)))
        .auth(user, PASSWORD, "wire")
        .await
        .unwrap()
        .token
}

/// A frame's bytes.
fn frame<M: ProtoMessage>(c: u8, req_id: u32, msg: &M) -> BytesMut {
    let mut b = BytesMut::new();
    encode_msg(c, req_id, msg, &mut b);
    b
}

/// A login frame with request id `req_id`.
fn login_with_id(token: &str, req_id: u32) -> BytesMut {
    let req = v1::LoginReq {
        token: token.into(),
        synckey: 0,
        client_version: "wire".into(),
        ..Default::default()
    };
    frame(cmd::LOGIN, req_id, &req)
}

/// A HELLO carrying `payload` to `key`, written on a fresh link: the frames of the
/// handshake answer's payload (opened), or Err with the server's plain ERROR.
async fn hello_carrying(addr: &str, key: &[u8; 32], payload: &[u8]) -> Result<Vec<Frame>, Frame> {
    let mut l = SecureRaw::connect(addr).await;
    let mut hello = BytesMut::new();
    let hs = secure::client_hello(key, payload, &mut hello).unwrap();
    l.write(&hello).await;
    let answer = loop {
        if let Some(f) = secure::parse_handshake(&mut l.wire).unwrap() {
            break f;
        }
        assert!(l.read_more().await, "no handshake answer");
    };
    if answer.cmd == cmd::ERROR {
        return Err(answer);
    }
    let (_, mut plain) = hs.finish(&answer).unwrap();
    resume::take_ticket(&mut plain).unwrap();
    let mut plain = BytesMut::from(&plain[..]);
    let mut frames = Vec::new();
    while let Some(f) = Frame::parse(&mut plain, MAX_BODY_LEN).unwrap() {
        frames.push(f);
    }
    assert!(
        !l.read_more().await,
        "the link closes after a refused login"
    );
    Ok(frames)
}

#[tokio::test]
async fn requests_carry_a_non_zero_id_and_the_encryption_frames_id_zero() {
    // Plaintext (allowed here): a LOGIN with id 0 would get an answer that looks like a
    // push.
    let ts = TestServer::start().await;
    ts.register(&["ann"]).await;
    let tok = token(&ts.addr(), "ann", "plain").await;
    let mut l = RawLink::connect(&ts.addr()).await;
    l.send_bytes(&login_with_id(&tok, 0)).await;
    let f = l.recv(3).await.expect("a refusal");
    assert_eq!(refusal(&f), (0, ErrorCode::BadRequest));
    assert!(l.closed_within(3).await);
    assert_eq!(ts.server.gateway.links(), 0, "no login");
    // After a login, a request with id 0 (here a heartbeat, then a send) is refused and
    // the link closed.
    for c in [cmd::HEARTBEAT, cmd::SEND] {
        let mut l = RawLink::connect(&ts.addr()).await;
        assert_eq!(l.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
        let mut b = BytesMut::new();
        encode_raw(c, 0, &[], &mut b);
        l.send_bytes(&b).await;
        let f = l.recv(3).await.expect("a refusal");
        assert_eq!(refusal(&f), (0, ErrorCode::BadRequest), "{c:#x}");
        assert!(l.closed_within(3).await);
    }
    // The encryption layer's frames inside the frame stream are not requests.
    let mut l = RawLink::connect(&ts.addr()).await;
    assert_eq!(l.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    let mut b = BytesMut::new();
    encode_raw(cmd::SEALED, 6, &[1, 2, 3], &mut b);
    l.send_bytes(&b).await;
    let f = l.recv(3).await.expect("a refusal");
    assert_eq!(refusal(&f), (6, ErrorCode::BadRequest));
    assert!(l.closed_within(3).await);
    // Over long-poll the same LOGIN is a 400.
    let a = http_post(
        &ts.addr(),
        "/v1/lp/open",
        "content-type: application/x-ferry-frames\r\n",
        &login_with_id(&tok, 0),
    )
    .await;
    assert_eq!(a.status, 400);
    let e = v1::Error::decode(&a.body[..]).unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest as i32, "{}", e.message);

    // Encrypted: HELLO, RESUME and SEALED carry id 0.
    let ts = strict_server().await;
    register_sealed(&ts, &["bea"]).await;
    let key = key_of(&ts);
    let tok = sealed_token(&ts, "bea").await;
    // A HELLO with id 9: a plain refusal carrying 9 (no keys are agreed).
    let mut hello = BytesMut::new();
    secure::client_hello(&key, &login_with_id(&tok, 1), &mut hello).unwrap();
    hello[7] = 9;
    let mut l = RawLink::connect(&ts.addr()).await;
    l.send_bytes(&hello).await;
    let f = l.recv(3).await.expect("a plain refusal");
    assert_eq!(refusal(&f), (9, ErrorCode::BadRequest));
    assert!(l.closed_within(3).await);
    // The LOGIN inside a HELLO with id 0.
    let frames = hello_carrying(&ts.addr(), &key, &login_with_id(&tok, 0))
        .await
        .expect("an answer inside the handshake");
    assert_eq!(refusal(&frames[0]), (0, ErrorCode::BadRequest));
    // A sealed record with id 5: refused (sealed, the keys are agreed) with 5.
    let mut s = SecureRaw::connect(&ts.addr()).await;
    s.login(&key, &tok).await.unwrap();
    let ticket = s.ticket.clone().expect("a ticket");
    let mut plain = BytesMut::new();
    encode_msg(cmd::HEARTBEAT, 2, &v1::Heartbeat::default(), &mut plain);
    let mut record = BytesMut::new();
    s.channel
        .as_mut()
        .unwrap()
        .seal(&plain, &mut record)
        .unwrap();
    record[7] = 5;
    s.write(&record).await;
    let f = s.recv().await.expect("a sealed refusal");
    assert_eq!(refusal(&f), (5, ErrorCode::BadRequest));
    assert!(s.recv().await.is_none(), "the link closes");
    // A RESUME with id 3: a plain refusal carrying 3.
    let secret: [u8; 32] = ticket.secret[..].try_into().unwrap();
    let mut hello = BytesMut::new();
    resume::client_resume(
        &ticket.ticket,
        &secret,
        &login_with_id(&tok, 1),
        now_ms(),
        &mut hello,
    )
    .unwrap();
    hello[7] = 3;
    let mut l = RawLink::connect(&ts.addr()).await;
    l.send_bytes(&hello).await;
    let f = l.recv(3).await.expect("a plain refusal");
    assert_eq!(refusal(&f), (3, ErrorCode::BadRequest));
    assert!(l.closed_within(3).await);
    // A sealed short-link request whose HELLO has an id: does not open (plain 400).
    let (mut wire, _) = sealed::seal_request(&key, "", b"", now_ms()).unwrap();
    wire[7] = 1;
    let a = http_post(
        &ts.addr(),
        "/v1/endpoints",
        &format!("content-type: {}\r\n", sealed::CONTENT_TYPE),
        &wire,
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some(ferry_gateway::http::PROTOBUF)
    );
}

#[tokio::test]
async fn every_refusal_carries_the_id_of_the_frame_it_refuses() {
    let ts = TestServer::start().await;
    ts.register(&["cy"]).await;
    let tok = token(&ts.addr(), "cy", "plain").await;
    // An oversized first frame: its id, though its body is never read.
    let mut l = RawLink::connect(&ts.addr()).await;
    l.send_bytes(&[0x10, 0x00, 0x00, cmd::LOGIN, 0, 0, 0, 5])
        .await;
    let f = l.recv(3).await.expect("a refusal");
    assert_eq!(refusal(&f), (5, ErrorCode::TooLarge));
    assert!(l.closed_within(3).await);
    // An oversized frame after the login.
    let mut l = RawLink::connect(&ts.addr()).await;
    assert_eq!(l.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    l.send_bytes(&[0x02, 0x00, 0x00, cmd::SEND, 0, 0, 0x01, 0x02])
        .await;
    let f = l.recv(3).await.expect("a refusal");
    assert_eq!(refusal(&f), (0x0102, ErrorCode::TooLarge));
    assert!(l.closed_within(3).await);

    let ts = strict_server().await;
    register_sealed(&ts, &["dee"]).await;
    let key = key_of(&ts);
    let tok = sealed_token(&ts, "dee").await;
    // A plain first frame where plaintext is refused: its id.
    let mut l = RawLink::connect(&ts.addr()).await;
    l.send_bytes(&login_with_id(&tok, 11)).await;
    let f = l.recv(3).await.expect("a refusal");
    assert_eq!(refusal(&f), (11, ErrorCode::PermissionDenied));
    assert!(l.closed_within(3).await);
    // After the handshake: a plain frame instead of a record (sealed refusal, its id).
    let mut s = SecureRaw::connect(&ts.addr()).await;
    s.login(&key, &tok).await.unwrap();
    s.write(&frame(cmd::HEARTBEAT, 8, &v1::Heartbeat::default()))
        .await;
    let f = s.recv().await.expect("a sealed refusal");
    assert_eq!(refusal(&f), (8, ErrorCode::BadRequest));
    assert!(s.recv().await.is_none());
    // An oversized frame inside the records: its id.
    let mut s = SecureRaw::connect(&ts.addr()).await;
    s.login(&key, &tok).await.unwrap();
    let mut plain = BytesMut::new();
    plain.extend_from_slice(&[0x02, 0x00, 0x00, cmd::SYNC, 0, 0, 0, 12]);
    let mut record = BytesMut::new();
    s.channel
        .as_mut()
        .unwrap()
        .seal(&plain, &mut record)
        .unwrap();
    s.write(&record).await;
    let f = s.recv().await.expect("a sealed refusal");
    assert_eq!(refusal(&f), (12, ErrorCode::TooLarge));
    assert!(s.recv().await.is_none());
    // A record announcing more than a Noise message: the record's own id (0).
    let mut s = SecureRaw::connect(&ts.addr()).await;
    s.login(&key, &tok).await.unwrap();
    s.write(&[0x01, 0x00, 0x00, cmd::SEALED, 0, 0, 0, 0]).await;
    let f = s.recv().await.expect("a sealed refusal");
    assert_eq!(refusal(&f), (0, ErrorCode::TooLarge));
    assert!(s.recv().await.is_none());
    // An altered record: it does not open, no frame inside was read: id 0.
    let mut s = SecureRaw::connect(&ts.addr()).await;
    s.login(&key, &tok).await.unwrap();
    let mut plain = BytesMut::new();
    encode_msg(cmd::HEARTBEAT, 13, &v1::Heartbeat::default(), &mut plain);
    let mut record = BytesMut::new();
    s.channel
        .as_mut()
        .unwrap()
        .seal(&plain, &mut record)
        .unwrap();
    let last = record.len() - 1;
    record[last] ^= 1;
    s.write(&record).await;
    let f = s.recv().await.expect("a sealed refusal");
    assert_eq!(refusal(&f), (0, ErrorCode::BadRequest));
    assert!(s.recv().await.is_none());
    // Bytes after the HELLO, before its answer: a plain refusal, id 0 (refused on
    // their first byte, no header of theirs read).
    let mut hello = BytesMut::new();
    secure::client_hello(&key, &login_with_id(&tok, 1), &mut hello).unwrap();
    hello.extend_from_slice(&frame(cmd::HEARTBEAT, 14, &v1::Heartbeat::default()));
    let mut l = RawLink::connect(&ts.addr()).await;
    l.send_bytes(&hello).await;
    let f = l.recv(3).await.expect("a plain refusal");
    assert_eq!(refusal(&f), (0, ErrorCode::BadRequest));
    assert!(l.closed_within(3).await);
}

#[tokio::test]
async fn a_first_frame_that_is_not_login_is_a_policy_refusal_or_not_logged_in() {
    let hb = frame(cmd::HEARTBEAT, 4, &v1::Heartbeat::default());
    // Where plaintext is refused, any plain first frame is PERMISSION_DENIED …
    let ts = strict_server().await;
    let key = key_of(&ts);
    let mut l = RawLink::connect(&ts.addr()).await;
    l.send_bytes(&hb).await;
    let f = l.recv(3).await.expect("a refusal");
    assert_eq!(refusal(&f), (4, ErrorCode::PermissionDenied));
    assert!(l.closed_within(3).await);
    // … and on long-poll a 403.
    let lp_open = |addr: String, body: BytesMut| async move {
        http_post(
            &addr,
            "/v1/lp/open",
            "content-type: application/x-ferry-frames\r\n",
            &body,
        )
        .await
    };
    let a = lp_open(ts.addr(), hb.clone()).await;
    assert_eq!(a.status, 403);
    let e = v1::Error::decode(&a.body[..]).unwrap();
    assert_eq!(e.code, ErrorCode::PermissionDenied as i32);
    // Inside a HELLO, where the LOGIN belongs: NOT_LOGGED_IN, in the handshake answer.
    let frames = hello_carrying(&ts.addr(), &key, &hb)
        .await
        .expect("an answer inside the handshake");
    assert_eq!(refusal(&frames[0]), (4, ErrorCode::NotLoggedIn));

    // Where plaintext is allowed, a plain first frame other than LOGIN is NOT_LOGGED_IN.
    let ts = TestServer::start().await;
    let mut l = RawLink::connect(&ts.addr()).await;
    l.send_bytes(&hb).await;
    let f = l.recv(3).await.expect("a refusal");
    assert_eq!(refusal(&f), (4, ErrorCode::NotLoggedIn));
    assert!(l.closed_within(3).await);
    let a = lp_open(ts.addr(), hb).await;
    assert_eq!(a.status, 401);
    let e = v1::Error::decode(&a.body[..]).unwrap();
    assert_eq!(e.code, ErrorCode::NotLoggedIn as i32);
}

/// One sealed short-link POST by hand.
async fn post_sealed(addr: &str, path: &str, wire: &[u8]) -> HttpAnswer {
    http_post(
        addr,
        path,
        &format!("content-type: {}\r\n", sealed::CONTENT_TYPE),
        wire,
    )
    .await
}

/// A plain answer's `Error` code (asserting that it is plain).
fn plain_error(a: &HttpAnswer) -> ErrorCode {
    assert_eq!(
        a.header("content-type").as_deref(),
        Some(ferry_gateway::http::PROTOBUF),
        "a plain answer"
    );
    let e = v1::Error::decode(&a.body[..]).unwrap();
    ErrorCode::try_from(e.code).unwrap()
}

/// A sealed answer's `Error` code (asserting that it is sealed).
fn sealed_error(a: &HttpAnswer, reply: &sealed::ReplyKey) -> ErrorCode {
    assert_eq!(
        a.header("content-type").as_deref(),
        Some(sealed::CONTENT_TYPE),
        "a sealed answer"
    );
    let plain = sealed::open_response(reply, &a.body).unwrap();
    let e = v1::Error::decode(&plain[..]).unwrap();
    ErrorCode::try_from(e.code).unwrap()
}

#[tokio::test]
async fn refusals_before_a_sealed_request_is_opened_are_plain_and_every_answer_after_is_sealed() {
    let ts = strict_server().await;
    register_sealed(&ts, &["eve"]).await;
    let key = key_of(&ts);
    let addr = ts.addr();
    let tok = sealed_token(&ts, "eve").await;

    // An unknown method, and POST to a GET path: plain 404, never opened.
    for path in ["/v1/no/such/method", "/v1/avatar/eve"] {
        let (wire, _) = sealed::seal_request(&key, &tok, b"", now_ms()).unwrap();
        let a = post_sealed(&addr, path, &wire).await;
        assert_eq!(
            (a.status, plain_error(&a)),
            (404, ErrorCode::UnknownCommand),
            "{path}"
        );
    }
    // Plaintext where it is refused: plain 403.
    let a = http_post(
        &addr,
        "/v1/endpoints",
        &format!("content-type: {}\r\n", ferry_gateway::http::PROTOBUF),
        b"",
    )
    .await;
    assert_eq!(
        (a.status, plain_error(&a)),
        (403, ErrorCode::PermissionDenied)
    );
    // Over the limit on the wire (auth: 4 KiB + the envelope), told by Content-Length:
    // plain 413.
    let (wire, _) = sealed::seal_request(&key, "", &[7u8; 8_000], now_ms()).unwrap();
    let a = post_sealed(&addr, "/v1/auth", &wire).await;
    assert_eq!((a.status, plain_error(&a)), (413, ErrorCode::TooLarge));
    // … and found mid-stream (chunked, no Content-Length): plain 413.
    let a = post_chunked(&addr, "/v1/auth", sealed::CONTENT_TYPE, &wire).await;
    assert_eq!((a.status, plain_error(&a)), (413, ErrorCode::TooLarge));
    // Within the envelope's allowance on the wire, but the opened body is over 4 KiB:
    // found after opening, so the 413 is sealed.
    let (wire, reply) = sealed::seal_request(&key, "", &[7u8; 4_200], now_ms()).unwrap();
    let a = post_sealed(&addr, "/v1/auth", &wire).await;
    assert_eq!(
        (a.status, sealed_error(&a, &reply)),
        (413, ErrorCode::TooLarge)
    );
    // Exactly the limit passes the gateway (and logic refuses the garbage, sealed).
    let (wire, reply) = sealed::seal_request(&key, "", &[7u8; 4_096], now_ms()).unwrap();
    let a = post_sealed(&addr, "/v1/auth", &wire).await;
    assert_eq!(a.status, 400);
    sealed_error(&a, &reply);
    // An opened request that logic refuses: sealed, whatever the status.
    let find = v1::FindUserReq {
        username: "nobody".into(),
    };
    let (wire, reply) = sealed::seal_request(&key, &tok, &find.encode_to_vec(), now_ms()).unwrap();
    let a = post_sealed(&addr, "/v1/user/find", &wire).await;
    assert_eq!(
        (a.status, sealed_error(&a, &reply)),
        (404, ErrorCode::UnknownUser)
    );
    // A wrong token inside the seal: a sealed 401.
    let (wire, reply) = sealed::seal_request(&key, "00", &find.encode_to_vec(), now_ms()).unwrap();
    let a = post_sealed(&addr, "/v1/user/find", &wire).await;
    assert_eq!(
        (a.status, sealed_error(&a, &reply)),
        (401, ErrorCode::Unauthorized)
    );
    // A body that does not open: plain 400 (no key to seal to).
    let a = post_sealed(
        &addr,
        "/v1/user/find",
        b"\x00\x00\x01\x09\x00\x00\x00\x00\x07",
    )
    .await;
    assert_eq!((a.status, plain_error(&a)), (400, ErrorCode::BadRequest));
}

/// One HTTP/1.1 POST with a chunked body (no Content-Length), by hand: the answer's
/// status, head and body (read up to the close or its Content-Length).
async fn post_chunked(addr: &str, path: &str, content_type: &str, body: &[u8]) -> HttpAnswer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The server may answer (and close) before it read everything: a failed write is
    // fine, the answer is what counts.
    let _ = s.write_all(&req).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|n| got.len() >= end + 4 + n) {
                    break;
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to the chunked POST within 10 s");
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    HttpAnswer {
        status: head[9..12].parse().unwrap(),
        head,
        body: got[end + 4..].to_vec(),
    }
}

#[tokio::test]
async fn garbage_is_closed_without_an_answer_and_without_a_reset() {
    let ts = strict_server().await;
    // Not a frame, not HTTP, and more of it than the server reads before it decides:
    // closing with those bytes unread would reset the connection.
    let mut s = tokio::net::TcpStream::connect(ts.addr()).await.unwrap();
    let garbage = vec![0xffu8; 32 * 1024];
    s.write_all(&garbage).await.unwrap();
    let mut buf = [0u8; 1024];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(
        matches!(r, Ok(0)),
        "an orderly close (EOF), no answer: {r:?}"
    );
}

#[tokio::test]
async fn ferry_serve_prints_its_key_before_the_listening_line_which_comes_last() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(crate::FERRY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("db"))
        .env("FERRY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ferry serve prints its listening line within 30 s");
        if let Some(a) = line.strip_prefix("ferry listening on ") {
            break a.to_owned();
        }
        lines.push(line);
    };
    // Nothing follows it.
    let after = rx.recv_timeout(Duration::from_millis(500));
    let key = lines
        .iter()
        .find_map(|l| l.strip_prefix("ferry server key: "))
        .map(|k| k[..64].to_owned());
    let served = ferry_client::fetch_server_key(&addr).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(after.is_err(), "a line after the listening line: {after:?}");
    let key = key.unwrap_or_else(|| panic!("no key before the listening line: {lines:?}"));
    assert!(lines.iter().any(|l| l.starts_with("ferry dashboard: ")));
    assert_eq!(key, hex::encode(served.unwrap()));
}

/// A server whose logic sheds new sessions, told to wait `retry_after_ms`: a storm of costly
/// sign-ins (argon2 with 8 MiB) on its one slot for new sessions, run until logic shed a
/// LOGIN sent inside a full handshake. The storm's tasks, to stop when done.
async fn shedding_server(
    hold_ms: u64,
    retry_after_ms: u32,
) -> (TestServer, Vec<tokio::task::JoinHandle<()>>) {
    let ts = TestServer::with(|c| {
        c.logic.admission.max_in_flight = 2;
        c.logic.admission.retry_after_ms = retry_after_ms;
        // That wait exactly, not one fitted to logic's queue.
        c.logic.admission.new_session_retry_min_ms = retry_after_ms;
        c.logic.password.memory_kib = 8 * 1024;
        c.logic.password.iterations = 2;
        c.gateway.handshake_hold_ms = hold_ms;
    })
    .await;
    ts.register(&["shedder"]).await;
    let key = key_of(&ts);
    let addr = ts.addr();
    let storm: Vec<_> = (0..8)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let _ = ShortLink::new(&addr)
                        .auth("shedder", PASSWORD, &format!("storm-{i}"))
                        .await;
                }
            })
        })
        .collect();
    // A LOGIN (its token does not matter: admission comes first) until logic sheds one;
    // its answer is sealed inside the handshake's.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = hello_carrying(&addr, &key, &login_with_id("no-such-token", 1)).await;
        let frames = answer.expect("logic has not shed yet: a full handshake");
        if refusal(&frames[0]) == (1, ErrorCode::Unavailable) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logic never shed a login"
        );
    }
    (ts, storm)
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// While logic sheds new sessions and the gateway has no waiting room, it takes no new
/// handshake: it refuses the HELLO in plain, before any key work, with a retry-after
/// (docs/security.md, *Overload*; issue 25).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_logic_sheds_logins_new_handshakes_are_refused_before_key_work() {
    let (ts, storm) = shedding_server(0, 3_000).await;
    let stats = &ts.server.gateway.stats;
    // The next handshake is refused in plain, and no X25519 was spent on it.
    let full = counter(&stats.full_handshakes);
    let plain = hello_carrying(&ts.addr(), &key_of(&ts), &login_with_id("no-such-token", 1))
        .await
        .expect_err("a plain refusal before the handshake");
    assert_eq!(refusal(&plain), (0, ErrorCode::Unavailable));
    assert!(
        error_of(&plain).retry_after_ms >= 1_000,
        "{:?}",
        error_of(&plain)
    );
    assert_eq!(
        counter(&stats.full_handshakes),
        full,
        "no key work for a refused handshake"
    );
    assert!(counter(&stats.handshakes_refused_shed) >= 1);
    assert_eq!(counter(&stats.handshakes_held), 0);
    for s in storm {
        s.abort();
    }
}

/// With the waiting room (the default), a HELLO that comes while logic sheds waits, its
/// connection open and no key work done; a wait that outlasts `handshake_hold_ms` ends
/// in the same plain refusal with a retry-after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_logic_sheds_a_new_handshake_waits_and_is_refused_when_its_wait_runs_out() {
    let (ts, storm) = shedding_server(1_000, 5_000).await;
    let stats = &ts.server.gateway.stats;
    let full = counter(&stats.full_handshakes);
    let held = counter(&stats.handshakes_held);
    let started = std::time::Instant::now();
    let plain = hello_carrying(&ts.addr(), &key_of(&ts), &login_with_id("no-such-token", 1))
        .await
        .expect_err("a plain refusal after the wait");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "held for handshake_hold_ms: {waited:?}"
    );
    assert_eq!(refusal(&plain), (0, ErrorCode::Unavailable));
    assert!(error_of(&plain).retry_after_ms >= 1_000);
    assert_eq!(counter(&stats.full_handshakes), full, "no key work");
    assert_eq!(counter(&stats.handshakes_held), held + 1);
    for s in storm {
        s.abort();
    }
}

/// A HELLO held while logic sheds goes on once logic's wait is over: the client sees a
/// handshake answer, only later, and never had to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_held_while_logic_sheds_goes_on_when_the_shedding_ends() {
    let (ts, storm) = shedding_server(8_000, 1_500).await;
    for s in storm {
        s.abort();
    }
    let stats = &ts.server.gateway.stats;
    let held = counter(&stats.handshakes_held);
    let started = std::time::Instant::now();
    let frames = hello_carrying(&ts.addr(), &key_of(&ts), &login_with_id("no-such-token", 1))
        .await
        .unwrap_or_else(|e| panic!("held, then answered: {:?}", error_of(&e)));
    assert_eq!(counter(&stats.handshakes_held), held + 1);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for logic: {:?}",
        started.elapsed()
    );
    // Logic's own answer, sealed: the token is refused (or, were logic still busy with
    // the storm's last sign-ins, the login shed) — either way the handshake was done.
    let (id, code) = refusal(&frames[0]);
    assert_eq!(id, 1);
    assert!(
        matches!(code, ErrorCode::Unauthorized | ErrorCode::Unavailable),
        "{code:?}"
    );
}

/// Protocol 2 (§1.6): a link whose LOGIN named 2 speaks compact records and frames after
/// the answer; one that named nothing keeps §1.4's. Bytes that are not a compact record
/// are refused as a bad record of §1.4 is — a sealed ERROR, then the close — and a frame
/// over the limit gets TOO_LARGE with its own request id; another link goes on.
#[tokio::test]
async fn compact_records_after_a_version_2_login_and_their_refusals() {
    let ts = strict_server().await;
    register_sealed(&ts, &["cid", "dot"]).await;
    let key = key_of(&ts);
    let dot = sealed_token(&ts, "dot").await;
    let cid = sealed_token(&ts, "cid").await;
    let mut old = SecureRaw::connect(&ts.addr()).await;
    let a = old.login(&key, &dot).await.unwrap();
    assert_eq!(v1::LoginResp::decode(a.body).unwrap().protocol, 1);
    assert!(!old.channel.as_ref().unwrap().is_compact());

    let compact = |protocol: u32| {
        let (addr, cid) = (ts.addr(), cid.clone());
        async move {
            let mut s = SecureRaw::connect(&addr).await;
            let a = s.login_speaking(&key, &cid, protocol).await.unwrap();
            assert_eq!(v1::LoginResp::decode(a.body).unwrap().protocol, 2);
            assert!(s.channel.as_ref().unwrap().is_compact());
            s
        }
    };
    // A heartbeat both ways in compact records (a client naming a later version gets 2).
    let mut s = compact(7).await;
    s.send(cmd::HEARTBEAT, 300, &v1::Heartbeat::default()).await;
    assert_eq!(s.recv_cmd(cmd::response(cmd::HEARTBEAT)).await.req_id, 300);
    // A record length over 65 535.
    s.write(&[0xff, 0xff, 0x04]).await;
    let f = s.recv().await.expect("a sealed refusal");
    assert_eq!(refusal(&f), (0, ErrorCode::TooLarge));
    assert!(s.recv().await.is_none(), "the link closes");
    // A record that does not open.
    let mut s = compact(2).await;
    let mut garbage = vec![32u8];
    garbage.extend_from_slice(&[7u8; 32]);
    s.write(&garbage).await;
    let f = s.recv().await.expect("a sealed refusal");
    assert_eq!(refusal(&f), (0, ErrorCode::BadRequest));
    assert!(s.recv().await.is_none(), "the link closes");
    // A frame over gateway.max_frame_bytes, in two records: refused by its header.
    let mut s = compact(2).await;
    let big = v1::SendMsg {
        client_msg_id: 1,
        to: "dot".into(),
        text: "x".repeat(70_000),
        ..Default::default()
    };
    s.send(cmd::SEND, 7, &big).await;
    let f = s.recv().await.expect("a sealed refusal");
    assert_eq!(refusal(&f), (7, ErrorCode::TooLarge));
    assert!(s.recv().await.is_none(), "the link closes");

    // The link of protocol 1 went on through all of it.
    old.send(cmd::HEARTBEAT, 4, &v1::Heartbeat::default()).await;
    assert_eq!(old.recv_cmd(cmd::response(cmd::HEARTBEAT)).await.req_id, 4);
}
