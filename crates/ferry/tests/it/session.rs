//! Sessions on the long link: what only the short link serves, token changes on a live
//! link, one link per device (a second LOGIN replaces the first), and the protocol
//! version both links name.

use ferry_proto::{cmd, v1, Frame, ProtoMessage};
use ferry_testkit::*;

/// The next frame that is not a push (request id 0), within `secs`.
async fn answer(link: &mut RawLink, secs: u64) -> Frame {
    loop {
        let f = link.recv(secs).await.expect("an answer before the close");
        if f.req_id != 0 {
            return f;
        }
    }
}

/// The link answers a SYNC (it is logged in and serving).
async fn serves(link: &mut RawLink, req_id: u32) {
    link.send(cmd::SYNC, req_id, &v1::SyncReq::default()).await;
    let f = answer(link, 5).await;
    assert_eq!(
        (f.cmd, f.req_id),
        (cmd::response(cmd::SYNC), req_id),
        "a SYNC answer"
    );
}

fn login_ok(f: &Frame) -> v1::LoginResp {
    assert_eq!(f.cmd, cmd::response(cmd::LOGIN), "login refused: {f:?}");
    v1::LoginResp::decode(f.body.clone()).unwrap()
}

#[tokio::test]
async fn short_link_only_commands_get_unknown_command_and_the_link_stays() {
    let ts = TestServer::start().await;
    ts.register(&["sol"]).await;
    let tok = token(&ts.addr(), "sol", "dev-1").await;
    let mut link = RawLink::connect(&ts.addr()).await;
    login_ok(&link.login(&tok).await);

    let register = v1::RegisterReq {
        username: "sol2".into(),
        password: PASSWORD.into(),
    };
    link.send(cmd::REGISTER, 11, &register).await;
    let auth = v1::AuthReq {
        username: "sol".into(),
        password: PASSWORD.into(),
        device_id: "dev-1".into(),
    };
    link.send(cmd::AUTH, 12, &auth).await;
    link.send(cmd::LOGOUT, 13, &v1::LogoutReq { all_devices: true })
        .await;
    for id in [11, 12, 13] {
        let f = answer(&mut link, 5).await;
        assert_eq!(f.req_id, id);
        assert_eq!(
            error_code(&f),
            v1::ErrorCode::UnknownCommand,
            "request {id}"
        );
    }
    // Nothing happened: no user was made, the token still works, the link still serves.
    serves(&mut link, 14).await;
    let short = ferry_client::ShortLink::new(&ts.addr());
    assert_eq!(
        code(short.auth("sol2", PASSWORD, "d").await),
        v1::ErrorCode::BadCredentials,
        "REGISTER on the long link made no user"
    );
    let mut again = RawLink::connect(&ts.addr()).await;
    login_ok(&again.login(&tok).await);
}

#[tokio::test]
async fn auth_refresh_and_password_change_keep_the_link_logged_in() {
    let ts = TestServer::start().await;
    ts.register(&["ren"]).await;
    let old = token(&ts.addr(), "ren", "phone").await;
    let tablet = token(&ts.addr(), "ren", "tablet").await;
    let mut link = RawLink::connect(&ts.addr()).await;
    login_ok(&link.login(&old).await);
    let mut other = RawLink::connect(&ts.addr()).await;
    login_ok(&other.login(&tablet).await);

    // AUTH_REFRESH on the long link: a new token for this device, the old one revoked,
    // the link still the same session.
    link.send(cmd::AUTH_REFRESH, 5, &v1::Empty {}).await;
    let f = answer(&mut link, 5).await;
    assert_eq!(f.cmd, cmd::response(cmd::AUTH_REFRESH), "{f:?}");
    let refreshed = v1::AuthResp::decode(f.body).unwrap();
    assert!(!refreshed.token.is_empty() && refreshed.token != old);
    serves(&mut link, 6).await;
    let mut stale = RawLink::connect(&ts.addr()).await;
    assert_eq!(
        error_code(&stale.login(&old).await),
        v1::ErrorCode::Unauthorized
    );

    // PASSWORD_CHANGE on the long link: this device gets a new token and keeps its link;
    // the other device's session ends (KICK).
    let change = v1::PasswordChangeReq {
        old_password: PASSWORD.into(),
        new_password: "password-2".into(),
    };
    link.send(cmd::PASSWORD_CHANGE, 7, &change).await;
    let f = answer(&mut link, 5).await;
    assert_eq!(f.cmd, cmd::response(cmd::PASSWORD_CHANGE), "{f:?}");
    let changed = v1::AuthResp::decode(f.body).unwrap();
    serves(&mut link, 8).await;
    let kick = other.recv(5).await.expect("the tablet is kicked");
    assert_eq!(kick.cmd, cmd::KICK);
    assert!(other.closed_within(5).await);
    for (t, works) in [(&refreshed.token, false), (&changed.token, true)] {
        let mut l = RawLink::connect(&ts.addr()).await;
        let f = l.login(t).await;
        assert_eq!(f.cmd == cmd::response(cmd::LOGIN), works, "{f:?}");
    }
}

#[tokio::test]
async fn a_second_login_of_a_device_replaces_the_first() {
    let ts = TestServer::start().await;
    ts.register(&["dup"]).await;
    let phone = token(&ts.addr(), "dup", "phone").await;
    let laptop = token(&ts.addr(), "dup", "laptop").await;
    let mut first = RawLink::connect(&ts.addr()).await;
    login_ok(&first.login(&phone).await);
    let mut other_device = RawLink::connect(&ts.addr()).await;
    login_ok(&other_device.login(&laptop).await);

    let mut second = RawLink::connect(&ts.addr()).await;
    login_ok(&second.login(&phone).await);
    let kick = first.recv(5).await.expect("the first link is told");
    assert_eq!((kick.cmd, kick.req_id), (cmd::KICK, 0));
    let k = v1::Kick::decode(kick.body).unwrap();
    assert_eq!(k.code, v1::ErrorCode::Kicked as i32, "{k:?}");
    assert!(first.closed_within(5).await, "and closed");

    // The new link works, and the user's other device was left alone.
    serves(&mut second, 2).await;
    serves(&mut other_device, 2).await;
    second
        .send(cmd::HEARTBEAT, 3, &v1::Heartbeat::default())
        .await;
    assert_eq!(answer(&mut second, 5).await.req_id, 3);
    assert!(
        !other_device.closed_within(1).await,
        "the other device keeps its link"
    );
}

#[tokio::test]
async fn a_second_sdk_client_of_a_device_stops_the_first() {
    let ts = TestServer::start().await;
    ts.register(&["twin"]).await;
    // One device (its state folder: id and token) started twice.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = client_config(&ts.addr(), "twin");
    cfg.state_dir = Some(dir.path().to_path_buf());
    let (a, mut a_events) = ferry_client::Client::connect(cfg.clone()).await.unwrap();
    let (b, _b_events) = ferry_client::Client::connect(cfg).await.unwrap();
    assert_eq!(a.device_id(), b.device_id());
    let error = event_where(&mut a_events, 5, |e| match e {
        ferry_client::Event::Stopped { error } => Some(error),
        _ => None,
    })
    .await;
    assert_eq!(error.code(), Some(v1::ErrorCode::Kicked), "{error}");
    // The newer client carries on.
    let body = v1::SyncReq::default().encode_to_vec();
    let f = b.request(cmd::SYNC, body.into()).await.unwrap();
    assert_eq!(f.cmd, cmd::response(cmd::SYNC));
}

#[tokio::test]
async fn login_and_short_link_name_the_protocol_version() {
    let ts = TestServer::start().await;
    ts.register(&["ver"]).await;
    let tok = token(&ts.addr(), "ver", "d").await;
    // Absent (every client before 1.0): 1. Asking for more than the server speaks: the
    // server's highest, never more than asked.
    for (asked, answered) in [
        (None, 1),
        (Some(1), 1),
        (Some(7), ferry_proto::PROTOCOL_VERSION),
    ] {
        let mut link = RawLink::connect(&ts.addr()).await;
        let req = v1::LoginReq {
            token: tok.clone(),
            protocol: asked.unwrap_or(0),
            ..Default::default()
        };
        link.send(cmd::LOGIN, 1, &req).await;
        let resp = login_ok(&link.recv(5).await.unwrap());
        assert_eq!(resp.protocol, answered, "asked {asked:?}");
    }
    // The short link: the same rule through the Ferry-Protocol header, on every answer.
    for (header, answered) in [
        ("", "1"),
        ("Ferry-Protocol: 1\r\n", "1"),
        ("Ferry-Protocol: 2\r\n", "2"),
        ("Ferry-Protocol: 9\r\n", "2"),
    ] {
        let headers = format!("Content-Type: application/x-protobuf\r\n{header}");
        let ok = http_post(&ts.addr(), "/v1/endpoints", &headers, &[]).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("ferry-protocol").as_deref(), Some(answered));
        let refused = http_post(&ts.addr(), "/v1/nope", &headers, &[]).await;
        assert_eq!(refused.status, 404);
        assert_eq!(refused.header("ferry-protocol").as_deref(), Some(answered));
    }
}
