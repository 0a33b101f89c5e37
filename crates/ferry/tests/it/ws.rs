//! The long link over WebSocket (docs/protocol.md §7.1a), against servers that refuse
//! plaintext: the Noise IK login in the first message and messages both ways between
//! a WebSocket user and a TCP user, pushes, resumption from a ticket, heartbeats and
//! silence, the KICK and shutdown closes, every refusal (a text message, a message that
//! is not one frame, one over the limit, a plaintext first frame, an upgrade without
//! its headers) with another user's link unharmed after each, and CORS on the short
//! link.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use ferry_client::ShortLink;
use ferry_proto::frame::encode_msg;
use ferry_proto::resume;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, ProtoMessage};
use ferry_testkit::*;

async fn sealed_token(ts: &TestServer, user: &str, device: &str) -> String {
    ShortLink::sealed(&ts.addr(), Some(key_of(ts)))
        .auth(user, PASSWORD, device)
        .await
        .unwrap()
        .token
}

/// A WebSocket link logged in as `user` on `device`.
async fn ws_user(ts: &TestServer, user: &str, device: &str) -> WsLink {
    let token = sealed_token(ts, user, device).await;
    let mut l = WsLink::connect(&ts.addr()).await;
    let answer = l.login(&key_of(ts), &token).await.expect("keys agreed");
    assert_eq!(answer.cmd, cmd::response(cmd::LOGIN), "logged in");
    l
}

/// True when a NOTIFY with a message `text` arrives (skipping other frames).
async fn ws_gets_message(l: &mut WsLink, text: &str) -> bool {
    loop {
        let Some(f) = l.recv().await else {
            return false;
        };
        if f.cmd != cmd::NOTIFY {
            continue;
        }
        let n = v1::Notify::decode(f.body).unwrap();
        if n.entries
            .iter()
            .any(|e| matches!(&e.kind, Some(v1::entry::Kind::Message(m)) if m.text == text))
        {
            return true;
        }
    }
}

fn send_msg(to: &str, text: &str) -> v1::SendMsg {
    v1::SendMsg {
        client_msg_id: ferry_client::new_client_msg_id(),
        to: to.into(),
        text: text.into(),
        ..Default::default()
    }
}

/// The link still answers a heartbeat.
async fn alive(l: &mut WsLink, req_id: u32) {
    l.send(cmd::HEARTBEAT, req_id, &v1::Heartbeat::default())
        .await;
    let f = l.recv_cmd(cmd::response(cmd::HEARTBEAT)).await;
    assert_eq!(f.req_id, req_id);
}

#[tokio::test]
async fn ws_login_and_messages_both_ways_with_a_tcp_user() {
    let ts = strict_server().await;
    register_sealed(&ts, &["wsa", "tcpb"]).await;
    let key = key_of(&ts);

    // The browser's side: WebSocket, offering the subprotocol.
    let token = sealed_token(&ts, "wsa", "web").await;
    let mut a = WsLink::connect_with(&ts.addr(), Some("ferry.v1")).await;
    assert_eq!(a.protocol.as_deref(), Some("ferry.v1"));
    let answer = a.login(&key, &token).await.expect("keys agreed");
    assert_eq!(answer.cmd, cmd::response(cmd::LOGIN));
    assert!(a.ticket.is_some(), "a full handshake hands out a ticket");
    // The app's side: TCP.
    let mut b = SecureRaw::connect(&ts.addr()).await;
    let tb = sealed_token(&ts, "tcpb", "app").await;
    assert_eq!(
        b.login(&key, &tb).await.unwrap().cmd,
        cmd::response(cmd::LOGIN)
    );
    assert_eq!(ts.server.gateway.links(), 2);

    // WebSocket → TCP: acked over the WebSocket, pushed over TCP.
    a.send(cmd::SEND, 5, &send_msg("tcpb", "over the websocket"))
        .await;
    let ack = a.recv_cmd(cmd::response(cmd::SEND)).await;
    assert_eq!(ack.req_id, 5);
    loop {
        let n = v1::Notify::decode(b.recv_cmd(cmd::NOTIFY).await.body).unwrap();
        if n.entries.iter().any(|e| {
            matches!(&e.kind, Some(v1::entry::Kind::Message(m)) if m.text == "over the websocket")
        }) {
            break;
        }
    }
    // TCP → WebSocket: the NOTIFY push arrives over the WebSocket.
    b.send(cmd::SEND, 6, &send_msg("wsa", "and back over tcp"))
        .await;
    assert_eq!(b.recv_cmd(cmd::response(cmd::SEND)).await.req_id, 6);
    assert!(ws_gets_message(&mut a, "and back over tcp").await);

    // A SYNC over the WebSocket brings both.
    a.send(cmd::SYNC, 9, &v1::SyncReq::default()).await;
    let s = v1::SyncResp::decode(a.recv_cmd(cmd::response(cmd::SYNC)).await.body).unwrap();
    let texts: Vec<String> = s
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::entry::Kind::Message(m)) => Some(m.text.clone()),
            _ => None,
        })
        .collect();
    assert!(
        texts.contains(&"over the websocket".to_string()),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"and back over tcp".to_string()),
        "{texts:?}"
    );

    // Pings get pongs; heartbeats are answered.
    assert!(a.ping(b"are you there").await);
    alive(&mut a, 11).await;

    // A Close from the client takes the link offline, answered with a Close.
    a.close(1000).await;
    let (_, code) = a.until_close(5).await;
    assert_eq!(code, Some(1000));
    for _ in 0..50 {
        if ts.server.gateway.links() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ts.server.gateway.links(),
        1,
        "the WebSocket link went offline"
    );
}

#[tokio::test]
async fn ws_resumes_from_a_ticket() {
    let ts = strict_server().await;
    register_sealed(&ts, &["wsr", "wsq"]).await;
    let token = sealed_token(&ts, "wsr", "web").await;
    let mut first = WsLink::connect(&ts.addr()).await;
    first.login(&key_of(&ts), &token).await.unwrap();
    let t = first.ticket.clone().expect("a ticket");
    drop(first);

    let mut hello = BytesMut::new();
    let secret: [u8; 32] = t.secret[..].try_into().unwrap();
    let hs = resume::client_resume(
        &t.ticket,
        &secret,
        &login_frame(&token),
        now_ms(),
        &mut hello,
    )
    .unwrap();
    let mut l = WsLink::connect(&ts.addr()).await;
    let answer = l.resume(hs, &hello).await.expect("resumed");
    assert_eq!(answer.cmd, cmd::response(cmd::LOGIN));
    let s = &ts.server.gateway.stats;
    assert_eq!(s.resumed_handshakes.load(Ordering::Relaxed), 1);
    assert_eq!(s.full_handshakes.load(Ordering::Relaxed), 1);
    // Sealed records flow on the resumed link, pushes too.
    alive(&mut l, 3).await;
    let mut q = ws_user(&ts, "wsq", "web").await;
    q.send(cmd::SEND, 4, &send_msg("wsr", "to the resumed link"))
        .await;
    assert!(ws_gets_message(&mut l, "to the resumed link").await);
}

#[tokio::test]
async fn ws_heartbeats_keep_a_link_and_silence_drops_it() {
    let ts = TestServer::with(|c| {
        c.gateway.allow_plaintext = false;
        c.gateway.heartbeat_timeout_ms = 1_500;
    })
    .await;
    register_sealed(&ts, &["wsh"]).await;
    let mut l = ws_user(&ts, "wsh", "web").await;
    // Heartbeats every 500 ms for twice the timeout: the link stays.
    for i in 0..6 {
        alive(&mut l, 10 + i).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then only WebSocket pings, which do not count: dropped for silence, Close 1000.
    let start = std::time::Instant::now();
    let mut code = None;
    while code.is_none() && start.elapsed() < Duration::from_secs(6) {
        l.send_ping(b"p").await;
        code = l.until_close(1).await.1;
    }
    assert!(start.elapsed() < Duration::from_secs(5), "dropped in time");
    assert_eq!(code, Some(1000));
    assert_eq!(
        ts.server.gateway.stats.timeouts.load(Ordering::Relaxed),
        1,
        "dropped for silence"
    );
}

/// Sends a bad message on a fresh logged-in link: the frames before the close and the
/// Close code; the bystander's link is unharmed.
async fn refused(
    ts: &TestServer,
    bystander: &mut WsLink,
    bad: impl AsyncFnOnce(&mut WsLink),
) -> (Vec<ferry_proto::Frame>, Option<u16>) {
    let mut l = ws_user(ts, "wsbad", "web").await;
    bad(&mut l).await;
    let got = l.until_close(5).await;
    alive(bystander, 99).await;
    got
}

#[tokio::test]
async fn ws_bad_input_is_refused_and_others_carry_on() {
    let ts = strict_server().await;
    register_sealed(&ts, &["wsbad", "wsok"]).await;
    let mut ok = ws_user(&ts, "wsok", "web").await;
    let mut tcp = SecureRaw::connect(&ts.addr()).await;
    let tt = sealed_token(&ts, "wsok", "app").await;
    tcp.login(&key_of(&ts), &tt).await.unwrap();

    // A text message: ERROR BAD_REQUEST (sealed: the keys are agreed), Close 1003.
    let (frames, code) = refused(&ts, &mut ok, async |l| l.send_text("{\"hi\":1}").await).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::BadRequest);
    assert_eq!(code, Some(1003));

    // Two frames (two sealed records) in one message: BAD_REQUEST, Close 1008.
    let (frames, code) = refused(&ts, &mut ok, async |l| {
        let mut hb = BytesMut::new();
        encode_msg(cmd::HEARTBEAT, 7, &v1::Heartbeat::default(), &mut hb);
        let mut two = l.seal(&hb);
        two.extend_from_slice(&l.seal(&hb));
        l.send_message(&two).await;
    })
    .await;
    assert_eq!(error_code(&frames[0]), ErrorCode::BadRequest);
    assert_eq!(code, Some(1008));

    // Half a frame: BAD_REQUEST, Close 1008.
    let (frames, code) = refused(&ts, &mut ok, async |l| {
        let mut hb = BytesMut::new();
        encode_msg(cmd::HEARTBEAT, 7, &v1::Heartbeat::default(), &mut hb);
        let record = l.seal(&hb);
        l.send_message(&record[..record.len() / 2]).await;
    })
    .await;
    assert_eq!(error_code(&frames[0]), ErrorCode::BadRequest);
    assert_eq!(code, Some(1008));

    // A message of less than a frame header: BAD_REQUEST, Close 1008.
    let (frames, code) = refused(&ts, &mut ok, async |l| l.send_message(&[0, 0, 1]).await).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::BadRequest);
    assert_eq!(code, Some(1008));

    // Over 8 + 65 535 bytes: TOO_LARGE with the frame's request id, Close 1009.
    let (frames, code) = refused(&ts, &mut ok, async |l| {
        let body = 70_000usize;
        let mut big = vec![0u8; 8 + body];
        big[..3].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
        big[3] = cmd::SEALED;
        big[4..8].copy_from_slice(&77u32.to_be_bytes());
        l.send_message(&big).await;
    })
    .await;
    assert_eq!(error_code(&frames[0]), ErrorCode::TooLarge);
    assert_eq!(frames[0].req_id, 77);
    assert_eq!(code, Some(1009));

    // A plaintext first frame: plain ERROR PERMISSION_DENIED with its id, Close 1008.
    let mut plain = WsLink::connect(&ts.addr()).await;
    plain.send_message(&login_frame("whatever")).await;
    let (frames, code) = plain.until_close(5).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::PermissionDenied);
    assert_eq!(frames[0].req_id, 1);
    assert_eq!(code, Some(1008));
    alive(&mut ok, 98).await;

    // A bad token: the refusal inside the handshake answer, Close 1008.
    let mut bad_token = WsLink::connect(&ts.addr()).await;
    let answer = bad_token.login(&key_of(&ts), "not-a-token").await.unwrap();
    assert_eq!(error_code(&answer), ErrorCode::Unauthorized);
    let (_, code) = bad_token.until_close(5).await;
    assert_eq!(code, Some(1008));

    // GET /v1/ws without the upgrade headers (and a POST): 400 with an Error body.
    for req in [
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            ts.addr()
        ),
        format!(
            "POST /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Content-Length: 0\r\n\r\n",
            ts.addr()
        ),
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            ts.addr()
        ),
    ] {
        let a = http_request(&ts.addr(), req.as_bytes()).await;
        assert_eq!(a.status, 400, "{}", a.head);
        let e = v1::Error::decode(&a.body[..]).unwrap();
        assert_eq!(e.code, ErrorCode::BadRequest as i32);
        assert_eq!(
            a.header("access-control-allow-origin").as_deref(),
            Some("*")
        );
    }

    // Through all of it, the other links carried on.
    alive(&mut ok, 100).await;
    tcp.send(cmd::HEARTBEAT, 101, &v1::Heartbeat::default())
        .await;
    assert_eq!(
        tcp.recv_cmd(cmd::response(cmd::HEARTBEAT)).await.req_id,
        101
    );
    assert_eq!(ts.server.gateway.links(), 2);
}

#[tokio::test]
async fn ws_a_kick_arrives_then_close_1000_and_shutdown_closes_1001() {
    let ts = strict_server().await;
    register_sealed(&ts, &["wsk", "wss"]).await;
    let mut l = ws_user(&ts, "wsk", "same-device").await;
    // The same device logs in elsewhere (over TCP): the WebSocket link is kicked.
    let token = sealed_token(&ts, "wsk", "same-device").await;
    let mut other = SecureRaw::connect(&ts.addr()).await;
    other.login(&key_of(&ts), &token).await.unwrap();
    let (frames, code) = l.until_close(5).await;
    assert_eq!(frames.last().map(|f| f.cmd), Some(cmd::KICK), "{frames:?}");
    assert_eq!(code, Some(1000));

    // The gateway shuts down: a KICK (UNAVAILABLE), then Close 1001.
    let mut s = ws_user(&ts, "wss", "web").await;
    let TestServer { server, dir: _dir } = ts;
    let stop = tokio::spawn(server.shutdown());
    let (frames, code) = s.until_close(5).await;
    let kick = frames.last().expect("a KICK");
    assert_eq!(kick.cmd, cmd::KICK);
    let k = v1::Kick::decode(kick.body.clone()).unwrap();
    assert_eq!(k.code, ErrorCode::Unavailable as i32);
    assert_eq!(code, Some(1001));
    stop.await.unwrap();
}

#[tokio::test]
async fn ws_cors_on_the_short_link() {
    let ts = TestServer::start().await;
    // The preflight a browser sends before a POST with a protobuf body.
    let pre = http_request(
        &ts.addr(),
        format!(
            "OPTIONS /v1/auth HTTP/1.1\r\nHost: {}\r\nOrigin: https://app.example\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n",
            ts.addr()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(pre.status, 204, "{}", pre.head);
    assert_eq!(
        pre.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        pre.header("access-control-allow-methods").as_deref(),
        Some("GET, POST, OPTIONS")
    );
    assert_eq!(
        pre.header("access-control-allow-headers").as_deref(),
        Some("Content-Type, Authorization, Range")
    );
    assert_eq!(
        pre.header("access-control-max-age").as_deref(),
        Some("86400")
    );
    // A preflight for a long-poll path too.
    let lp = http_request(
        &ts.addr(),
        format!(
            "OPTIONS /v1/lp/poll?sid=x HTTP/1.1\r\nHost: {}\r\nOrigin: https://app.example\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
            ts.addr()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(lp.status, 204);

    // A POST's answer (a refusal too) names the origin and Ferry's headers.
    ts.register(&["wscors"]).await;
    let req = v1::AuthReq {
        username: "wscors".into(),
        password: PASSWORD.into(),
        device_id: "web".into(),
    };
    for (password, status) in [(PASSWORD, 200), ("wrong-password", 401)] {
        let req = v1::AuthReq {
            password: password.into(),
            ..req.clone()
        };
        let a = http_post(
            &ts.addr(),
            "/v1/auth",
            "Origin: https://app.example\r\nContent-Type: application/x-protobuf\r\n",
            &req.encode_to_vec(),
        )
        .await;
        assert_eq!(a.status, status, "{}", a.head);
        assert_eq!(
            a.header("access-control-allow-origin").as_deref(),
            Some("*")
        );
        let exposed = a.header("access-control-expose-headers").unwrap();
        for h in [
            "Ferry-Session",
            "Ferry-Poll-Hold-Ms",
            "Ferry-Protocol",
            "Content-Range",
            "ETag",
        ] {
            assert!(exposed.contains(h), "{exposed}");
        }
    }
    // Not under /v1/: no CORS.
    let h = http_request(
        &ts.addr(),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            ts.addr()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(h.status, 200);
    assert!(h.header("access-control-allow-origin").is_none());
}

/// `ferry bench idle` and `p2p` with `--transport ws`: the bench's clients speak
/// WebSocket (tokio-tungstenite), encrypted, and nothing is lost.
#[test]
fn ws_the_bench_runs_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let bench = |name: &str, args: &[&str]| -> serde_json::Value {
        let json = dir.path().join(format!("{name}.json"));
        let out = std::process::Command::new(crate::FERRY)
            .arg("bench")
            .args(args)
            .args(["--transport", "ws", "--prefix", name, "--json"])
            .arg(&json)
            .output()
            .expect("running ferry bench");
        assert!(
            out.status.success(),
            "ferry bench {args:?} failed\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    };
    let idle = bench(
        "wsidle",
        &[
            "idle",
            "--connections",
            "40",
            "--steps",
            "1",
            "--duration",
            "1",
        ],
    );
    assert_eq!(idle["transport"], "ws", "{idle:#}");
    assert_eq!(idle["connected"], 40, "{idle:#}");
    assert_eq!(idle["login_failed"], 0, "{idle:#}");
    assert_eq!(idle["dropped_while_idle"], 0, "{idle:#}");
    let p2p = bench("wsp2p", &["p2p", "--pairs", "4", "--duration", "2"]);
    assert_eq!(p2p["transport"], "ws", "{p2p:#}");
    assert!(p2p["received"].as_f64().unwrap() > 0.0, "{p2p:#}");
    assert_eq!(p2p["lost"], 0, "{p2p:#}");
    assert_eq!(p2p["duplicated"], 0, "{p2p:#}");
    assert_eq!(p2p["errors"], 0, "{p2p:#}");
    assert_eq!(p2p["wire"]["encrypted"], true, "{p2p:#}");
}
