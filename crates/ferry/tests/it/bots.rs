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
    assert_eq!(recv_messages(&mut be, "bob", 1, 5).await[0].1.text, "through");
    h.hang.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn a_hanging_hook_fails_closed_until_it_answers_again() {
    let (h, url) = hook().await;
    h.hang.store(true, Ordering::SeqCst);
    let ts = server(&url, 300, false).await;
    ts.register(&["alice", "bob"]).await;
    // Over HTTP: one refusal, UNAVAILABLE with a reason and a retry delay.
    let t = token(&ts.addr(), "alice", "http").await;
    let e = ShortLink::new(&ts.addr())
        .call::<_, v1::SendAck>(
            "send",
            Some(&t),
            &v1::SendMsg {
                client_msg_id: 7,
                to: "bob".into(),
                text: "held".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e:?}");
    assert!(e.retry_after().is_some(), "{e:?}");
    assert!(stored_texts(&ts, "bob").await.is_empty());
    // The SDK retries a refusal it may retry: the message goes once the hook answers.
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
