//! The independent check of Ferry's Web Push: Python's `http_ece` (Mozilla's RFC
//! 8188/8291 implementation) decrypts the body the simulator captured, and `py_vapid`
//! verifies the VAPID JWT, playing the browser whose key pair and auth secret Python
//! made (tests/push/check_webpush.py). Nothing of Ferry's own code reads the bytes.
//!
//! The venv is `target/push-venv`, from the hash-pinned tests/push/requirements.txt
//! (`ferry_testkit::python_venv`); when it cannot be had, the test fails.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{note, setup};
use ferry_push::{Outcome, Provider, Target};
use ferry_testkit::python::{python_venv, repo_root, run};
use serde_json::{json, Value};

fn python(args: &[&str]) -> String {
    let python = python_venv("push-venv", "tests/push/requirements.txt", &[])
        .unwrap_or_else(|e| panic!("no Python to check Web Push with: {e}"));
    let script = repo_root().join("tests/push/check_webpush.py");
    tokio::task::block_in_place(|| {
        run(
            Command::new(python).arg(script).args(args),
            Duration::from_secs(60),
        )
    })
    .unwrap_or_else(|e| panic!("the Python check failed:\n{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_decrypts_the_push_and_verifies_the_vapid_jwt() {
    let s = setup(4).await;
    let browser = tempfile::tempdir().unwrap();
    let dir = browser.path().to_str().unwrap();
    let keys: Value = serde_json::from_str(python(&["gen", dir]).trim()).unwrap();
    let target = Target {
        provider: Provider::WebPush,
        token: String::new(),
        endpoint: s.sim.web_push_endpoint("interop"),
        p256dh: keys["p256dh"].as_str().unwrap().into(),
        auth: keys["auth"].as_str().unwrap().into(),
        app_id: String::new(),
        sandbox: false,
    };
    let data = json!({"v": 1, "seq": 42, "count": 2, "kind": "message", "from": "Ana",
                      "text": "hello there"});
    let alert = note(42, true);
    let mut silent = note(42, false);
    silent.badge = None;
    let cases = [
        (
            alert,
            json!({"ferry": data, "title": "Ana", "body": "hello there", "badge": 3}),
        ),
        (silent, json!({"ferry": data})),
    ];
    for (n, want) in cases {
        for provider in [Provider::WebPush, Provider::UnifiedPush] {
            let sender = s.sender(provider);
            let t = Target {
                provider,
                ..target.clone()
            };
            assert_eq!(sender.send(&t, &n).await, Outcome::Accepted);
            let req = s.sim.requests_of(Provider::WebPush).pop().unwrap();
            let body_file = browser.path().join("body");
            std::fs::write(&body_file, &req.body).unwrap();
            let out = python(&[
                "check",
                dir,
                body_file.to_str().unwrap(),
                req.header("authorization").unwrap(),
                s.sim.url(),
            ]);
            let got: Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(got["payload"], want, "what the browser decrypts");
            assert_eq!(got["rs"], 4096);
            assert_eq!(got["key_id_len"], 65);
            assert_eq!(got["claims"]["sub"], ferry_push::sim::VAPID_SUBJECT);
            assert_eq!(got["claims"]["aud"], s.sim.url());
        }
    }
    let v = s.sim.violations();
    assert!(v.is_empty(), "{v:#?}");
}
