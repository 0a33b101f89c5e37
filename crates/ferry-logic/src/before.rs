//! The before-send hook (`[logic.before_send]`): an HTTP endpoint asked, synchronously
//! and within a deadline, about every message before it is stored — moderation, word
//! filters. It may allow the message, reject it (the sender is told the hook's reason:
//! PERMISSION_DENIED, nothing is stored or delivered) or rewrite its text.
//!
//! The request is the webhook envelope (docs/webhooks.md, docs/bots.md) of type
//! `message.before_send`, signed like every webhook delivery:
//! `Ferry-Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. The
//! answer is `{"action":"allow"}`, `{"action":"reject","reason":"…"}` or
//! `{"action":"rewrite","text":"…"}`. A hook that does not answer in `timeout_ms`, fails,
//! or answers something else lets the message through when `fail_open`, and refuses it
//! otherwise (UNAVAILABLE with a retry delay: the client may send it again).
//!
//! With no `url` there is no hook: [`Core::before_send`](crate::core::Core) is `None` and
//! the send path pays one branch.

use std::time::{Duration, Instant};

use ferry_proto::v1;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::{unix_ms, Core};
use crate::error::LogicError;

/// `[logic.before_send]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeforeSendConfig {
    /// Where every message is POSTed before it is stored (`http://` or `https://`);
    /// empty: no hook.
    pub url: String,
    /// The HMAC-SHA256 key of `Ferry-Webhook-Signature`; empty: requests are not signed.
    pub secret: String,
    /// How long a send waits for the hook's answer, in milliseconds.
    pub timeout_ms: u64,
    /// When the hook times out, fails or answers nonsense: let the message through
    /// (true) or refuse it (false).
    pub fail_open: bool,
}

impl Default for BeforeSendConfig {
    fn default() -> Self {
        BeforeSendConfig {
            url: String::new(),
            secret: String::new(),
            timeout_ms: 1_000,
            fail_open: false,
        }
    }
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The `Ferry-Webhook-Signature` value for `body` sent at `timestamp` (unix seconds):
/// one `v1=<hex>` per secret, space separated (contract §4).
pub(crate) fn sign(secrets: &[&[u8]], timestamp: u64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    secrets
        .iter()
        .map(|s| {
            format!(
                "v1={}",
                hex::encode(hmac_sha256(s, &[ts.as_bytes(), b".", body]))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Puts a message about to be stored before the hook, if there is one: a rewrite
/// replaces its text; a rejection or (fail-closed) a failed hook refuses it. A retry of a
/// send already stored (its `client_msg_id`) is not asked again: the store answers it
/// with the original.
pub(crate) async fn screen(
    core: &Core,
    sender: u64,
    m: &mut v1::Message,
) -> Result<(), LogicError> {
    let Some(hook) = &core.before_send else {
        return Ok(());
    };
    if core
        .store
        .sent_message_id(sender, m.client_msg_id)
        .await?
        .is_some()
    {
        return Ok(());
    }
    if let Verdict::Rewrite(text) = hook.check(m).await? {
        m.text = text;
    }
    Ok(())
}

/// What the hook decided about a message that may go on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store it as it is.
    Allow,
    /// Store it with this text instead.
    Rewrite(String),
}

#[derive(Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    text: Option<String>,
}

/// The hook of this node: its settings and a pooled HTTP client.
pub(crate) struct BeforeHook {
    url: String,
    secret: Vec<u8>,
    timeout: Duration,
    fail_open: bool,
    max_text_bytes: usize,
    client: reqwest::Client,
}

impl BeforeHook {
    /// The hook `cfg` describes; `None` without a url (no hook) or when the HTTP client
    /// cannot be built (logged: sends then go through as without a hook when
    /// `fail_open`, and are refused otherwise — see [`Core`](crate::core::Core)).
    pub fn new(cfg: &BeforeSendConfig, max_text_bytes: usize) -> Option<BeforeHook> {
        if cfg.url.is_empty() {
            return None;
        }
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build();
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "the before-send hook's HTTP client failed to build");
                reqwest::Client::new()
            }
        };
        Some(BeforeHook {
            url: cfg.url.clone(),
            secret: cfg.secret.as_bytes().to_vec(),
            timeout,
            fail_open: cfg.fail_open,
            max_text_bytes,
            client,
        })
    }

    /// Asks the hook about `m` (not stored yet: `msg_id` 0). `Ok` when it may go on,
    /// PERMISSION_DENIED with the hook's reason when rejected, UNAVAILABLE when the
    /// hook failed and the policy is fail-closed.
    pub async fn check(&self, m: &v1::Message) -> Result<Verdict, LogicError> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.ask(m))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        metrics::histogram!("ferry_before_send_seconds").record(started.elapsed().as_secs_f64());
        let label = match &outcome {
            Ok(Ok(Verdict::Allow)) => "allow",
            Ok(Ok(Verdict::Rewrite(_))) => "rewrite",
            Ok(Err(_)) => "reject",
            Err(_) if self.fail_open => "failed_open",
            Err(_) => "failed_closed",
        };
        metrics::counter!("ferry_before_send_total", "outcome" => label).increment(1);
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(reason)) => Err(LogicError::PermissionDenied(reason)),
            Err(e) if self.fail_open => {
                tracing::warn!(error = %e, "before-send hook failed; message let through (fail_open)");
                Ok(Verdict::Allow)
            }
            Err(e) => {
                tracing::warn!(error = %e, "before-send hook failed; message refused (fail-closed)");
                // NotReady keeps its message for the client (an UNAVAILABLE's is hidden)
                // and tells it when to try again.
                Err(LogicError::NotReady(
                    "the message filter is not answering; try again later".into(),
                    1_000,
                ))
            }
        }
    }

    /// One round trip: `Ok(Ok(verdict))`, `Ok(Err(reason))` for a rejection, `Err` for
    /// a hook that failed.
    async fn ask(&self, m: &v1::Message) -> Result<Result<Verdict, String>, String> {
        let id = format!("bs_{:016x}", rand::random::<u64>());
        let body = serde_json::to_vec(&serde_json::json!({
            "v": 1,
            "id": id,
            "type": "message.before_send",
            "time_ms": unix_ms(),
            "data": crate::api::json::message_json(m),
        }))
        .map_err(|e| e.to_string())?;
        let ts = (unix_ms() / 1000).max(0) as u64;
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("ferry-webhook-id", &id)
            .header("ferry-webhook-timestamp", ts.to_string());
        if !self.secret.is_empty() {
            req = req.header("ferry-webhook-signature", sign(&[&self.secret], ts, &body));
        }
        let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let a: Answer = serde_json::from_slice(&bytes).map_err(|e| format!("bad answer: {e}"))?;
        match a.action.as_str() {
            "allow" => Ok(Ok(Verdict::Allow)),
            "reject" => Ok(Err(if a.reason.is_empty() {
                "refused by the message filter".to_owned()
            } else {
                a.reason
            })),
            "rewrite" => match a.text {
                Some(t) if t.len() <= self.max_text_bytes => Ok(Ok(Verdict::Rewrite(t))),
                Some(t) => Err(format!("rewrite of {} bytes is too long", t.len())),
                None => Err("rewrite without a text".into()),
            },
            other => Err(format!("unknown action {other:?}")),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::State;
    use axum::http::HeaderMap;
    use ferry_bus::BusRequest;
    use parking_lot::Mutex;

    /// RFC 4231, test case 2 (a key shorter than a block) and 6 (longer than a block).
    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let key = [0xaau8; 131];
        assert_eq!(
            hex::encode(hmac_sha256(
                &key,
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(
            sign(&[b"a", b"b"], 7, b"x").split(' ').count(),
            2,
            "one v1= per secret"
        );
    }

    /// What a test hook server saw and does.
    #[derive(Default)]
    pub(crate) struct HookState {
        pub calls: AtomicUsize,
        /// The texts asked about, and whether each request's signature verified.
        pub seen: Mutex<Vec<(String, bool)>>,
        pub secret: String,
        /// Answers reject when a text contains this word.
        pub reject_word: String,
        /// Answers a rewrite with this text when a text contains `rewrite_from`.
        pub rewrite_from: String,
        pub rewrite_to: String,
        /// Sleeps this long before answering.
        pub delay_ms: u64,
    }

    async fn hook(
        State(s): State<Arc<HookState>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> ([(&'static str, &'static str); 1], String) {
        s.calls.fetch_add(1, Ordering::SeqCst);
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let ts: u64 = h("ferry-webhook-timestamp").parse().unwrap_or(0);
        let signed = h("ferry-webhook-signature") == sign(&[s.secret.as_bytes()], ts, &body);
        let env: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(env["type"], "message.before_send");
        assert_eq!(env["id"].as_str().unwrap(), h("ferry-webhook-id"));
        let text = env["data"]["text"].as_str().unwrap_or_default().to_owned();
        s.seen.lock().push((text.clone(), signed));
        if s.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
        }
        let answer = if !s.reject_word.is_empty() && text.contains(&s.reject_word) {
            serde_json::json!({"action": "reject", "reason": format!("no {} here", s.reject_word)})
        } else if !s.rewrite_from.is_empty() && text.contains(&s.rewrite_from) {
            serde_json::json!({"action": "rewrite", "text": text.replace(&s.rewrite_from, &s.rewrite_to)})
        } else {
            serde_json::json!({"action": "allow"})
        };
        ([("content-type", "application/json")], answer.to_string())
    }

    /// A hook server on 127.0.0.1; its url.
    pub(crate) async fn serve_hook(state: Arc<HookState>) -> String {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(state);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}/hook")
    }

    fn cfg(url: &str, timeout_ms: u64, fail_open: bool) -> BeforeSendConfig {
        BeforeSendConfig {
            url: url.into(),
            secret: "s3cret".into(),
            timeout_ms,
            fail_open,
        }
    }

    fn msg(text: &str) -> v1::Message {
        v1::Message {
            from: "ann".into(),
            to: "bob".into(),
            text: text.into(),
            client_msg_id: 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_hook_allows_rejects_and_rewrites_signed_requests() {
        let state = Arc::new(HookState {
            secret: "s3cret".into(),
            reject_word: "spam".into(),
            rewrite_from: "darn".into(),
            rewrite_to: "d**n".into(),
            ..Default::default()
        });
        let url = serve_hook(state.clone()).await;
        let h = BeforeHook::new(&cfg(&url, 2_000, false), 100).unwrap();
        assert_eq!(h.check(&msg("hello")).await.unwrap(), Verdict::Allow);
        match h.check(&msg("buy spam now")).await {
            Err(LogicError::PermissionDenied(r)) => assert_eq!(r, "no spam here"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.check(&msg("oh darn")).await.unwrap(),
            Verdict::Rewrite("oh d**n".into())
        );
        let seen = state.seen.lock().clone();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter().all(|(_, ok)| *ok),
            "every request signed: {seen:?}"
        );
        // A wrong secret does not verify (the check can fail).
        let wrong = BeforeHook::new(
            &BeforeSendConfig {
                secret: "other".into(),
                ..cfg(&url, 2_000, false)
            },
            100,
        )
        .unwrap();
        wrong.check(&msg("x")).await.unwrap();
        assert!(!state.seen.lock().last().unwrap().1);
        // No url: no hook.
        assert!(BeforeHook::new(&BeforeSendConfig::default(), 100).is_none());
    }

    #[tokio::test]
    async fn a_hanging_hook_fails_open_or_closed_at_the_deadline() {
        let state = Arc::new(HookState {
            delay_ms: 5_000,
            ..Default::default()
        });
        let url = serve_hook(state.clone()).await;
        let open = BeforeHook::new(&cfg(&url, 200, true), 100).unwrap();
        let t = Instant::now();
        assert_eq!(open.check(&msg("hi")).await.unwrap(), Verdict::Allow);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(2_000),
            "{took:?}"
        );
        let closed = BeforeHook::new(&cfg(&url, 200, false), 100).unwrap();
        let t = Instant::now();
        let e = closed.check(&msg("hi")).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_millis(2_000));
        assert_eq!(e.code(), v1::ErrorCode::Unavailable);
        assert!(e.to_body().message.contains("message filter"), "{e:?}");
        assert!(e.to_body().retry_after_ms > 0);
        // A hook nobody listens on fails the same way.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}/hook", l.local_addr().unwrap());
        drop(l);
        let h = BeforeHook::new(&cfg(&dead, 500, false), 100).unwrap();
        assert!(h.check(&msg("hi")).await.is_err());
        let h = BeforeHook::new(&cfg(&dead, 500, true), 100).unwrap();
        assert_eq!(h.check(&msg("hi")).await.unwrap(), Verdict::Allow);
    }

    #[tokio::test]
    async fn a_rewrite_past_the_text_limit_is_a_failed_hook() {
        let state = Arc::new(HookState {
            rewrite_from: "a".into(),
            rewrite_to: "a".repeat(50),
            ..Default::default()
        });
        let url = serve_hook(state).await;
        let h = BeforeHook::new(&cfg(&url, 2_000, false), 10).unwrap();
        assert!(h.check(&msg("aaa")).await.is_err());
    }

    mod send_path {
        use super::*;
        use crate::config::LogicConfig;
        use crate::testing::{req, World};
        use ferry_proto::{cmd, ProtoMessage};

        async fn world(state: Arc<HookState>, timeout_ms: u64, fail_open: bool) -> World {
            let url = serve_hook(state).await;
            World::new(LogicConfig {
                open_messaging: true,
                before_send: cfg(&url, timeout_ms, fail_open),
                ..Default::default()
            })
        }

        fn send(to: &str, text: &str, cmid: u64) -> v1::SendMsg {
            v1::SendMsg {
                to: to.into(),
                text: text.into(),
                client_msg_id: cmid,
                ..Default::default()
            }
        }

        async fn texts(w: &World, user: u64) -> Vec<String> {
            let page = w.core.store.inbox(user, 0, 100).await.unwrap();
            page.entries
                .iter()
                .filter_map(|e| match &e.kind {
                    Some(v1::entry::Kind::Message(m)) => Some(m.text.clone()),
                    _ => None,
                })
                .collect()
        }

        #[tokio::test]
        async fn a_rejected_send_is_neither_stored_nor_delivered() {
            let state = Arc::new(HookState {
                secret: "s3cret".into(),
                reject_word: "spam".into(),
                rewrite_from: "darn".into(),
                rewrite_to: "d**n".into(),
                ..Default::default()
            });
            let w = world(state.clone(), 2_000, true).await;
            let (ann, bob) = (w.user("ann").await, w.user("bob").await);
            w.notifier.link_up(bob, "gw-b", 1, "d1").await;
            let refused = w
                .inbox
                .send(&req(cmd::SEND, ann, &send("bob", "cheap spam", 1)))
                .await;
            match refused {
                Err(e @ LogicError::PermissionDenied(_)) => {
                    assert_eq!(e.to_body().message, "no spam here")
                }
                other => panic!("{other:?}"),
            }
            assert!(w.pushes().is_empty(), "nothing delivered");
            assert_eq!(w.core.store.latest_seq(bob).await.unwrap(), 0);
            assert_eq!(w.core.store.latest_seq(ann).await.unwrap(), 0);
            // A rewrite is what is stored and delivered.
            w.inbox
                .send(&req(cmd::SEND, ann, &send("bob", "oh darn", 2)))
                .await
                .unwrap();
            assert_eq!(texts(&w, bob).await, ["oh d**n"]);
            assert_eq!(texts(&w, ann).await, ["oh d**n"]);
            assert_eq!(state.calls.load(Ordering::SeqCst), 2);
        }

        #[tokio::test]
        async fn a_retried_send_does_not_ask_the_hook_again() {
            let state = Arc::new(HookState::default());
            let w = world(state.clone(), 2_000, false).await;
            let (ann, _bob) = (w.user("ann").await, w.user("bob").await);
            let r = req(cmd::SEND, ann, &send("bob", "once", 9));
            let first = v1::SendAck::decode(w.inbox.send(&r).await.unwrap().body).unwrap();
            let again = v1::SendAck::decode(w.inbox.send(&r).await.unwrap().body).unwrap();
            assert_eq!(first.msg_id, again.msg_id);
            assert_eq!(state.calls.load(Ordering::SeqCst), 1);
            // A new client_msg_id is a new message: asked.
            w.inbox
                .send(&req(cmd::SEND, ann, &send("bob", "twice", 10)))
                .await
                .unwrap();
            assert_eq!(state.calls.load(Ordering::SeqCst), 2);
        }

        #[tokio::test]
        async fn a_hanging_hook_fails_closed_or_open_in_the_send_path() {
            let state = Arc::new(HookState {
                delay_ms: 3_000,
                ..Default::default()
            });
            let closed = world(state.clone(), 150, false).await;
            let (ann, bob) = (closed.user("ann").await, closed.user("bob").await);
            let e = closed
                .inbox
                .send(&req(cmd::SEND, ann, &send("bob", "hi", 1)))
                .await
                .unwrap_err();
            assert_eq!(e.code(), v1::ErrorCode::Unavailable);
            assert_eq!(closed.core.store.latest_seq(bob).await.unwrap(), 0);
            let open = world(state, 150, true).await;
            let (ann, bob) = (open.user("ann").await, open.user("bob").await);
            let t = Instant::now();
            open.inbox
                .send(&req(cmd::SEND, ann, &send("bob", "hi", 1)))
                .await
                .unwrap();
            assert!(t.elapsed() >= Duration::from_millis(140));
            assert_eq!(texts(&open, bob).await, ["hi"]);
        }

        #[tokio::test]
        async fn group_sends_and_batches_go_through_the_hook() {
            let state = Arc::new(HookState {
                reject_word: "spam".into(),
                rewrite_from: "darn".into(),
                rewrite_to: "d**n".into(),
                ..Default::default()
            });
            let w = world(state.clone(), 2_000, false).await;
            let (ann, bob) = (w.user("ann").await, w.user("bob").await);
            let g = w
                .groups
                .create(&req(
                    cmd::GROUP_CREATE,
                    ann,
                    &v1::GroupCreateReq {
                        name: "g".into(),
                        members: vec!["bob".into()],
                        share_history: false,
                    },
                ))
                .await
                .unwrap();
            let group = v1::GroupResp::decode(g.body)
                .unwrap()
                .group
                .unwrap()
                .group_id;
            let gsend = |text: &str, cmid| v1::SendMsg {
                group_id: group,
                text: text.into(),
                client_msg_id: cmid,
                ..Default::default()
            };
            let refused = w.inbox.send(&req(cmd::SEND, bob, &gsend("spam!", 1))).await;
            assert!(matches!(refused, Err(LogicError::PermissionDenied(_))));
            w.inbox
                .send(&req(cmd::SEND, bob, &gsend("darn it", 2)))
                .await
                .unwrap();
            let (log, _, _) = w.core.store.group_log(group, 0, 100).await.unwrap();
            let texts: Vec<String> = log
                .iter()
                .filter_map(|e| match &e.kind {
                    Some(v1::group_entry::Kind::Message(m)) => Some(m.text.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(texts, ["d**n it"]);
            // A batch (the long link's send lane) asks about each message.
            let batch = BusRequest {
                batch: [send("bob", "fine", 11), send("bob", "spam", 12)]
                    .iter()
                    .map(|m| bytes::Bytes::from(m.encode_to_vec()))
                    .collect(),
                ..req(cmd::SEND, ann, &v1::Empty {})
            };
            let answers = w.inbox.send_batch(&batch).await;
            assert!(answers[0].is_ok());
            assert!(matches!(answers[1], Err(LogicError::PermissionDenied(_))));
            assert_eq!(state.calls.load(Ordering::SeqCst), 4);
        }
    }
}
