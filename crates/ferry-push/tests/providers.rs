//! Each sender against the contract-checking simulator over TLS (HTTP/2 where the
//! provider wants it): what it sends (headers, JWTs, bodies — the sim checks every
//! request against the provider's contract and the test asserts no violation), how it
//! reuses and refreshes credentials, how it reads every kind of answer, that it keeps
//! its in-flight limit, and that garbage targets are refused without a request or a
//! panic.

mod common;

use std::time::Duration;

use common::{apns_token, fcm_token, note, setup};
use ferry_push::sim::{Reply, Script};
use ferry_push::{Outcome, Provider};

fn assert_clean(s: &common::Setup) {
    let v = s.sim.violations();
    assert!(v.is_empty(), "contract violations: {v:#?}");
}

// ---- APNs ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_alert_and_background_pushes_keep_apples_contract() {
    let s = setup(8).await;
    let apns = s.sender(Provider::Apns);
    let token = apns_token(1);
    let alert = note(42, true);
    assert_eq!(
        apns.send(&s.target(Provider::Apns, &token), &alert).await,
        Outcome::Accepted
    );
    let silent = note(43, false);
    let mut sandbox = s.target(Provider::Apns, &token);
    sandbox.sandbox = true;
    assert_eq!(apns.send(&sandbox, &silent).await, Outcome::Accepted);
    assert_clean(&s);

    let reqs = s.sim.requests_of(Provider::Apns);
    assert_eq!(reqs.len(), 2);
    let (a, b) = (&reqs[0], &reqs[1]);
    assert_eq!(a.version, "HTTP/2.0");
    assert_eq!(a.key, token);
    assert!(
        !a.sandbox && b.sandbox,
        "the sandbox target goes to the sandbox URL"
    );
    assert_eq!(a.header("apns-topic"), Some("org.ferry.app"));
    assert_eq!(a.header("apns-push-type"), Some("alert"));
    assert_eq!(a.header("apns-priority"), Some("10"));
    assert_eq!(a.header("apns-expiration"), Some("1760003600")); // created s + ttl
    assert_eq!(a.header("apns-collapse-id"), Some("u7-phone"));
    assert_eq!(a.header("apns-id"), Some(alert.id.to_string().as_str()));
    assert!(a.header("authorization").unwrap().starts_with("bearer "));
    let body = a.json();
    assert_eq!(body["aps"]["alert"]["title"], "Ana");
    assert_eq!(body["aps"]["alert"]["body"], "hello there");
    assert_eq!(body["aps"]["badge"], 3);
    assert_eq!(body["aps"]["mutable-content"], 1);
    assert_eq!(body["ferry"]["seq"], 42);
    assert_eq!(body["ferry"]["kind"], "message");

    assert_eq!(b.header("apns-push-type"), Some("background"));
    assert_eq!(b.header("apns-priority"), Some("5"));
    let body = b.json();
    assert_eq!(body["aps"]["content-available"], 1);
    assert!(body["aps"].get("alert").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_reuses_one_jwt_and_refreshes_it_once_when_apple_calls_it_expired() {
    let s = setup(16).await;
    let apns = s.sender(Provider::Apns);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let apns = apns.clone();
        let t = s.target(Provider::Apns, &apns_token(i));
        tasks.push(tokio::spawn(
            async move { apns.send(&t, &note(i, true)).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Outcome::Accepted);
    }
    assert_eq!(
        s.sim.distinct_jwts(Provider::Apns),
        1,
        "one provider JWT for all sends"
    );

    s.sim.expire_credentials();
    let t = s.target(Provider::Apns, &apns_token(100));
    assert_eq!(apns.send(&t, &note(100, true)).await, Outcome::Accepted);
    assert_eq!(
        s.sim.distinct_jwts(Provider::Apns),
        2,
        "a new JWT after ExpiredProviderToken"
    );
    let last: Vec<u16> = s
        .sim
        .requests_of(Provider::Apns)
        .iter()
        .rev()
        .take(2)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        last,
        vec![200, 403],
        "refused as expired, then sent again with the new JWT"
    );
    // And the new one is kept: no third JWT.
    assert_eq!(apns.send(&t, &note(101, true)).await, Outcome::Accepted);
    assert_eq!(s.sim.distinct_jwts(Provider::Apns), 2);
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_answers_read_as_outcomes() {
    let s = setup(8).await;
    let apns = s.sender(Provider::Apns);
    let cases = [
        (Reply::Gone, "gone"),
        (Reply::BadDeviceToken, "gone"),
        (
            Reply::TooMany {
                retry_after_secs: 7,
            },
            "retry",
        ),
        (Reply::ServerError, "retry"),
    ];
    for (i, (reply, label)) in cases.iter().enumerate() {
        let token = apns_token(1000 + i as u64);
        s.sim.script(&token, *reply);
        let out = apns
            .send(&s.target(Provider::Apns, &token), &note(1, true))
            .await;
        assert_eq!(out.label(), *label, "{reply:?} → {out:?}");
        match (reply, &out) {
            (Reply::TooMany { .. }, Outcome::Retry { after, .. }) => {
                assert_eq!(*after, Some(Duration::from_secs(7)))
            }
            (Reply::ServerError, Outcome::Retry { after, .. }) => assert_eq!(*after, None),
            (Reply::Gone, Outcome::Gone { reason }) => assert_eq!(reason, "Unregistered"),
            (Reply::BadDeviceToken, Outcome::Gone { reason }) => {
                assert_eq!(reason, "BadDeviceToken")
            }
            _ => panic!("{reply:?} → {out:?}"),
        }
    }
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_payload_over_4096_bytes_is_refused_by_the_sim_and_rejected() {
    let s = setup(8).await;
    let apns = s.sender(Provider::Apns);
    let mut big = note(1, true);
    big.alert.as_mut().unwrap().body = "x".repeat(5000);
    let out = apns
        .send(&s.target(Provider::Apns, &apns_token(2)), &big)
        .await;
    assert_eq!(
        out,
        Outcome::Rejected {
            reason: "PayloadTooLarge".into()
        }
    );
    let v = s.sim.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].what.starts_with("PayloadTooLarge"), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_garbage_targets_are_rejected_without_a_request() {
    let s = setup(8).await;
    let apns = s.sender(Provider::Apns);
    for token in ["", "zz", "../../etc/passwd", "abc def", &"ab".repeat(200)] {
        let out = apns
            .send(&s.target(Provider::Apns, token), &note(1, true))
            .await;
        assert_eq!(out.label(), "rejected", "{token:?} → {out:?}");
    }
    let mut t = s.target(Provider::Apns, &apns_token(3));
    t.app_id = "bad\ntopic".into();
    assert_eq!(apns.send(&t, &note(1, true)).await.label(), "rejected");
    t.app_id = String::new();
    assert_eq!(apns.send(&t, &note(1, true)).await.label(), "rejected");
    let mut n = note(1, true);
    n.collapse_id = "bad\r\nheader".into();
    let t = s.target(Provider::Apns, &apns_token(3));
    assert_eq!(apns.send(&t, &n).await.label(), "rejected");
    assert_eq!(
        s.sim.count(Provider::Apns),
        0,
        "nothing reached the provider"
    );
}

// ---- FCM ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_sends_data_only_messages_with_one_cached_access_token() {
    let s = setup(8).await;
    let fcm = s.sender(Provider::Fcm);
    let n = note(42, true);
    let token = fcm_token(1);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let fcm = fcm.clone();
        let t = s.target(Provider::Fcm, &fcm_token(i));
        tasks.push(tokio::spawn(async move {
            fcm.send(&t, &note(i, i % 2 == 0)).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Outcome::Accepted);
    }
    assert_eq!(
        fcm.send(&s.target(Provider::Fcm, &token), &n).await,
        Outcome::Accepted
    );
    assert_clean(&s);
    let reqs = s.sim.requests_of(Provider::Fcm);
    let token_requests = reqs.iter().filter(|r| r.path == "/token").count();
    assert_eq!(token_requests, 1, "one access token for 21 sends");
    assert_eq!(s.sim.distinct_jwts(Provider::Fcm), 1);

    let last = reqs.last().unwrap();
    assert_eq!(
        last.path,
        format!(
            "/v1/projects/{}/messages:send",
            ferry_push::sim::FCM_PROJECT
        )
    );
    assert!(last
        .header("authorization")
        .unwrap()
        .starts_with("Bearer ya29.sim-"));
    let m = &last.json()["message"];
    assert_eq!(m["token"], token.as_str());
    assert!(m.get("notification").is_none());
    let ferry: serde_json::Value =
        serde_json::from_str(m["data"]["ferry"].as_str().unwrap()).unwrap();
    assert_eq!(ferry["seq"], 42);
    assert_eq!(m["data"]["badge"], "3");
    assert_eq!(m["data"]["title"], "Ana");
    assert_eq!(m["data"]["body"], "hello there");
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["android"]["ttl"], "3600s");
    assert_eq!(m["android"]["collapse_key"], "u7-phone");

    // A target's app_id names the project.
    let mut other = s.target(Provider::Fcm, &token);
    other.app_id = "other-project".into();
    assert_eq!(fcm.send(&other, &note(1, false)).await, Outcome::Accepted);
    let last = s.sim.requests_of(Provider::Fcm).pop().unwrap();
    assert_eq!(last.path, "/v1/projects/other-project/messages:send");
    assert_eq!(last.json()["message"]["android"]["priority"], "NORMAL");
    assert!(last.json()["message"]["data"].get("title").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_fetches_a_new_access_token_after_a_401_and_sends_again() {
    let s = setup(8).await;
    let fcm = s.sender(Provider::Fcm);
    let t = s.target(Provider::Fcm, &fcm_token(1));
    assert_eq!(fcm.send(&t, &note(1, true)).await, Outcome::Accepted);
    s.sim.expire_credentials();
    assert_eq!(fcm.send(&t, &note(2, true)).await, Outcome::Accepted);
    let statuses: Vec<(String, u16)> = s
        .sim
        .requests_of(Provider::Fcm)
        .iter()
        .map(|r| (r.key.clone(), r.status))
        .collect();
    let tok = fcm_token(1);
    assert_eq!(
        statuses,
        vec![
            ("token".into(), 200),
            (tok.clone(), 200),
            (tok.clone(), 401),
            ("token".into(), 200),
            (tok, 200)
        ]
    );
    // (Two token requests; their RS256 assertions may be the same bytes when made in
    // the same second: PKCS#1 v1.5 signatures are deterministic.)
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_answers_read_as_outcomes() {
    let s = setup(8).await;
    let fcm = s.sender(Provider::Fcm);
    let cases = [
        (
            Reply::Gone,
            Outcome::Gone {
                reason: "UNREGISTERED".into(),
            },
        ),
        (
            Reply::BadDeviceToken,
            Outcome::Rejected {
                reason: "INVALID_ARGUMENT".into(),
            },
        ),
        (
            Reply::TooMany {
                retry_after_secs: 11,
            },
            Outcome::Retry {
                after: Some(Duration::from_secs(11)),
                reason: "QUOTA_EXCEEDED".into(),
            },
        ),
        (
            Reply::ServerError,
            Outcome::Retry {
                after: None,
                reason: "INTERNAL".into(),
            },
        ),
    ];
    for (i, (reply, want)) in cases.iter().enumerate() {
        let token = fcm_token(500 + i as u64);
        s.sim.script(&token, *reply);
        let out = fcm
            .send(&s.target(Provider::Fcm, &token), &note(1, true))
            .await;
        assert_eq!(&out, want, "{reply:?}");
    }
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_garbage_targets_are_rejected_without_a_request() {
    let s = setup(8).await;
    let fcm = s.sender(Provider::Fcm);
    for token in [
        "",
        "short",
        "has space in it",
        "quote\"token\"xx",
        "nul\0byte-token",
    ] {
        let out = fcm
            .send(&s.target(Provider::Fcm, token), &note(1, true))
            .await;
        assert_eq!(out.label(), "rejected", "{token:?} → {out:?}");
    }
    let mut t = s.target(Provider::Fcm, &fcm_token(1));
    t.app_id = "../../admin".into();
    assert_eq!(fcm.send(&t, &note(1, true)).await.label(), "rejected");
    assert_eq!(
        s.sim.count(Provider::Fcm),
        0,
        "nothing reached the provider"
    );
}

// ---- Web Push / UnifiedPush ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_requests_keep_rfc_8030_8291_8292_with_one_vapid_jwt() {
    let s = setup(8).await;
    for provider in [Provider::WebPush, Provider::UnifiedPush] {
        let wp = s.sender(provider);
        assert_eq!(wp.provider(), provider);
        for i in 0..10 {
            let t = s.target(provider, &format!("{}-{i}", provider.name()));
            assert_eq!(wp.send(&t, &note(i, i % 2 == 0)).await, Outcome::Accepted);
        }
    }
    assert_clean(&s);
    assert_eq!(
        s.sim.distinct_jwts(Provider::WebPush),
        1,
        "one VAPID JWT per audience"
    );
    let reqs = s.sim.requests_of(Provider::WebPush);
    assert_eq!(reqs.len(), 20);
    let a = &reqs[0];
    assert_eq!(a.key, "webpush-0");
    assert_eq!(a.header("ttl"), Some("3600"));
    assert_eq!(a.header("urgency"), Some("high"));
    assert_eq!(reqs[1].header("urgency"), Some("normal"));
    assert_eq!(a.header("topic"), Some("u7-phone"));
    assert_eq!(a.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    let auth = a.header("authorization").unwrap();
    let k = s.sim.vapid_public_key().unwrap();
    assert!(
        auth.starts_with("vapid t=") && auth.ends_with(&format!(", k={k}")),
        "{auth}"
    );
    // aes128gcm framing: rs 4096, a 65-byte key id, one record.
    assert_eq!(&a.body[16..20], &4096u32.to_be_bytes());
    assert_eq!(a.body[20], 65);
    assert!(
        !a.body.windows(11).any(|w| w == b"hello there"),
        "the body is encrypted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_answers_read_as_outcomes() {
    let s = setup(8).await;
    let wp = s.sender(Provider::WebPush);
    let cases = [
        (Reply::Gone, "gone", None),
        (Reply::BadDeviceToken, "gone", None),
        (
            Reply::TooMany {
                retry_after_secs: 5,
            },
            "retry",
            Some(Duration::from_secs(5)),
        ),
        (Reply::ServerError, "retry", None),
    ];
    for (i, (reply, label, after)) in cases.iter().enumerate() {
        let id = format!("sub-{i}");
        s.sim.script(&id, *reply);
        let out = wp
            .send(&s.target(Provider::WebPush, &id), &note(1, true))
            .await;
        assert_eq!(out.label(), *label, "{reply:?} → {out:?}");
        if let Outcome::Retry { after: got, .. } = out {
            assert_eq!(got, *after);
        }
    }
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_garbage_targets_are_rejected_without_a_request() {
    let s = setup(8).await;
    let wp = s.sender(Provider::WebPush);
    let good = s.target(Provider::WebPush, "x");
    let mut bad = Vec::new();
    let mut t = good.clone();
    t.p256dh = "!!not base64!!".into();
    bad.push(t);
    let mut t = good.clone();
    t.p256dh = ferry_push::sim::throwaway_subscription().1; // 16 bytes, not a point
    bad.push(t);
    let mut t = good.clone();
    t.p256dh = format!("BA{}", "A".repeat(85)); // 65 bytes, 0x04 first, not on the curve
    bad.push(t);
    let mut t = good.clone();
    t.auth = "AAAA".into();
    bad.push(t);
    let mut t = good.clone();
    t.endpoint = good.endpoint.replace("https://", "http://");
    bad.push(t);
    let mut t = good.clone();
    t.endpoint = "not a url".into();
    bad.push(t);
    for t in &bad {
        let out = wp.send(t, &note(1, true)).await;
        assert_eq!(out.label(), "rejected", "{t:?} → {out:?}");
    }
    let mut huge = note(1, true);
    huge.data.text = "x".repeat(4000);
    assert_eq!(
        wp.send(&good, &huge).await.label(),
        "rejected",
        "a payload over one record"
    );
    assert_eq!(
        s.sim.count(Provider::WebPush),
        0,
        "nothing reached the push service"
    );
}

// ---- all ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sender_keeps_its_in_flight_limit() {
    let s = setup(3).await;
    s.sim.script_default(Script {
        reply: Reply::Accept,
        delay: Duration::from_millis(150),
    });
    for provider in [Provider::Apns, Provider::Fcm, Provider::WebPush] {
        s.sim.clear();
        let sender = s.sender(provider);
        // FCM: take the access token first, so the token request is not counted.
        if provider == Provider::Fcm {
            assert_eq!(
                sender
                    .send(&s.target(provider, &fcm_token(0)), &note(0, true))
                    .await,
                Outcome::Accepted
            );
            s.sim.clear();
        }
        let mut tasks = Vec::new();
        for i in 0..12u64 {
            let sender = sender.clone();
            let key = match provider {
                Provider::Apns => apns_token(i),
                Provider::Fcm => fcm_token(i),
                _ => format!("c{i}"),
            };
            let t = s.target(provider, &key);
            tasks.push(tokio::spawn(async move {
                sender.send(&t, &note(i, true)).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Outcome::Accepted);
        }
        let max = s.sim.max_in_flight();
        assert!(
            max <= 3,
            "{provider:?}: {max} requests in flight with a limit of 3"
        );
        assert!(
            max >= 2,
            "{provider:?}: the sends did overlap (max in flight {max})"
        );
    }
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_provider_is_a_retry_not_a_panic() {
    let s = setup(2).await;
    let mut config = s.config.clone();
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    config.apns.as_mut().unwrap().url = dead.clone();
    config.fcm.as_mut().unwrap().url = dead;
    config.timeout_ms = 2000;
    let senders = ferry_push::Senders::from_config(&config).unwrap();
    let apns = senders.get(Provider::Apns).unwrap();
    let out = apns
        .send(&s.target(Provider::Apns, &apns_token(1)), &note(1, true))
        .await;
    assert_eq!(out.label(), "retry", "{out:?}");
    let fcm = senders.get(Provider::Fcm).unwrap();
    let out = fcm
        .send(&s.target(Provider::Fcm, &fcm_token(1)), &note(1, true))
        .await;
    assert_eq!(out.label(), "retry", "{out:?}");
}

#[test]
fn push_config_reads_from_toml_with_defaults() {
    let cfg: ferry_push::PushConfig = toml::from_str(
        r#"
        [apns]
        key_file = "/k.p8"
        key_id = "K"
        team_id = "T"
        [webpush]
        vapid_private_key_file = "/v.pem"
        subject = "mailto:a@b.c"
        "#,
    )
    .unwrap();
    let apns = cfg.apns.unwrap();
    assert_eq!(apns.url, "https://api.push.apple.com");
    assert_eq!(apns.sandbox_url, "https://api.sandbox.push.apple.com");
    assert_eq!(apns.concurrency, 64);
    assert!(cfg.fcm.is_none());
    assert_eq!(cfg.timeout_ms, 10_000);
    assert!(toml::from_str::<ferry_push::PushConfig>("[apns]\nkey_file = \"x\"").is_err());
    // Bad keys are configuration errors at start-up.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.p8"), "not a key").unwrap();
    let bad = ferry_push::PushConfig {
        apns: Some(ferry_push::ApnsConfig {
            key_file: dir.path().join("k.p8"),
            key_id: "K".into(),
            team_id: "T".into(),
            url: "https://x".into(),
            sandbox_url: "https://y".into(),
            concurrency: 1,
        }),
        ..Default::default()
    };
    let err = ferry_push::Senders::from_config(&bad).unwrap_err();
    assert!(err.to_string().contains("key_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_mode_keeps_counters_and_records_no_request() {
    let s = setup(8).await;
    s.sim.set_recording(false);
    let apns = s.sender(Provider::Apns);
    for i in 0..5 {
        let t = s.target(Provider::Apns, &apns_token(i));
        assert_eq!(apns.send(&t, &note(i, true)).await, Outcome::Accepted);
    }
    assert_eq!(s.sim.count(Provider::Apns), 5);
    assert!(s.sim.requests().is_empty());
    assert_clean(&s);
    s.sim.set_recording(true);
    let t = s.target(Provider::Apns, &apns_token(9));
    assert_eq!(apns.send(&t, &note(9, true)).await, Outcome::Accepted);
    assert_eq!(s.sim.requests().len(), 1);
    assert_eq!(s.sim.count(Provider::Apns), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sims_config_round_trips_through_toml() {
    let s = setup(5).await;
    let text = toml::to_string(&s.config).expect("PushConfig serializes as TOML");
    let back: ferry_push::PushConfig = toml::from_str(&text).expect("and reads back");
    assert_eq!(back, s.config, "{text}");
    // Senders made from the TOML text work.
    let senders = ferry_push::Senders::from_config(&back).unwrap();
    let t = s.target(Provider::Apns, &apns_token(1));
    assert_eq!(
        senders
            .get(Provider::Apns)
            .unwrap()
            .send(&t, &note(1, true))
            .await,
        Outcome::Accepted
    );
}
