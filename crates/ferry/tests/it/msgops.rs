//! Message operations end to end (issue 24): edits, reactions, replies, delete-for-me,
//! pins and recalls converge on every device of a user — also one offline during the
//! changes that comes back and syncs — in a 1:1 chat and in a group; and every refusal
//! is clear: a recalled, a foreign and an unknown message, an edit by someone else or
//! past the window, a removed group member.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ferry_client::{ChatView, Client, ClientConfig, ClientError, Conversation, Event};
use ferry_proto::v1::ErrorCode;
use ferry_testkit::*;
use tokio::sync::mpsc::Receiver;

/// A client of `user` whose device (id, synckey, group cursors) lives in `dir`: closing
/// it and connecting again is the same device coming back.
async fn device(addr: &str, user: &str, dir: &Path) -> (Client, Receiver<Event>) {
    let cfg = ClientConfig {
        state_dir: Some(dir.to_owned()),
        ..client_config(addr, user)
    };
    Client::connect(cfg).await.unwrap()
}

/// A device and the view its events build (also used by conv.rs).
pub(crate) struct Device {
    pub(crate) client: Client,
    pub(crate) events: Receiver<Event>,
    pub(crate) view: ChatView,
}

impl Device {
    /// A device whose state (id, synckey, cursors) lives in `dir`, with `view`.
    pub(crate) async fn kept(addr: &str, user: &str, dir: &Path, view: ChatView) -> Device {
        let cfg = ClientConfig {
            state_dir: Some(dir.to_owned()),
            ..client_config(addr, user)
        };
        let (client, events) = Client::connect(cfg).await.unwrap();
        Device {
            client,
            events,
            view,
        }
    }

    pub(crate) async fn online(addr: &str, user: &str) -> Device {
        let (client, events) = connect(addr, user).await;
        Device {
            client,
            events,
            view: ChatView::new(user),
        }
    }

    /// Applies events until `done` holds for the view (at most `secs`).
    pub(crate) async fn until(&mut self, what: &str, secs: u64, done: impl Fn(&ChatView) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !done(&self.view) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    self.view.apply(&ev);
                }
                Ok(None) => panic!("{what}: the event stream ended"),
                Err(_) => panic!(
                    "{what}: not reached within {secs} s; view: {:#?}",
                    self.view
                ),
            }
        }
    }
}

pub(crate) fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    let e = r.unwrap_err();
    let f = e.refusal().unwrap_or_else(|| panic!("not a refusal: {e}"));
    (f.code, f.message.clone())
}

fn has(view: &ChatView, ids: &[u64]) -> bool {
    ids.iter().all(|id| view.messages.contains_key(id))
}

/// What every device of ann must end with, in the 1:1 chat with bob.
struct Want1 {
    edited: u64,
    reacted: u64,
    hidden: u64,
    recalled: u64,
    pinned: u64,
    reply: u64,
}

fn converged_1to1(v: &ChatView, w: &Want1) -> bool {
    let Some(e) = v.messages.get(&w.edited) else {
        return false;
    };
    let Some(r) = v.messages.get(&w.reacted) else {
        return false;
    };
    let reply_ok = v
        .messages
        .get(&w.reply)
        .and_then(|m| m.quote.clone())
        .is_some_and(|q| q.msg_id == w.recalled && q.recalled && q.text.is_empty());
    e.text == "hello, bob!"
        && e.edited_ms > 0
        && e.reactions.is_empty()
        && r.reactions.get("🎉") == Some(&2)
        && r.reactions.len() == 1
        && !v.messages.contains_key(&w.hidden)
        && !v.messages.contains_key(&w.recalled)
        && v.pinned(&Conversation::Peer("bob".into())) == [w.pinned]
        && reply_ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_edits_reactions_pins_and_recalls_converge_on_three_devices_one_offline() {
    let ts = TestServer::start().await;
    ts.register(&["ann", "bob"]).await;
    let addr = ts.addr();
    let dir = tempfile::tempdir().unwrap();
    let mut a1 = Device::online(&addr, "ann").await;
    let mut a2 = Device::online(&addr, "ann").await;
    let (c3, e3) = device(&addr, "ann", dir.path()).await;
    let mut a3 = Device {
        client: c3,
        events: e3,
        view: ChatView::new("ann"),
    };
    let mut bob = Device::online(&addr, "bob").await;

    let m1 = a1.client.send_text("bob", "helo").await.unwrap().msg_id;
    let m2 = bob.client.send_text("ann", "hi ann").await.unwrap().msg_id;
    let m3 = a1
        .client
        .send_text("bob", "oops, hide me")
        .await
        .unwrap()
        .msg_id;
    let m4 = bob
        .client
        .send_text("ann", "take me back")
        .await
        .unwrap()
        .msg_id;
    let m5 = a2.client.send_text("bob", "pin me").await.unwrap().msg_id;
    let all = [m1, m2, m3, m4, m5];
    for d in [&mut a1, &mut a2, &mut a3, &mut bob] {
        d.until("the first messages", 10, |v| has(v, &all)).await;
    }
    // The third device goes offline, keeping its view beside its state.
    let view_file = dir.path().join("view.json");
    a3.view.save(&view_file).unwrap();
    a3.client.close().await;
    drop(a3);

    // While it is away: edits (twice, and a retry), reactions (one taken back, one
    // repeated), a reply, a hide, a recall, pins.
    a1.client.edit(m1, "hello").await.unwrap();
    a2.client.edit(m1, "hello, bob!").await.unwrap();
    a2.client.edit(m1, "hello, bob!").await.unwrap();
    bob.client.react(m1, "👍").await.unwrap();
    bob.client.unreact(m1, "👍").await.unwrap();
    a1.client.react(m2, "🎉").await.unwrap();
    a2.client.react(m2, "🎉").await.unwrap();
    bob.client.react(m2, "🎉").await.unwrap();
    let reply = bob.client.reply(m4, "as I said").await.unwrap().msg_id;
    a1.client.hide(&[m3]).await.unwrap();
    bob.client.recall(m4).await.unwrap();
    let peer = Conversation::Peer("bob".into());
    a1.client.pin(&peer, m5).await.unwrap();
    bob.client
        .pin(&Conversation::Peer("ann".into()), m2)
        .await
        .unwrap();
    a2.client.unpin(&peer, m2).await.unwrap();
    let want = Want1 {
        edited: m1,
        reacted: m2,
        hidden: m3,
        recalled: m4,
        pinned: m5,
        reply,
    };
    a1.until("device 1 converges", 10, |v| converged_1to1(v, &want))
        .await;
    a2.until("device 2 converges", 10, |v| converged_1to1(v, &want))
        .await;

    // The server agrees: pins and reactions as the devices show them.
    let pins = a1.client.pins(&peer).await.unwrap();
    assert_eq!(
        pins.iter()
            .map(|p| (p.msg_id, p.by.as_str()))
            .collect::<Vec<_>>(),
        [(m5, "ann")]
    );
    let r = bob.client.reactions(m2, Some("🎉"), 0, 1).await.unwrap();
    assert_eq!(
        (r.counts.len(), r.counts[0].count, r.counts[0].mine),
        (1, 2, true)
    );
    assert_eq!(r.users.len(), 1, "a page of one");
    assert!(r.next_after > 0, "a second page follows");
    let r2 = bob
        .client
        .reactions(m2, Some("🎉"), r.next_after, 10)
        .await
        .unwrap();
    let mut who: BTreeSet<String> = r.users.into_iter().collect();
    who.extend(r2.users);
    assert_eq!(who, ["ann".to_string(), "bob".to_string()].into());
    assert_eq!(r2.next_after, 0);

    // The third device comes back with its view and its synckey, and catches up.
    let (c3, e3) = device(&addr, "ann", dir.path()).await;
    let mut a3 = Device {
        client: c3,
        events: e3,
        view: ChatView::load(&view_file, "ann").unwrap(),
    };
    assert!(!converged_1to1(&a3.view, &want), "it was behind");
    a3.until("device 3 catches up", 15, |v| converged_1to1(v, &want))
        .await;
    assert_eq!(a3.view.messages, a1.view.messages);
    assert_eq!(a3.view.messages, a2.view.messages);
    assert_eq!(a3.view.pins, a1.view.pins);
    // Bob's devices agree on everything but ann's hide (hers only).
    bob.until("bob converges", 10, |v| {
        v.messages.get(&m1).is_some_and(|m| m.text == "hello, bob!")
            && v.pinned(&Conversation::Peer("ann".into())) == [m5]
            && !v.messages.contains_key(&m4)
            && v.messages.contains_key(&reply)
    })
    .await;
    assert!(bob.view.messages.contains_key(&m3), "ann's hide is hers");
    let mut bobs = bob.view.messages.clone();
    bobs.remove(&m3);
    assert_eq!(bobs, a1.view.messages);
    for c in [&a1.client, &a2.client, &a3.client, &bob.client] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_converges_on_three_devices_one_offline_and_a_removed_member_is_refused() {
    let ts = TestServer::start().await;
    ts.register(&["ann", "bob", "cat"]).await;
    let addr = ts.addr();
    let dir = tempfile::tempdir().unwrap();
    let mut a1 = Device::online(&addr, "ann").await;
    let mut a2 = Device::online(&addr, "ann").await;
    let (c3, e3) = device(&addr, "ann", dir.path()).await;
    let mut a3 = Device {
        client: c3,
        events: e3,
        view: ChatView::new("ann"),
    };
    let mut bob = Device::online(&addr, "bob").await;
    let cat = Device::online(&addr, "cat").await;
    let g = a1
        .client
        .account()
        .create_group("crew", &["bob", "cat"], false)
        .await
        .unwrap()
        .group_id;
    let g1 = bob
        .client
        .send_group(g, "hey crew", &[])
        .await
        .unwrap()
        .msg_id;
    let g2 = a1
        .client
        .send_group(g, "hi evrybody", &[])
        .await
        .unwrap()
        .msg_id;
    let g3 = cat
        .client
        .send_group(g, "secret plan", &[])
        .await
        .unwrap()
        .msg_id;
    let g4 = bob.client.send_group(g, "noise", &[]).await.unwrap().msg_id;
    let all = [g1, g2, g3, g4];
    for d in [&mut a1, &mut a2, &mut a3, &mut bob] {
        d.until("the first group messages", 10, |v| has(v, &all))
            .await;
    }
    let view_file = dir.path().join("view.json");
    a3.view.save(&view_file).unwrap();
    a3.client.close().await;
    drop(a3);

    // While the third device is away.
    a2.client.edit(g2, "hi everybody").await.unwrap();
    bob.client.react(g2, "👍").await.unwrap();
    cat.client.react(g2, "👍").await.unwrap();
    cat.client.react(g2, "❤️").await.unwrap();
    cat.client.unreact(g2, "❤️").await.unwrap();
    let reply = bob.client.reply(g3, "what plan?").await.unwrap().msg_id;
    let group = Conversation::Group(g);
    a1.client.pin(&group, g1).await.unwrap();
    // Pinning is the owner's and the admins'.
    let (code, msg) = refused(bob.client.pin(&group, g4).await);
    assert_eq!(code, ErrorCode::PermissionDenied, "{msg}");
    assert!(msg.contains("owner and admins"), "{msg}");
    cat.client.recall(g3).await.unwrap();
    a1.client.hide(&[g4]).await.unwrap();
    let converged = |v: &ChatView| {
        v.messages.get(&g2).is_some_and(|m| {
            m.text == "hi everybody"
                && m.edited_ms > 0
                && m.reactions.get("👍") == Some(&2)
                && m.reactions.len() == 1
        }) && !v.messages.contains_key(&g3)
            && !v.messages.contains_key(&g4)
            && v.pinned(&Conversation::Group(g)) == [g1]
            && v.messages
                .get(&reply)
                .and_then(|m| m.quote.clone())
                .is_some_and(|q| q.msg_id == g3 && q.recalled && q.text.is_empty())
    };
    a1.until("device 1 converges", 10, converged).await;
    a2.until("device 2 converges", 10, converged).await;
    let (c3, e3) = device(&addr, "ann", dir.path()).await;
    let mut a3 = Device {
        client: c3,
        events: e3,
        view: ChatView::load(&view_file, "ann").unwrap(),
    };
    assert!(!converged(&a3.view), "it was behind");
    a3.until("device 3 catches up", 15, converged).await;
    assert_eq!(a3.view.messages, a1.view.messages);
    assert_eq!(a3.view.messages, a2.view.messages);
    assert_eq!(a3.view.pins, a2.view.pins);
    assert_eq!(
        a3.client.pins(&group).await.unwrap()[0].msg_id,
        g1,
        "the server's pins"
    );

    // Cat is removed: the group's messages are out of her reach.
    a1.client
        .account()
        .group_members(g, &["cat"], false)
        .await
        .unwrap();
    for (what, r) in [
        ("react", cat.client.react(g1, "👍").await.map(|_| ())),
        ("pin", cat.client.pin(&group, g1).await.map(|_| ())),
        (
            "reply",
            cat.client.reply(g1, "still here?").await.map(|_| ()),
        ),
        ("edit", cat.client.edit(g1, "x").await.map(|_| ())),
    ] {
        let (code, msg) = refused(r);
        assert_eq!(code, ErrorCode::NotFound, "{what}: {msg}");
    }
    for c in [&a1.client, &a2.client, &a3.client, &bob.client, &cat.client] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_for_recalled_foreign_unknown_others_and_late_messages() {
    let ts = TestServer::with(|c| c.logic.edit_window_secs = 2).await;
    ts.register(&["ann", "bob", "eve"]).await;
    let addr = ts.addr();
    let (ann, _ae) = connect(&addr, "ann").await;
    let (bob, _be) = connect(&addr, "bob").await;
    let (eve, _ee) = connect(&addr, "eve").await;
    let peer = Conversation::Peer("bob".into());

    // Recalled: each operation says so.
    let gone = ann.send_text("bob", "soon gone").await.unwrap().msg_id;
    ann.recall(gone).await.unwrap();
    for (what, r) in [
        ("edit", ann.edit(gone, "x").await.map(|_| ())),
        ("react", ann.react(gone, "👍").await.map(|_| ())),
        ("pin", ann.pin(&peer, gone).await.map(|_| ())),
        ("reply", ann.reply(gone, "re").await.map(|_| ())),
        ("hide", ann.hide(&[gone]).await.map(|_| ())),
    ] {
        let (code, msg) = refused(r);
        assert_eq!(code, ErrorCode::NotFound, "{what}: {msg}");
        assert!(msg.contains("recalled"), "{what}: {msg}");
    }

    // Foreign (eve is not in ann and bob's chat) and unknown: NOT_FOUND, the same words.
    let m = ann.send_text("bob", "between us").await.unwrap().msg_id;
    let unknown = m + 1_000_000;
    for id in [m, unknown] {
        for (what, r) in [
            ("edit", eve.edit(id, "x").await.map(|_| ())),
            ("react", eve.react(id, "👍").await.map(|_| ())),
            (
                "pin",
                eve.pin(&Conversation::Peer("ann".into()), id)
                    .await
                    .map(|_| ()),
            ),
            ("reply", eve.reply(id, "re").await.map(|_| ())),
            ("hide", eve.hide(&[id]).await.map(|_| ())),
            ("reactions", eve.reactions(id, None, 0, 0).await.map(|_| ())),
        ] {
            let (code, msg) = refused(r);
            assert_eq!(code, ErrorCode::NotFound, "{what} {id}: {msg}");
            assert_eq!(msg, "no such message", "{what} {id}");
        }
    }
    // A message of this chat pinned in another: not there.
    let (code, _) = refused(ann.pin(&Conversation::Peer("eve".into()), m).await);
    assert_eq!(code, ErrorCode::NotFound);

    // Someone else's message: PERMISSION_DENIED.
    let (code, msg) = refused(bob.edit(m, "mine now").await);
    assert_eq!(code, ErrorCode::PermissionDenied);
    assert!(msg.contains("only the sender"), "{msg}");
    // Bad input: an empty text, a bad emoji, too many at once.
    let (code, _) = refused(ann.edit(m, "").await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    let (code, _) = refused(ann.edit(m, &"x".repeat(9000)).await);
    assert_eq!(code, ErrorCode::TooLarge);
    let (code, _) = refused(ann.react(m, "a b").await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    let (code, _) = refused(ann.hide(&vec![m; 101]).await);
    assert_eq!(code, ErrorCode::TooLarge);
    // Twenty reactions per user and message, not one more.
    for i in 0..20 {
        bob.react(m, &format!("e{i}")).await.unwrap();
    }
    let (code, msg) = refused(bob.react(m, "e20").await);
    assert_eq!(code, ErrorCode::TooLarge, "{msg}");
    bob.react(m, "e3").await.unwrap();

    // Within the window an edit goes through; past it, refused with the reason.
    ann.edit(m, "between us two").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let (code, msg) = refused(ann.edit(m, "too late?").await);
    assert_eq!(code, ErrorCode::PermissionDenied);
    assert!(msg.contains("too late to edit"), "{msg}");
    for c in [&ann, &bob, &eve] {
        c.close().await;
    }
}
