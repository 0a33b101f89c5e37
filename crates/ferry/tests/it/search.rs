//! Search (issue 24) against a real server and SDK clients: each user finds exactly what
//! they may read — their 1:1 messages, both sides, and the messages of the groups they
//! are in — in English, Chinese and Japanese; a stranger finds nothing, a member removed
//! from a group finds what it said while they were in and nothing after, a recalled
//! message is not found; filters, paging
//! and highlights; the admin API's index stats and reindex; an index made by an older
//! build is rebuilt once.

use std::time::{Duration, Instant};

use ferry_client::Account;
use ferry_proto::v1::{self, ErrorCode};
use ferry_testkit::*;

async fn search(
    acc: &Account,
    text: &str,
    tweak: impl FnOnce(&mut v1::SearchReq),
) -> v1::SearchResp {
    let mut req = v1::SearchReq {
        text: text.into(),
        highlight: true,
        ..Default::default()
    };
    tweak(&mut req);
    acc.search(req).await.unwrap()
}

fn texts(r: &v1::SearchResp) -> Vec<String> {
    r.hits
        .iter()
        .map(|h| h.message.as_ref().unwrap().text.clone())
        .collect()
}

/// Searches until `want` hits come back (the index follows the store within about two
/// seconds), for at most 15 s.
async fn until_found(acc: &Account, text: &str, want: usize) -> v1::SearchResp {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = search(acc, text, |_| {}).await;
        if r.hits.len() >= want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index's stats (`GET admin/search`) until `done` holds for them, for at most `secs`:
/// the last answer either way, for the caller's assertions to say what was missing.
async fn stats_until(
    addr: &str,
    admin: &str,
    secs: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, stats) = api_call(addr, "GET", "admin/search", Some(admin), None).await;
        assert_eq!(status, 200, "{stats}");
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_finds_what_they_may_read_in_any_language() {
    let ts = TestServer::start().await;
    ts.register(&["sann", "sbob", "scat", "sdan"]).await;
    let addr = ts.addr();
    let (ann, _ae) = connect(&addr, "sann").await;
    let (bob, _be) = connect(&addr, "sbob").await;
    let (dan, _de) = connect(&addr, "sdan").await;
    let cafe = ann
        .send_text("sbob", "Dinner at Café Lumière tonight?")
        .await
        .unwrap();
    let duck = bob
        .send_text("sann", "明天我们去北京烤鸭店吃饭吧")
        .await
        .unwrap();
    ann.send_text("sdan", "the lumière photos are up")
        .await
        .unwrap();
    let g = ann
        .account()
        .create_group("trip", &["sbob", "sdan"], false)
        .await
        .unwrap()
        .group_id;
    let tokyo = ann
        .send_group(g, "東京駅の改札で待ち合わせしましょう", &[])
        .await
        .unwrap();
    dan.send_group(g, "ok, see you at the lumière exit", &[])
        .await
        .unwrap();
    ann.account()
        .group_members(g, &["sdan"], false)
        .await
        .unwrap();
    ann.send_group(g, "lumière plan without dan", &[])
        .await
        .unwrap();

    let a = &ann.account();
    let b = &bob.account();
    let d = &dan.account();
    let c = account(&addr, "scat").await;
    // Ann reads all four lumière messages: two 1:1 and two in the group.
    let r = until_found(a, "lumiere", 4).await;
    assert_eq!(r.hits.len(), 4, "{:?}", texts(&r));
    assert_eq!(r.total, 4);
    assert_eq!(
        texts(&r)[0],
        "lumière plan without dan",
        "newest first: {:?}",
        texts(&r)
    );
    // The highlight marks the word as written.
    let h = &r.hits[0];
    let marked: Vec<&str> = h
        .ranges
        .iter()
        .map(|x| &h.snippet[x.start as usize..x.end as usize])
        .collect();
    assert_eq!(marked, ["lumière"], "{h:?}");
    // Bob: his 1:1 with ann and both group messages, not ann's 1:1 with dan.
    let r = search(b, "LUMIÈRE", |_| {}).await;
    assert_eq!(r.hits.len(), 3, "{:?}", texts(&r));
    assert!(!texts(&r).contains(&"the lumière photos are up".to_string()));
    // Dan, removed from the group: his 1:1 and what the group said while he was in it —
    // nothing sent after his removal.
    let r = search(d, "lumière", |_| {}).await;
    assert_eq!(
        texts(&r),
        [
            "ok, see you at the lumière exit",
            "the lumière photos are up"
        ]
    );
    assert_eq!(texts(&search(d, "東京", |_| {}).await).len(), 1);
    assert!(search(d, "without", |_| {}).await.hits.is_empty());
    let r = search(d, "", |q| q.group_id = g).await;
    assert_eq!(r.hits.len(), 2, "{:?}", texts(&r));
    // A stranger finds nothing at all.
    for q in ["lumière", "北京", "東京", ""] {
        let r = search(&c, q, |_| {}).await;
        assert!(r.hits.is_empty() && r.total == 0, "{q}: {:?}", texts(&r));
    }

    // Chinese and Japanese, written without spaces.
    assert_eq!(texts(&search(a, "北京烤鸭", |_| {}).await).len(), 1);
    assert_eq!(texts(&search(b, "烤鸭", |_| {}).await).len(), 1);
    let r = search(b, "東京駅", |_| {}).await;
    assert_eq!(r.hits.len(), 1);
    assert_eq!(r.hits[0].message.as_ref().unwrap().msg_id, tokyo.msg_id);
    assert_eq!(r.hits[0].gseq, tokyo.seq);
    assert!(search(b, "大阪", |_| {}).await.hits.is_empty());

    // Filters: the conversation, the sender, the group, the kind.
    let r = search(a, "lumière", |q| q.peer = "sdan".into()).await;
    assert_eq!(texts(&r), ["the lumière photos are up"]);
    let r = search(a, "", |q| q.sender = "sbob".into()).await;
    assert_eq!(texts(&r), ["明天我们去北京烤鸭店吃饭吧"]);
    let r = search(a, "lumière", |q| q.group_id = g).await;
    assert_eq!(r.hits.len(), 2, "{:?}", texts(&r));
    let r = search(a, "lumière", |q| {
        q.kinds = vec![v1::SearchKind::Image as i32]
    })
    .await;
    assert!(r.hits.is_empty());
    // Paging: one at a time, every hit once.
    let mut seen = Vec::new();
    let mut page = String::new();
    for _ in 0..10 {
        let r = search(a, "lumière", |q| {
            q.limit = 1;
            q.page = page.clone();
        })
        .await;
        seen.extend(texts(&r));
        if r.next.is_empty() {
            break;
        }
        page = r.next;
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "no hit twice");

    // A recalled message is not found, at once (every hit is read again from the store).
    ann.recall(cafe.msg_id).await.unwrap();
    let r = search(b, "café", |_| {}).await;
    assert!(r.hits.is_empty(), "{:?}", texts(&r));

    // Deleted for oneself (HIDE): gone from that user's search only.
    bob.hide(&[duck.msg_id]).await.unwrap();
    assert!(search(b, "烤鸭", |_| {}).await.hits.is_empty());
    assert_eq!(search(a, "烤鸭", |_| {}).await.hits.len(), 1);

    // Ann clears her chat with bob for herself (CONV clear): what came before the cut is
    // gone from her search, not from bob's; her other chats keep theirs.
    bob.send_text("sann", "a pelican on the lumière roof")
        .await
        .unwrap();
    assert_eq!(until_found(a, "pelican", 1).await.hits.len(), 1);
    ann.account()
        .conv_set(vec![v1::ConvSet {
            peer: "sbob".into(),
            clear: true,
            ..Default::default()
        }])
        .await
        .unwrap();
    assert!(search(a, "pelican", |_| {}).await.hits.is_empty());
    assert!(search(a, "烤鸭", |_| {}).await.hits.is_empty());
    assert!(texts(&search(a, "lumiere", |_| {}).await)
        .contains(&"the lumière photos are up".to_string()));
    assert_eq!(search(b, "pelican", |_| {}).await.hits.len(), 1);

    // Clear refusals: a group one was never in.
    let err = c
        .search(v1::SearchReq {
            text: "x".into(),
            group_id: g,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    let err = a
        .search(v1::SearchReq {
            peer: "nobody-here".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownUser), "{err}");
    let err = a
        .search(v1::SearchReq {
            text: "x".repeat(2000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    let err = a
        .search(v1::SearchReq {
            text: "lumière".into(),
            page: "not a page".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
}

/// The admin API shows the index and rebuilds it from the store: after a reindex every
/// message is found again, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_is_shown_and_rebuilt_by_the_admin_api() {
    let ts = TestServer::start().await;
    ts.register(&["rann", "rbob"]).await;
    let addr = ts.addr();
    let (ann, _ae) = connect(&addr, "rann").await;
    for i in 0..30 {
        ann.send_text("rbob", &format!("report number {i} is ready"))
            .await
            .unwrap();
    }
    let a = &ann.account();
    let r = until_found(a, "report", 30).await;
    assert_eq!(r.total, 30);
    let admin = admin_token(&ts);
    let (status, stats) = api_call(&addr, "GET", "admin/search", Some(&admin), None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["docs"], 30, "{stats}");
    assert_eq!(stats["building"], false, "{stats}");
    let applied = stats["applied"].as_u64().unwrap();
    let (status, _) = api_call(&addr, "POST", "admin/search/reindex", Some(&admin), None).await;
    assert_eq!(status, 200);
    let (status, _) = api_call(&addr, "POST", "admin/search/reindex", None, None).await;
    assert_eq!(status, 401);
    // Rebuilt: the 30 messages indexed again, and found once each.
    let again = |s: &serde_json::Value| s["applied"].as_u64().unwrap() >= applied + 30;
    let stats = stats_until(&addr, &admin, 15, |s| {
        again(s) && s["docs"] == 30 && s["building"] == false
    })
    .await;
    assert!(again(&stats), "not rebuilt in 15 s: {stats}");
    assert_eq!(stats["docs"], 30, "{stats}");
    assert_eq!(stats["building"], false, "{stats}");
    assert_eq!(until_found(a, "report", 30).await.total, 30);
}

/// An index made before the embedded store took new messages out of its feed (its
/// cursor a position in a feed that named every stored message) is built again once at
/// start, then follows new messages by id: the old messages are found once each, and
/// the ones sent since are found too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_followed_the_old_feed_is_rebuilt_once() {
    let ts = TestServer::start().await;
    ts.register(&["oann", "obob"]).await;
    let (ann, _ae) = connect(&ts.addr(), "oann").await;
    for i in 0..5 {
        ann.send_text("obob", &format!("before upgrade {i}"))
            .await
            .unwrap();
    }
    assert_eq!(until_found(&ann.account(), "before", 5).await.total, 5);
    ann.close().await;
    let TestServer { server, dir } = ts;
    server.shutdown().await;

    // What an older build left behind: its cursor in the old feed.
    let folder = dir.path().join("search");
    let deadline = Instant::now() + Duration::from_secs(5);
    let index = loop {
        match ferry_search::Index::open(&folder, Default::default()) {
            Ok(index) => break index,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    index.apply(Vec::new(), "feed:5").unwrap();
    drop(index);

    let server = ferry::Server::bind(test_config(dir.path())).await.unwrap();
    let ts = TestServer { server, dir };
    let (ann, _ae) = connect(&ts.addr(), "oann").await;
    for i in 0..5 {
        ann.send_text("obob", &format!("after upgrade {i}"))
            .await
            .unwrap();
    }
    let a = ann.account();
    assert_eq!(until_found(&a, "after", 5).await.total, 5);
    assert_eq!(until_found(&a, "before", 5).await.total, 5, "once each");
    // Built (the build's last, empty round moves the cursor on to following by id).
    let admin = admin_token(&ts);
    let stats = stats_until(&ts.addr(), &admin, 5, |s| s["building"] == false).await;
    assert_eq!(stats["docs"], 10, "{stats}");
    assert!(
        stats["cursor"].as_str().unwrap().starts_with("follow:"),
        "{stats}"
    );
    assert_eq!(stats["feed_behind"], 0, "{stats}");
    ann.close().await;
    ts.server.shutdown().await;
}

/// The nice value and scheduling policy of each thread of this process whose name starts
/// with one of `prefixes` (Linux: /proc/self/task/*/stat, fields 19 and 41).
#[cfg(target_os = "linux")]
fn priority_of_threads(prefixes: &[&str]) -> Vec<(String, i64, u32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        // After "(comm) ": state is field 3, nice field 19, policy field 41.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        out.push((
            name.to_string(),
            fields[16].parse().unwrap(),
            fields[38].parse().unwrap(),
        ));
    }
    out
}

/// Indexing must not slow delivery: the feeder, and the index's writer and merge threads
/// it starts, run at the lowest CPU priority (SCHED_IDLE, nice 19); searches do not.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_runs_at_the_lowest_cpu_priority() {
    let ts = TestServer::start().await;
    ts.register(&["nann", "nbob"]).await;
    let (ann, _ae) = connect(&ts.addr(), "nann").await;
    ann.send_text("nbob", "priority check").await.unwrap();
    // Found: the feeder has committed at least once, so tantivy's writer threads exist.
    let r = until_found(&ann.account(), "priority", 1).await;
    assert_eq!(r.hits.len(), 1);
    let threads = priority_of_threads(&[
        "ferry-search",
        "thrd-tantivy",
        "segment_updater",
        "merge_thread",
    ]);
    for want in ["ferry-search", "thrd-tantivy", "segment_updater"] {
        assert!(
            threads.iter().any(|(n, _, _)| n.starts_with(want)),
            "no {want} thread: {threads:?}"
        );
    }
    const SCHED_IDLE: u32 = 5;
    assert!(
        threads
            .iter()
            .all(|&(_, nice, policy)| nice == 19 && policy == SCHED_IDLE),
        "{threads:?}"
    );
    // The runtime's own threads (this test runs on one; they answer searches and carry
    // the send path) are not lowered: they keep the process's nice and policy (its main
    // thread's; the whole suite may run under `nice`).
    let stat_of = |path: &str| {
        let s = std::fs::read_to_string(path).unwrap();
        let f: Vec<String> = s[s.rfind(')').unwrap() + 2..]
            .split(' ')
            .map(str::to_owned)
            .collect();
        (f[16].clone(), f[38].clone(), s)
    };
    let (nice, policy, me) = stat_of("/proc/thread-self/stat");
    let (main_nice, main_policy, _) =
        stat_of(&format!("/proc/self/task/{}/stat", std::process::id()));
    assert_eq!(nice, main_nice, "{me}");
    assert_eq!(policy, main_policy, "{me}");
    assert_eq!(policy, "0", "SCHED_OTHER: {me}");
}
