//! Conformance: [`HookStore`](crate::HookStore) — webhook endpoints, the outbox (order,
//! idempotent queueing), endpoint leases, dead letters and their redrive.
//!
//! Times (`now_ms`, leases, due times) are made-up small numbers: the store takes them
//! as given. Only `created_ms` of an endpoint comes from the store's clock.

use std::collections::HashSet;
use std::sync::Arc;

use crate::prelude::*;
use crate::{HookEndpoint, HookEvent, HookOutcome};

fn endpoint(url: &str, events: &[&str]) -> HookEndpoint {
    HookEndpoint {
        id: 999,
        url: url.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        description: "crm".into(),
        secret: "s1".into(),
        prev_secret: String::new(),
        prev_secret_until_ms: 0,
        owner_user_id: 0,
        enabled: true,
        created_ms: 5,
        delivered: 7,
        failed: 8,
    }
}

fn event(endpoint: u64, id: &str, created: i64) -> HookEvent {
    HookEvent {
        endpoint_id: endpoint,
        event_id: id.into(),
        event_type: "message.sent".into(),
        payload: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        created_ms: created,
    }
}

async fn head_ids(store: &Arc<dyn Store>, ep: u64) -> Vec<String> {
    store
        .hook_head(ep, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.event_id)
        .collect()
}

pub async fn endpoints_are_created_updated_and_deleted(store: Arc<dyn Store>) {
    let a = store
        .create_hook_endpoint(endpoint(
            "http://127.0.0.1:1/a",
            &["message.sent", "user.registered"],
        ))
        .await
        .unwrap();
    assert_ne!(a.id, 999, "the store picks the id");
    assert!(a.created_ms > 1_000_000, "{a:?}");
    assert_eq!((a.delivered, a.failed), (0, 0));
    assert_eq!(a.events, ["message.sent", "user.registered"]);
    let b = store
        .create_hook_endpoint(HookEndpoint {
            owner_user_id: 42,
            events: vec![],
            ..endpoint("http://127.0.0.1:1/b", &[])
        })
        .await
        .unwrap();
    assert!(b.id > a.id);
    assert_eq!(
        store.hook_endpoints().await.unwrap(),
        [a.clone(), b.clone()]
    );

    // Rotated and disabled.
    let changed = HookEndpoint {
        secret: "s2".into(),
        prev_secret: "s1".into(),
        prev_secret_until_ms: 123,
        enabled: false,
        events: vec!["*".into()],
        ..a.clone()
    };
    assert!(store.update_hook_endpoint(changed.clone()).await.unwrap());
    assert!(!store
        .update_hook_endpoint(HookEndpoint {
            id: b.id + 100,
            ..changed.clone()
        })
        .await
        .unwrap());
    assert_eq!(store.hook_endpoints().await.unwrap()[0], changed);

    // Deleting takes its outbox along.
    store
        .enqueue_hook_events(vec![event(b.id, "e1", 1)])
        .await
        .unwrap();
    assert!(store.delete_hook_endpoint(b.id).await.unwrap());
    assert!(!store.delete_hook_endpoint(b.id).await.unwrap());
    assert!(store.hook_head(b.id, 10).await.unwrap().is_empty());
    assert_eq!(store.hook_endpoints().await.unwrap(), [changed]);
}

pub async fn events_queue_once_in_order_per_endpoint(store: Arc<dyn Store>) {
    let a = store
        .create_hook_endpoint(endpoint("http://127.0.0.1:1/a", &["*"]))
        .await
        .unwrap()
        .id;
    let b = store
        .create_hook_endpoint(endpoint("http://127.0.0.1:1/b", &["*"]))
        .await
        .unwrap()
        .id;
    let n = store
        .enqueue_hook_events(vec![
            event(a, "e1", 10),
            event(b, "e1", 10),
            event(a, "e2", 11),
            event(a, "e1", 12),       // the same event again: ignored
            event(b + 100, "e9", 12), // no such endpoint: ignored
            event(a, "e3", 13),
        ])
        .await
        .unwrap();
    assert_eq!(n, 4);
    // Queued again in a later batch: still once.
    assert_eq!(
        store
            .enqueue_hook_events(vec![event(a, "e2", 20), event(a, "e4", 21)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(head_ids(&store, a).await, ["e1", "e2", "e3", "e4"]);
    assert_eq!(head_ids(&store, b).await, ["e1"]);
    let head = store.hook_head(a, 2).await.unwrap();
    assert_eq!(head.len(), 2);
    assert!(head[0].id < head[1].id);
    assert_eq!(head[0].payload, b"{\"id\":\"e1\"}");
    assert_eq!((head[0].created_ms, head[0].next_due_ms), (10, 10));
    assert_eq!((head[0].attempts, head[0].dead_ms), (0, 0));
    assert_eq!(head[0].event_type, "message.sent");

    // A delivered event is still known: queueing it again is a no-op until pruned.
    let claimed = store.claim_hook_endpoints("n1", 100, 50, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(store
        .finish_hook_delivery("n1", a, head[0].id, HookOutcome::Delivered, 100, 150)
        .await
        .unwrap());
    assert_eq!(
        store
            .enqueue_hook_events(vec![event(a, "e1", 30)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(head_ids(&store, a).await, ["e2", "e3", "e4"]);
    assert_eq!(
        store.prune_hook_deliveries(100).await.unwrap(),
        0,
        "not before"
    );
    assert_eq!(store.prune_hook_deliveries(101).await.unwrap(), 1);
    assert_eq!(
        store
            .enqueue_hook_events(vec![event(a, "e1", 30)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(head_ids(&store, a).await, ["e2", "e3", "e4", "e1"]);
}

pub async fn claims_lease_endpoints_whose_head_is_due(store: Arc<dyn Store>) {
    let a = store
        .create_hook_endpoint(endpoint("http://127.0.0.1:1/a", &["*"]))
        .await
        .unwrap();
    let off = store
        .create_hook_endpoint(HookEndpoint {
            enabled: false,
            ..endpoint("http://127.0.0.1:1/off", &["*"])
        })
        .await
        .unwrap();
    let empty = store
        .create_hook_endpoint(endpoint("http://127.0.0.1:1/empty", &["*"]))
        .await
        .unwrap();
    let _ = empty;
    store
        .enqueue_hook_events(vec![event(a.id, "e1", 100), event(off.id, "x", 10)])
        .await
        .unwrap();
    // Not due yet; a disabled or empty endpoint never.
    assert!(store
        .claim_hook_endpoints("n1", 99, 50, 10)
        .await
        .unwrap()
        .is_empty());
    let got = store.claim_hook_endpoints("n1", 100, 50, 10).await.unwrap();
    assert_eq!(got, std::slice::from_ref(&a));
    // Held: nobody else gets it until the lease runs out.
    assert!(store
        .claim_hook_endpoints("n2", 149, 50, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.claim_hook_endpoints("n2", 150, 50, 10).await.unwrap(),
        std::slice::from_ref(&a)
    );
    // n1 lost it: its finish is refused and changes nothing.
    let head = store.hook_head(a.id, 1).await.unwrap();
    assert!(!store
        .finish_hook_delivery("n1", a.id, head[0].id, HookOutcome::Delivered, 151, 200)
        .await
        .unwrap());
    assert_eq!(head_ids(&store, a.id).await, ["e1"]);
    // Released by its holder only.
    store.release_hook_endpoint("n1", a.id).await.unwrap();
    assert!(store
        .claim_hook_endpoints("n3", 160, 50, 10)
        .await
        .unwrap()
        .is_empty());
    store.release_hook_endpoint("n2", a.id).await.unwrap();
    assert_eq!(
        store
            .claim_hook_endpoints("n3", 160, 50, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Enabled again: the disabled endpoint's head is claimable.
    assert!(store
        .update_hook_endpoint(HookEndpoint {
            enabled: true,
            ..off.clone()
        })
        .await
        .unwrap());
    let got = store.claim_hook_endpoints("n4", 170, 50, 10).await.unwrap();
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [off.id]);
}

pub async fn concurrent_claimers_never_share_an_endpoint(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..20 {
        let e = store
            .create_hook_endpoint(endpoint(&format!("http://127.0.0.1:1/{i}"), &["*"]))
            .await
            .unwrap();
        ids.push(e.id);
    }
    store
        .enqueue_hook_events(ids.iter().map(|&e| event(e, "e", 1)).collect())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                got.extend(
                    store
                        .claim_hook_endpoints(&format!("n{n}"), 10, 1_000, 2)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|e| e.id),
                );
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "an endpoint claimed twice: {all:?}"
    );
    assert_eq!(unique.len(), ids.len(), "every endpoint claimed once");
}

pub async fn outcomes_move_the_head_count_and_keep_the_lease(store: Arc<dyn Store>) {
    let a = store
        .create_hook_endpoint(endpoint("http://127.0.0.1:1/a", &["*"]))
        .await
        .unwrap()
        .id;
    store
        .enqueue_hook_events(vec![
            event(a, "e1", 1),
            event(a, "e2", 2),
            event(a, "e3", 3),
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_hook_endpoints("n", 10, 100, 1)
            .await
            .unwrap()
            .len(),
        1
    );
    let head = store.hook_head(a, 10).await.unwrap();
    // Delivered: the next is the head; the lease is extended (nobody else claims at 150).
    assert!(store
        .finish_hook_delivery("n", a, head[0].id, HookOutcome::Delivered, 20, 200)
        .await
        .unwrap());
    assert!(store
        .claim_hook_endpoints("m", 150, 100, 1)
        .await
        .unwrap()
        .is_empty());
    // Failed: attempts + 1, due later, lease released — not claimable before it is due.
    assert!(store
        .finish_hook_delivery(
            "n",
            a,
            head[1].id,
            HookOutcome::Retry {
                due_ms: 500,
                error: "HTTP 503".into()
            },
            30,
            200
        )
        .await
        .unwrap());
    let now = store.hook_head(a, 10).await.unwrap();
    assert_eq!(now[0].event_id, "e2");
    assert_eq!((now[0].attempts, now[0].next_due_ms), (1, 500));
    assert_eq!(now[0].last_error, "HTTP 503");
    assert!(store
        .claim_hook_endpoints("m", 499, 100, 1)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .claim_hook_endpoints("m", 500, 100, 1)
            .await
            .unwrap()
            .len(),
        1
    );
    // Given up: a dead letter; the head moves on, the lease stays.
    assert!(store
        .finish_hook_delivery(
            "m",
            a,
            head[1].id,
            HookOutcome::Dead {
                error: "timeout".into()
            },
            510,
            600
        )
        .await
        .unwrap());
    assert_eq!(head_ids(&store, a).await, ["e3"]);
    assert!(store
        .claim_hook_endpoints("x", 550, 100, 1)
        .await
        .unwrap()
        .is_empty());
    // The same row again (a repeat): not pending any more, not applied.
    assert!(!store
        .finish_hook_delivery("m", a, head[1].id, HookOutcome::Delivered, 520, 600)
        .await
        .unwrap());
    let stats = store.hook_stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!((s.endpoint_id, s.pending, s.dead), (a, 1, 1));
    assert_eq!((s.delivered, s.failed), (1, 2));
    assert_eq!(s.oldest_pending_ms, 3);
    let ep = &store.hook_endpoints().await.unwrap()[0];
    assert_eq!((ep.delivered, ep.failed), (1, 2));
}

pub async fn dead_letters_are_listed_and_redriven(store: Arc<dyn Store>) {
    let a = store
        .create_hook_endpoint(endpoint("http://127.0.0.1:1/a", &["*"]))
        .await
        .unwrap()
        .id;
    let b = store
        .create_hook_endpoint(endpoint("http://127.0.0.1:1/b", &["*"]))
        .await
        .unwrap()
        .id;
    store
        .enqueue_hook_events(vec![
            event(a, "a1", 1),
            event(a, "a2", 2),
            event(a, "a3", 3),
            event(b, "b1", 1),
        ])
        .await
        .unwrap();
    // Kill a1, a2 and b1.
    let mut now = 10;
    assert_eq!(
        store
            .claim_hook_endpoints("n", now, 100, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    for (ep, n) in [(a, 2), (b, 1)] {
        for d in store.hook_head(ep, n).await.unwrap() {
            now += 1;
            assert!(store
                .finish_hook_delivery(
                    "n",
                    ep,
                    d.id,
                    HookOutcome::Dead {
                        error: "HTTP 500".into()
                    },
                    now,
                    now + 100
                )
                .await
                .unwrap());
        }
        store.release_hook_endpoint("n", ep).await.unwrap();
    }
    let all = store.hook_dead_letters(None, None, 10).await.unwrap();
    let names: Vec<&str> = all.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(names, ["b1", "a2", "a1"], "newest first");
    assert!(all.iter().all(|d| d.dead_ms > 0 && d.attempts == 1));
    assert_eq!(all[0].last_error, "HTTP 500");
    let of_a = store.hook_dead_letters(Some(a), None, 10).await.unwrap();
    assert_eq!(of_a.len(), 2);
    let page = store
        .hook_dead_letters(Some(a), Some(of_a[0].id), 10)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(),
        ["a1"]
    );
    assert_eq!(
        store.hook_dead_letters(None, None, 1).await.unwrap().len(),
        1
    );

    // One redriven: back at the head (its id is older than a3's), attempts reset.
    assert!(store.redrive_hook_dead(of_a[1].id, 50).await.unwrap());
    assert!(
        !store.redrive_hook_dead(of_a[1].id, 50).await.unwrap(),
        "not dead now"
    );
    let head = store.hook_head(a, 10).await.unwrap();
    assert_eq!(
        head.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(),
        ["a1", "a3"]
    );
    assert_eq!(
        (head[0].attempts, head[0].next_due_ms, head[0].dead_ms),
        (0, 50, 0)
    );
    // All of an endpoint.
    assert_eq!(store.redrive_hook_endpoint(a, 60).await.unwrap(), 1);
    assert_eq!(store.redrive_hook_endpoint(a, 60).await.unwrap(), 0);
    assert_eq!(head_ids(&store, a).await, ["a1", "a2", "a3"]);
    let left = store.hook_dead_letters(None, None, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(),
        ["b1"]
    );
}
