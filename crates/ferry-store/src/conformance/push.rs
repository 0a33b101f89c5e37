//! Conformance: [`PushStore`](crate::PushStore) — push targets, conversation settings,
//! and the coalescing push queue with its leases.
//!
//! Queue times (`due_ms`, `now_ms`, leases) are made-up small numbers: the store takes
//! them as given. Only `registered_ms` comes from the store's clock.

use std::collections::HashSet;
use std::sync::Arc;

use super::{friend_event, new_msg};
use crate::prelude::*;
use crate::{NewEvent, PushDone, PushEnqueue, PushJob, PushPrefRow, PushTargetRow, StoreError};

fn target(user: u64, device: &str, provider: &str) -> PushTargetRow {
    PushTargetRow {
        user_id: user,
        device_id: device.into(),
        provider: provider.into(),
        token: format!("tok-{device}"),
        endpoint: "https://push.example/e".into(),
        p256dh: "p256".into(),
        auth: "auth".into(),
        app_id: "app".into(),
        sandbox: true,
        locale: "de-CH".into(),
        preview: 2,
        dnd_start_min: 1_380,
        dnd_end_min: 420,
        utc_offset_min: -300,
        // Set by the store; these are ignored.
        registered_ms: 42,
        pushed_seq: 99,
        quiet_until_ms: 77,
    }
}

fn entry(user: u64, device: &str, seq: u64, summary: &str, due: i64, created: i64) -> PushEnqueue {
    PushEnqueue {
        user_id: user,
        device_id: device.into(),
        seq,
        summary: summary.as_bytes().to_vec(),
        due_ms: due,
        created_ms: created,
    }
}

fn done(job: &PushJob, quiet_until_ms: i64) -> PushDone {
    PushDone::Done {
        user_id: job.target.user_id,
        device_id: job.target.device_id.clone(),
        version: job.version,
        seq: job.seq,
        claimed_count: job.count,
        quiet_until_ms,
    }
}

fn retry(job: &PushJob, due_ms: i64) -> PushDone {
    PushDone::Retry {
        user_id: job.target.user_id,
        device_id: job.target.device_id.clone(),
        due_ms,
    }
}

fn summary(job: &PushJob) -> &str {
    std::str::from_utf8(&job.summary).unwrap()
}

fn devices(jobs: &[PushJob]) -> Vec<&str> {
    jobs.iter().map(|j| j.target.device_id.as_str()).collect()
}

pub async fn targets_are_registered_replaced_and_deleted(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    store
        .append_message(new_msg((b, "bob"), (a, "alice"), 1, "one"))
        .await
        .unwrap();

    // A new registration: the store sets its version and starts it at the newest seq.
    let first = store
        .put_push_target(target(a, "d1", "apns"))
        .await
        .unwrap();
    assert!(first.registered_ms > 1_000_000, "{first:?}");
    assert_eq!((first.pushed_seq, first.quiet_until_ms), (1, 0));
    let expect = PushTargetRow {
        registered_ms: first.registered_ms,
        pushed_seq: 1,
        quiet_until_ms: 0,
        ..target(a, "d1", "apns")
    };
    assert_eq!(first, expect);
    assert_eq!(store.push_targets(a).await.unwrap(), [expect]);

    // Replaced (new token) after another message: a newer version, even within the same
    // millisecond, and the same pushed_seq.
    store
        .append_message(new_msg((b, "bob"), (a, "alice"), 2, "two"))
        .await
        .unwrap();
    let second = store
        .put_push_target(PushTargetRow {
            token: "new".into(),
            preview: 0,
            ..target(a, "d1", "apns")
        })
        .await
        .unwrap();
    assert!(second.registered_ms > first.registered_ms);
    assert_eq!((second.token.as_str(), second.pushed_seq), ("new", 1));
    assert_eq!(
        store.push_targets(a).await.unwrap(),
        std::slice::from_ref(&second)
    );
    let third = store.put_push_target(second.clone()).await.unwrap();
    assert!(third.registered_ms > second.registered_ms);

    // Another device starts at the newest seq now.
    let d2 = store.put_push_target(target(a, "d2", "fcm")).await.unwrap();
    assert_eq!(d2.pushed_seq, 2);
    assert_eq!(
        store
            .push_targets(a)
            .await
            .unwrap()
            .iter()
            .map(|t| t.device_id.as_str())
            .collect::<Vec<_>>(),
        ["d1", "d2"]
    );
    store.put_push_target(target(b, "b1", "fcm")).await.unwrap();
    assert_eq!(
        store.push_target_counts().await.unwrap(),
        [("apns".to_string(), 1), ("fcm".to_string(), 2)]
    );

    // Unknown user.
    assert!(matches!(
        store.put_push_target(target(999, "x", "apns")).await,
        Err(StoreError::UnknownUser(999))
    ));

    // pushed_seq only grows.
    store.set_pushed_seq(a, "d2", 7).await.unwrap();
    store.set_pushed_seq(a, "d2", 3).await.unwrap();
    let now = store.push_targets(a).await.unwrap();
    assert_eq!(now[1].pushed_seq, 7);

    // A provider's "gone" for an older registration leaves the newer one.
    assert!(!store
        .delete_push_target_if(a, "d1", first.registered_ms)
        .await
        .unwrap());
    assert_eq!(store.push_targets(a).await.unwrap().len(), 2);
    // The current one goes, with its queue row.
    store
        .enqueue_pushes(vec![entry(a, "d1", 3, "x", 10, 10)])
        .await
        .unwrap();
    assert!(store
        .delete_push_target_if(a, "d1", third.registered_ms)
        .await
        .unwrap());
    assert_eq!(store.push_targets(a).await.unwrap().len(), 1);
    assert_eq!(store.push_queue_stats(100).await.unwrap().0, 0);

    // Deleting one device, then all of a user's (with their queue rows).
    store
        .enqueue_pushes(vec![entry(a, "d2", 3, "x", 10, 10)])
        .await
        .unwrap();
    assert!(store.delete_push_target(a, "d2").await.unwrap());
    assert!(!store.delete_push_target(a, "d2").await.unwrap());
    assert_eq!(store.push_queue_stats(100).await.unwrap().0, 0);
    store
        .put_push_target(target(b, "b2", "apns"))
        .await
        .unwrap();
    store
        .enqueue_pushes(vec![
            entry(b, "b1", 1, "x", 10, 10),
            entry(b, "b2", 1, "x", 10, 10),
        ])
        .await
        .unwrap();
    assert_eq!(store.push_queue_stats(100).await.unwrap().0, 2);
    assert_eq!(store.delete_push_targets(b).await.unwrap(), 2);
    assert_eq!(store.delete_push_targets(b).await.unwrap(), 0);
    assert_eq!(store.push_queue_stats(100).await.unwrap().0, 0);
    assert!(store.push_target_counts().await.unwrap().is_empty());
}

pub async fn targets_since_page_in_registration_order(store: Arc<dyn Store>) {
    let mut users = Vec::new();
    for name in ["u1", "u2", "u3"] {
        users.push(store.create_user(name, "h").await.unwrap());
    }
    // Many registrations within the same few milliseconds.
    for &u in &users {
        for d in ["a", "b", "c"] {
            store.put_push_target(target(u, d, "fcm")).await.unwrap();
        }
    }
    let key = |t: &PushTargetRow| (t.registered_ms, t.user_id, t.device_id.clone());
    let page_all = |since: i64, limit: u32| {
        let store = store.clone();
        async move {
            let mut all: Vec<PushTargetRow> = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .push_targets_since(since, after.clone(), limit)
                    .await
                    .unwrap();
                assert!(page.len() <= limit as usize);
                let Some(last) = page.last() else { break };
                after = Some(key(last));
                all.extend(page);
            }
            all
        }
    };
    let all = page_all(0, 2).await;
    assert_eq!(all.len(), 9);
    let keys: Vec<_> = all.iter().map(key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        keys, sorted,
        "in (registered_ms, user, device) order, once each"
    );
    assert_eq!(page_all(0, 100).await, all);

    // A registration again moves the target to the end, with a newer version.
    let again = store
        .put_push_target(target(users[0], "a", "apns"))
        .await
        .unwrap();
    let since = page_all(again.registered_ms, 2).await;
    assert!(since.contains(&again), "{since:?}");
    assert!(since.iter().all(|t| t.registered_ms >= again.registered_ms));
    let now_all = page_all(0, 3).await;
    assert_eq!(now_all.len(), 9);
    let mine: Vec<_> = now_all
        .iter()
        .filter(|t| t.user_id == users[0] && t.device_id == "a")
        .collect();
    assert_eq!(mine, [&again]);
    assert!(page_all(again.registered_ms + 1, 2).await.is_empty());
    assert!(store
        .push_targets_since(0, None, 0)
        .await
        .unwrap()
        .is_empty());
}

pub async fn prefs_are_set_removed_and_expire(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let (b, c) = (store.create_user("bob", "h").await.unwrap(), 50);
    let pref = |peer, group_id, mode, until_ms| PushPrefRow {
        // Ignored: the user is the call's.
        user_id: 999,
        peer,
        group_id,
        mode,
        until_ms,
    };
    let rows = |v: Vec<PushPrefRow>| {
        v.iter()
            .map(|p| (p.user_id, p.peer, p.group_id, p.mode, p.until_ms))
            .collect::<Vec<_>>()
    };
    store
        .set_push_prefs(
            a,
            vec![pref(b, 0, 1, 0), pref(0, 7, 2, 5_000), pref(c, 0, 3, 0)],
        )
        .await
        .unwrap();
    assert_eq!(
        rows(store.push_prefs(a, 1_000).await.unwrap()),
        [(a, 0, 7, 2, 5_000), (a, b, 0, 1, 0), (a, c, 0, 3, 0)]
    );
    // Expired ones are left out.
    assert_eq!(
        rows(store.push_prefs(a, 5_000).await.unwrap()),
        [(a, b, 0, 1, 0), (a, c, 0, 3, 0)]
    );
    // Mode 0 removes; another mode replaces.
    store
        .set_push_prefs(a, vec![pref(b, 0, 0, 0), pref(c, 0, 1, 9_000)])
        .await
        .unwrap();
    assert_eq!(
        rows(store.push_prefs(a, 1_000).await.unwrap()),
        [(a, 0, 7, 2, 5_000), (a, c, 0, 1, 9_000)]
    );
    // Removing a setting that is not there is fine; another user's are their own.
    store
        .set_push_prefs(a, vec![pref(b, 0, 0, 0)])
        .await
        .unwrap();
    assert!(store.push_prefs(b, 1_000).await.unwrap().is_empty());
    store.set_push_prefs(b, vec![]).await.unwrap();
}

pub async fn entries_coalesce_into_one_row_per_device(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    store
        .put_push_target(target(a, "d1", "apns"))
        .await
        .unwrap();
    store.put_push_target(target(a, "d2", "fcm")).await.unwrap();
    store.put_push_target(target(a, "g", "fcm")).await.unwrap();

    // Devices without a target get nothing.
    assert_eq!(
        store
            .enqueue_pushes(vec![
                entry(a, "nodevice", 1, "x", 10, 1),
                entry(b, "d1", 1, "x", 10, 1),
            ])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.enqueue_pushes(vec![]).await.unwrap(), 0);
    assert_eq!(store.push_queue_stats(1_000).await.unwrap(), (0, 0, 0));

    // Three calls: one row, count 3, the highest seq's summary, the first's due and
    // created time (a later due time does not move it, nor an earlier one).
    for e in [
        entry(a, "d1", 3, "s3", 100, 10),
        entry(a, "d1", 5, "s5", 200, 20),
        entry(a, "d1", 4, "s4", 50, 30),
    ] {
        assert_eq!(store.enqueue_pushes(vec![e]).await.unwrap(), 1);
    }
    // The same in one call, mixed with an entry without a target.
    assert_eq!(
        store
            .enqueue_pushes(vec![
                entry(a, "d2", 3, "s3", 100, 10),
                entry(b, "x", 9, "x", 1, 1),
                entry(a, "d2", 5, "s5", 200, 20),
                entry(a, "d2", 4, "s4", 50, 30),
            ])
            .await
            .unwrap(),
        3
    );
    // Seq ties (entries outside the inbox): the later entry's summary.
    store
        .enqueue_pushes(vec![entry(a, "g", 0, "g1", 300, 40)])
        .await
        .unwrap();
    store
        .enqueue_pushes(vec![
            entry(a, "g", 0, "g2", 300, 50),
            entry(a, "g", 0, "g3", 1, 60),
        ])
        .await
        .unwrap();
    assert_eq!(store.push_queue_stats(150).await.unwrap(), (3, 2, 0));
    assert_eq!(store.push_queue_stats(99).await.unwrap(), (3, 0, 0));

    let jobs = store.claim_pushes("n1", 1_000, 10_000, 10).await.unwrap();
    assert_eq!(devices(&jobs), ["d1", "d2", "g"], "oldest due first");
    for j in &jobs[..2] {
        assert_eq!(
            (
                j.seq,
                j.count,
                summary(j),
                j.due_ms,
                j.created_ms,
                j.attempts
            ),
            (5, 3, "s5", 100, 10, 0),
            "{}",
            j.target.device_id
        );
    }
    let g = &jobs[2];
    assert_eq!(
        (g.seq, g.count, summary(g), g.due_ms, g.created_ms),
        (0, 3, "g3", 300, 40)
    );
    // The job carries the target as stored.
    assert_eq!(jobs[0].target, store.push_targets(a).await.unwrap()[0]);
}

pub async fn new_rows_wait_for_the_quiet_window(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    for i in 1..=3 {
        store
            .append_message(new_msg((b, "bob"), (a, "alice"), i, "hi"))
            .await
            .unwrap();
    }
    let t = store.put_push_target(target(a, "d", "apns")).await.unwrap();
    assert_eq!(t.pushed_seq, 3);
    store
        .enqueue_pushes(vec![entry(a, "d", 5, "s5", 100, 10)])
        .await
        .unwrap();
    let jobs = store.claim_pushes("n1", 100, 1_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    // Pushed: no push before 10 000.
    assert_eq!(
        store
            .finish_pushes("n1", 150, vec![done(&jobs[0], 10_000)])
            .await
            .unwrap(),
        1
    );
    let t = &store.push_targets(a).await.unwrap()[0];
    assert_eq!((t.pushed_seq, t.quiet_until_ms), (5, 10_000));
    assert_eq!(store.push_queue_stats(150).await.unwrap(), (0, 0, 0));

    // A new row made within the window is due when it ends; one due later stays later.
    store
        .enqueue_pushes(vec![entry(a, "d", 6, "s6", 200, 200)])
        .await
        .unwrap();
    assert!(store
        .claim_pushes("n1", 9_999, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    let jobs = store.claim_pushes("n1", 10_000, 1_000, 10).await.unwrap();
    assert_eq!((jobs[0].due_ms, jobs[0].seq), (10_000, 6));
    store
        .finish_pushes("n1", 10_000, vec![done(&jobs[0], 10_000)])
        .await
        .unwrap();
    store
        .enqueue_pushes(vec![entry(a, "d", 7, "s7", 20_000, 200)])
        .await
        .unwrap();
    assert!(store
        .claim_pushes("n1", 19_999, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.claim_pushes("n1", 20_000, 1_000, 10).await.unwrap()[0].due_ms,
        20_000
    );
    // A replaced registration keeps its quiet window and pushed_seq.
    let t = store.put_push_target(target(a, "d", "fcm")).await.unwrap();
    assert_eq!((t.pushed_seq, t.quiet_until_ms), (6, 10_000));
}

pub async fn claims_respect_due_time_and_leases(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    for (d, due) in [("d100", 100), ("d200", 200), ("d300", 300)] {
        store.put_push_target(target(a, d, "fcm")).await.unwrap();
        store
            .enqueue_pushes(vec![entry(a, d, 1, d, due, 1)])
            .await
            .unwrap();
    }
    assert!(store
        .claim_pushes("n1", 99, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_pushes("n1", 1_000, 1_000, 0)
        .await
        .unwrap()
        .is_empty());
    let first = store.claim_pushes("n1", 150, 1_000, 10).await.unwrap();
    assert_eq!(devices(&first), ["d100"]);
    assert_eq!(first[0].due_ms, 100, "the due time before the claim");
    // Leased until 1 150: not for another claimer, nor for the same one.
    assert_eq!(
        devices(&store.claim_pushes("n2", 250, 1_000, 10).await.unwrap()),
        ["d200"]
    );
    assert_eq!(
        devices(&store.claim_pushes("n1", 1_000, 1_000, 1).await.unwrap()),
        ["d300"]
    );
    assert!(store
        .claim_pushes("n2", 1_100, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.push_queue_stats(1_100).await.unwrap(), (3, 0, 3));

    // The first lease ran out: another node claims the row, and the first node's finish
    // (it was merely slow) is then ignored — as is a retry.
    let again = store.claim_pushes("n2", 1_150, 1_000, 10).await.unwrap();
    assert_eq!(devices(&again), ["d100"]);
    assert_eq!(again[0].version, first[0].version);
    assert_eq!(
        store
            .finish_pushes("n1", 1_160, vec![done(&first[0], 0), retry(&first[0], 5)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.push_queue_stats(1_160).await.unwrap(), (3, 0, 3));
    let t = &store.push_targets(a).await.unwrap()[0];
    assert_eq!(
        t.quiet_until_ms, 0,
        "an ignored finish leaves the target alone"
    );
    assert_eq!(
        store
            .finish_pushes("n2", 1_170, vec![done(&again[0], 0)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.push_queue_stats(1_170).await.unwrap(), (2, 0, 2));
    // Finishing twice: the row is gone, nothing applies.
    assert_eq!(
        store
            .finish_pushes("n2", 1_170, vec![done(&again[0], 0)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.push_queue_stats(5_000).await.unwrap(), (2, 2, 0));
}

pub async fn concurrent_claimers_never_share_a_row(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let mut entries = Vec::new();
    for i in 0..60 {
        let (u, d) = (if i % 2 == 0 { a } else { b }, format!("d{i:02}"));
        store.put_push_target(target(u, &d, "fcm")).await.unwrap();
        entries.push(entry(u, &d, 1, "x", i, 1));
    }
    assert_eq!(store.enqueue_pushes(entries).await.unwrap(), 60);
    let mut tasks = Vec::new();
    for n in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("node{n}");
            let mut got = Vec::new();
            // Bounded: a store that handed rows out again would otherwise never run dry.
            for _ in 0..30 {
                let jobs = store.claim_pushes(&owner, 1_000, 60_000, 3).await.unwrap();
                if jobs.is_empty() {
                    break;
                }
                got.extend(
                    jobs.into_iter()
                        .map(|j| (j.target.user_id, j.target.device_id)),
                );
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for key in t.await.unwrap() {
            assert!(seen.insert(key.clone()), "claimed twice: {key:?}");
        }
    }
    assert_eq!(seen.len(), 60);
    assert_eq!(store.push_queue_stats(1_000).await.unwrap(), (60, 0, 60));
}

pub async fn finishing_keeps_what_was_queued_after_the_claim(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let t = store.put_push_target(target(a, "d", "apns")).await.unwrap();
    assert_eq!(t.pushed_seq, 0);
    store
        .enqueue_pushes(vec![
            entry(a, "d", 1, "s1", 100, 10),
            entry(a, "d", 2, "s2", 100, 11),
        ])
        .await
        .unwrap();
    let claimed = store.claim_pushes("n1", 100, 1_000, 10).await.unwrap();
    assert_eq!((claimed[0].count, claimed[0].seq), (2, 2));

    // Queued while the push is being sent: the row stays leased.
    store
        .enqueue_pushes(vec![entry(a, "d", 3, "s3", 150, 77)])
        .await
        .unwrap();
    assert_eq!(store.push_queue_stats(200).await.unwrap(), (1, 0, 1));
    assert!(store
        .claim_pushes("n2", 200, 1_000, 10)
        .await
        .unwrap()
        .is_empty());

    // Done with what was claimed: the rest stays, due after the quiet window.
    assert_eq!(
        store
            .finish_pushes("n1", 300, vec![done(&claimed[0], 5_000)])
            .await
            .unwrap(),
        1
    );
    let t = &store.push_targets(a).await.unwrap()[0];
    assert_eq!((t.pushed_seq, t.quiet_until_ms), (2, 5_000));
    assert_eq!(store.push_queue_stats(300).await.unwrap(), (1, 0, 0));
    assert!(store
        .claim_pushes("n2", 4_999, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    let rest = store.claim_pushes("n2", 5_000, 1_000, 10).await.unwrap();
    assert_eq!(
        (
            rest[0].count,
            rest[0].seq,
            summary(&rest[0]),
            rest[0].created_ms,
            rest[0].due_ms,
            rest[0].attempts
        ),
        (1, 3, "s3", 77, 5_000, 0)
    );
    assert_ne!(rest[0].version, claimed[0].version);

    // The rest done with a quiet window already over: nothing queued since, so the row
    // goes; pushed_seq only grows.
    store.set_pushed_seq(a, "d", 10).await.unwrap();
    assert_eq!(
        store
            .finish_pushes("n2", 6_000, vec![done(&rest[0], 0)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.push_queue_stats(6_000).await.unwrap(), (0, 0, 0));
    let t = &store.push_targets(a).await.unwrap()[0];
    assert_eq!((t.pushed_seq, t.quiet_until_ms), (10, 0));

    // Queued into after a claim, finished with a quiet window in the past: due now.
    store
        .enqueue_pushes(vec![entry(a, "d", 11, "s11", 7_000, 1)])
        .await
        .unwrap();
    let j = store.claim_pushes("n1", 7_000, 1_000, 10).await.unwrap();
    store
        .enqueue_pushes(vec![entry(a, "d", 12, "s12", 7_000, 1)])
        .await
        .unwrap();
    store
        .finish_pushes("n1", 7_500, vec![done(&j[0], 100)])
        .await
        .unwrap();
    let j = store.claim_pushes("n1", 7_500, 1_000, 10).await.unwrap();
    assert_eq!((j[0].due_ms, j[0].seq, j[0].count), (7_500, 12, 1));
}

pub async fn retries_count_attempts_and_release_the_lease(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    store.put_push_target(target(a, "d", "apns")).await.unwrap();
    store
        .enqueue_pushes(vec![entry(a, "d", 1, "s1", 100, 10)])
        .await
        .unwrap();
    let j = store.claim_pushes("n1", 100, 1_000, 10).await.unwrap();
    // Not the owner: ignored.
    assert_eq!(
        store
            .finish_pushes("n2", 150, vec![retry(&j[0], 120)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .finish_pushes("n1", 150, vec![retry(&j[0], 500)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.push_queue_stats(150).await.unwrap(), (1, 0, 0));
    assert!(store
        .claim_pushes("n2", 499, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    let j = store.claim_pushes("n2", 500, 1_000, 10).await.unwrap();
    assert_eq!((j[0].attempts, j[0].due_ms, j[0].count), (1, 500, 1));
    store
        .finish_pushes("n2", 600, vec![retry(&j[0], 700)])
        .await
        .unwrap();
    let j = store.claim_pushes("n3", 700, 1_000, 10).await.unwrap();
    assert_eq!(j[0].attempts, 2);
    // A retry does not move pushed_seq.
    assert_eq!(store.push_targets(a).await.unwrap()[0].pushed_seq, 0);
}

pub async fn backlog_finds_entries_that_missed_their_push(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    store
        .put_push_target(target(a, "d1", "apns"))
        .await
        .unwrap();
    assert!(store.push_backlog(10).await.unwrap().is_empty());
    for i in 1..=2 {
        store
            .append_message(new_msg((b, "bob"), (a, "alice"), i, "hi"))
            .await
            .unwrap();
    }
    let backlog = |limit| {
        let store = store.clone();
        async move {
            store
                .push_backlog(limit)
                .await
                .unwrap()
                .into_iter()
                .map(|(t, from, to)| (t.user_id, t.device_id, from, to))
                .collect::<Vec<_>>()
        }
    };
    // b's own target: b's entries are its own sends, also in its inbox.
    store.put_push_target(target(b, "b1", "fcm")).await.unwrap();
    assert_eq!(backlog(10).await, [(a, "d1".to_string(), 0, 2)]);

    // The device has synced some (the synckey counts, written or not yet written).
    store.set_synckey(a, "d1", 1).await.unwrap();
    assert_eq!(backlog(10).await, [(a, "d1".to_string(), 1, 2)]);
    store.flush_synckeys().await.unwrap();
    assert_eq!(backlog(10).await, [(a, "d1".to_string(), 1, 2)]);
    store.set_synckey(a, "d1", 2).await.unwrap();
    store.flush_synckeys().await.unwrap();
    assert!(backlog(10).await.is_empty());

    // A device registered now starts at the newest seq; a new entry is then owed to both
    // of alice's devices — and to bob's, whose inbox got his own send (which entries
    // deserve a push is the logic layer's call; it marks the rest checked).
    store.put_push_target(target(a, "d2", "fcm")).await.unwrap();
    assert!(backlog(10).await.is_empty());
    store
        .append_message(new_msg((b, "bob"), (a, "alice"), 3, "hi"))
        .await
        .unwrap();
    assert_eq!(
        backlog(10).await,
        [
            (a, "d1".to_string(), 2, 3),
            (a, "d2".to_string(), 2, 3),
            (b, "b1".to_string(), 2, 3)
        ]
    );
    assert_eq!(backlog(1).await, [(a, "d1".to_string(), 2, 3)]);
    assert!(backlog(0).await.is_empty());
    // Queued: not backlog. Checked (pushed_seq): not backlog.
    store
        .enqueue_pushes(vec![entry(a, "d1", 3, "x", 10, 10)])
        .await
        .unwrap();
    store.set_pushed_seq(b, "b1", 3).await.unwrap();
    assert_eq!(backlog(10).await, [(a, "d2".to_string(), 2, 3)]);
    store.set_pushed_seq(a, "d2", 3).await.unwrap();
    assert!(backlog(10).await.is_empty());
}

pub async fn unread_counts_live_messages_from_others_up_to_a_cap(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let mut from_b = Vec::new();
    for i in 1..=4 {
        from_b.push(
            store
                .append_message(new_msg((b, "bob"), (a, "alice"), i, "hi"))
                .await
                .unwrap(),
        );
    }
    // Alice's own message and an event are in her inbox too; neither counts.
    store
        .append_message(new_msg((a, "alice"), (b, "bob"), 1, "me"))
        .await
        .unwrap();
    store
        .append_events(vec![NewEvent {
            user_id: a,
            entry: friend_event("bob", 5),
        }])
        .await
        .unwrap();
    assert_eq!(store.unread_messages(a, 0, 100).await.unwrap(), 4);
    // A recalled message does not count.
    store
        .recall_message(from_b[1].msg_id, None, vec![])
        .await
        .unwrap();
    assert_eq!(store.unread_messages(a, 0, 100).await.unwrap(), 3);
    assert_eq!(store.unread_messages(a, 0, 2).await.unwrap(), 2);
    assert_eq!(store.unread_messages(a, 0, 0).await.unwrap(), 0);
    assert_eq!(
        store
            .unread_messages(a, from_b[2].recipient_seq, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.unread_messages(a, 100, 100).await.unwrap(), 0);
    assert_eq!(store.unread_messages(b, 0, 100).await.unwrap(), 1);
}

/// Entries queued while other nodes claim and finish are each pushed exactly once: the
/// claimed counts of every applied finish add up to the entries queued, and the queue
/// ends empty (a finish keeps exactly what was queued after its claim).
pub async fn no_entry_is_lost_between_enqueue_and_finish(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let a = store.create_user("alice", "h").await.unwrap();
    let devices: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    for d in &devices {
        store.put_push_target(target(a, d, "fcm")).await.unwrap();
    }
    let queued_all = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let mut claimers = Vec::new();
    for n in 0..3 {
        let (store, queued_all, pushed) = (store.clone(), queued_all.clone(), pushed.clone());
        claimers.push(tokio::spawn(async move {
            let owner = format!("node{n}");
            // Bounded, so a store that loses track fails the test instead of hanging it.
            for _ in 0..5_000 {
                let done_queueing = queued_all.load(Ordering::Acquire);
                let jobs = store.claim_pushes(&owner, 1_000, 60_000, 2).await.unwrap();
                if jobs.is_empty() {
                    if done_queueing {
                        return;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                for j in jobs {
                    // One finish per job, to know which applied.
                    if store
                        .finish_pushes(&owner, 1_000, vec![done(&j, 0)])
                        .await
                        .unwrap()
                        == 1
                    {
                        pushed.fetch_add(u64::from(j.count), Ordering::Relaxed);
                    }
                }
            }
            panic!("{owner} never saw the queue run dry");
        }));
    }
    let mut total = 0u64;
    for round in 0..40u64 {
        let batch: Vec<PushEnqueue> = (0..6u64)
            .map(|i| {
                let d = &devices[((round * 7 + i * 3) % 8) as usize];
                entry(a, d, round * 6 + i + 1, "x", 0, 1)
            })
            .collect();
        total += store.enqueue_pushes(batch).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(total, 240);
    queued_all.store(true, Ordering::Release);
    for c in claimers {
        c.await.unwrap();
    }
    assert_eq!(store.push_queue_stats(1_000).await.unwrap(), (0, 0, 0));
    assert_eq!(pushed.load(Ordering::Relaxed), total);
}
