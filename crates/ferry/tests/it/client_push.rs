//! The SDK's app lifecycle against a real server: `app_backgrounded` closes the long link
//! after its grace (the server sees the device go, with its synckey), nothing reconnects
//! while in the background, and `app_foregrounded` connects and syncs what came
//! meanwhile (inbox and groups); back within the grace, the link never drops.

use std::time::Duration;

use ferry_client::{Client, Event, Status};
use ferry_proto::v1;
use ferry_testkit::*;
use tokio::time::Instant;

/// A client whose heartbeat is too slow to tell the server anything during a test: what
/// the server learns of its synckey, it learns from the last heartbeat before going to
/// the background.
async fn slow_beating(addr: &str, user: &str, grace: Duration) -> (Client, ferry_client::Events) {
    let mut cfg = client_config(addr, user);
    cfg.heartbeat = Duration::from_secs(120);
    cfg.smart.heartbeat_max = cfg.heartbeat;
    cfg.background_grace = grace;
    Client::connect(cfg).await.unwrap()
}

/// Waits (up to `secs`) for the client's status to become `want`.
async fn status_becomes(client: &Client, want: Status, secs: u64) {
    eventually(secs, &format!("status {want:?}"), || {
        client.status() == want
    })
    .await;
}

fn group_text(ev: Event, group: u64) -> Option<String> {
    match ev {
        Event::Group { group_id, entry } if group_id == group => match entry.kind {
            Some(v1::group_entry::Kind::Message(m)) => Some(m.text),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backgrounded_closes_after_the_grace_and_foregrounded_syncs_what_came_meanwhile() {
    let ts = TestServer::start().await;
    ts.register(&["ann", "bob"]).await;
    let addr = ts.addr();
    let (ann, _ann_ev) = connect(&addr, "ann").await;
    let grace = Duration::from_millis(400);
    let (bob, mut bob_ev) = slow_beating(&addr, "bob", grace).await;
    let group = ann
        .account()
        .create_group("pair", &["bob"], false)
        .await
        .unwrap()
        .group_id;
    eventually(5, "both online", || ts.server.logic.users_online() == 2).await;

    // Bob has applied one entry, which only his link knows of so far.
    ann.send_text("bob", "before").await.unwrap();
    let got = recv_messages(&mut bob_ev, "bob", 1, 10).await;
    let applied = got[0].0;
    assert_eq!(bob.synckey(), applied);

    let went = Instant::now();
    bob.app_backgrounded();
    bob.app_backgrounded(); // again: the first grace stands
    status_becomes(&bob, Status::Background, 5).await;
    assert!(
        went.elapsed() >= grace,
        "closed after {:?}, before the grace of {grace:?}",
        went.elapsed()
    );
    let reason = event_where(&mut bob_ev, 5, |e| match e {
        Event::Disconnected { reason } => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("background"), "{reason}");
    // The server sees the link gone, and kept the synckey the last heartbeat told it
    // (the badge and the pushes count from there).
    eventually(5, "bob offline", || ts.server.logic.users_online() == 1).await;
    assert_eq!(ts.server.gateway.links(), 1);
    let user = bob.user_id();
    let device = bob.device_id();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stored = ts.server.store.synckey(user, &device).await.unwrap();
        if stored == Some(applied) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored synckey {stored:?}, want {applied}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Meanwhile: a 1:1 message and a group message. Nothing reconnects, nothing arrives.
    ann.send_text("bob", "while away").await.unwrap();
    ann.send_group(group, "group while away", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(bob.status(), Status::Background);
    assert_eq!(
        ts.server.gateway.links(),
        1,
        "bob reconnected in the background"
    );
    while let Ok(ev) = bob_ev.try_recv() {
        assert!(
            !matches!(
                ev,
                Event::Entry(_) | Event::Group { .. } | Event::Connected { .. }
            ),
            "in the background: {ev:?}"
        );
    }
    // A long-link request fails at once rather than waiting.
    assert!(bob
        .request(ferry_proto::cmd::SYNC, Default::default())
        .await
        .is_err());

    bob.app_foregrounded();
    bob.app_foregrounded(); // again: nothing more
    let got = recv_messages(&mut bob_ev, "bob", 1, 10).await;
    assert_eq!(got[0].1.text, "while away");
    assert_eq!(
        event_where(&mut bob_ev, 10, |e| group_text(e, group)).await,
        "group while away"
    );
    assert_eq!(bob.status(), Status::Connected);
    eventually(5, "bob online again", || {
        ts.server.logic.users_online() == 2
    })
    .await;
    // And the link is a live one again: the next message arrives pushed.
    ann.send_text("bob", "back").await.unwrap();
    assert_eq!(
        recv_messages(&mut bob_ev, "bob", 1, 10).await[0].1.text,
        "back"
    );
    assert_eq!(ts.server.gateway.links(), 2);
    bob.close().await;
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foregrounded_within_the_grace_keeps_the_link() {
    let ts = TestServer::start().await;
    ts.register(&["ann", "bob"]).await;
    let addr = ts.addr();
    let (ann, _ann_ev) = connect(&addr, "ann").await;
    let grace = Duration::from_millis(800);
    let (bob, mut bob_ev) = slow_beating(&addr, "bob", grace).await;
    eventually(5, "both online", || ts.server.logic.users_online() == 2).await;

    // Foregrounded first (already is: nothing), then a quick app switch.
    bob.app_foregrounded();
    bob.app_backgrounded();
    tokio::time::sleep(grace / 4).await;
    bob.app_foregrounded();
    // Well past the grace: still the same link.
    tokio::time::sleep(grace * 2).await;
    assert_eq!(bob.status(), Status::Connected);
    assert_eq!(ts.server.gateway.links(), 2);
    assert_eq!(ts.server.logic.users_online(), 2);
    ann.send_text("bob", "still here").await.unwrap();
    assert_eq!(
        recv_messages(&mut bob_ev, "bob", 1, 10).await[0].1.text,
        "still here"
    );
    while let Ok(ev) = bob_ev.try_recv() {
        assert!(
            !matches!(ev, Event::Disconnected { .. } | Event::Connected { .. }),
            "the link changed: {ev:?}"
        );
    }

    // A second switch after the first: the grace starts afresh and closes this time.
    bob.app_backgrounded();
    status_becomes(&bob, Status::Background, 5).await;
    eventually(5, "bob offline", || ts.server.logic.users_online() == 1).await;
    // Closing in the background is immediate and clean.
    let closing = Instant::now();
    bob.close().await;
    assert!(closing.elapsed() < Duration::from_secs(2));
    assert_eq!(bob.status(), Status::Stopped);
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_running_out_while_reconnecting_stops_the_reconnecting() {
    // The server goes away while the app is in the foreground: the client retries. The
    // app then goes to the background: once the grace is over it stops retrying, and
    // coming back tries again at once.
    let ts = TestServer::start().await;
    ts.register(&["bob"]).await;
    let addr = ts.addr();
    let mut cfg = client_config(&addr, "bob");
    cfg.background_grace = Duration::from_millis(300);
    let (bob, _bob_ev) = Client::connect(cfg).await.unwrap();
    let TestServer { server, dir: data } = ts;
    server.shutdown().await;
    status_becomes(&bob, Status::Connecting, 10).await;
    bob.app_backgrounded();
    status_becomes(&bob, Status::Background, 5).await;
    // A server back on the same port: nothing connects while in the background …
    let mut cfg = test_config(data.path());
    cfg.listen = vec![addr.clone()];
    let back = ferry::Server::bind(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(back.gateway.links(), 0);
    // … and the foreground connects at once.
    bob.app_foregrounded();
    status_becomes(&bob, Status::Connected, 10).await;
    assert_eq!(back.gateway.links(), 1);
    bob.close().await;
    back.shutdown().await;
}
