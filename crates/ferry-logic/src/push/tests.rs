//! The push domain over a real SQLite store, with a recording sender standing in for
//! the provider (the integration tests in crates/ferry use the real senders against
//! `ferry_push::sim`). Each test drives the planner and the worker one round at a time
//! (`plan_pending`, `work_once`), so nothing depends on timers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_push::uuid_like::PushId;
use ferry_push::{Notification, Outcome, Provider, Sender, Target};
use ferry_store::PushEnqueue;

use super::worker::{backoff, in_dnd};
use super::PushService;
use crate::config::LogicConfig;
use crate::core::unix_ms;
use crate::error::LogicError;
use crate::testing::World;

const P256: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

/// A provider that records what it is handed and answers from a script (then
/// `Accepted`).
struct Recorder {
    provider: Provider,
    script: parking_lot::Mutex<VecDeque<Outcome>>,
    sent: parking_lot::Mutex<Vec<(Target, Notification)>>,
}

#[async_trait::async_trait]
impl Sender for Recorder {
    fn provider(&self) -> Provider {
        self.provider
    }
    async fn send(&self, target: &Target, note: &Notification) -> Outcome {
        self.sent.lock().push((target.clone(), note.clone()));
        self.script.lock().pop_front().unwrap_or(Outcome::Accepted)
    }
}

struct Rig {
    w: World,
    web: Arc<Recorder>,
}

impl Rig {
    fn new(cfg: LogicConfig) -> Rig {
        let w = World::new(LogicConfig {
            open_messaging: true,
            limits: crate::limits::LimitsConfig::unlimited(),
            ..cfg
        });
        let web = Arc::new(Recorder {
            provider: Provider::WebPush,
            script: Default::default(),
            sent: Default::default(),
        });
        let apns = Arc::new(Recorder {
            provider: Provider::Apns,
            script: Default::default(),
            sent: Default::default(),
        });
        w.push
            .set_senders([web.clone() as Arc<dyn Sender>, apns as Arc<dyn Sender>]);
        Rig { w, web }
    }

    fn push(&self) -> &PushService {
        &self.w.push
    }

    /// Registers a Web Push target for `device` of `user`.
    async fn register(&self, user: u64, device: &str, t: v1::PushTarget) -> v1::PushListResp {
        let r = self
            .push()
            .register(&req(
                cmd::PUSH_REGISTER,
                user,
                device,
                &v1::PushRegisterReq { target: Some(t) },
            ))
            .await
            .unwrap();
        v1::PushListResp::decode(r.body).unwrap()
    }

    async fn send(&self, from: u64, to: &str, text: &str, id: u64) -> v1::SendAck {
        let m = v1::SendMsg {
            to: to.into(),
            text: text.into(),
            client_msg_id: id,
            ..Default::default()
        };
        let r = self
            .w
            .inbox
            .send(&req(cmd::SEND, from, "d0", &m))
            .await
            .unwrap();
        v1::SendAck::decode(r.body).unwrap()
    }

    /// Plans what the send path handed over, then one worker round; returns what the
    /// provider got in that round.
    async fn round(&self) -> Vec<(Target, Notification)> {
        self.push().plan_pending().await;
        self.push().work_once().await.unwrap();
        std::mem::take(&mut *self.web.sent.lock())
    }

    async fn queue(&self, at_ms: i64) -> (u64, u64, u64) {
        self.w.core.store.push_queue_stats(at_ms).await.unwrap()
    }
}

fn web(preview: v1::PushPreview) -> v1::PushTarget {
    v1::PushTarget {
        provider: v1::PushProvider::Webpush as i32,
        endpoint: "https://push.example.net/wpush/v2/abc".into(),
        p256dh: P256.into(),
        auth: AUTH.into(),
        preview: preview as i32,
        locale: "en".into(),
        ..Default::default()
    }
}

fn req<M: ProtoMessage>(c: u8, user: u64, device: &str, body: &M) -> ferry_bus::BusRequest {
    ferry_bus::BusRequest {
        device_id: device.into(),
        ..crate::testing::req(c, user, body)
    }
}

fn quiet(ms: u64) -> LogicConfig {
    let mut cfg = LogicConfig::default();
    cfg.push.quiet_ms = ms;
    cfg
}

#[tokio::test]
async fn registration_is_checked_listed_and_undone() {
    let r = Rig::new(LogicConfig::default());
    let bob = r.w.user("bob").await;
    let listed = r
        .register(bob, "d1", web(v1::PushPreview::PreviewFull))
        .await;
    assert_eq!(listed.targets.len(), 1);
    let t = &listed.targets[0];
    assert_eq!(
        (t.device_id.as_str(), t.endpoint.as_str()),
        ("d1", "https://push.example.net/wpush/v2/abc")
    );
    assert!(t.created_ms > 0);
    // A provider this server has no sender for: refused, clearly.
    let fcm = v1::PushTarget {
        provider: v1::PushProvider::Fcm as i32,
        token: "tok".into(),
        ..Default::default()
    };
    let e = r
        .push()
        .register(&req(
            cmd::PUSH_REGISTER,
            bob,
            "d2",
            &v1::PushRegisterReq { target: Some(fcm) },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, LogicError::InvalidArgument(m) if m.contains("fcm")),
        "{e}"
    );
    // Malformed: BAD_REQUEST.
    let e = r
        .push()
        .register(&req(
            cmd::PUSH_REGISTER,
            bob,
            "d2",
            &v1::PushRegisterReq { target: None },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), v1::ErrorCode::BadRequest);

    assert_eq!(list(&r, bob).await.len(), 1);
    r.push()
        .unregister(&req(
            cmd::PUSH_UNREGISTER,
            bob,
            "d1",
            &v1::PushUnregisterReq::default(),
        ))
        .await
        .unwrap();
    assert!(list(&r, bob).await.is_empty());
    assert!(!r.push().index.has(bob));
}

#[tokio::test]
async fn an_online_device_gets_no_push_its_offline_sibling_does() {
    let r = Rig::new(quiet(0));
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    r.register(bob, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    r.register(bob, "d2", web(v1::PushPreview::PreviewNone))
        .await;
    r.w.notifier.link_up(bob, "gw", 1, "d1").await;
    r.send(ann, "bob", "hi", 1).await;
    let sent = r.round().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1.collapse_id, super::worker::collapse_id("d2"));
    // Both online: nothing.
    r.w.notifier.link_up(bob, "gw", 2, "d2").await;
    r.send(ann, "bob", "again", 2).await;
    assert!(r.round().await.is_empty());
    // Queued while offline, online by the time it is due: not sent either.
    r.w.notifier.link_down(bob, "gw", 2);
    r.send(ann, "bob", "third", 3).await;
    r.push().plan_pending().await;
    r.w.notifier.link_up(bob, "gw", 3, "d2").await;
    r.push().work_once().await.unwrap();
    assert!(r.web.sent.lock().is_empty());
    assert_eq!(
        r.queue(unix_ms()).await.0,
        0,
        "decided, and gone from the queue"
    );
}

#[tokio::test]
async fn a_burst_is_one_push_then_quiet() {
    let r = Rig::new(quiet(60_000));
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    r.register(bob, "d1", web(v1::PushPreview::PreviewFull))
        .await;
    for i in 1..=200 {
        r.send(ann, "bob", &format!("m{i}"), i).await;
    }
    let newest = r.w.core.store.latest_seq(bob).await.unwrap();
    let sent = r.round().await;
    assert_eq!(sent.len(), 1, "one push for the burst");
    let n = &sent[0].1;
    assert_eq!((n.data.count, n.data.seq), (200, newest));
    assert_eq!(
        (
            n.data.kind.as_str(),
            n.data.from.as_str(),
            n.data.text.as_str()
        ),
        ("message", "ann", "m200")
    );
    assert_eq!(n.id, PushId::new(bob, "d1", newest));
    assert_eq!(n.badge, Some(200));
    assert!(n.urgent);
    let alert = n.alert.as_ref().unwrap();
    assert_eq!((alert.title.as_str(), alert.body.as_str()), ("ann", "m200"));
    // Within the quiet window: queued, not sent.
    r.send(ann, "bob", "later", 201).await;
    assert!(r.round().await.is_empty());
    let now = unix_ms();
    assert_eq!(r.queue(now).await, (1, 0, 0));
    assert_eq!(r.queue(now + 61_000).await.1, 1, "due when the window ends");
    // What the dashboard reads.
    r.push().refresh_gauges().await;
    let stats = r.push().stats();
    assert_eq!((stats.queue, stats.sent, stats.indexed), ((1, 0, 0), 1, 1));
    assert_eq!(stats.targets, vec![("webpush".to_owned(), 1)]);
    assert_eq!(stats.enqueued, 201);
}

#[tokio::test]
async fn a_full_planner_queue_drops_and_counts_never_waits() {
    let r = Rig::new(quiet(0));
    let bob = r.w.user("bob").await;
    r.w.user("ann").await;
    r.register(bob, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    let m = v1::Message {
        from: "ann".into(),
        text: "x".into(),
        time_ms: unix_ms(),
        ..Default::default()
    };
    for seq in 1..=(super::QUEUE as u64 + 10) {
        r.push().message(bob, seq, &m);
    }
    assert_eq!(r.push().stats().dropped, 10, "queue_full");
    let sent = r.round().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.data.count, super::QUEUE as u32);
}

#[tokio::test]
async fn the_badge_counts_what_the_device_has_not_synced() {
    let r = Rig::new(quiet(0));
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    r.register(bob, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    for i in 1..=3 {
        r.send(ann, "bob", "x", i).await;
    }
    let sent = r.round().await;
    assert_eq!(sent[0].1.badge, Some(3));
    // NONE shows only what happened, and nothing of who or what in the data.
    let n = &sent[0].1;
    assert_eq!(n.alert.as_ref().unwrap().title, "3 new messages");
    assert!(n.data.from.is_empty() && n.data.text.is_empty());
    // The device synced up to now; one more arrives: badge 1.
    let seq = r.w.core.store.latest_seq(bob).await.unwrap();
    r.w.core.store.set_synckey(bob, "d1", seq).await.unwrap();
    r.w.core.store.flush_synckeys().await.unwrap();
    r.send(ann, "bob", "y", 4).await;
    let sent = r.round().await;
    assert_eq!(sent[0].1.badge, Some(1));
    // A row the device has synced past by the time it is due: dropped, not sent.
    r.send(ann, "bob", "z", 5).await;
    r.push().plan_pending().await;
    let seq = r.w.core.store.latest_seq(bob).await.unwrap();
    r.w.core.store.set_synckey(bob, "d1", seq).await.unwrap();
    r.w.core.store.flush_synckeys().await.unwrap();
    r.push().work_once().await.unwrap();
    assert!(r.web.sent.lock().is_empty());
}

async fn list(r: &Rig, user: u64) -> Vec<v1::PushTarget> {
    let rq = req(cmd::PUSH_LIST, user, "d1", &v1::Empty {});
    v1::PushListResp::decode(r.push().list(&rq).await.unwrap().body)
        .unwrap()
        .targets
}

async fn gsend(r: &Rig, from: u64, m: v1::SendMsg) {
    r.w.inbox
        .send(&req(cmd::SEND, from, "d0", &m))
        .await
        .unwrap();
}

async fn prefs(
    r: &Rig,
    user: u64,
    set: Vec<v1::ConversationPush>,
) -> Result<v1::PushPrefsResp, LogicError> {
    let resp = r
        .push()
        .prefs(&req(cmd::PUSH_PREFS, user, "d1", &v1::PushPrefsReq { set }))
        .await?;
    Ok(v1::PushPrefsResp::decode(resp.body).unwrap())
}

#[tokio::test]
async fn a_muted_conversation_does_not_push() {
    let r = Rig::new(quiet(0));
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    r.w.user("cat").await;
    r.register(bob, "d1", web(v1::PushPreview::PreviewSender))
        .await;
    let muted = v1::ConversationPush {
        peer: "ann".into(),
        mode: v1::PushMode::Muted as i32,
        ..Default::default()
    };
    let resp = prefs(&r, bob, vec![muted.clone()]).await.unwrap();
    assert_eq!(resp.conversations, vec![muted]);
    r.send(ann, "bob", "psst", 1).await;
    assert!(r.round().await.is_empty(), "muted");
    // Muted until a moment ago: pushes again.
    let ended = v1::ConversationPush {
        peer: "ann".into(),
        mode: v1::PushMode::Muted as i32,
        until_ms: unix_ms() - 1,
        ..Default::default()
    };
    assert!(prefs(&r, bob, vec![ended])
        .await
        .unwrap()
        .conversations
        .is_empty());
    r.send(ann, "bob", "now", 2).await;
    let sent = r.round().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.data.from, "ann");
    assert!(sent[0].1.data.text.is_empty(), "SENDER: who, not what");
    // Bad requests: an unknown peer, a group the caller is not in, both, too many.
    let e = prefs(
        &r,
        bob,
        vec![v1::ConversationPush {
            peer: "nobody".into(),
            ..Default::default()
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), v1::ErrorCode::UnknownUser);
    let e = prefs(
        &r,
        bob,
        vec![v1::ConversationPush {
            group_id: 42,
            ..Default::default()
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), v1::ErrorCode::NotFound);
    let e = prefs(
        &r,
        bob,
        vec![v1::ConversationPush {
            peer: "cat".into(),
            group_id: 42,
            ..Default::default()
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), v1::ErrorCode::BadRequest);
    let many = vec![
        v1::ConversationPush {
            peer: "cat".into(),
            ..Default::default()
        };
        257
    ];
    assert_eq!(
        prefs(&r, bob, many).await.unwrap_err().code(),
        v1::ErrorCode::TooLarge
    );
}

#[tokio::test]
async fn a_large_group_pushes_mentions_only_unless_all() {
    let mut cfg = quiet(0);
    cfg.push.large_group_members = 2;
    let r = Rig::new(cfg);
    let owner = r.w.user("owner").await;
    let (m1, m2) = (r.w.user("m1").await, r.w.user("m2").await);
    let create = v1::GroupCreateReq {
        name: "crew".into(),
        members: vec!["m1".into(), "m2".into()],
        share_history: false,
    };
    let g =
        r.w.groups
            .create(&req(cmd::GROUP_CREATE, owner, "d0", &create))
            .await
            .unwrap();
    let group = v1::GroupResp::decode(g.body)
        .unwrap()
        .group
        .unwrap()
        .group_id;
    r.register(m2, "d1", web(v1::PushPreview::PreviewFull))
        .await;
    let say = |text: &str, id: u64, mentions: Vec<String>| v1::SendMsg {
        group_id: group,
        text: text.into(),
        client_msg_id: id,
        mentions,
        ..Default::default()
    };
    // The group creation is in m2's inbox but is no push; a plain message in a group of
    // 3 > 2 members is none either.
    gsend(&r, m1, say("hello all", 1, vec![])).await;
    assert!(r.round().await.is_empty());
    gsend(&r, m1, say("@m2 look", 2, vec!["m2".into()])).await;
    let sent = r.round().await;
    assert_eq!(sent.len(), 1);
    let n = &sent[0].1;
    assert_eq!(
        (n.data.kind.as_str(), n.data.group_id, n.data.seq),
        ("mention", group, 0)
    );
    assert_eq!(n.alert.as_ref().unwrap().body, "@m2 look");
    // ALL: every message.
    let all = v1::ConversationPush {
        group_id: group,
        mode: v1::PushMode::All as i32,
        ..Default::default()
    };
    prefs(&r, m2, vec![all]).await.unwrap();
    gsend(&r, m1, say("plain", 3, vec![])).await;
    let sent = r.round().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.data.kind, "group");
    // MUTED: not even a mention.
    let muted = v1::ConversationPush {
        group_id: group,
        mode: v1::PushMode::Muted as i32,
        ..Default::default()
    };
    prefs(&r, m2, vec![muted]).await.unwrap();
    gsend(&r, m1, say("@m2 hey", 4, vec!["m2".into()])).await;
    assert!(r.round().await.is_empty());
    // The sender's own devices never hear of their message.
    r.register(m1, "d9", web(v1::PushPreview::PreviewFull))
        .await;
    gsend(&r, m1, say("mine", 5, vec![])).await;
    assert!(r.round().await.is_empty());
}

#[tokio::test]
async fn do_not_disturb_makes_a_push_silent() {
    let r = Rig::new(quiet(0));
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    let minute = (unix_ms() / 60_000 % 1440) as u32;
    let t = v1::PushTarget {
        dnd_start_min: minute,
        dnd_end_min: (minute + 2) % 1440,
        ..web(v1::PushPreview::PreviewFull)
    };
    r.register(bob, "d1", t).await;
    r.send(ann, "bob", "shh", 1).await;
    let sent = r.round().await;
    assert_eq!(sent.len(), 1);
    let n = &sent[0].1;
    assert!(n.alert.is_none() && !n.urgent, "silent: {n:?}");
    assert_eq!(n.badge, Some(1));
    assert_eq!(n.data.text, "shh", "the app still learns what came");
}

#[test]
fn dnd_windows_wrap_past_midnight_in_local_time() {
    let t = |start, end, off| ferry_store::PushTargetRow {
        dnd_start_min: start,
        dnd_end_min: end,
        utc_offset_min: off,
        ..Default::default()
    };
    let at = |h: i64, m: i64| (h * 60 + m) * 60_000;
    assert!(in_dnd(&t(1320, 420, 0), at(23, 0)));
    assert!(in_dnd(&t(1320, 420, 0), at(6, 59)));
    assert!(!in_dnd(&t(1320, 420, 0), at(7, 0)));
    assert!(!in_dnd(&t(600, 600, 0), at(10, 0)), "start == end: off");
    // 22:00 UTC is 00:00 at UTC+2.
    assert!(in_dnd(&t(0, 60, 120), at(22, 30)));
    assert!(!in_dnd(&t(0, 60, 0), at(22, 30)));
}

#[tokio::test]
async fn a_gone_target_is_removed() {
    let r = Rig::new(quiet(0));
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    r.register(bob, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    r.web.script.lock().push_back(Outcome::Gone {
        reason: "410".into(),
    });
    r.send(ann, "bob", "x", 1).await;
    assert_eq!(r.round().await.len(), 1);
    assert!(r.w.core.store.push_targets(bob).await.unwrap().is_empty());
    assert!(!r.push().index.has(bob));
    r.send(ann, "bob", "y", 2).await;
    assert!(r.round().await.is_empty(), "no target, no push");
}

#[tokio::test]
async fn a_retry_honours_retry_after_then_gives_up() {
    let mut cfg = quiet(0);
    cfg.push.max_attempts = 2;
    let r = Rig::new(cfg);
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    r.register(bob, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    r.web.script.lock().push_back(Outcome::Retry {
        after: Some(Duration::from_secs(30)),
        reason: "429".into(),
    });
    r.send(ann, "bob", "x", 1).await;
    let first = r.round().await;
    assert_eq!(first.len(), 1);
    let now = unix_ms();
    assert_eq!(
        r.queue(now + 25_000).await.1,
        0,
        "not due before Retry-After"
    );
    assert_eq!(r.queue(now + 31_000).await.1, 1, "due after it");
    assert_eq!(backoff(0, None), Duration::from_secs(1));
    assert_eq!(backoff(3, None), Duration::from_secs(8));
    assert_eq!(backoff(20, None), Duration::from_secs(300));
    assert_eq!(
        backoff(1, Some(Duration::from_secs(30))),
        Duration::from_secs(30)
    );
    // Without Retry-After: 1 s, then the second attempt (of max_attempts 2) fails too
    // and the push is dropped.
    let cat = r.w.user("cat").await;
    r.register(cat, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    for _ in 0..2 {
        r.web.script.lock().push_back(Outcome::Retry {
            after: None,
            reason: "503".into(),
        });
    }
    r.send(ann, "cat", "y", 2).await;
    assert_eq!(r.round().await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = r.round().await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].1.id,
        first_id_of(&r, cat).await,
        "a retry is the same push"
    );
    assert_eq!(
        r.queue(unix_ms() + 3_600_000).await.1,
        1,
        "only bob's row is left"
    );
    assert_eq!(r.push().stats().failed, 1);
}

/// The id of the push to `user`'s device d1 covering their newest entry.
async fn first_id_of(r: &Rig, user: u64) -> PushId {
    PushId::new(user, "d1", r.w.core.store.latest_seq(user).await.unwrap())
}

#[tokio::test]
async fn an_expired_push_is_dropped() {
    let r = Rig::new(quiet(0));
    let bob = r.w.user("bob").await;
    r.register(bob, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    let now = unix_ms();
    r.w.core
        .store
        .enqueue_pushes(vec![PushEnqueue {
            user_id: bob,
            device_id: "d1".into(),
            seq: 0,
            summary: Vec::new(),
            due_ms: now,
            created_ms: now - 2 * 86_400_000,
        }])
        .await
        .unwrap();
    assert_eq!(r.round().await.len(), 0);
    assert_eq!(r.queue(now).await.0, 0);
    assert_eq!(r.push().stats().dropped, 1);
}

#[tokio::test]
async fn logout_and_password_change_end_targets() {
    let r = Rig::new(quiet(0));
    let bob = r.w.user("bob").await;
    // One device's logout (short link, with its token).
    let token = crate::auth::new_token();
    r.w.core
        .store
        .put_session(crate::auth::token_hash(&token), bob, "d1")
        .await
        .unwrap();
    r.register(bob, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    r.register(bob, "d2", web(v1::PushPreview::PreviewNone))
        .await;
    let logout = ferry_bus::BusRequest {
        user_id: 0,
        token: token.clone(),
        ..req(cmd::LOGOUT, bob, "", &v1::LogoutReq { all_devices: false })
    };
    r.w.accounts.logout(&logout).await.unwrap();
    let left: Vec<String> =
        r.w.core
            .store
            .push_targets(bob)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.device_id)
            .collect();
    assert_eq!(left, ["d2"]);
    // Every device's.
    r.w.accounts
        .logout(&req(
            cmd::LOGOUT,
            bob,
            "d2",
            &v1::LogoutReq { all_devices: true },
        ))
        .await
        .unwrap();
    assert!(r.w.core.store.push_targets(bob).await.unwrap().is_empty());
    assert!(!r.push().index.has(bob));
}

#[tokio::test]
async fn the_reconciler_pushes_an_entry_whose_planning_was_lost() {
    let r = Rig::new(quiet(0));
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    r.register(bob, "d1", web(v1::PushPreview::PreviewFull))
        .await;
    r.register(ann, "d1", web(v1::PushPreview::PreviewFull))
        .await;
    // Stored, never handed to the planner (its node died in between), a while ago.
    let time_ms = unix_ms() - 60_000;
    r.w.core
        .store
        .append_message(ferry_store::NewMessage {
            sender_id: ann,
            recipient_id: bob,
            client_msg_id: 1,
            time_ms,
            message: v1::Message {
                from: "ann".into(),
                to: "bob".into(),
                text: "lost".into(),
                time_ms,
                client_msg_id: 1,
                ..Default::default()
            },
        })
        .await
        .unwrap();
    assert!(r.round().await.is_empty(), "nothing planned");
    assert_eq!(r.push().reconcile().await.unwrap(), 1);
    let sent = r.round().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.data.text, "lost");
    // Pushed: the next round finds nothing.
    assert_eq!(r.push().reconcile().await.unwrap(), 0);
    // The sender's own copy (ann's inbox) deserved no push: marked checked, not queued.
    let seq = r.w.core.store.latest_seq(ann).await.unwrap();
    let t = r.w.core.store.push_targets(ann).await.unwrap();
    assert_eq!(t[0].pushed_seq, seq);
    assert!(r.round().await.is_empty());
}

#[tokio::test]
async fn a_friend_request_pushes_and_a_recall_is_silent() {
    let r = Rig::new(quiet(0));
    let (ann, bob) = (r.w.user("ann").await, r.w.user("bob").await);
    r.register(bob, "d1", web(v1::PushPreview::PreviewSender))
        .await;
    let ask = v1::FriendRequestReq {
        username: "bob".into(),
        greeting: "hi!".into(),
    };
    r.w.friends
        .action(&req(cmd::FRIEND_REQUEST, ann, "d0", &ask))
        .await
        .unwrap();
    let sent = r.round().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].1.data.kind.as_str(), sent[0].1.data.from.as_str()),
        ("friend", "ann")
    );
    let ack = r.send(ann, "bob", "oops", 1).await;
    assert_eq!(r.round().await.len(), 1);
    r.w.inbox
        .recall(&req(
            cmd::RECALL,
            ann,
            "d0",
            &v1::RecallReq { msg_id: ack.msg_id },
        ))
        .await
        .unwrap();
    let sent = r.round().await;
    assert_eq!(sent.len(), 1);
    let n = &sent[0].1;
    assert_eq!(n.data.kind, "recall");
    assert!(n.alert.is_none() && !n.urgent);
}

#[test]
fn a_group_push_id_is_stable_for_a_row_and_differs_from_seq_ids() {
    let job = ferry_store::PushJob {
        target: ferry_store::PushTargetRow {
            user_id: 7,
            device_id: "d".into(),
            ..Default::default()
        },
        seq: 0,
        created_ms: 1_700_000_000_000,
        version: 3,
        ..Default::default()
    };
    let a = super::worker::push_id(&job);
    assert_eq!(a, super::worker::push_id(&job.clone()));
    assert_ne!(
        a,
        super::worker::push_id(&ferry_store::PushJob {
            version: 4,
            ..job.clone()
        })
    );
    assert_ne!(a, PushId::new(7, "d", 3));
    assert!(super::worker::collapse_id("a-very-long-device-id-indeed-0123456789").len() <= 32);
}

#[tokio::test]
async fn an_expired_session_takes_its_target_along() {
    let r = Rig::new(LogicConfig {
        token_ttl_secs: 1,
        ..quiet(0)
    });
    let bob = r.w.user("bob").await;
    let token = crate::auth::new_token();
    r.w.core
        .store
        .put_session(crate::auth::token_hash(&token), bob, "d1")
        .await
        .unwrap();
    r.register(bob, "d1", web(v1::PushPreview::PreviewNone))
        .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(matches!(
        r.w.core.session_row(&token).await,
        Err(LogicError::Unauthorized)
    ));
    assert!(r.w.core.store.push_targets(bob).await.unwrap().is_empty());
}
