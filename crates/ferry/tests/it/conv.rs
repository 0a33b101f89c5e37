//! Conversation state and forwarding end to end (issue 24): archive, mute, mark-unread,
//! draft and clear-history converge on every device of a user — also one offline during
//! the changes — and on nobody else's; a mute set through CONV is the push setting (it
//! silences pushes and shows in push/prefs); clearing a group's history hides its older
//! messages from that user's group sync only; a forwarded image reaches a third user who
//! may download it while a stranger may not; forwards of recalled or foreign messages
//! are refused; a conversation's own retention prunes its old messages with their
//! reactions, pins and edits, and the media no other message refers to, while other
//! conversations keep theirs.

use std::time::{Duration, Instant};

use ferry_client::{ChatView, Conversation};
use ferry_proto::v1::{self, ErrorCode};
use ferry_push::sim::Sim;
use ferry_push::Provider;
use ferry_testkit::*;

use crate::msgops::{refused, Device};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_mute_unread_draft_and_clear_converge_on_three_devices_one_offline() {
    let ts = TestServer::start().await;
    ts.register(&["ann", "bob"]).await;
    let addr = ts.addr();
    let dir = tempfile::tempdir().unwrap();
    let mut a1 = Device::online(&addr, "ann").await;
    let mut a2 = Device::online(&addr, "ann").await;
    let mut a3 = Device::kept(&addr, "ann", dir.path(), ChatView::new("ann")).await;
    let mut bob = Device::online(&addr, "bob").await;
    let g = a1
        .client
        .account()
        .create_group("crew", &["bob"], false)
        .await
        .unwrap()
        .group_id;
    let m1 = bob.client.send_text("ann", "one").await.unwrap().msg_id;
    let m2 = a1.client.send_text("bob", "two").await.unwrap().msg_id;
    for d in [&mut a1, &mut a2, &mut a3] {
        d.until("the first messages", 10, |v| {
            v.messages.contains_key(&m1) && v.messages.contains_key(&m2)
        })
        .await;
    }
    // The third device goes offline, keeping its view beside its state.
    let view_file = dir.path().join("view.json");
    a3.view.save(&view_file).unwrap();
    a3.client.close().await;
    drop(a3);

    let peer = Conversation::Peer("bob".into());
    let group = Conversation::Group(g);
    a1.client.archive(&peer, true).await.unwrap();
    a2.client.mute(&peer, -1).await.unwrap();
    a1.client.mark_unread(&group, true).await.unwrap();
    a2.client.set_draft(&peer, "see you at").await.unwrap();
    a1.client.set_draft(&peer, "see you at 8").await.unwrap();
    let cleared = a2.client.clear_history(&peer).await.unwrap();
    assert_eq!(cleared.cleared_before_msg_id, m2);
    let converged = |v: &ChatView| {
        let p = v.conv(&Conversation::Peer("bob".into()));
        p.archived
            && p.muted(0)
            && p.draft == "see you at 8"
            && p.cleared_before_msg_id == m2
            && v.conv(&Conversation::Group(g)).unread
            && !v.messages.contains_key(&m1)
            && !v.messages.contains_key(&m2)
    };
    a1.until("device 1 converges", 10, converged).await;
    a2.until("device 2 converges", 10, converged).await;
    assert_eq!(a1.view.convs, a2.view.convs);

    // The server agrees.
    let all = a1.client.conversations().await.unwrap();
    let p = all.iter().find(|c| c.peer == "bob").unwrap();
    assert!(p.archived && p.muted_until_ms == -1 && p.draft == "see you at 8");
    assert!(all.iter().any(|c| c.group_id == g && c.unread));

    // The third device comes back and catches up through sync.
    let mut a3 = Device::kept(
        &addr,
        "ann",
        dir.path(),
        ChatView::load(&view_file, "ann").unwrap(),
    )
    .await;
    assert!(!converged(&a3.view), "it was behind");
    a3.until("device 3 catches up", 15, converged).await;
    assert_eq!(a3.view.convs, a1.view.convs);
    assert_eq!(a3.view.messages, a1.view.messages);

    // A newer message shows; bob's view never got ann's state and keeps his messages.
    let m3 = bob.client.send_text("ann", "three").await.unwrap().msg_id;
    a3.until("a new message after the clear", 10, |v| {
        v.messages.contains_key(&m3)
    })
    .await;
    bob.until("bob has everything", 10, |v| {
        [m1, m2, m3].iter().all(|m| v.messages.contains_key(m))
    })
    .await;
    assert!(bob.view.convs.is_empty(), "{:?}", bob.view.convs);
    assert!(bob.client.conversations().await.unwrap().is_empty());

    // Reading the group clears its unread mark, on every device.
    let latest = a1.client.account().group_sync(g, 0, 100).await.unwrap();
    a1.client
        .read(v1::ReadReq {
            group_id: g,
            gseq: latest.latest_gseq,
            ..Default::default()
        })
        .await
        .unwrap();
    a2.until("the unread mark goes", 10, |v| {
        !v.conv(&Conversation::Group(g)).unread
    })
    .await;

    // Refusals are clear.
    let (code, msg) = refused(a1.client.set_draft(&peer, &"x".repeat(4_001)).await);
    assert_eq!(code, ErrorCode::TooLarge, "{msg}");
    let (code, _) = refused(
        a1.client
            .archive(&Conversation::Peer("nobody".into()), true)
            .await,
    );
    assert_eq!(code, ErrorCode::UnknownUser);
    let (code, _) = refused(
        bob.client
            .archive(&Conversation::Group(g + 1000), true)
            .await,
    );
    assert_eq!(code, ErrorCode::NotFound);
    for c in [&a1.client, &a2.client, &a3.client, &bob.client] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_a_groups_history_hides_its_older_messages_from_that_users_sync_only() {
    let ts = TestServer::start().await;
    ts.register(&["ann", "bob"]).await;
    let addr = ts.addr();
    let (ann, _ae) = connect(&addr, "ann").await;
    let (bob, _be) = connect(&addr, "bob").await;
    let g = ann
        .account()
        .create_group("crew", &["bob"], false)
        .await
        .unwrap()
        .group_id;
    let g1 = bob.send_group(g, "old one", &[]).await.unwrap().msg_id;
    let g2 = ann.send_group(g, "old two", &[]).await.unwrap().msg_id;
    bob.react(g1, "👍").await.unwrap();
    let state = ann.clear_history(&Conversation::Group(g)).await.unwrap();
    assert_eq!(state.cleared_before_msg_id, g2);
    let g3 = bob.send_group(g, "new", &[]).await.unwrap().msg_id;
    let ids = |r: &v1::GroupSyncResp| -> Vec<u64> {
        r.entries
            .iter()
            .filter_map(|e| match &e.kind {
                Some(v1::group_entry::Kind::Message(m)) => Some(m.msg_id),
                Some(v1::group_entry::Kind::Reaction(x)) => Some(x.msg_id),
                _ => None,
            })
            .collect()
    };
    let annsees = ann.account().group_sync(g, 0, 100).await.unwrap();
    assert_eq!(ids(&annsees), [g3]);
    let bobsees = bob.account().group_sync(g, 0, 100).await.unwrap();
    assert_eq!(ids(&bobsees), [g1, g2, g1, g3]);
    // The places stay: both see the same gseqs, so cursors agree.
    assert_eq!(annsees.latest_gseq, bobsees.latest_gseq);
    assert_eq!(annsees.entries.len(), bobsees.entries.len());
    ann.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_image_reaches_a_third_user_and_recalled_or_foreign_ones_are_refused() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob", "carol", "dave", "eve"])
        .await;
    let addr = srv.addr();
    let (alice, _ae) = connect(&addr, "alice").await;
    let (bob, _be) = connect(&addr, "bob").await;
    let (carol_c, mut carol_ev) = connect(&addr, "carol").await;
    let image = noise_png(320, 240);
    let sent = alice
        .send_image("bob", image.clone(), &|_, _| {})
        .await
        .unwrap();
    let (id, thumb) = (sent.media.media_id.clone(), sent.media.thumb_id.clone());
    let carol = account(&addr, "carol").await;
    let eve = account(&addr, "eve").await;
    // Before the forward carol may not read it.
    assert_eq!(
        code(carol.download(&id, Duration::ZERO, &|_, _| {}).await),
        ErrorCode::NotFound
    );
    let fwd = bob
        .forward(&Conversation::Peer("carol".into()), sent.ack.msg_id)
        .await
        .unwrap();
    let got = recv_messages(&mut carol_ev, "carol", 1, 10).await;
    let m = &got[0].1;
    assert_eq!(m.msg_id, fwd.msg_id);
    assert_eq!(m.from, "bob");
    let f = m.forwarded.as_ref().expect("marked forwarded");
    assert_eq!(f.from, "alice");
    let media = m.media.as_ref().expect("the media goes along");
    assert_eq!(
        (media.media_id.as_str(), media.thumb_id.as_str()),
        (id.as_str(), thumb.as_str())
    );
    assert!(
        carol
            .download(&id, Duration::ZERO, &|_, _| {})
            .await
            .unwrap()
            == image
    );
    assert!(!carol
        .download(&thumb, Duration::ZERO, &|_, _| {})
        .await
        .unwrap()
        .is_empty());
    for m in [&id, &thumb] {
        assert_eq!(
            code(eve.download(m, Duration::ZERO, &|_, _| {}).await),
            ErrorCode::NotFound
        );
    }
    // Into a group: its members may read it, eve still not.
    let g = bob
        .account()
        .create_group("pics", &["dave"], false)
        .await
        .unwrap()
        .group_id;
    bob.forward(&Conversation::Group(g), sent.ack.msg_id)
        .await
        .unwrap();
    let dave = account(&addr, "dave").await;
    assert!(
        dave.download(&id, Duration::ZERO, &|_, _| {})
            .await
            .unwrap()
            == image
    );
    assert_eq!(
        code(eve.download(&id, Duration::ZERO, &|_, _| {}).await),
        ErrorCode::NotFound
    );
    // Foreign: eve cannot forward alice and bob's message (nor learn that it exists).
    let (eve_c, _ee) = connect(&addr, "eve").await;
    let (c, msg) = refused(
        eve_c
            .forward(&Conversation::Peer("carol".into()), sent.ack.msg_id)
            .await,
    );
    assert_eq!(c, ErrorCode::NotFound, "{msg}");
    let (c, _) = refused(
        eve_c
            .forward(&Conversation::Peer("carol".into()), 987_654_321)
            .await,
    );
    assert_eq!(c, ErrorCode::NotFound);
    // Recalled: refused, saying so.
    let gone = alice.send_text("bob", "oops").await.unwrap().msg_id;
    alice.recall(gone).await.unwrap();
    let (c, msg) = refused(bob.forward(&Conversation::Peer("carol".into()), gone).await);
    assert_eq!(c, ErrorCode::NotFound);
    assert!(msg.contains("recalled"), "{msg}");
    for c in [&alice, &bob, &carol_c, &eve_c] {
        c.close().await;
    }
}

/// Waits (up to 10 s) until the sim has `n` requests of `provider`.
async fn wait_for(sim: &Sim, provider: Provider, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while sim.requests_of(provider).len() < n {
        assert!(
            Instant::now() < until,
            "{provider:?}: {} of {n} pushes; violations {:?}",
            sim.requests_of(provider).len(),
            sim.violations()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_set_through_conv_silences_pushes_and_shows_in_push_prefs() {
    let sim = Sim::start().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let push = sim.config(keys.path()).unwrap();
    let srv = TestServer::with(|cfg| {
        cfg.push = push;
        cfg.logic.push.gather_ms = 100;
        cfg.logic.push.quiet_ms = 60_000;
    })
    .await;
    srv.register(&["alice", "bob", "carol"]).await;
    let addr = srv.addr();
    let phone = token(&addr, "bob", "phone").await;
    let (p256dh, auth) = ferry_push::sim::throwaway_subscription();
    ferry_client::ShortLink::new(&addr)
        .call::<_, v1::PushListResp>(
            "push/register",
            Some(&phone),
            &v1::PushRegisterReq {
                target: Some(v1::PushTarget {
                    provider: v1::PushProvider::Webpush as i32,
                    endpoint: sim.web_push_endpoint("phone"),
                    p256dh,
                    auth,
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    // Bob mutes alice through CONV (from another device of his, over the short link).
    let bob = account(&addr, "bob").await;
    let states = bob
        .conv_set(vec![v1::ConvSet {
            peer: "alice".into(),
            muted_until_ms: Some(-1),
            ..Default::default()
        }])
        .await
        .unwrap();
    assert_eq!(states[0].muted_until_ms, -1);
    let prefs = bob.push_prefs().await.unwrap();
    assert_eq!(
        prefs
            .iter()
            .map(|p| (p.peer.as_str(), p.mode(), p.until_ms))
            .collect::<Vec<_>>(),
        [("alice", v1::PushMode::Muted, 0)]
    );
    // Alice's message pushes nothing; carol's (not muted) does.
    let (alice, _ae) = connect(&addr, "alice").await;
    alice.send_text("bob", "psst").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        sim.requests_of(Provider::WebPush).is_empty(),
        "a muted conversation pushed"
    );
    let (carol, _ce) = connect(&addr, "carol").await;
    carol.send_text("bob", "hello").await.unwrap();
    wait_for(&sim, Provider::WebPush, 1).await;
    // Unmuted through push/prefs: CONV shows it.
    bob.set_push_prefs(vec![v1::ConversationPush {
        peer: "alice".into(),
        mode: v1::PushMode::Default as i32,
        ..Default::default()
    }])
    .await
    .unwrap();
    let states = bob.conversations().await.unwrap();
    assert!(states.iter().all(|s| s.muted_until_ms == 0), "{states:?}");
    alice.close().await;
    carol.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_retention_prunes_its_old_messages_and_their_operations_only() {
    let srv = TestServer::start().await;
    srv.register(&["ann", "bob", "carol"]).await;
    let addr = srv.addr();
    let (ann, _ae) = connect(&addr, "ann").await;
    let mut bob = Device::online(&addr, "bob").await;
    let (carol, _ce) = connect(&addr, "carol").await;
    let old = ann.send_text("bob", "old news").await.unwrap().msg_id;
    let elsewhere = ann.send_text("carol", "keep me").await.unwrap().msg_id;
    bob.client.react(old, "👍").await.unwrap();
    ann.edit(old, "old news, edited").await.unwrap();
    ann.pin(&Conversation::Peer("bob".into()), old)
        .await
        .unwrap();
    carol.react(elsewhere, "🎉").await.unwrap();
    // Two images in ann and bob's chat; bob forwards the first to carol.
    let kept_img = ann
        .send_image("bob", noise_png(64, 64), &|_, _| {})
        .await
        .unwrap();
    let lone_img = ann
        .send_image("bob", noise_png(48, 48), &|_, _| {})
        .await
        .unwrap();
    bob.client
        .forward(&Conversation::Peer("carol".into()), kept_img.ack.msg_id)
        .await
        .unwrap();

    // Ann sets a minute's retention; bob's devices learn it too.
    ann.set_retention(&Conversation::Peer("bob".into()), 60)
        .await
        .unwrap();
    bob.until("bob learns the retention", 10, |v| {
        v.conv(&Conversation::Peer("ann".into())).retention_secs == 60
    })
    .await;
    let (c, msg) = refused(
        ann.set_retention(&Conversation::Peer("bob".into()), 30)
            .await,
    );
    assert_eq!(c, ErrorCode::InvalidArgument, "{msg}");

    let logic = &srv.server.logic;
    // Now nothing is a minute old; two minutes on, ann and bob's messages are.
    assert_eq!(logic.prune_conversations(now_ms()).await.unwrap(), 0);
    let pruned = logic.prune_conversations(now_ms() + 120_000).await.unwrap();
    assert_eq!(pruned, 3, "old, and the two images");
    // The message and its operations are gone; carol's conversation keeps its own.
    let (c, _) = refused(bob.client.react(old, "❤️").await);
    assert_eq!(c, ErrorCode::NotFound);
    assert!(ann
        .pins(&Conversation::Peer("bob".into()))
        .await
        .unwrap()
        .is_empty());
    let r = carol.reactions(elsewhere, None, 0, 10).await.unwrap();
    assert_eq!(r.counts[0].count, 1);
    // A fresh device of bob's syncs the inbox from the start: the pruned messages are
    // not in it, a new one is.
    let marker = ann.send_text("bob", "after").await.unwrap().msg_id;
    let mut fresh = Device::online(&addr, "bob").await;
    fresh
        .until("a fresh device syncs", 10, |v| {
            v.messages.contains_key(&marker)
        })
        .await;
    for gone in [old, kept_img.ack.msg_id, lone_img.ack.msg_id] {
        assert!(!fresh.view.messages.contains_key(&gone), "{gone} synced");
    }
    fresh.client.close().await;
    // The forwarded image stays (carol's message refers to it); the other is deleted.
    let carol_acc = account(&addr, "carol").await;
    assert!(carol_acc
        .download(&kept_img.media.media_id, Duration::ZERO, &|_, _| {})
        .await
        .is_ok());
    assert_eq!(
        code(
            ann.account()
                .download(&lone_img.media.media_id, Duration::ZERO, &|_, _| {})
                .await
        ),
        ErrorCode::NotFound
    );
    ann.close().await;
    bob.client.close().await;
    carol.close().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
