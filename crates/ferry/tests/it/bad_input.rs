//! Bad input gets an error and a closed connection, and never harms anyone else.

use ferry_proto::frame::encode_raw;
use ferry_proto::{cmd, v1, Frame};
use ferry_testkit::*;

/// An ERROR frame's code; every refusal says why.
fn error_code(f: &Frame) -> v1::ErrorCode {
    let e = error_of(f);
    assert!(!e.message.is_empty());
    v1::ErrorCode::try_from(e.code).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_a_good_client_keeps_working() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let (alice, _a) = connect(&addr, "alice").await;
    let (bob, mut bob_ev) = connect(&addr, "bob").await;
    let tok = token(&addr, "alice", "raw").await;

    // Garbage bytes: not a frame, not HTTP.
    let mut l = RawLink::connect(&addr).await;
    l.send_bytes(b"\xff\xfe garbage \x00\x01").await;
    assert!(l.closed_within(3).await);

    // Lower-case "get" is not HTTP either.
    let mut l = RawLink::connect(&addr).await;
    l.send_bytes(b"get / http/1.1\r\n\r\n").await;
    assert!(l.closed_within(3).await);

    // An oversized frame header (1 MiB body announced before login; the limit is 64 KiB).
    let mut l = RawLink::connect(&addr).await;
    l.send_bytes(&[0x10, 0x00, 0x00, cmd::LOGIN, 0, 0, 0, 1])
        .await;
    let f = l.recv(3).await.expect("an error frame");
    assert_eq!(error_code(&f), v1::ErrorCode::TooLarge);
    assert!(l.closed_within(3).await);

    // A frame other than LOGIN first.
    let mut l = RawLink::connect(&addr).await;
    l.send(
        cmd::SEND,
        5,
        &v1::SendMsg {
            client_msg_id: 1,
            to: "bob".into(),
            text: "x".into(),
            r#type: 0,
            ..Default::default()
        },
    )
    .await;
    let f = l.recv(3).await.expect("an error frame");
    assert_eq!(f.req_id, 5);
    assert_eq!(error_code(&f), v1::ErrorCode::NotLoggedIn);
    assert!(l.closed_within(3).await);

    // A wrong token.
    let mut l = RawLink::connect(&addr).await;
    let f = l.login("0123456789abcdef").await;
    assert_eq!(error_code(&f), v1::ErrorCode::Unauthorized);
    assert!(l.closed_within(3).await);

    // A truncated protobuf in LOGIN (a string field announcing more bytes than follow).
    let mut l = RawLink::connect(&addr).await;
    let mut buf = bytes::BytesMut::new();
    encode_raw(cmd::LOGIN, 1, &[0x0a, 0x20, b'a', b'b'], &mut buf);
    l.send_bytes(&buf).await;
    let f = l.recv(3).await.expect("an error frame");
    assert_eq!(error_code(&f), v1::ErrorCode::BadRequest);
    assert!(l.closed_within(3).await);

    // A truncated protobuf after a good login.
    let mut l = RawLink::connect(&addr).await;
    assert_eq!(l.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    let mut buf = bytes::BytesMut::new();
    encode_raw(cmd::SEND, 9, &[0x12, 0x40, b'b'], &mut buf);
    l.send_bytes(&buf).await;
    let f = l.recv(3).await.expect("an error frame");
    assert_eq!((f.req_id, error_code(&f)), (9, v1::ErrorCode::BadRequest));
    assert!(l.closed_within(3).await);

    // An oversized frame after login.
    let mut l = RawLink::connect(&addr).await;
    assert_eq!(l.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    let mut buf = bytes::BytesMut::new();
    encode_raw(cmd::SEND, 3, &vec![0u8; 70 * 1024], &mut buf);
    l.send_bytes(&buf).await;
    let f = l.recv(3).await.expect("an error frame");
    assert_eq!(error_code(&f), v1::ErrorCode::TooLarge);
    assert!(l.closed_within(3).await);

    // A server-only command from a client.
    let mut l = RawLink::connect(&addr).await;
    assert_eq!(l.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    l.send(cmd::NOTIFY, 4, &v1::Notify::default()).await;
    let f = l.recv(3).await.expect("an error frame");
    assert_eq!(error_code(&f), v1::ErrorCode::BadRequest);
    assert!(l.closed_within(3).await);

    // An unknown command is refused but the link stays (forward compatibility).
    let mut l = RawLink::connect(&addr).await;
    assert_eq!(l.login(&tok).await.cmd, cmd::response(cmd::LOGIN));
    buf.clear();
    encode_raw(0x3f, 6, &[], &mut buf);
    l.send_bytes(&buf).await;
    let f = l.recv(3).await.expect("an error frame");
    assert_eq!(error_code(&f), v1::ErrorCode::UnknownCommand);
    l.send(cmd::HEARTBEAT, 7, &v1::Heartbeat::default()).await;
    assert_eq!(l.recv(3).await.unwrap().cmd, cmd::response(cmd::HEARTBEAT));

    // A text over the limit is refused with TOO_LARGE, the link stays.
    let big = "x".repeat(9 * 1024);
    let e = alice.send_text("bob", &big).await.unwrap_err();
    assert_eq!(e.code(), Some(v1::ErrorCode::TooLarge));

    // Through all of that the good clients kept working.
    for i in 0..10 {
        alice
            .send_text("bob", &format!("still fine {i}"))
            .await
            .unwrap();
    }
    let got = recv_messages(&mut bob_ev, "bob", 10, 10).await;
    assert_eq!(got[9].1.text, "still fine 9");
    alice.close().await;
    bob.close().await;
}
