//! Security: token expiry, renewal and revocation.

use std::time::Duration;

use ferry_client::{Account, Client, Event, ShortLink};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, ProtoMessage};
use ferry_testkit::*;

#[tokio::test]
async fn expired_tokens_are_refused_and_the_sdk_signs_in_again() {
    let ts = TestServer::with(|c| c.logic.token_ttl_secs = 1).await;
    ts.register(&["alice"]).await;
    let a = ShortLink::new(&ts.addr())
        .auth("alice", PASSWORD, "dev-1")
        .await
        .unwrap();
    assert!(
        a.token_expires_ms > 0,
        "the auth answer says when the token expires"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // On the long link …
    let mut raw = RawLink::connect(&ts.addr()).await;
    let f = raw.login(&a.token).await;
    assert_eq!(error_code(&f), ErrorCode::Unauthorized);
    assert!(raw.closed_within(2).await);
    // … and on the short link.
    let e = ShortLink::new(&ts.addr())
        .newsync(&a.token, 0, 10)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized));

    // The SDK with that expired token in its stored state signs in again by itself.
    let dir = tempfile::tempdir().unwrap();
    let mut state = ferry_client::DeviceState::fresh();
    state.token = a.token.clone();
    state.save(dir.path()).unwrap();
    let mut cfg = client_config(&ts.addr(), "alice");
    cfg.state_dir = Some(dir.path().to_path_buf());
    let (c, _ev) = Client::connect(cfg).await.unwrap();
    let now = ferry_client::DeviceState::load(dir.path()).unwrap();
    assert_ne!(now.token, a.token);
    c.close().await;
}

#[tokio::test]
async fn a_login_past_half_the_token_life_renews_it() {
    let ts = TestServer::with(|c| c.logic.token_ttl_secs = 2).await;
    ts.register(&["alice"]).await;
    let old = token(&ts.addr(), "alice", "dev-1").await;

    // Young token: no renewal.
    let mut raw = RawLink::connect(&ts.addr()).await;
    let f = raw.login(&old).await;
    let r = v1::LoginResp::decode(f.body).unwrap();
    assert!(r.token.is_empty());
    assert!(r.token_expires_ms > 0);
    drop(raw);

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut raw = RawLink::connect(&ts.addr()).await;
    let f = raw.login(&old).await;
    assert_eq!(f.cmd, cmd::response(cmd::LOGIN));
    let r = v1::LoginResp::decode(f.body).unwrap();
    assert!(
        !r.token.is_empty(),
        "a renewed token rides in the login answer"
    );
    assert_ne!(r.token, old);
    let short = ShortLink::new(&ts.addr());
    let e = short.newsync(&old, 0, 10).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(ErrorCode::Unauthorized),
        "the old token is gone"
    );
    short.newsync(&r.token, 0, 10).await.unwrap();
}

#[tokio::test]
async fn refresh_replaces_the_token() {
    let ts = TestServer::start().await;
    ts.register(&["alice"]).await;
    let acct = Account::open(client_config(&ts.addr(), "alice"))
        .await
        .unwrap();
    let old = acct.token_now();
    let expires = acct.refresh_token().await.unwrap();
    assert!(expires > 0);
    let new = acct.token_now();
    assert_ne!(old, new);
    let short = ShortLink::new(&ts.addr());
    assert_eq!(
        short.newsync(&old, 0, 1).await.unwrap_err().code(),
        Some(ErrorCode::Unauthorized)
    );
    short.newsync(&new, 0, 1).await.unwrap();
}

#[tokio::test]
async fn a_password_change_revokes_every_other_session() {
    let ts = TestServer::start().await;
    ts.register(&["alice", "bob"]).await;
    let (phone, _phone_ev) = connect(&ts.addr(), "alice").await;
    let (laptop, mut laptop_ev) = connect(&ts.addr(), "alice").await;
    let laptop_token = laptop.account().token_now();

    let acct = phone.account();
    // A wrong old password changes nothing.
    let e = acct
        .change_password("not-the-password", "new-password-1")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadCredentials));
    acct.change_password(PASSWORD, "new-password-1")
        .await
        .unwrap();

    // The other device is kicked and its token no longer works.
    let stopped = event_where(&mut laptop_ev, 5, |e| match e {
        Event::Stopped { error } => Some(error),
        _ => None,
    })
    .await;
    assert_eq!(stopped.code(), Some(ErrorCode::Kicked));
    let short = ShortLink::new(&ts.addr());
    assert_eq!(
        short.newsync(&laptop_token, 0, 1).await.unwrap_err().code(),
        Some(ErrorCode::Unauthorized)
    );
    // The old password is refused, the new one works.
    assert_eq!(
        short
            .auth("alice", PASSWORD, "dev-x")
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::BadCredentials)
    );
    short
        .auth("alice", "new-password-1", "dev-x")
        .await
        .unwrap();
    // The device that changed it stays signed in, on both links.
    phone.send_text("bob", "still here").await.unwrap();
    short.newsync(&acct.token_now(), 0, 1).await.unwrap();
}
