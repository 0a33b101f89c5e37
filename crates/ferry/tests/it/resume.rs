//! Session resumption end to end (docs/protocol.md 1.5), against servers that refuse
//! plaintext: the SDK resumes its link from a ticket without any X25519 on the gateway
//! (counted by the gateway's handshake counters) and messages flow both ways; a ticket
//! survives a restart of the app (kept in the state folder); a refused ticket falls
//! back to the full handshake; by hand: a revoked token over a valid ticket is refused
//! exactly as before, a replayed RESUME is refused, and a ticket from another key epoch
//! is refused.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use ferry_client::{ClientConfig, DeviceState, Event, ShortLink};
use ferry_proto::resume;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, ProtoMessage};
use ferry_testkit::*;

/// (full handshakes, resumed, resumes refused) so far on the server's gateway.
fn handshakes(ts: &TestServer) -> (u64, u64, u64) {
    let s = &ts.server.gateway.stats;
    (
        s.full_handshakes.load(Ordering::Relaxed),
        s.resumed_handshakes.load(Ordering::Relaxed),
        s.resumes_refused.load(Ordering::Relaxed),
    )
}

/// A pinned client that keeps its state (token and ticket) in `state`.
fn pinned_with_state(ts: &TestServer, user: &str, state: &std::path::Path) -> ClientConfig {
    let mut cfg = pinned(ts, user);
    cfg.state_dir = Some(state.to_path_buf());
    cfg
}

async fn connected(events: &mut tokio::sync::mpsc::Receiver<Event>) {
    event_where(events, 10, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_sdk_resumes_without_x25519_and_messages_flow_both_ways() {
    let ts = strict_server().await;
    register_sealed(&ts, &["ann", "ben"]).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ann, mut ann_ev) =
        ferry_client::Client::connect(pinned_with_state(&ts, "ann", dir_a.path()))
            .await
            .unwrap();
    let (ben, mut ben_ev) =
        ferry_client::Client::connect(pinned_with_state(&ts, "ben", dir_b.path()))
            .await
            .unwrap();
    connected(&mut ann_ev).await;
    connected(&mut ben_ev).await;
    assert_eq!(handshakes(&ts), (2, 0, 0));
    // The first login's answer carried a ticket, kept with the token.
    let kept = DeviceState::load(dir_a.path()).unwrap().resumption.unwrap();
    assert!(!kept.ticket.is_empty() && kept.secret.len() == 64);

    // A network change: the SDK reconnects at once, resuming from the ticket.
    ann.network_changed("wifi-2");
    connected(&mut ann_ev).await;
    assert_eq!(handshakes(&ts), (2, 1, 0), "no X25519 for the resumed link");
    // The resumed login handed out no new ticket: the device keeps the one it has.
    let still = DeviceState::load(dir_a.path()).unwrap().resumption.unwrap();
    assert_eq!(
        (&still.ticket, still.expires_ms),
        (&kept.ticket, kept.expires_ms)
    );

    // Sealed records flow both ways on the resumed link.
    ann.send_text("ben", "over the resumed link").await.unwrap();
    let got = recv_messages(&mut ben_ev, "ben", 1, 10).await;
    assert_eq!(got[0].1.text, "over the resumed link");
    ben.send_text("ann", "and back").await.unwrap();
    let got = recv_messages(&mut ann_ev, "ann", 1, 10).await;
    assert_eq!(got[0].1.text, "and back");

    // The app restarts: the ticket kept in the state folder resumes the first link.
    ann.close().await;
    let (ann, mut ann_ev) =
        ferry_client::Client::connect(pinned_with_state(&ts, "ann", dir_a.path()))
            .await
            .unwrap();
    ann.wait_connected().await.unwrap();
    assert_eq!(handshakes(&ts), (2, 2, 0));
    ben.send_text("ann", "after the restart").await.unwrap();
    let got = recv_messages(&mut ann_ev, "ann", 1, 10).await;
    assert_eq!(got[0].1.text, "after the restart");
    ann.close().await;
    ben.close().await;
}

#[tokio::test]
async fn a_refused_ticket_falls_back_to_the_full_handshake() {
    let ts = strict_server().await;
    register_sealed(&ts, &["cat"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (cat, _ev) = ferry_client::Client::connect(pinned_with_state(&ts, "cat", dir.path()))
        .await
        .unwrap();
    cat.wait_connected().await.unwrap();
    cat.close().await;
    // Damage the kept ticket: the server cannot open it.
    let mut st = DeviceState::load(dir.path()).unwrap();
    let t = st.resumption.as_mut().unwrap();
    let mut raw = hex::decode(&t.ticket).unwrap();
    raw[30] ^= 1;
    t.ticket = hex::encode(raw);
    st.save(dir.path()).unwrap();

    let (cat, mut ev) = ferry_client::Client::connect(pinned_with_state(&ts, "cat", dir.path()))
        .await
        .unwrap();
    connected(&mut ev).await;
    assert_eq!(handshakes(&ts), (2, 0, 1), "refused, then a full handshake");
    // The full login gave a fresh ticket, which the next link resumes with.
    cat.network_changed("cell");
    connected(&mut ev).await;
    assert_eq!(handshakes(&ts), (2, 1, 1));
    cat.close().await;
}

fn resume_hello(r: &v1::Resumption, token: &str) -> (resume::ClientResume, BytesMut) {
    let secret: [u8; 32] = r.secret[..].try_into().unwrap();
    let mut hello = BytesMut::new();
    let hs = resume::client_resume(
        &r.ticket,
        &secret,
        &login_frame(token),
        now_ms(),
        &mut hello,
    )
    .unwrap();
    (hs, hello)
}

/// A full login by hand; the ticket its answer carries.
async fn ticket_for(ts: &TestServer, token: &str) -> v1::Resumption {
    let mut raw = SecureRaw::connect(&ts.addr()).await;
    let Ok(f) = raw.login(&key_of(ts), token).await else {
        panic!("full login refused");
    };
    assert_eq!(f.cmd, cmd::response(cmd::LOGIN));
    raw.ticket.expect("a ticket")
}

#[tokio::test]
async fn by_hand_resumed_links_carry_messages_and_replays_are_refused() {
    let ts = strict_server().await;
    register_sealed(&ts, &["dan", "eve"]).await;
    let short = ShortLink::sealed(&ts.addr(), Some(key_of(&ts)));
    let dan = short.auth("dan", PASSWORD, "d1").await.unwrap().token;
    let eve = short.auth("eve", PASSWORD, "e1").await.unwrap().token;
    let ticket = ticket_for(&ts, &dan).await;

    // From another address (another network) the ticket, sent in clear, would link the
    // two links: the answer brings a new one, with the same expiry.
    let (hs, hello) = resume_hello(&ticket, &dan);
    let mut moved = SecureRaw::connect_from(&ts.addr(), "127.0.0.2").await;
    let Ok(f) = moved.resume(hs, &hello).await else {
        panic!("resumption from another address refused");
    };
    assert_eq!(f.cmd, cmd::response(cmd::LOGIN));
    let renewed = moved.ticket.clone();
    let renewed = renewed.expect("a new ticket for the new network");
    assert_ne!(renewed.ticket, ticket.ticket);
    assert_eq!(renewed.expires_ms, ticket.expires_ms);
    drop(moved);
    // The device's next link replaces that one (one link per device).
    let (hs, hello) = resume_hello(&ticket, &dan);
    let mut a = SecureRaw::connect(&ts.addr()).await;
    let Ok(f) = a.resume(hs, &hello).await else {
        panic!("resumption refused");
    };
    assert_eq!(f.cmd, cmd::response(cmd::LOGIN));
    assert!(
        a.ticket.is_none(),
        "resumed from the same address: keep the ticket, no new one"
    );
    let mut b = SecureRaw::connect(&ts.addr()).await;
    let Ok(_) = b.login(&key_of(&ts), &eve).await else {
        panic!("eve's login refused");
    };
    // dan → eve and back, sealed under the resumed keys.
    let msg = v1::SendMsg {
        client_msg_id: ferry_client::new_client_msg_id(),
        to: "eve".into(),
        text: "resumed".into(),
        ..Default::default()
    };
    a.send(cmd::SEND, 2, &msg).await;
    a.recv_cmd(cmd::response(cmd::SEND)).await;
    let n = v1::Notify::decode(b.recv_cmd(cmd::NOTIFY).await.body).unwrap();
    assert!(n
        .entries
        .iter()
        .any(|e| matches!(&e.kind, Some(v1::entry::Kind::Message(m)) if m.text == "resumed")));
    let back = v1::SendMsg {
        client_msg_id: ferry_client::new_client_msg_id(),
        to: "dan".into(),
        text: "welcome back".into(),
        ..Default::default()
    };
    b.send(cmd::SEND, 3, &back).await;
    loop {
        let n = v1::Notify::decode(a.recv_cmd(cmd::NOTIFY).await.body).unwrap();
        if n.entries.iter().any(
            |e| matches!(&e.kind, Some(v1::entry::Kind::Message(m)) if m.text == "welcome back"),
        ) {
            break;
        }
    }

    // The same RESUME bytes again: refused in plain, no session.
    let (hs2, _) = resume_hello(&ticket, &dan);
    let mut replay = SecureRaw::connect(&ts.addr()).await;
    let Err(f) = replay.resume(hs2, &hello).await else {
        panic!("a replayed RESUME was answered");
    };
    assert_eq!(error_code(&f), ErrorCode::ResumeRefused);
    // Garbage where the ticket goes: refused the same way.
    let junk = v1::Resumption {
        ticket: vec![0x5a; 90].into(),
        secret: vec![1; 32].into(),
        expires_ms: 0,
    };
    let (hs3, hello3) = resume_hello(&junk, &dan);
    let Err(f) = SecureRaw::connect(&ts.addr())
        .await
        .resume(hs3, &hello3)
        .await
    else {
        panic!("a junk ticket was taken");
    };
    assert_eq!(error_code(&f), ErrorCode::ResumeRefused);
    // A token that is not the ticket's device: the login is refused.
    let (hs4, hello4) = resume_hello(&ticket, &eve);
    let Ok(f) = SecureRaw::connect(&ts.addr())
        .await
        .resume(hs4, &hello4)
        .await
    else {
        panic!("the ticket did not open");
    };
    assert_eq!(error_code(&f), ErrorCode::Unauthorized);
    assert_eq!(handshakes(&ts).2, 2);
}

#[tokio::test]
async fn a_revoked_token_over_a_valid_ticket_is_refused() {
    let ts = strict_server().await;
    register_sealed(&ts, &["fay"]).await;
    let short = ShortLink::sealed(&ts.addr(), Some(key_of(&ts)));
    let token = short.auth("fay", PASSWORD, "f1").await.unwrap().token;
    let ticket = ticket_for(&ts, &token).await;
    let r: v1::LogoutResp = short
        .call(
            "logout",
            Some(&token),
            &v1::LogoutReq { all_devices: false },
        )
        .await
        .unwrap();
    assert_eq!(r.sessions, 1);
    // The ticket still opens (it is only a shortcut for the handshake), and the LOGIN
    // inside is refused exactly as over a full handshake.
    let (hs, hello) = resume_hello(&ticket, &token);
    let mut raw = SecureRaw::connect(&ts.addr()).await;
    let Ok(f) = raw.resume(hs, &hello).await else {
        panic!("the ticket did not open");
    };
    assert_eq!(error_code(&f), ErrorCode::Unauthorized);
    let (full, resumed, _) = handshakes(&ts);
    assert_eq!((full, resumed), (1, 1));
}

#[tokio::test]
async fn tickets_from_another_key_epoch_are_refused() {
    let ts = strict_server().await;
    register_sealed(&ts, &["gus"]).await;
    let token = ShortLink::sealed(&ts.addr(), Some(key_of(&ts)))
        .auth("gus", PASSWORD, "g1")
        .await
        .unwrap()
        .token;
    let ticket = ticket_for(&ts, &token).await;
    // A second server with the same static key and data but the next epoch.
    let key_file = ts.dir.path().join("server-key");
    let other = TestServer::with(|c| {
        c.gateway.allow_plaintext = false;
        c.gateway.ticket_epoch = 2;
        c.server_key_file = key_file.clone();
    })
    .await;
    assert_eq!(key_of(&other), key_of(&ts));
    let (hs, hello) = resume_hello(&ticket, &token);
    let Err(f) = SecureRaw::connect(&other.addr())
        .await
        .resume(hs, &hello)
        .await
    else {
        panic!("a ticket of another epoch was taken");
    };
    assert_eq!(error_code(&f), ErrorCode::ResumeRefused);
    // The same key at the same epoch (another gateway of the cluster) takes it.
    let same = TestServer::with(|c| {
        c.gateway.allow_plaintext = false;
        c.server_key_file = key_file.clone();
    })
    .await;
    let (hs, hello) = resume_hello(&ticket, &token);
    let Ok(f) = SecureRaw::connect(&same.addr())
        .await
        .resume(hs, &hello)
        .await
    else {
        panic!("another gateway with the key refused the ticket");
    };
    // (That server has its own store, so it does not know the token.)
    assert_eq!(error_code(&f), ErrorCode::Unauthorized);
}
