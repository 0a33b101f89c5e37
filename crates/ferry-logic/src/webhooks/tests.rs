//! Unit tests of the webhooks domain over the real SQLite store: events queued for the
//! endpoints that hear them (and only those), in order; the outcome of an attempt.

use ferry_proto::{cmd, v1};
use ferry_store::{HookDelivery, HookEndpoint, HookOutcome};
use serde_json::Value;

use super::worker::Attempt;
use super::*;
use crate::config::LogicConfig;
use crate::testing::{req, World};

async fn endpoint(w: &World, events: &[&str]) -> u64 {
    let e = w
        .core
        .store
        .create_hook_endpoint(HookEndpoint {
            url: "http://127.0.0.1:9/hook".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            secret: "s".into(),
            enabled: true,
            ..Default::default()
        })
        .await
        .unwrap();
    e.id
}

async fn refresh(w: &World) {
    let all = w.core.store.hook_endpoints().await.unwrap();
    w.core.hooks.set(all);
}

fn body(d: &HookDelivery) -> Value {
    serde_json::from_slice(&d.payload).unwrap()
}

#[tokio::test]
async fn nothing_is_queued_without_a_subscriber() {
    let w = World::new(LogicConfig {
        open_messaging: true,
        ..Default::default()
    });
    let (a, _b) = (w.user("alice").await, w.user("bob").await);
    assert!(!w.core.hooks.wants("message.sent"));
    let send = v1::SendMsg {
        client_msg_id: 1,
        to: "bob".into(),
        text: "hi".into(),
        ..Default::default()
    };
    w.inbox.send(&req(cmd::SEND, a, &send)).await.unwrap();
    // An endpoint for another type: still nothing for messages.
    let ep = endpoint(&w, &["user.registered"]).await;
    refresh(&w).await;
    assert!(!w.core.hooks.wants("message.sent"));
    let send = v1::SendMsg {
        client_msg_id: 2,
        ..send
    };
    w.inbox.send(&req(cmd::SEND, a, &send)).await.unwrap();
    assert!(w.core.store.hook_head(ep, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn sends_queue_their_event_once_in_order_and_retries_add_nothing() {
    let w = World::new(LogicConfig {
        open_messaging: true,
        ..Default::default()
    });
    let (a, _b) = (w.user("alice").await, w.user("bob").await);
    let all = endpoint(&w, &["*"]).await;
    let msgs = endpoint(&w, &["message.sent"]).await;
    let other = endpoint(&w, &["group.created"]).await;
    refresh(&w).await;
    for i in 1..=5u64 {
        let send = v1::SendMsg {
            client_msg_id: i,
            to: "bob".into(),
            text: format!("m{i}"),
            ..Default::default()
        };
        w.inbox.send(&req(cmd::SEND, a, &send)).await.unwrap();
        // The retry of a SEND (the dedup path): the same event, not queued again.
        w.inbox.send(&req(cmd::SEND, a, &send)).await.unwrap();
    }
    // A batch (a link's send lane): one store write for its events.
    let mut batch = req(cmd::SEND, a, &v1::Empty {});
    batch.batch = (6..=8u64)
        .map(|i| {
            bytes::Bytes::from(ferry_proto::ProtoMessage::encode_to_vec(&v1::SendMsg {
                client_msg_id: i,
                to: "bob".into(),
                text: format!("m{i}"),
                ..Default::default()
            }))
        })
        .collect();
    for r in w.inbox.send_batch(&batch).await {
        r.unwrap();
    }
    for ep in [all, msgs] {
        let head = w.core.store.hook_head(ep, 100).await.unwrap();
        let texts: Vec<String> = head
            .iter()
            .map(|d| {
                body(d)["data"]["message"]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(texts, (1..=8).map(|i| format!("m{i}")).collect::<Vec<_>>());
        let first = body(&head[0]);
        assert_eq!(first["type"], "message.sent");
        assert_eq!(first["v"], 1);
        assert_eq!(first["id"], head[0].event_id);
        assert_eq!(
            first["id"],
            format!("msg-{}", first["data"]["message"]["id"].as_str().unwrap())
        );
        assert_eq!(first["data"]["message"]["from"], "alice");
        assert_eq!(first["data"]["message"]["to"], "bob");
    }
    assert!(w.core.store.hook_head(other, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_attempt_becomes_delivered_retry_or_dead_by_age() {
    let w = World::new(LogicConfig {
        webhooks: WebhookSettings {
            max_age_secs: 60,
            base_backoff_ms: 1_000,
            max_backoff_ms: 8_000,
            ..Default::default()
        },
        ..Default::default()
    });
    let hooks = Webhooks::new(w.core.clone());
    let d = HookDelivery {
        created_ms: 1_000_000,
        attempts: 3,
        ..Default::default()
    };
    assert_eq!(
        hooks.outcome(&d, Attempt::Delivered, 1_000_500),
        HookOutcome::Delivered
    );
    match hooks.outcome(&d, Attempt::Failed("HTTP 500".into()), 1_010_000) {
        HookOutcome::Retry { due_ms, error } => {
            assert_eq!(error, "HTTP 500");
            // 1 s × 2³ = 8 s (the cap), jittered into its upper half.
            assert!((1_014_000..=1_018_000).contains(&due_ms), "{due_ms}");
        }
        o => panic!("{o:?}"),
    }
    // Near the max age: the retry is due at the max age, not after.
    match hooks.outcome(&d, Attempt::Failed("x".into()), 1_058_000) {
        HookOutcome::Retry { due_ms, .. } => assert_eq!(due_ms, 1_060_000),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        hooks.outcome(&d, Attempt::Failed("x".into()), 1_060_000),
        HookOutcome::Dead { error: "x".into() }
    );
}

#[tokio::test]
async fn bot_updates_go_to_the_owner_endpoint_only() {
    let w = World::new(LogicConfig {
        open_messaging: true,
        ..Default::default()
    });
    let (a, bot) = (w.user("alice").await, w.user("echo").await);
    let hooks = Webhooks::new(w.core.clone());
    let (id, secret) = hooks
        .set_owner_endpoint(bot, "http://127.0.0.1:9/bot")
        .await
        .unwrap();
    assert!(secret.starts_with("whsec_"));
    // Setting it again keeps the endpoint and its secret.
    assert_eq!(
        hooks
            .set_owner_endpoint(bot, "http://127.0.0.1:9/bot2")
            .await
            .unwrap(),
        (id, secret)
    );
    assert!(
        !w.core.hooks.wants("message.sent"),
        "not an operator endpoint"
    );
    let send = v1::SendMsg {
        client_msg_id: 1,
        to: "echo".into(),
        text: "ping".into(),
        ..Default::default()
    };
    w.inbox.send(&req(cmd::SEND, a, &send)).await.unwrap();
    let head = w.core.store.hook_head(id, 10).await.unwrap();
    assert_eq!(head.len(), 1);
    let b = body(&head[0]);
    assert_eq!(b["type"], "bot.update");
    assert_eq!(b["data"]["type"], "message");
    assert_eq!(b["data"]["seq"], 1);
    assert_eq!(b["data"]["message"]["text"], "ping");
    assert_eq!(hooks.owner_endpoint(bot).await.unwrap().unwrap().id, id);
    assert!(hooks.owner_endpoint(a).await.unwrap().is_none());
    assert!(hooks.delete_owner_endpoint(bot).await.unwrap());
    assert!(!hooks.delete_owner_endpoint(bot).await.unwrap());
}

#[tokio::test]
async fn admin_handlers_check_rotate_and_hide_secrets() {
    let w = World::new(LogicConfig::default());
    let hooks = Webhooks::new(w.core.clone());
    for (url, events) in [
        ("ftp://x/", vec!["*".to_string()]),
        ("http://127.0.0.1/", vec![]),
        ("http://127.0.0.1/", vec!["message.nope".to_string()]),
    ] {
        let r = hooks
            .create_json(api::CreateReq {
                url: url.into(),
                events,
                description: String::new(),
            })
            .await;
        assert!(matches!(r, Err(LogicError::InvalidArgument(_))), "{r:?}");
    }
    let made = hooks
        .create_json(api::CreateReq {
            url: "http://127.0.0.1:9/h".into(),
            events: vec!["message.sent".into()],
            description: "crm".into(),
        })
        .await
        .unwrap();
    let id = made["id"].as_u64().unwrap();
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(
        w.core.hooks.wants("message.sent"),
        "known at once after a change"
    );
    let listed = hooks.list_json().await.unwrap();
    assert_eq!(listed["webhooks"][0]["id"], id);
    assert!(listed["webhooks"][0].get("secret").is_none());
    assert_eq!(
        listed["webhooks"][0]["previous_secret_valid_until_ms"],
        Value::Null
    );
    let rotated = hooks
        .rotate_json(
            id,
            api::RotateReq {
                grace_secs: Some(60),
            },
        )
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap();
    assert_ne!(new, secret);
    let stored = &w.core.store.hook_endpoints().await.unwrap()[0];
    assert_eq!(
        (stored.secret.as_str(), stored.prev_secret.as_str()),
        (new, secret.as_str())
    );
    assert!(hooks.get_json(id).await.unwrap()["previous_secret_valid_until_ms"].is_i64());
    let patched = hooks
        .patch_json(
            id,
            api::PatchReq {
                enabled: Some(false),
                events: Some(vec!["*".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["events"][0], "*");
    assert!(matches!(
        hooks.get_json(id + 1).await,
        Err(LogicError::NotFound(_))
    ));
    assert!(matches!(
        hooks.redrive_dead_json(12345).await,
        Err(LogicError::NotFound(_))
    ));
    let stats = hooks.stats_json().await.unwrap();
    assert_eq!(stats["endpoints"][0]["pending"], 0);
    hooks.delete(id).await.unwrap();
    assert!(matches!(
        hooks.delete(id).await,
        Err(LogicError::NotFound(_))
    ));
    assert!(!w.core.hooks.wants("message.sent"));
}
