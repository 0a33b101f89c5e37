//! Bots and the before-send hook (issue 23), against a real server and SDK clients: a
//! hook that rejects a word (the sender sees the reason; nothing is stored or delivered),
//! rewrites a text, and hangs (fail-open lets the message through after the deadline,
//! fail-closed holds it until the hook answers again).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_client::ShortLink;
use ferry_logic::BeforeSendConfig;
use ferry_proto::v1::{self, ErrorCode};
use ferry_testkit::*;

/// A before-send hook on 127.0.0.1: rejects texts with "spam", rewrites "darn", and
/// hangs while `hang` is set.
#[derive(Default)]
struct Hook {
    calls: AtomicUsize,
    hang: AtomicBool,
}

async fn answer(
    axum::extract::State(h): axum::extract::State<Arc<Hook>>,
    body: axum::body::Bytes,
) -> ([(&'static str, &'static str); 1], String) {
    h.calls.fetch_add(1, Ordering::SeqCst);
    let env: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let text = env["data"]["text"].as_str().unwrap_or_default().to_owned();
    while h.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = if text.contains("spam") {
        serde_json::json!({"action": "reject", "reason": "no spam, please"})
    } else if text.contains("darn") {
        serde_json::json!({"action": "rewrite", "text": text.replace("darn", "d**n")})
    } else {
        serde_json::json!({"action": "allow"})
    };
    ([("content-type", "application/json")], a.to_string())
}

async fn hook() -> (Arc<Hook>, String) {
    let h = Arc::new(Hook::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(answer))
        .with_state(h.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (h, url)
}

async fn server(url: &str, timeout_ms: u64, fail_open: bool) -> TestServer {
    let url = url.to_owned();
    TestServer::with(move |c| {
        c.logic.before_send = BeforeSendConfig {
            url,
            secret: "s".into(),
            timeout_ms,
            fail_open,
        }
    })
    .await
}

/// The texts of the messages in `user`'s inbox (read over HTTP, as a new device).
async fn stored_texts(ts: &TestServer, user: &str) -> Vec<String> {
    let t = token(&ts.addr(), user, "auditor").await;
    let page = ShortLink::new(&ts.addr())
        .newsync(&t, 0, 100)
        .await
        .unwrap();
    page.entries
        .into_iter()
        .filter_map(|e| match e.kind {
            Some(v1::entry::Kind::Message(m)) => Some(m.text),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_before_hook_rejects_with_its_reason_and_rewrites() {
    let (h, url) = hook().await;
    let ts = server(&url, 2_000, false).await;
    ts.register(&["alice", "bob"]).await;
    let (alice, _ae) = connect(&ts.addr(), "alice").await;
    let (_bob, mut be) = connect(&ts.addr(), "bob").await;
    let e = alice.send_text("bob", "cheap spam here").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e:?}");
    assert!(e.to_string().contains("no spam, please"), "{e}");
    assert_quiet(&mut be, "bob", 500).await;
    assert!(stored_texts(&ts, "bob").await.is_empty(), "nothing stored");
    assert!(stored_texts(&ts, "alice").await.is_empty());
    // A rewrite is what bob gets and what is stored.
    alice.send_text("bob", "oh darn").await.unwrap();
    let got = recv_messages(&mut be, "bob", 1, 5).await;
    assert_eq!(got[0].1.text, "oh d**n");
    assert_eq!(stored_texts(&ts, "bob").await, ["oh d**n"]);
    assert_eq!(h.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_hanging_hook_fails_open_after_its_deadline() {
    let (h, url) = hook().await;
    h.hang.store(true, Ordering::SeqCst);
    let ts = server(&url, 300, true).await;
    ts.register(&["alice", "bob"]).await;
    let (alice, _ae) = connect(&ts.addr(), "alice").await;
    let (_bob, mut be) = connect(&ts.addr(), "bob").await;
    let t = Instant::now();
    alice.send_text("bob", "through").await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        recv_messages(&mut be, "bob", 1, 5).await[0].1.text,
        "through"
    );
    h.hang.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn a_hanging_hook_fails_closed_until_it_answers_again() {
    let (h, url) = hook().await;
    h.hang.store(true, Ordering::SeqCst);
    let ts = server(&url, 300, false).await;
    ts.register(&["alice", "bob"]).await;
    // UNAVAILABLE with a retry delay (ferry-logic's before.rs tests the refusal
    // itself): the SDK retries, and the message goes once the hook answers.
    let (alice, _ae) = connect(&ts.addr(), "alice").await;
    let (_bob, mut be) = connect(&ts.addr(), "bob").await;
    let send = tokio::spawn(async move { alice.send_text("bob", "later").await });
    assert_quiet(&mut be, "bob", 1_000).await;
    assert!(!send.is_finished(), "held while the hook hangs");
    h.hang.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .expect("sent once the hook answers")
        .unwrap()
        .unwrap();
    assert_eq!(recv_messages(&mut be, "bob", 1, 5).await[0].1.text, "later");
}

/// `ferry bot …` against the test server (its admin token from its data folder).
async fn ferry_bot(ts: &TestServer, args: &[&str]) -> String {
    // Async: the server runs on this test's runtime.
    let out = tokio::process::Command::new(crate::FERRY)
        .arg("bot")
        .args(args)
        .args(["--server", &ts.addr(), "--data"])
        .arg(ts.dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "ferry bot {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn bot_tokens_are_scoped_and_refused_when_revoked_or_not_a_bots() {
    let ts = TestServer::start().await;
    ts.register(&["alice"]).await;
    let addr = ts.addr();
    let admin = admin_token(&ts);
    let (s, made) = api_call(
        &addr,
        "POST",
        "admin/bots",
        Some(&admin),
        Some(&serde_json::json!({"name": "helper", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let t = made["token"].as_str().unwrap().to_owned();
    let (s, me) = api_call(&addr, "GET", "bot/me", Some(&t), None).await;
    assert_eq!((s, me["name"].as_str()), (200, Some("helper")), "{me}");
    // A read-only token may not send: 403.
    let send = serde_json::json!({"to": "alice", "text": "hi"});
    let (s, e) = api_call(&addr, "POST", "bot/send", Some(&t), Some(&send)).await;
    assert_eq!(s, 403, "{e}");
    // No token, a user's session token, the admin token: 401.
    let user = token(&addr, "alice", "d1").await;
    for bad in [None, Some(user.as_str()), Some(admin.as_str())] {
        let (s, e) = api_call(&addr, "GET", "bot/me", bad, None).await;
        assert_eq!(s, 401, "{bad:?}: {e}");
        assert_eq!(e["error"]["code"], "UNAUTHORIZED");
    }
    // A bot token is no admin token.
    let (s, _) = api_call(&addr, "GET", "admin/bots", Some(&t), None).await;
    assert_eq!(s, 403);
    // Another token with send; the first revoked: refused from then on.
    let (s, more) = api_call(
        &addr,
        "POST",
        "admin/bots/helper/tokens",
        Some(&admin),
        Some(&serde_json::json!({"scopes": ["send", "read"]})),
    )
    .await;
    assert_eq!(s, 201, "{more}");
    let t2 = more["token"].as_str().unwrap().to_owned();
    let (s, sent) = api_call(&addr, "POST", "bot/send", Some(&t2), Some(&send)).await;
    assert_eq!(s, 200, "{sent}");
    let id = made["token_id"].as_u64().unwrap();
    let (s, _) = api_call(
        &addr,
        "DELETE",
        &format!("admin/bots/helper/tokens/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = api_call(&addr, "GET", "bot/me", Some(&t), None).await;
    assert_eq!(s, 401);
    let (s, _) = api_call(&addr, "GET", "bot/me", Some(&t2), None).await;
    assert_eq!(s, 200);
    // Updates over HTTP: a held poll answers when alice writes.
    let (alice, _ae) = connect(&addr, "alice").await;
    let poll = {
        let (addr, t2) = (addr.clone(), t2.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = api_call(
                &addr,
                "GET",
                "bot/updates?after=0&timeout=20",
                Some(&t2),
                None,
            )
            .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send_text("helper", "ping").await.unwrap();
    let ((s, u), took) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["updates"][0]["message"]["text"], "ping", "{u}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // With nothing new it times out, empty.
    let next = u["next_after"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (s, u) = api_call(
        &addr,
        "GET",
        &format!("bot/updates?after={next}&timeout=1"),
        Some(&t2),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(u["updates"].as_array().unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn the_echo_bot_answers_a_user() {
    let ts = TestServer::start().await;
    ts.register(&["carol"]).await;
    // The CLI makes the bot and prints its token last.
    let out = ferry_bot(&ts, &["create", "echo"]).await;
    let token = out.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("fbot_"), "{out}");
    assert!(ferry_bot(&ts, &["list"]).await.contains("echo"));
    let more = ferry_bot(&ts, &["token", "echo", "--scopes", "read"]).await;
    assert!(more.lines().last().unwrap().starts_with("fbot_"), "{more}");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/echo_bot.py");
    let mut bot = std::process::Command::new("python3")
        .arg(&script)
        .args(["--server", &format!("http://{}", ts.addr()), "--poll", "5"])
        .args(["--token", &token])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3");
    // Running: it printed its first line. Its output is read to the end (a closed pipe
    // would end the bot at its next line).
    let stdout = bot.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = lines_tx.send(line);
        }
    });
    let first =
        tokio::task::spawn_blocking(move || lines.recv_timeout(Duration::from_secs(20))).await;
    let result = async {
        let line = first.unwrap().expect("the echo bot started").unwrap();
        assert!(line.contains("echo bot echo running"), "{line}");
        let (carol, mut ce) = connect(&ts.addr(), "carol").await;
        carol.send_text("echo", "hello, bot").await.unwrap();
        let got = recv_messages(&mut ce, "carol", 1, 15).await;
        assert_eq!(got[0].1.from, "echo");
        assert_eq!(got[0].1.text, "hello, bot");
        // In a group: the bot hears the group's messages and answers there (its
        // group_id, a string in JSON, goes back as it came).
        let g = carol
            .account()
            .create_group("with echo", &["echo"], false)
            .await
            .unwrap()
            .group_id;
        carol.send_group(g, "hello, group", &[]).await.unwrap();
        let reply = event_where(&mut ce, 15, |ev| match ev {
            ferry_client::Event::Group { group_id, entry } if group_id == g => match entry.kind {
                Some(v1::group_entry::Kind::Message(m)) if m.from == "echo" => Some(m.text),
                _ => None,
            },
            _ => None,
        })
        .await;
        assert_eq!(reply, "hello, group");
    };
    // Whatever happens, the bot process ends with the test.
    let outcome = tokio::time::timeout(Duration::from_secs(60), result).await;
    let _ = bot.kill();
    let _ = bot.wait();
    outcome.expect("the echo bot answered within a minute");
    // Revoking by the CLI ends its token.
    let list = ferry_bot(&ts, &["list"]).await;
    let id = list
        .lines()
        .find_map(|l| l.trim().strip_prefix("token "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    ferry_bot(&ts, &["revoke", "echo", &id]).await;
    let (s, _) = api_call(&ts.addr(), "GET", "bot/me", Some(&token), None).await;
    assert_eq!(s, 401);
}

/// A bot with `group_admin` creates a group it owns and adds and removes members, by the
/// rules every owner follows; without the scope it is refused.
#[tokio::test]
async fn a_group_admin_bot_runs_its_group() {
    let ts = TestServer::start().await;
    ts.register(&["gm1", "gm2"]).await;
    let addr = ts.addr();
    let admin = admin_token(&ts);
    let (status, made) = api_call(
        &addr,
        "POST",
        "admin/bots",
        Some(&admin),
        Some(&serde_json::json!({"name": "groupbot", "scopes": ["send", "group_admin"]})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let bot = made["token"].as_str().unwrap().to_owned();

    let (status, g) = api_call(
        &addr,
        "POST",
        "bot/groups",
        Some(&bot),
        Some(&serde_json::json!({"name": "bots and people", "members": ["gm1"]})),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["owner"], "groupbot");
    let id: u64 = g["group_id"].as_str().unwrap().parse().unwrap();
    let members = async || -> Vec<String> {
        let (status, v) = api_call(
            &addr,
            "GET",
            &format!("admin/groups/{id}"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let mut names: Vec<String> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(members().await, ["gm1", "groupbot"]);

    let add = serde_json::json!({"users": ["gm2"]});
    let (status, v) = api_call(
        &addr,
        "POST",
        &format!("bot/groups/{id}/add"),
        Some(&bot),
        Some(&add),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(members().await, ["gm1", "gm2", "groupbot"]);
    let remove = serde_json::json!({"users": ["gm1"]});
    let (status, v) = api_call(
        &addr,
        "POST",
        &format!("bot/groups/{id}/remove"),
        Some(&bot),
        Some(&remove),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(members().await, ["gm2", "groupbot"]);
    // The bot speaks in its group.
    let (status, v) = api_call(
        &addr,
        "POST",
        "bot/send",
        Some(&bot),
        Some(&serde_json::json!({"group_id": id, "text": "welcome"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Without the scope: refused, and nothing changes.
    let (status, plain) = api_call(
        &addr,
        "POST",
        "admin/bots/groupbot/tokens",
        Some(&admin),
        Some(&serde_json::json!({"scopes": ["send"]})),
    )
    .await;
    assert_eq!(status, 201, "{plain}");
    let (status, _) = api_call(
        &addr,
        "POST",
        &format!("bot/groups/{id}/add"),
        Some(plain["token"].as_str().unwrap()),
        Some(&serde_json::json!({"users": ["gm1"]})),
    )
    .await;
    assert_eq!(status, 403);
    // Not a group id; a group it is not in.
    let (status, _) = api_call(&addr, "POST", "bot/groups/x/add", Some(&bot), Some(&add)).await;
    assert_eq!(status, 400);
    assert_eq!(members().await, ["gm2", "groupbot"]);
}
